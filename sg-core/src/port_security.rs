//! Port security of one port, compiled: the MACs it may send from and
//! receive at, the addresses it owns with the MACs that may use them, and
//! its flags, as the datapath's `SG_PORT_SECURITY` and `SG_OWNED` hold
//! them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv6Addr},
};

use ipnet::IpNet;
use sg_common::{
    MAX_ADDRESS_MACS, MAX_PORT_MACS, NO_MAC, OwnedMacs, PORTSEC_ALLOW_MULTICAST,
    PORTSEC_ALLOW_VLAN, PORTSEC_ENABLED, PortSecurityConfig, mac_word,
};

use crate::model::{AddressPair, FieldError, MacAddr, Port, check_cidr};

/// What port security enforces on one port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSecurity {
    /// Off: no anti-spoofing at all (the group policy still applies), like
    /// OpenStack's `port_security_enabled=false`.
    pub enabled: bool,
    /// The workload's MAC address.
    pub mac: MacAddr,
    /// Its fixed IPs.
    pub ips: Vec<IpAddr>,
    /// Further addresses or prefixes it may send from, each with the MAC it
    /// uses for them if not the port's.
    pub allowed_address_pairs: Vec<AddressPair>,
    /// 802.1Q/802.1ad tagged frames may leave the workload.
    pub allow_vlan: bool,
    /// Any broadcast and multicast may leave the workload.
    pub allow_multicast: bool,
}

impl PortSecurity {
    /// Port security off.
    pub const OFF: PortSecurity = PortSecurity {
        enabled: false,
        mac: MacAddr([0; 6]),
        ips: Vec::new(),
        allowed_address_pairs: Vec::new(),
        allow_vlan: false,
        allow_multicast: false,
    };

    /// The port security of a port of the model: its MAC, fixed IPs,
    /// allowed address pairs and switches.
    pub fn from_port(port: &Port) -> PortSecurity {
        PortSecurity {
            enabled: port.port_security,
            mac: port.mac,
            ips: port.ips.clone(),
            allowed_address_pairs: port.allowed_address_pairs.clone(),
            allow_vlan: port.allow_vlan,
            allow_multicast: port.allow_multicast,
        }
    }

    /// The map entries, after checking every field: the configuration and
    /// the owned prefixes, each with every MAC that may use it (those of
    /// the configured prefixes that contain it, since the datapath only
    /// sees the longest).
    pub fn compile(&self) -> Result<CompiledPortSecurity, FieldError> {
        if !self.enabled {
            return Ok(CompiledPortSecurity {
                config: PortSecurityConfig::OFF,
                owned: Vec::new(),
            });
        }
        let unicast = |field, mac: MacAddr| {
            if mac.is_unicast() {
                Ok(mac)
            } else {
                Err(FieldError::new(
                    field,
                    format!("{mac} is not a unicast address; use one such as 52:54:00:12:34:56"),
                ))
            }
        };
        let mut macs = vec![unicast("mac", self.mac)?];
        let mut claims: BTreeMap<IpNet, BTreeSet<MacAddr>> = BTreeMap::new();
        for ip in &self.ips {
            claims.entry(IpNet::from(*ip)).or_default().insert(self.mac);
        }
        for pair in &self.allowed_address_pairs {
            check_cidr(&pair.ip)
                .map_err(|message| FieldError::new("allowed_address_pairs", message))?;
            let mac = match pair.mac {
                Some(mac) => unicast("allowed_address_pairs", mac)?,
                None => self.mac,
            };
            if !macs.contains(&mac) {
                macs.push(mac);
            }
            claims.entry(pair.ip).or_default().insert(mac);
        }
        if macs.len() > MAX_PORT_MACS {
            return Err(FieldError::new(
                "allowed_address_pairs",
                format!(
                    "the port would send from {} MAC addresses; use at most {MAX_PORT_MACS}, \
                     its own included",
                    macs.len()
                ),
            ));
        }
        // Each MAC's IPv6 link-local address (EUI-64), for neighbour
        // discovery and DHCPv6.
        for &mac in &macs {
            claims
                .entry(IpNet::from(IpAddr::V6(link_local(mac))))
                .or_default()
                .insert(mac);
        }
        let mut owned = Vec::with_capacity(claims.len());
        for prefix in claims.keys() {
            let users: BTreeSet<MacAddr> = claims
                .iter()
                .filter(|(outer, _)| outer.contains(prefix))
                .flat_map(|(_, macs)| macs.iter().copied())
                .collect();
            if users.len() > MAX_ADDRESS_MACS {
                return Err(FieldError::new(
                    "allowed_address_pairs",
                    format!(
                        "{prefix} would be used with {} MAC addresses; one address may have \
                         at most {MAX_ADDRESS_MACS}",
                        users.len()
                    ),
                ));
            }
            owned.push((
                *prefix,
                OwnedMacs {
                    macs: mac_list(users),
                },
            ));
        }
        let mut flags = PORTSEC_ENABLED;
        if self.allow_vlan {
            flags |= PORTSEC_ALLOW_VLAN;
        }
        if self.allow_multicast {
            flags |= PORTSEC_ALLOW_MULTICAST;
        }
        Ok(CompiledPortSecurity {
            config: PortSecurityConfig {
                macs: mac_list(macs),
                flags,
                _pad: 0,
            },
            owned,
        })
    }
}

/// `MacAddr`s as the datapath's fixed-size list, unused entries `NO_MAC`.
fn mac_list<const N: usize>(macs: impl IntoIterator<Item = MacAddr>) -> [u64; N] {
    let mut out = [NO_MAC; N];
    for (slot, mac) in out.iter_mut().zip(macs) {
        *slot = mac_word(mac.0);
    }
    out
}

fn mac_of(word: u64) -> MacAddr {
    let bytes = word.to_le_bytes();
    MacAddr([bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5]])
}

/// The MACs of the datapath's fixed-size list.
pub fn macs_of(words: &[u64]) -> Vec<MacAddr> {
    words
        .iter()
        .filter(|&&word| word != NO_MAC)
        .map(|&word| mac_of(word))
        .collect()
}

/// The IPv6 link-local address a MAC gives an interface (RFC 4291, EUI-64).
pub fn link_local(mac: MacAddr) -> Ipv6Addr {
    let [a, b, c, d, e, f] = mac.0;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        a ^ 0x02,
        b,
        c,
        0xff,
        0xfe,
        d,
        e,
        f,
    ])
}

/// A port's port security as the maps hold it.
#[derive(Debug)]
pub struct CompiledPortSecurity {
    /// `SG_PORT_SECURITY`'s entry for the port.
    pub config: PortSecurityConfig,
    /// `SG_OWNED`'s entries: each owned prefix with the MACs that may use
    /// it.
    pub owned: Vec<(IpNet, OwnedMacs)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(text: &str) -> MacAddr {
        text.parse().unwrap()
    }

    fn security() -> PortSecurity {
        PortSecurity {
            enabled: true,
            mac: mac("02:00:00:00:00:01"),
            ips: vec![
                "198.18.0.2".parse().unwrap(),
                "2001:db8::2".parse().unwrap(),
            ],
            ..PortSecurity::OFF
        }
    }

    fn owned(compiled: &CompiledPortSecurity) -> Vec<(String, Vec<MacAddr>)> {
        compiled
            .owned
            .iter()
            .map(|(prefix, macs)| (prefix.to_string(), macs_of(&macs.macs)))
            .collect()
    }

    #[test]
    fn owns_fixed_ips_and_the_link_local_address_with_the_port_mac() {
        let compiled = security().compile().unwrap();
        let port = mac("02:00:00:00:00:01");
        assert_eq!(
            owned(&compiled),
            [
                ("198.18.0.2/32".to_string(), vec![port]),
                ("2001:db8::2/128".to_string(), vec![port]),
                ("fe80::ff:fe00:1/128".to_string(), vec![port]),
            ]
        );
        assert_eq!(macs_of(&compiled.config.macs), [port]);
        assert_eq!(compiled.config.flags, PORTSEC_ENABLED);
    }

    #[test]
    fn link_local_addresses_flip_the_universal_bit() {
        assert_eq!(
            link_local(mac("52:54:00:12:34:56")).to_string(),
            "fe80::5054:ff:fe12:3456"
        );
    }

    #[test]
    fn a_prefix_inside_a_pair_may_also_use_the_pair_mac() {
        let mut security = security();
        security.allowed_address_pairs = vec![
            "198.18.0.0/24,02:00:00:00:00:05".parse().unwrap(),
            "198.18.0.10".parse().unwrap(),
        ];
        let compiled = security.compile().unwrap();
        let (port, pair) = (mac("02:00:00:00:00:01"), mac("02:00:00:00:00:05"));
        let owned = owned(&compiled);
        assert!(owned.contains(&("198.18.0.0/24".to_string(), vec![pair])));
        assert!(owned.contains(&("198.18.0.2/32".to_string(), vec![port, pair])));
        assert!(owned.contains(&("198.18.0.10/32".to_string(), vec![port, pair])));
        // The pair's MAC gets its own link-local address.
        assert!(owned.contains(&("fe80::ff:fe00:5/128".to_string(), vec![pair])));
        assert_eq!(macs_of(&compiled.config.macs), [port, pair]);
    }

    #[test]
    fn a_model_port_gives_its_mac_addresses_pairs_and_switch() {
        let mut port = Port::new("vm1", "tap1", mac("52:54:00:12:34:56"));
        port.ips = vec!["198.18.0.2".parse().unwrap()];
        port.allowed_address_pairs = vec!["198.18.0.100".parse().unwrap()];
        let security = PortSecurity::from_port(&port);
        assert!(security.enabled);
        assert_eq!(security.mac, port.mac);
        assert_eq!(security.ips, port.ips);
        assert_eq!(security.allowed_address_pairs, port.allowed_address_pairs);
        assert!(!security.allow_vlan && !security.allow_multicast);
        (port.allow_vlan, port.allow_multicast) = (true, true);
        let security = PortSecurity::from_port(&port);
        assert!(security.allow_vlan && security.allow_multicast);
        port.port_security = false;
        assert!(!PortSecurity::from_port(&port).enabled);
    }

    #[test]
    fn off_writes_nothing_to_own() {
        let mut security = security();
        security.enabled = false;
        let compiled = security.compile().unwrap();
        assert!(compiled.owned.is_empty());
        assert_eq!(compiled.config, PortSecurityConfig::OFF);
    }

    #[test]
    fn flags_follow_the_switches() {
        let mut security = security();
        security.allow_vlan = true;
        security.allow_multicast = true;
        assert_eq!(
            security.compile().unwrap().config.flags,
            PORTSEC_ENABLED | PORTSEC_ALLOW_VLAN | PORTSEC_ALLOW_MULTICAST
        );
    }

    #[test]
    fn errors_name_the_field_and_the_fix() {
        let mut bad = security();
        bad.mac = mac("01:00:5e:00:00:01");
        let err = bad.compile().unwrap_err();
        assert_eq!(err.field, "mac");
        assert!(err.message.contains("not a unicast address"), "{err}");

        let mut bad = security();
        bad.allowed_address_pairs = (1..=8)
            .map(|i| {
                format!("198.18.1.{i},02:00:00:00:01:{i:02x}")
                    .parse()
                    .unwrap()
            })
            .collect();
        let err = bad.compile().unwrap_err();
        assert_eq!(err.field, "allowed_address_pairs");
        assert!(err.message.contains("9 MAC addresses"), "{err}");

        let mut bad = security();
        bad.allowed_address_pairs = (1..=4)
            .map(|i| {
                format!("198.18.0.0/{},02:00:00:00:01:0{i}", 20 + i)
                    .parse()
                    .unwrap()
            })
            .collect();
        let err = bad.compile().unwrap_err();
        assert!(
            err.message.contains("198.18.0.2/32 would be used with 5"),
            "{err}"
        );
    }
}
