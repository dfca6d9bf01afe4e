//! `sg-ctl settings`: the host's limits, outbound SMTP, the flows a port
//! may hold and conntrack timeouts.

use anyhow::Result;
use clap::Subcommand;
use serde_json::Value;
use sg_core::text::{Cut, Quoted};
use sg_ctl::fields::{self, Subject};

use super::{Invalid, Session, print};

#[derive(Subcommand)]
pub enum SettingsCommand {
    /// Show the limits and defaults.
    Show,
    /// Set one: max_rules_per_group, max_groups_per_port,
    /// max_flows_per_port, block_outbound_smtp, min_pair_prefix_ipv4,
    /// min_pair_prefix_ipv6, conntrack.tcp_established, conntrack.udp,
    /// conntrack.unreplied, ...
    #[command(after_help = "Examples:
  sg-ctl settings set max_rules_per_group 30
  sg-ctl settings set block_outbound_smtp false
  sg-ctl settings set max_flows_per_port 100000
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
                    "no setting {}; `sg-ctl settings show` lists them",
                    Quoted(key)
                ))
            })?;
    }
    if slot.is_object() {
        return Err(Invalid(format!(
            "{} holds settings; set one of them, e.g. {}.udp",
            Quoted(key),
            Cut(key)
        ))
        .into());
    }
    *slot = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sg_core::settings::Settings;

    fn set(key: &str, value: &str) -> Result<Settings, String> {
        let current = serde_json::to_value(Settings::default()).unwrap();
        let value = set_key(current, key, value).map_err(|e| e.to_string())?;
        fields::from_value(value, Subject::Body)
    }

    #[test]
    fn settings_set_names_the_setting_and_what_it_takes() {
        assert_eq!(
            set("max_rules_per_group", "30")
                .unwrap()
                .max_rules_per_group,
            30
        );
        assert_eq!(set("conntrack.udp", "60").unwrap().conntrack.udp, 60);
        for (key, value, error) in [
            (
                "max_rules_per_group",
                "abc",
                "max_rules_per_group: 'abc' is not a number; use a whole number, 1 or more",
            ),
            (
                "conntrack.udp",
                "1.5",
                "conntrack.udp: '1.5' is not a whole number; use seconds, 1 or more",
            ),
            (
                "block_outbound_smtp",
                "maybe",
                "block_outbound_smtp: invalid type: string \"maybe\", expected a boolean",
            ),
            (
                "max_rules",
                "1",
                "no setting 'max_rules'; `sg-ctl settings show` lists them",
            ),
        ] {
            assert_eq!(set(key, value).unwrap_err(), error);
        }
    }
}
