//! `sg-ctl apply` and `sg-ctl export`: the whole desired state as one
//! YAML or JSON document.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;
use hyper::Method;
use sg_ctl::daemon::api::{Applied, Document};

use super::{Invalid, Session, print};

#[derive(Args)]
pub struct ApplyArgs {
    #[arg(short, long)]
    file: PathBuf,
    /// Print the changes without making them.
    #[arg(long)]
    dry_run: bool,
}

impl ApplyArgs {
    pub async fn run(&self, session: &Session) -> Result<()> {
        let file = &self.file;
        let text = if file.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading the policy from stdin")?
        } else {
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
        };
        // YAML is a superset of JSON: one parser reads both.
        let document: Document = serde_norway::from_str(&text)
            .map_err(|e| Invalid(format!("{}: {e}", file.display())))?;
        let path = format!("/v1/apply?dry_run={}", self.dry_run);
        let applied: Applied = session
            .client
            .call(Method::POST, &path, Some(&document), None)
            .await?;
        session.output.print(&applied, print::applied)
    }
}

/// The desired state, as `export` prints it.
pub async fn export_document(session: &Session) -> Result<Document> {
    session.get("/v1/export").await
}

/// `export`: the desired state as `apply` reads it.
pub async fn export(session: &Session) -> Result<()> {
    session
        .output
        .print(&export_document(session).await?, print::yaml)
}
