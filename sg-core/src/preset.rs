//! Presets: names for the rules people write most (`ssh`, `https`, ...),
//! expanded into ordinary rules before they reach a group, so a preset
//! never means anything the rule model cannot say.

use crate::model::{EtherType, FieldError, IcmpMatch, IpProtocol, PortSpec, Remote, Rule};

/// What one rule of a preset matches.
struct Match {
    protocol: IpProtocol,
    ports: &'static str,
    icmp_type: Option<u8>,
}

const fn tcp(ports: &'static str) -> Match {
    Match {
        protocol: IpProtocol::TCP,
        ports,
        icmp_type: None,
    }
}

const fn udp(ports: &'static str) -> Match {
    Match {
        protocol: IpProtocol::UDP,
        ports,
        icmp_type: None,
    }
}

const fn icmp(protocol: IpProtocol, type_: u8) -> Match {
    Match {
        protocol,
        ports: "any",
        icmp_type: Some(type_),
    }
}

/// A named set of rules.
pub struct Preset {
    pub name: &'static str,
    pub description: &'static str,
    matches: &'static [Match],
}

/// Every preset, as `sg-ctl rule add --preset` accepts them.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "ping",
        description: "ICMP echo request (IPv4) and ICMPv6 echo request (IPv6)",
        matches: &[icmp(IpProtocol::ICMP, 8), icmp(IpProtocol::IPV6_ICMP, 128)],
    },
    Preset {
        name: "ssh",
        description: "SSH, tcp 22",
        matches: &[tcp("22")],
    },
    Preset {
        name: "rdp",
        description: "Remote Desktop, tcp and udp 3389",
        matches: &[tcp("3389"), udp("3389")],
    },
    Preset {
        name: "http",
        description: "HTTP, tcp 80",
        matches: &[tcp("80")],
    },
    Preset {
        name: "https",
        description: "HTTPS, tcp 443, and HTTP/3, udp 443",
        matches: &[tcp("443"), udp("443")],
    },
    Preset {
        name: "web",
        description: "HTTP and HTTPS, tcp 80 and 443, udp 443",
        matches: &[tcp("80,443"), udp("443")],
    },
    Preset {
        name: "dns",
        description: "DNS, udp and tcp 53",
        matches: &[udp("53"), tcp("53")],
    },
    Preset {
        name: "ntp",
        description: "NTP, udp 123",
        matches: &[udp("123")],
    },
    Preset {
        name: "smtp",
        description: "mail: SMTP tcp 25, submission 587, SMTPS 465",
        matches: &[tcp("25,465,587")],
    },
    Preset {
        name: "mysql",
        description: "MySQL and MariaDB, tcp 3306",
        matches: &[tcp("3306")],
    },
    Preset {
        name: "postgresql",
        description: "PostgreSQL, tcp 5432",
        matches: &[tcp("5432")],
    },
];

/// The rules of preset `name`, each `template` with the preset's protocol,
/// ports and ICMP type. A rule whose protocol exists in one family only
/// (ping's ICMP and ICMPv6) keeps the template's remote CIDRs of that family
/// and is left out when there are none.
pub fn expand(name: &str, template: &Rule) -> Result<Vec<Rule>, FieldError> {
    let preset = PRESETS
        .iter()
        .find(|preset| preset.name.eq_ignore_ascii_case(name.trim()))
        .ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|preset| preset.name).collect();
            FieldError::new(
                "preset",
                format!(
                    "no preset named {}; use one of {}",
                    crate::text::Quoted(name),
                    names.join(", ")
                ),
            )
        })?;
    let mut rules = Vec::new();
    for m in preset.matches {
        let family = m.protocol.ethertype();
        let Some(ethertype) = template.ethertype.intersect(family) else {
            continue;
        };
        let remote = match &template.remote {
            Remote::Cidrs(nets) => {
                let nets: Vec<_> = nets
                    .iter()
                    .filter(|net| family.contains(EtherType::of(net.addr())))
                    .copied()
                    .collect();
                if nets.is_empty() {
                    continue;
                }
                Remote::Cidrs(nets)
            }
            other => other.clone(),
        };
        rules.push(Rule {
            ethertype,
            protocol: m.protocol.into(),
            ports: m.ports.parse::<PortSpec>()?,
            icmp: IcmpMatch {
                type_: m.icmp_type,
                code: None,
            },
            remote,
            description: if template.description.is_empty() {
                preset.name.to_string()
            } else {
                template.description.clone()
            },
            ..template.clone()
        });
    }
    if rules.is_empty() {
        return Err(FieldError::new(
            "preset",
            format!(
                "{name} gives no rule for ethertype {} and this remote; \
                 widen the ethertype or the remote",
                template.ethertype
            ),
        ));
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Direction;

    #[test]
    fn presets_expand_to_valid_rules() {
        let template = Rule {
            remote: "203.0.113.0/24,2001:db8::/32".parse().unwrap(),
            ..Rule::new(Direction::Ingress)
        };
        for preset in PRESETS {
            let rules = expand(preset.name, &template).unwrap();
            assert!(!rules.is_empty());
            for rule in &rules {
                assert_eq!(rule.validate(), Ok(()), "{}", preset.name);
            }
        }
        let ssh = expand("SSH", &template).unwrap();
        assert_eq!(ssh.len(), 1);
        assert_eq!(ssh[0].ports.to_string(), "22");
        assert_eq!(ssh[0].description, "ssh");
    }

    #[test]
    fn ping_keeps_the_remotes_of_each_family() {
        let template = Rule {
            remote: "203.0.113.0/24".parse().unwrap(),
            ..Rule::new(Direction::Ingress)
        };
        let rules = expand("ping", &template).unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].protocol.to_string(), "icmp");
        assert_eq!(rules[0].icmp.type_, Some(8));
        let any = expand("ping", &Rule::new(Direction::Ingress)).unwrap();
        assert_eq!(any.len(), 2);
        let v6 = Rule {
            ethertype: EtherType::Ipv6,
            remote: "203.0.113.0/24".parse().unwrap(),
            ..Rule::new(Direction::Ingress)
        };
        assert!(expand("ping", &v6).is_err());
        assert_eq!(
            expand("telnet", &template).unwrap_err().to_string(),
            "preset: no preset named 'telnet'; use one of ping, ssh, rdp, http, https, web, \
             dns, ntp, smtp, mysql, postgresql"
        );
    }
}
