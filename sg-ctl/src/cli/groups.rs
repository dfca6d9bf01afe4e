//! `sg-ctl group`: create, list, show, update, delete and clone security
//! groups.

use anyhow::Result;
use clap::Subcommand;
use ipnet::IpNet;
use sg_core::model::{Group, parse_cidr};
use sg_ctl::daemon::api::GroupView;

use super::{Invalid, Session, print};

#[derive(Subcommand)]
pub enum GroupCommand {
    /// Create a group; it starts with allow-all egress (IPv4 and IPv6).
    #[command(after_help = "Examples:
  sg-ctl group create web --description 'web tier'
  sg-ctl group create locked --empty          no rules at all
  sg-ctl group create shared --public         readable without a token")]
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Readable by every local client, even without a token.
        #[arg(long)]
        public: bool,
        /// Start without the allow-all egress rules.
        #[arg(long)]
        empty: bool,
    },
    /// List the groups.
    List,
    /// Show a group with its rules.
    Show { name: String },
    /// Change a group's description, flags or external members.
    #[command(after_help = "Examples:
  sg-ctl group update web --description 'public web tier'
  sg-ctl group update db --external-member 198.51.100.0/24 --external-member 2001:db8::/48")]
    Update {
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        public: Option<bool>,
        /// Keep egress open until the group's ports have an egress rule.
        #[arg(long)]
        egress_open_until_first_rule: Option<bool>,
        /// CIDRs that count as members (replaces the list; `none` empties it).
        #[arg(long = "external-member")]
        external_members: Vec<String>,
    },
    /// Delete a group (not `default`, nor one still attached or named as remote).
    Delete { name: String },
    /// Attach a group to many ports at once, live: all of them, or none
    /// when one is unknown or would go over a limit.
    #[command(after_help = "Example:
  sg-ctl group assign web vm1 vm2 vm3")]
    Assign {
        name: String,
        #[arg(required = true)]
        ports: Vec<String>,
    },
    /// Copy a group and its rules under a new name.
    Clone { from: String, name: String },
}

fn show(session: &Session, view: &GroupView) -> Result<()> {
    session.output.print(view, print::group)
}

impl GroupCommand {
    pub async fn run(&self, session: &Session) -> Result<()> {
        match self {
            GroupCommand::Create {
                name,
                description,
                public,
                empty,
            } => {
                let base = if *empty {
                    Group::empty(name.as_str())
                } else {
                    Group::new(name.as_str())
                };
                let group = Group {
                    description: description.clone(),
                    public: *public,
                    ..base.map_err(|e| Invalid(e.to_string()))?
                };
                show(session, &session.client.create_group(&group).await?)
            }
            GroupCommand::List => {
                let groups = session.client.groups().await?;
                session
                    .output
                    .print(&groups, |groups| print::groups(groups))
            }
            GroupCommand::Show { name } => show(session, &session.client.group(name).await?),
            GroupCommand::Update {
                name,
                description,
                public,
                egress_open_until_first_rule,
                external_members,
            } => {
                let view = session.client.group(name).await?;
                let mut group = view.spec;
                if let Some(description) = description {
                    group.description = description.clone();
                }
                if let Some(public) = public {
                    group.public = *public;
                }
                if let Some(open) = egress_open_until_first_rule {
                    group.egress_open_until_first_rule = *open;
                }
                if !external_members.is_empty() {
                    group.external_members = external_members
                        .iter()
                        .filter(|text| !text.eq_ignore_ascii_case("none"))
                        .map(|text| {
                            parse_cidr(text).map_err(|e| Invalid(format!("external_members: {e}")))
                        })
                        .collect::<Result<Vec<IpNet>, _>>()?;
                }
                let view = session
                    .client
                    .replace_group(name, &group, Some(view.revision))
                    .await?;
                show(session, &view)
            }
            GroupCommand::Delete { name } => {
                session.client.delete_group(name, None).await?;
                session.deleted("group", name)
            }
            GroupCommand::Clone { from, name } => {
                show(session, &session.client.clone_group(from, name).await?)
            }
            GroupCommand::Assign { name, ports } => {
                show(session, &session.client.assign_group(name, ports).await?)
            }
        }
    }
}
