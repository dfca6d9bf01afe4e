//! `sg-ctl rule`: add (fields or a preset), list, update and delete the
//! rules of a group.

use anyhow::Result;
use clap::{Args, Subcommand};
use sg_core::{
    model::{Direction, EtherType, IcmpMatch, PortSpec, Protocol, Remote, Rule},
    preset,
};

use super::{Invalid, Session, print};
use sg_ctl::daemon::api::RuleRef;

#[derive(Subcommand)]
pub enum RuleCommand {
    /// Append rules to a group: the fields given, or a preset.
    #[command(after_help = "Examples:
  sg-ctl rule add web --proto tcp --port 80,443 --remote 0.0.0.0/0
  sg-ctl rule add web --proto icmp --icmp-type 8
  sg-ctl rule add web --preset ssh --remote 203.0.113.0/24
  sg-ctl rule add db --proto tcp --port 3306 --remote-group web
  sg-ctl rule add web --dir egress --proto tcp --port 25 --action drop --priority 10")]
    Add {
        group: String,
        /// Expand a preset (`sg-ctl presets` lists them) into its rules.
        #[arg(long, conflicts_with_all = ["proto", "port", "icmp_type", "icmp_code"])]
        preset: Option<String>,
        #[command(flatten)]
        fields: RuleFields,
    },
    /// List a group's rules with their indexes and ids.
    List { group: String },
    /// Change the fields given of a rule of a group: RULE is its id
    /// (r-…), or its index as `rule list` shows it.
    Update {
        group: String,
        rule: RuleRef,
        #[command(flatten)]
        fields: RuleFields,
    },
    /// Delete a rule of a group: RULE is its id (r-…), or its index.
    Delete { group: String, rule: RuleRef },
}

/// The fields of a rule as options; those not given keep their value
/// (for a new rule, the defaults).
#[derive(Args)]
pub struct RuleFields {
    /// ingress (default for new rules) or egress.
    #[arg(long = "dir")]
    direction: Option<Direction>,
    /// any, ipv4 or ipv6.
    #[arg(long)]
    ethertype: Option<EtherType>,
    /// any, a name (tcp, udp, icmp, ...), a number, or a list such as tcp,udp.
    #[arg(long)]
    proto: Option<Protocol>,
    /// Destination ports: 80, 8000-8080, 22,80,443 or any.
    #[arg(long)]
    port: Option<PortSpec>,
    /// ICMP type 0-255 (protocol icmp or ipv6-icmp).
    #[arg(long)]
    icmp_type: Option<String>,
    /// ICMP code 0-255, with --icmp-type.
    #[arg(long)]
    icmp_code: Option<String>,
    /// any, or addresses and CIDRs: 203.0.113.0/24,2001:db8::/32.
    #[arg(long, conflicts_with = "remote_group")]
    remote: Option<Remote>,
    /// The members of this group.
    #[arg(long)]
    remote_group: Option<String>,
    /// The port's own addresses the rule is about (CIDRs; `any` for all).
    #[arg(long)]
    local: Option<String>,
    /// allow, drop or reject.
    #[arg(long)]
    action: Option<sg_core::model::Action>,
    /// 1-65535, 1 first; default 1000.
    #[arg(long)]
    priority: Option<u32>,
    #[arg(long)]
    description: Option<String>,
}

impl RuleFields {
    /// `rule` with the fields given changed.
    fn apply(&self, mut rule: Rule) -> Result<Rule> {
        if let Some(direction) = self.direction {
            rule.direction = direction;
        }
        if let Some(ethertype) = self.ethertype {
            rule.ethertype = ethertype;
        }
        if let Some(protocol) = &self.proto {
            rule.protocol = protocol.clone();
        }
        if let Some(ports) = &self.port {
            rule.ports = ports.clone();
        }
        if self.icmp_type.is_some() || self.icmp_code.is_some() {
            rule.icmp = IcmpMatch::parse(self.icmp_type.as_deref(), self.icmp_code.as_deref())
                .map_err(|e| Invalid(e.to_string()))?;
        }
        if let Some(remote) = &self.remote {
            rule.remote = remote.clone();
        }
        if let Some(group) = &self.remote_group {
            rule.remote = Remote::Group(group.clone());
        }
        if let Some(local) = &self.local {
            rule.local = if local.trim().eq_ignore_ascii_case("any") {
                Vec::new()
            } else {
                sg_core::model::parse_cidrs("local", local).map_err(|e| Invalid(e.to_string()))?
            };
        }
        if let Some(action) = self.action {
            rule.action = action;
        }
        if let Some(priority) = self.priority {
            rule.priority = priority;
        }
        if let Some(description) = &self.description {
            rule.description = description.clone();
        }
        Ok(rule)
    }
}

impl RuleCommand {
    pub async fn run(&self, session: &Session) -> Result<()> {
        let client = &session.client;
        let view = match self {
            RuleCommand::Add {
                group,
                preset,
                fields,
            } => {
                let template = fields.apply(Rule::new(Direction::Ingress))?;
                let rules = match preset {
                    Some(name) => {
                        preset::expand(name, &template).map_err(|e| Invalid(e.to_string()))?
                    }
                    None => vec![template],
                };
                client.add_rules(group, &rules, None).await?
            }
            RuleCommand::List { group } => client.group(group).await?,
            // The rule is read, then changed by its id only if it is still
            // as read (its ETag): an index names whatever rule is there when
            // asked, which another client's change may have moved.
            RuleCommand::Update {
                group,
                rule,
                fields,
            } => {
                let (current, etag) = client.rule(group, rule).await?;
                let at = current.id.clone().map_or(rule.clone(), RuleRef::Id);
                let changed = fields.apply(current)?;
                client
                    .set_rule(group, &at, Some(&changed), Some(etag))
                    .await?
            }
            RuleCommand::Delete {
                group,
                rule: RuleRef::Index(index),
            } => {
                let at = RuleRef::Index(*index);
                let (current, etag) = client.rule(group, &at).await?;
                let at = current.id.map_or(at, RuleRef::Id);
                client.set_rule(group, &at, None, Some(etag)).await?
            }
            RuleCommand::Delete { group, rule } => client.set_rule(group, rule, None, None).await?,
        };
        session
            .output
            .print(&view.spec.rules, |_| print::rules(&view))
    }
}
