//! `sg-ctl apply` and `sg-ctl export`: the whole desired state as one
//! YAML or JSON document.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;
use sg_ctl::{
    daemon::api::Document,
    fields::{self, Subject},
};

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
        let document: Document = fields::from_yaml(&text, Subject::Document)
            .map_err(|e| Invalid(format!("{}: {e}", file.display())))?;
        for port in &document.ports {
            for pair in port.allowed_address_pairs.iter().filter(|p| p.allow_wide) {
                print::wide_pair(&port.name, pair);
            }
        }
        let applied = session.client.apply(&document, self.dry_run).await?;
        session.output.print(&applied, print::applied)
    }
}

/// `export`: the desired state as `apply` reads it.
pub async fn export(session: &Session) -> Result<()> {
    session
        .output
        .print(&session.client.export().await?, print::yaml)
}
