//! Groups: named, ordered lists of rules with their external members.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    Direction, EtherType, FieldError, PolicyError, Remote, Rule,
    rule::check_description,
    syntax::{self, check_name},
};

/// The group every project has: it cannot be deleted, allows all egress,
/// and allows ingress from its own members.
pub const DEFAULT_GROUP: &str = "default";

/// A security group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// 1–64 characters from `a-z A-Z 0-9 . _ -`, starting with a letter or digit.
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// In order: among rules of equal priority, the earlier one decides.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Static CIDRs that count as members when a rule's remote is this group.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "syntax::cidr_list"
    )]
    pub external_members: Vec<IpNet>,
    /// Read-only: shared with every project, edited only by the operator.
    #[serde(default)]
    pub public: bool,
    /// The Exoscale variant: egress of a port is open while none of its
    /// groups holds an egress rule (see `reference::evaluate`).
    #[serde(default)]
    pub egress_open_until_first_rule: bool,
}

impl Group {
    /// A group with no rules at all (so nothing is allowed, unless
    /// `egress_open_until_first_rule` is set).
    pub fn empty(name: impl Into<String>) -> Result<Self, FieldError> {
        let name = name.into();
        check_name("name", &name)?;
        Ok(Self {
            name,
            description: String::new(),
            rules: Vec::new(),
            external_members: Vec::new(),
            public: false,
            egress_open_until_first_rule: false,
        })
    }

    /// A new group as users get it: two allow-all egress rules, IPv4 and
    /// IPv6, which may be deleted.
    pub fn new(name: impl Into<String>) -> Result<Self, FieldError> {
        let mut group = Self::empty(name)?;
        group.rules = allow_all(Direction::Egress, Remote::Any);
        Ok(group)
    }

    /// The project's `default` group: all egress, and ingress from its own
    /// members, each as an IPv4 and an IPv6 rule.
    pub fn default_group() -> Self {
        let mut group = Self::new(DEFAULT_GROUP).expect("the default group's name is valid");
        group.description = "all egress; ingress from members of default".into();
        group.rules.extend(allow_all(
            Direction::Ingress,
            Remote::Group(DEFAULT_GROUP.into()),
        ));
        group
    }

    /// Whether the group holds a rule for `direction`.
    pub fn has_rules(&self, direction: Direction) -> bool {
        self.rules.iter().any(|rule| rule.direction == direction)
    }

    /// Checks the name, description, external members and every rule.
    /// Whether a remote group exists is the policy's to check.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let at_group = |error| PolicyError::Group {
            group: self.name.clone(),
            error,
        };
        check_name("name", &self.name).map_err(at_group)?;
        check_description(&self.description).map_err(at_group)?;
        for net in &self.external_members {
            syntax::check_cidr(net)
                .map_err(|message| at_group(FieldError::new("external_members", message)))?;
        }
        for (index, rule) in self.rules.iter().enumerate() {
            rule.validate().map_err(|error| PolicyError::Rule {
                group: self.name.clone(),
                index,
                error,
            })?;
        }
        Ok(())
    }
}

/// Allow-all rules for `direction` and `remote`, one per IP version, as
/// providers show them.
fn allow_all(direction: Direction, remote: Remote) -> Vec<Rule> {
    [EtherType::Ipv4, EtherType::Ipv6]
        .map(|ethertype| Rule {
            ethertype,
            remote: remote.clone(),
            ..Rule::new(direction)
        })
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_groups_allow_all_egress_in_both_versions() {
        let group = Group::new("web").unwrap();
        assert_eq!(group.rules.len(), 2);
        assert!(
            group
                .rules
                .iter()
                .all(|r| r.direction == Direction::Egress && r.remote == Remote::Any)
        );
        assert_eq!(group.rules[0].ethertype, EtherType::Ipv4);
        assert_eq!(group.rules[1].ethertype, EtherType::Ipv6);
        assert!(!group.has_rules(Direction::Ingress));
        assert_eq!(group.validate(), Ok(()));
        assert!(Group::empty("web").unwrap().rules.is_empty());
    }

    #[test]
    fn default_group_admits_its_members() {
        let group = Group::default_group();
        assert_eq!(group.name, DEFAULT_GROUP);
        let ingress: Vec<&Rule> = group
            .rules
            .iter()
            .filter(|r| r.direction == Direction::Ingress)
            .collect();
        assert_eq!(ingress.len(), 2);
        assert!(
            ingress
                .iter()
                .all(|r| r.remote == Remote::Group("default".into()))
        );
        assert!(group.has_rules(Direction::Egress));
        assert_eq!(group.validate(), Ok(()));
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(
            Group::new("web tier").unwrap_err().to_string(),
            "name: 'web tier' contains ' '; use 1-64 characters from a-z A-Z 0-9 . _ - \
             starting with a letter or digit"
        );
        let group = Group {
            name: "-x".into(),
            ..Group::new("web").unwrap()
        };
        assert!(
            group
                .validate()
                .unwrap_err()
                .to_string()
                .starts_with("group '-x': name: '-x' starts with '-'")
        );
    }

    #[test]
    fn errors_say_where() {
        let mut group = Group::new("db").unwrap();
        group.rules.push(Rule {
            ports: "3306".parse().unwrap(),
            ..Rule::new(Direction::Ingress)
        });
        assert_eq!(
            group.validate().unwrap_err().to_string(),
            "group 'db': rules[2]: ports: protocol any has no ports; \
             ports apply to tcp, udp, sctp, dccp, udplite"
        );
        let group = Group {
            external_members: vec!["192.0.2.1/24".parse().unwrap()],
            ..Group::new("ext").unwrap()
        };
        assert!(group.validate().unwrap_err().to_string().starts_with(
            "group 'ext': external_members: 192.0.2.1/24 has host bits set; \
                     did you mean 192.0.2.0/24"
        ));
        let group = Group {
            description: "d".repeat(300),
            ..Group::new("long").unwrap()
        };
        assert_eq!(
            group.validate().unwrap_err().to_string(),
            "group 'long': description: has 300 characters; use at most 255"
        );
    }

    #[test]
    fn yaml_like_json_round_trip() {
        let group: Group = serde_json::from_str(
            r#"{"name": "web", "description": "web tier",
                "rules": [{"direction": "ingress", "protocol": "tcp", "ports": "80,443"}],
                "external_members": ["198.51.100.0/24", "2001:db8::7"],
                "egress_open_until_first_rule": true}"#,
        )
        .unwrap();
        assert_eq!(group.validate(), Ok(()));
        assert_eq!(group.external_members[1].to_string(), "2001:db8::7/128");
        assert!(!group.public && group.egress_open_until_first_rule);
        let json = serde_json::to_string(&group).unwrap();
        assert_eq!(serde_json::from_str::<Group>(&json).unwrap(), group);
        let err = serde_json::from_str::<Group>(r#"{"name": "x", "members": []}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `members`"), "{err}");
    }
}
