//! `sg-ctl settings`: the host's limits, outbound SMTP and conntrack
//! timeouts.

use anyhow::Result;
use clap::Subcommand;
use serde_json::Value;
use sg_ctl::fields::{self, Subject};

use super::{Invalid, Session, print};

#[derive(Subcommand)]
pub enum SettingsCommand {
    /// Show the limits and defaults.
    Show,
    /// Set one: max_rules_per_group, max_groups_per_port,
    /// block_outbound_smtp, conntrack.tcp_established, conntrack.udp, ...
    #[command(after_help = "Examples:
  sg-ctl settings set max_rules_per_group 30
  sg-ctl settings set block_outbound_smtp false
  sg-ctl settings set conntrack.udp 60")]
    Set { key: String, value: String },
}

impl SettingsCommand {
    pub async fn run(&self, session: &Session) -> Result<()> {
        let settings = match self {
            SettingsCommand::Show => session.client.settings().await?,
            SettingsCommand::Set { key, value } => {
                let current = serde_json::to_value(session.client.settings().await?)?;
                let settings = fields::from_value(set_key(current, key, value)?, Subject::Body)
                    .map_err(Invalid)?;
                session.client.set_settings(&settings).await?
            }
        };
        session.output.print(&settings, print::yaml)
    }
}

/// Sets `key` (dotted for nested settings) to `value`, read as JSON when it
/// is a number or boolean.
fn set_key(mut settings: Value, key: &str, value: &str) -> Result<Value> {
    let mut slot = &mut settings;
    for part in key.split('.') {
        slot = slot
            .as_object_mut()
            .and_then(|object| object.get_mut(part))
            .ok_or_else(|| {
                Invalid(format!(
                    "no setting '{key}'; `sg-ctl settings show` lists them"
                ))
            })?;
    }
    if slot.is_object() {
        return Err(Invalid(format!(
            "'{key}' holds settings; set one of them, e.g. {key}.udp"
        ))
        .into());
    }
    *slot = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    Ok(settings)
}
