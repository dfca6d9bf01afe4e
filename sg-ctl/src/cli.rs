//! The commands that talk to the daemon: groups, rules, ports, settings,
//! apply and export, tokens. Each is one or two API calls and a table (or
//! JSON) of the result.

use std::{io::Write as _, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use hyper::Method;
use ipnet::IpNet;
use serde_json::Value;
use sg_ctl::{
    client::Client,
    daemon::api::{Action, Applied, Document, GroupView, PortView},
    datapath::conntrack::Flow,
    model::{
        AddressPair, EtherType, Group, IcmpMatch, MacAddr, Port, PortSpec, Protocol, Remote, Rule,
        catalogue, parse_cidr,
    },
    preset::{self, PRESETS},
    store::{Settings, TokenInfo},
};

use crate::{FlowMatch, Output, TokenCommand, print_flows};

/// An argument the daemon was not asked about because it is wrong on its
/// face; exits 2 like clap's own errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

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
    /// Copy a group and its rules under a new name.
    Clone { from: String, name: String },
}

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
    /// List a group's rules with their indexes.
    List { group: String },
    /// Change the fields given of rule INDEX of a group.
    Update {
        group: String,
        index: usize,
        #[command(flatten)]
        fields: RuleFields,
    },
    /// Delete rule INDEX of a group.
    Delete { group: String, index: usize },
}

/// The fields of a rule as options; those not given keep their value
/// (for a new rule, the defaults).
#[derive(Args)]
pub struct RuleFields {
    /// ingress (default for new rules) or egress.
    #[arg(long = "dir")]
    direction: Option<sg_ctl::model::Direction>,
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
    action: Option<sg_ctl::model::Action>,
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
                sg_ctl::model::parse_cidrs("local", local).map_err(|e| Invalid(e.to_string()))?
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

#[derive(Subcommand)]
pub enum PortCommand {
    /// Add a workload's port; its interface is filtered at once.
    #[command(after_help = "Examples:
  sg-ctl port create vm1 --iface tap1 --mac 52:54:00:12:34:56 --ip 10.0.0.5 --ip 2001:db8::5
  sg-ctl --netns host1 port create web1 --iface veth-web --mac 02:00:00:00:00:01 --group web")]
    Create {
        name: String,
        /// The host-side interface (in --netns, if given).
        #[arg(long)]
        iface: String,
        #[arg(long)]
        mac: MacAddr,
        /// A fixed IP of the workload (repeat for more).
        #[arg(long = "ip")]
        ips: Vec<std::net::IpAddr>,
        /// An address the workload may also use: CIDR[,MAC] (repeat for more).
        #[arg(long = "address-pair")]
        address_pairs: Vec<String>,
        /// Groups to attach, in order (repeat; default: default).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Turn off anti-spoofing for this port.
        #[arg(long)]
        no_port_security: bool,
        /// Let VLAN-tagged frames leave the workload.
        #[arg(long)]
        allow_vlan: bool,
        /// Let any broadcast and multicast leave the workload.
        #[arg(long)]
        allow_multicast: bool,
    },
    /// List the ports with their status.
    List,
    /// Show a port.
    Show { name: String },
    /// Change a port's interface, MAC, IPs or port security.
    Update {
        name: String,
        #[arg(long)]
        iface: Option<String>,
        #[arg(long)]
        mac: Option<MacAddr>,
        /// Replaces the fixed IPs (repeat for more).
        #[arg(long = "ip")]
        ips: Vec<std::net::IpAddr>,
        #[arg(long)]
        port_security: Option<bool>,
        /// VLAN-tagged frames may leave the workload.
        #[arg(long)]
        allow_vlan: Option<bool>,
        /// Any broadcast and multicast may leave the workload.
        #[arg(long)]
        allow_multicast: Option<bool>,
    },
    /// Delete a port; its interface stops being filtered.
    Delete { name: String },
    /// Attach groups to a port, live.
    Attach {
        name: String,
        #[arg(required = true)]
        groups: Vec<String>,
    },
    /// Detach groups from a port, live (a port keeps at least one).
    Detach {
        name: String,
        #[arg(required = true)]
        groups: Vec<String>,
    },
    /// The flows the connection tracker holds for an attached port.
    #[command(after_help = "Examples:
  sg-ctl port flows vm1
  sg-ctl port flows vm1 --protocol tcp --state established
  sg-ctl -o json port flows vm1 --address 203.0.113.0/24")]
    Flows {
        name: String,
        #[command(flatten)]
        of: FlowMatch,
    },
}

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

/// A client command with where to send it.
pub struct Session {
    pub client: Client,
    pub output: Output,
    /// The `--netns` of the command line: a new port's namespace.
    pub netns: Option<String>,
}

fn escape(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn group_path(name: &str) -> String {
    format!("/v1/groups/{}", escape(name))
}

fn port_path(name: &str) -> String {
    format!("/v1/ports/{}", escape(name))
}

const NO_BODY: Option<&()> = None;

impl Session {
    fn json(&self, value: &impl serde::Serialize) -> Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }

    fn deleted(&self, kind: &str, name: &str) -> Result<()> {
        match self.output {
            Output::Json => {
                self.json(&serde_json::json!({ "deleted": { "kind": kind, "name": name } }))
            }
            Output::Table => {
                println!("deleted {kind} {name}");
                Ok(())
            }
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        Ok(self.client.call(Method::GET, path, NO_BODY, None).await?)
    }

    fn show_group(&self, view: &GroupView) -> Result<()> {
        match self.output {
            Output::Json => self.json(view),
            Output::Table => print_group(view),
        }
    }

    fn show_port(&self, view: &PortView) -> Result<()> {
        match self.output {
            Output::Json => self.json(view),
            Output::Table => print_ports(std::slice::from_ref(view)),
        }
    }

    pub async fn group(&self, command: &GroupCommand) -> Result<()> {
        match command {
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
                let view: GroupView = self
                    .client
                    .call(Method::POST, "/v1/groups", Some(&group), None)
                    .await?;
                self.show_group(&view)
            }
            GroupCommand::List => {
                let groups: Vec<GroupView> = self.get("/v1/groups").await?;
                match self.output {
                    Output::Json => self.json(&groups),
                    Output::Table => print_groups(&groups),
                }
            }
            GroupCommand::Show { name } => {
                let view: GroupView = self.get(&group_path(name)).await?;
                self.show_group(&view)
            }
            GroupCommand::Update {
                name,
                description,
                public,
                egress_open_until_first_rule,
                external_members,
            } => {
                let view: GroupView = self.get(&group_path(name)).await?;
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
                let view: GroupView = self
                    .client
                    .call(
                        Method::PUT,
                        &group_path(name),
                        Some(&group),
                        Some(view.revision),
                    )
                    .await?;
                self.show_group(&view)
            }
            GroupCommand::Delete { name } => {
                self.client
                    .request(Method::DELETE, &group_path(name), NO_BODY, None)
                    .await?;
                self.deleted("group", name)
            }
            GroupCommand::Clone { from, name } => {
                let body = serde_json::json!({ "name": name });
                let view: GroupView = self
                    .client
                    .call(
                        Method::POST,
                        &format!("{}/clone", group_path(from)),
                        Some(&body),
                        None,
                    )
                    .await?;
                self.show_group(&view)
            }
        }
    }

    pub async fn rule(&self, command: &RuleCommand) -> Result<()> {
        let view: GroupView = match command {
            RuleCommand::Add {
                group,
                preset,
                fields,
            } => {
                let template = fields.apply(Rule::new(sg_ctl::model::Direction::Ingress))?;
                let rules = match preset {
                    Some(name) => {
                        preset::expand(name, &template).map_err(|e| Invalid(e.to_string()))?
                    }
                    None => vec![template],
                };
                let path = format!("{}/rules", group_path(group));
                self.client
                    .call(Method::POST, &path, Some(&rules), None)
                    .await?
            }
            RuleCommand::List { group } => self.get(&group_path(group)).await?,
            RuleCommand::Update {
                group,
                index,
                fields,
            } => {
                let view: GroupView = self.get(&group_path(group)).await?;
                let rule = view.spec.rules.get(*index).cloned().ok_or_else(|| {
                    Invalid(format!(
                        "group '{group}' has no rule {index}; `sg-ctl rule list {group}` shows them"
                    ))
                })?;
                let rule = fields.apply(rule)?;
                let path = format!("{}/rules/{index}", group_path(group));
                self.client
                    .call(Method::PUT, &path, Some(&rule), Some(view.revision))
                    .await?
            }
            RuleCommand::Delete { group, index } => {
                let path = format!("{}/rules/{index}", group_path(group));
                self.client
                    .call(Method::DELETE, &path, NO_BODY, None)
                    .await?
            }
        };
        match self.output {
            Output::Json => self.json(&view.spec.rules),
            Output::Table => print_rules(&view),
        }
    }

    pub async fn port(&self, command: &PortCommand) -> Result<()> {
        match command {
            PortCommand::Create {
                name,
                iface,
                mac,
                ips,
                address_pairs,
                groups,
                no_port_security,
                allow_vlan,
                allow_multicast,
            } => {
                let mut port = Port::new(name.as_str(), iface.as_str(), *mac);
                port.ips = ips.clone();
                port.allowed_address_pairs = address_pairs
                    .iter()
                    .map(|text| address_pair(text))
                    .collect::<Result<_>>()?;
                if !groups.is_empty() {
                    port.groups = groups.clone();
                }
                port.port_security = !no_port_security;
                port.allow_vlan = *allow_vlan;
                port.allow_multicast = *allow_multicast;
                port.netns = self.netns.clone();
                let view: PortView = self
                    .client
                    .call(Method::POST, "/v1/ports", Some(&port), None)
                    .await?;
                self.show_port(&view)
            }
            PortCommand::List => {
                let ports: Vec<PortView> = self.get("/v1/ports").await?;
                match self.output {
                    Output::Json => self.json(&ports),
                    Output::Table => print_ports(&ports),
                }
            }
            PortCommand::Show { name } => {
                let view: PortView = self.get(&port_path(name)).await?;
                self.show_port(&view)
            }
            PortCommand::Update {
                name,
                iface,
                mac,
                ips,
                port_security,
                allow_vlan,
                allow_multicast,
            } => {
                let view: PortView = self.get(&port_path(name)).await?;
                let mut port = view.spec;
                if let Some(iface) = iface {
                    port.ifname = iface.clone();
                }
                if let Some(mac) = mac {
                    port.mac = *mac;
                }
                if !ips.is_empty() {
                    port.ips = ips.clone();
                }
                for (field, value) in [
                    (&mut port.port_security, port_security),
                    (&mut port.allow_vlan, allow_vlan),
                    (&mut port.allow_multicast, allow_multicast),
                ] {
                    if let Some(on) = value {
                        *field = *on;
                    }
                }
                if self.netns.is_some() {
                    port.netns = self.netns.clone();
                }
                let view: PortView = self
                    .client
                    .call(
                        Method::PUT,
                        &port_path(name),
                        Some(&port),
                        Some(view.revision),
                    )
                    .await?;
                self.show_port(&view)
            }
            PortCommand::Delete { name } => {
                self.client
                    .request(Method::DELETE, &port_path(name), NO_BODY, None)
                    .await?;
                self.deleted("port", name)
            }
            PortCommand::Flows { name, of } => {
                let flows: Vec<Flow> = self
                    .get(&format!("{}/flows{}", port_path(name), of.query()))
                    .await?;
                match self.output {
                    Output::Json => self.json(&flows),
                    Output::Table => Ok(print_flows(&flows)?),
                }
            }
            PortCommand::Attach { name, groups } | PortCommand::Detach { name, groups } => {
                let verb = if matches!(command, PortCommand::Attach { .. }) {
                    "attach"
                } else {
                    "detach"
                };
                let body = serde_json::json!({ "groups": groups });
                let view: PortView = self
                    .client
                    .call(
                        Method::POST,
                        &format!("{}/{verb}", port_path(name)),
                        Some(&body),
                        None,
                    )
                    .await?;
                self.show_port(&view)
            }
        }
    }

    pub async fn settings(&self, command: &SettingsCommand) -> Result<()> {
        let settings: Settings = match command {
            SettingsCommand::Show => self.get("/v1/settings").await?,
            SettingsCommand::Set { key, value } => {
                let current: Value = self.get("/v1/settings").await?;
                let settings = set_key(current, key, value)?;
                self.client
                    .call(Method::PUT, "/v1/settings", Some(&settings), None)
                    .await?
            }
        };
        match self.output {
            Output::Json => self.json(&settings),
            Output::Table => {
                let text = serde_norway::to_string(&settings)?;
                print!("{text}");
                Ok(())
            }
        }
    }

    pub async fn apply(&self, file: &PathBuf, dry_run: bool) -> Result<()> {
        let text = if file.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading the policy from stdin")?
        } else {
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
        };
        // YAML is a superset of JSON: one parser reads both.
        let document: Document = serde_norway::from_str(&text)
            .map_err(|e| Invalid(format!("{}: {e}", file.display())))?;
        let path = format!("/v1/apply?dry_run={dry_run}");
        let applied: Applied = self
            .client
            .call(Method::POST, &path, Some(&document), None)
            .await?;
        match self.output {
            Output::Json => self.json(&applied),
            Output::Table => {
                if applied.changes.is_empty() {
                    println!("no changes");
                }
                for change in &applied.changes {
                    let sign = match change.action {
                        Action::Create => '+',
                        Action::Update => '~',
                        Action::Delete => '-',
                    };
                    let fields = if change.fields.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", change.fields.join(", "))
                    };
                    println!("{sign} {} {}{fields}", change.kind, change.name);
                }
                if applied.dry_run && !applied.changes.is_empty() {
                    println!("dry run: nothing changed");
                }
                Ok(())
            }
        }
    }

    /// The desired state, as `export` prints it.
    pub async fn export_document(&self) -> Result<Document> {
        self.get("/v1/export").await
    }

    pub async fn export(&self) -> Result<()> {
        let document = self.export_document().await?;
        match self.output {
            Output::Json => self.json(&document),
            Output::Table => {
                print!("{}", serde_norway::to_string(&document)?);
                Ok(())
            }
        }
    }

    pub async fn token(&self, command: &TokenCommand) -> Result<()> {
        match command {
            TokenCommand::Create { role } => {
                let body = serde_json::json!({ "role": role });
                let created: Value = self
                    .client
                    .call(Method::POST, "/v1/tokens", Some(&body), None)
                    .await?;
                match self.output {
                    Output::Json => self.json(&created),
                    Output::Table => {
                        println!("{}", created["token"].as_str().unwrap_or_default());
                        Ok(())
                    }
                }
            }
            TokenCommand::List => {
                let tokens: Vec<TokenInfo> = self.get("/v1/tokens").await?;
                match self.output {
                    Output::Json => self.json(&tokens),
                    Output::Table => {
                        println!("{:<14} {:<7} CREATED (unix time)", "ID", "ROLE");
                        for token in &tokens {
                            let role = serde_json::to_value(token.role)?;
                            let role = role.as_str().unwrap_or_default();
                            println!("{:<14} {role:<7} {}", token.id, token.created);
                        }
                        Ok(())
                    }
                }
            }
            TokenCommand::Revoke { id } => {
                self.client
                    .request(
                        Method::DELETE,
                        &format!("/v1/tokens/{}", escape(id)),
                        NO_BODY,
                        None,
                    )
                    .await?;
                self.deleted("token", id)
            }
        }
    }
}

/// `CIDR` or `CIDR,MAC`.
fn address_pair(text: &str) -> Result<AddressPair> {
    let (ip, mac) = match text.split_once(',') {
        Some((ip, mac)) => (ip, Some(mac)),
        None => (text, None),
    };
    Ok(AddressPair {
        ip: parse_cidr(ip).map_err(|e| Invalid(format!("allowed_address_pairs: {e}")))?,
        mac: mac
            .map(str::parse)
            .transpose()
            .map_err(|e: sg_ctl::model::FieldError| Invalid(e.to_string()))?,
    })
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

pub fn print_protocols(output: Output) -> Result<()> {
    let protocols = catalogue();
    if let Output::Json = output {
        println!("{}", serde_json::to_string_pretty(&protocols)?);
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:>3}  {:<16} {:<6} {:<5} {:<6} ALIASES",
        "NUM", "NAME", "PORTS", "ICMP", "FAMILY"
    )?;
    for p in protocols.iter().filter(|p| p.name.is_some()) {
        let yes = |b: bool| if b { "yes" } else { "-" };
        writeln!(
            out,
            "{:>3}  {:<16} {:<6} {:<5} {:<6} {}",
            p.number,
            p.name.unwrap_or_default(),
            yes(p.ports),
            yes(p.icmp),
            p.ethertype,
            p.aliases.join(",")
        )?;
    }
    writeln!(out, "(numbers without a name are accepted too: any 0-255)")?;
    Ok(())
}

pub fn print_presets(output: Output) -> Result<()> {
    match output {
        Output::Json => {
            let presets: Vec<Value> = PRESETS
                .iter()
                .map(|p| serde_json::json!({ "name": p.name, "description": p.description }))
                .collect();
            println!("{}", serde_json::to_string_pretty(&presets)?);
        }
        Output::Table => {
            for preset in PRESETS {
                println!("{:<12} {}", preset.name, preset.description);
            }
        }
    }
    Ok(())
}

fn print_groups(groups: &[GroupView]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<20} {:>4} {:>5} {:<6} {:<8} {:<20} DESCRIPTION",
        "NAME", "REV", "RULES", "PUBLIC", "STATUS", "PORTS"
    )?;
    for view in groups {
        writeln!(
            out,
            "{:<20} {:>4} {:>5} {:<6} {:<8} {:<20} {}",
            view.spec.name,
            view.revision,
            view.spec.rules.len(),
            if view.spec.public { "yes" } else { "no" },
            view.status.state.to_string(),
            view.ports.join(","),
            view.spec.description
        )?;
    }
    Ok(())
}

fn print_group(view: &GroupView) -> Result<()> {
    let group = &view.spec;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "group {} (revision {})", group.name, view.revision)?;
        if !group.description.is_empty() {
            writeln!(out, "  description: {}", group.description)?;
        }
        writeln!(out, "  public: {}", group.public)?;
        if group.egress_open_until_first_rule {
            writeln!(out, "  egress open until the first egress rule")?;
        }
        if !group.external_members.is_empty() {
            let members: Vec<String> = group
                .external_members
                .iter()
                .map(ToString::to_string)
                .collect();
            writeln!(out, "  external members: {}", members.join(", "))?;
        }
        let ports = if view.ports.is_empty() {
            "none".into()
        } else {
            view.ports.join(", ")
        };
        writeln!(out, "  ports: {ports}")?;
        let reason = if view.status.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", view.status.reason)
        };
        writeln!(out, "  status: {}{reason}", view.status.state)?;
    }
    print_rules(view)
}

/// A group's rules with their indexes and, once ports are attached, the
/// packets each decided.
fn print_rules(view: &GroupView) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:>3}  {:<8} {:<5} {:<10} {:<12} {:<28} {:<7} {:>5} {:>10}  DESCRIPTION",
        "#", "DIR", "ETHER", "PROTO", "PORTS/ICMP", "REMOTE", "ACTION", "PRIO", "PACKETS"
    )?;
    for (index, rule) in view.spec.rules.iter().enumerate() {
        let packets = view
            .hits
            .get(index)
            .map_or("-".to_string(), |hits| hits.packets.to_string());
        let l4 = match (rule.icmp.type_, rule.icmp.code) {
            (Some(t), Some(c)) => format!("type {t} code {c}"),
            (Some(t), None) => format!("type {t}"),
            _ => rule.ports.to_string(),
        };
        writeln!(
            out,
            "{index:>3}  {:<8} {:<5} {:<10} {:<12} {:<28} {:<7} {:>5} {packets:>10}  {}",
            rule.direction.to_string(),
            rule.ethertype.to_string(),
            rule.protocol.to_string(),
            l4,
            rule.remote.to_string(),
            rule.action.to_string(),
            rule.priority,
            rule.description
        )?;
    }
    Ok(())
}

fn print_ports(ports: &[PortView]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<16} {:<16} {:<12} {:<17} {:<24} {:<20} {:>6}  STATUS",
        "NAME", "IFACE", "NETNS", "MAC", "IPS", "GROUPS", "POLICY"
    )?;
    for view in ports {
        let port = &view.spec;
        let ips: Vec<String> = port.ips.iter().map(ToString::to_string).collect();
        let status = if view.status.reason.is_empty() {
            view.status.state.to_string()
        } else {
            format!("{}: {}", view.status.state, view.status.reason)
        };
        writeln!(
            out,
            "{:<16} {:<16} {:<12} {:<17} {:<24} {:<20} {:>6}  {status}",
            port.name,
            port.ifname,
            port.netns.as_deref().unwrap_or("-"),
            port.mac.to_string(),
            ips.join(","),
            port.groups.join(","),
            view.policy_id.map_or("-".into(), |id| id.to_string()),
        )?;
    }
    Ok(())
}
