//! `sg-ctl daemon token`: create, list and revoke API tokens.

use anyhow::Result;
use clap::Subcommand;
use hyper::Method;
use serde_json::Value;
use sg_ctl::store::{Role, TokenInfo};

use super::{NO_BODY, Session, escape, print};

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
        _ => Err(format!("'{text}' is not a role; use owner or viewer")),
    }
}

impl TokenCommand {
    pub async fn run(&self, session: &Session) -> Result<()> {
        match self {
            TokenCommand::Create { role } => {
                let body = serde_json::json!({ "role": role });
                let created: Value = session
                    .client
                    .call(Method::POST, "/v1/tokens", Some(&body), None)
                    .await?;
                session.output.print(&created, |created| {
                    println!("{}", created["token"].as_str().unwrap_or_default());
                    Ok(())
                })
            }
            TokenCommand::List => {
                let tokens: Vec<TokenInfo> = session.get("/v1/tokens").await?;
                session
                    .output
                    .print(&tokens, |tokens| print::tokens(tokens))
            }
            TokenCommand::Revoke { id } => {
                session
                    .client
                    .request(
                        Method::DELETE,
                        &format!("/v1/tokens/{}", escape(id)),
                        NO_BODY,
                        None,
                    )
                    .await?;
                session.deleted("token", id)
            }
        }
    }
}
