//! Groups: named, ordered lists of rules with their external members.

use std::collections::{HashMap, HashSet, VecDeque};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    Direction, EtherType, FieldError, PolicyError, Remote, Rule, RuleId,
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

    /// Gives every rule without an id one: that of an equal rule of `old`
    /// (the group as it was) whose id no rule here holds, else a new one
    /// from `fresh` that neither holds.
    pub fn give_rule_ids(&mut self, old: Option<&Group>, mut fresh: impl FnMut() -> u64) {
        let old_rules = old.map_or(&[][..], |g| &g.rules[..]);
        let held: HashSet<&RuleId> = self.rules.iter().filter_map(|r| r.id.as_ref()).collect();
        // The old ids no rule holds, by their rule's content, first first.
        let mut reusable: HashMap<Rule, VecDeque<RuleId>> = HashMap::new();
        for rule in old_rules {
            if let Some(id) = rule.id.as_ref().filter(|id| !held.contains(id)) {
                let content = Rule {
                    id: None,
                    ..rule.clone()
                };
                reusable.entry(content).or_default().push_back(id.clone());
            }
        }
        let mut taken: HashSet<RuleId> = self
            .rules
            .iter()
            .chain(old_rules)
            .filter_map(|rule| rule.id.clone())
            .collect();
        for rule in self.rules.iter_mut().filter(|rule| rule.id.is_none()) {
            let same = reusable.get_mut(rule).and_then(VecDeque::pop_front);
            rule.id = Some(same.unwrap_or_else(|| {
                loop {
                    let id = RuleId::from_number(fresh());
                    if taken.insert(id.clone()) {
                        break id;
                    }
                }
            }));
        }
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
        let mut ids = std::collections::HashMap::new();
        for (index, rule) in self.rules.iter().enumerate() {
            let at_rule = |error| PolicyError::Rule {
                group: self.name.clone(),
                index,
                error,
            };
            rule.validate().map_err(at_rule)?;
            if let Some(id) = &rule.id
                && let Some(first) = ids.insert(id, index)
            {
                return Err(at_rule(FieldError::new(
                    "id",
                    format!("{id} is rules[{first}]'s id too; ids are unique in a group"),
                )));
            }
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
    fn rules_keep_their_ids_and_new_ones_get_fresh_ones() {
        let mut old = Group::new("web").unwrap();
        let mut numbers = 1..;
        old.give_rule_ids(None, || numbers.next().unwrap());
        let ids: Vec<_> = old.rules.iter().map(|r| r.id.clone().unwrap()).collect();
        assert_eq!(ids, [RuleId::from_number(1), RuleId::from_number(2)]);
        assert_eq!(ids[0].as_str(), "r-000000000001");
        // The same rules without ids, one more, and the first given twice:
        // the equal ones take the old ids once each, the others new ones
        // that no rule had.
        let mut new = Group::new("web").unwrap();
        new.rules.push(new.rules[0].clone());
        new.rules.push(Rule::new(Direction::Ingress));
        let mut numbers = [2, 2, 1, 9, 10].into_iter();
        new.give_rule_ids(Some(&old), || numbers.next().unwrap());
        let got: Vec<_> = new.rules.iter().map(|r| r.id.clone().unwrap()).collect();
        let expected = [1, 2, 9, 10].map(RuleId::from_number);
        assert_eq!(got, expected);
        assert_eq!(new.validate(), Ok(()));
        new.rules[3].id = new.rules[0].id.clone();
        assert_eq!(
            new.validate().unwrap_err().to_string(),
            "group 'web': rules[3]: id: r-000000000001 is rules[0]'s id too; ids are unique in \
             a group"
        );
        for bad in ["r-", "r-XYZ", "7", "r-00000000000000001", "R-1"] {
            let err = bad.parse::<RuleId>().unwrap_err().to_string();
            assert!(err.starts_with("id: '"), "{bad}: {err}");
        }
        assert_eq!("r-0a".parse::<RuleId>().unwrap().as_str(), "r-0a");
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
