//! `sg-ctl daemon token`: create, list and revoke API tokens.

use anyhow::Result;
use clap::Subcommand;
use sg_core::access::Role;

use super::{Session, print};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (only its digest is stored).
    Create {
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// List the tokens by id and role (the tokens themselves are not kept).
    List,
    /// Revoke a token by the id `token list` shows.
    Revoke { id: String },
}

fn parse_role(text: &str) -> Result<Role, String> {
    match text {
        "owner" => Ok(Role::Owner),
        "viewer" => Ok(Role::Viewer),
        _ => Err(format!(
            "{} is not a role; use owner or viewer",
            sg_core::text::Quoted(text)
        )),
    }
}

impl TokenCommand {
    pub async fn run(&self, session: &Session) -> Result<()> {
        let client = &session.client;
        match self {
            TokenCommand::Create { role } => {
                let created = client.create_token(*role).await?;
                // Through a JSON map, whose keys are sorted: `token create -o
                // json` prints them in that order.
                let created = serde_json::to_value(created)?;
                session.output.print(&created, |created| {
                    println!("{}", created["token"].as_str().unwrap_or_default());
                    Ok(())
                })
            }
            TokenCommand::List => {
                let tokens = client.tokens().await?;
                session
                    .output
                    .print(&tokens, |tokens| print::tokens(tokens))
            }
            TokenCommand::Revoke { id } => {
                client.revoke_token(id).await?;
                session.deleted("token", id)
            }
        }
    }
}
