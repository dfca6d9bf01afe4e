//! A container's sg port as the plugins before sg-cni made it: from their
//! result, the host side of the veth, the container's MAC and addresses;
//! the port's name, and its groups from the configuration or the runtime.

use std::{net::IpAddr, path::Path};

use sg_core::model::{DEFAULT_GROUP, MacAddr, Port, check_name};
use sha2::{Digest as _, Sha256};

use crate::spec::{Code, Error, PrevResult};

/// The interface a container's port filters, and what the container is.
#[derive(Debug, PartialEq, Eq)]
pub struct Workload {
    /// The host side of the container's veth, in the plugin's namespace.
    pub host_side: String,
    pub mac: MacAddr,
    pub ips: Vec<IpAddr>,
}

impl Workload {
    /// Reads a result of bridge (`[bridge, host veth, container's]`) or ptp
    /// (`[host veth, container's]`): the container's interface is the one
    /// in `netns` named `ifname`, the host side the one interface without
    /// a sandbox that `is_bridge` does not call a bridge.
    pub fn from_result(
        result: &PrevResult,
        netns: &str,
        ifname: &str,
        is_bridge: impl Fn(&str) -> bool,
    ) -> Result<Self, Error> {
        let invalid = |msg: String, details: &str| Error::new(Code::InvalidConfig, msg, details);
        let listed = || {
            let names: Vec<String> = result
                .interfaces
                .iter()
                .map(|i| match i.sandbox.as_deref().filter(|s| !s.is_empty()) {
                    Some(sandbox) => format!("{} in {sandbox}", i.name),
                    None => i.name.clone(),
                })
                .collect();
            format!("it has {}", names.join(", "))
        };
        let (index, container) = result
            .interfaces
            .iter()
            .enumerate()
            .find(|(_, i)| i.sandbox.as_deref() == Some(netns) && i.name == ifname)
            .ok_or_else(|| {
                invalid(
                    format!("prevResult has no interface {ifname} in {netns}"),
                    &format!(
                        "{}; sg-cni runs after bridge or ptp, which make it",
                        listed()
                    ),
                )
            })?;
        let mac = container.mac.ok_or_else(|| {
            invalid(
                format!("prevResult gives no MAC for {ifname}"),
                "port security needs the container's MAC; bridge and ptp give it",
            )
        })?;
        let host: Vec<&str> = result
            .interfaces
            .iter()
            .filter(|i| i.sandbox.as_deref().is_none_or(str::is_empty))
            .map(|i| i.name.as_str())
            .filter(|name| !is_bridge(name))
            .collect();
        let [host_side] = host[..] else {
            return Err(invalid(
                format!("cannot tell the host side of {ifname}'s veth"),
                &format!(
                    "{}; sg-cni needs one host interface that is not a bridge, and runs in the \
                     namespace where bridge or ptp made it",
                    listed()
                ),
            ));
        };
        let ips = result
            .ips
            .iter()
            .filter(|ip| ip.interface.is_none_or(|i| i == index))
            .map(|ip| ip.addr())
            .collect();
        Ok(Self {
            host_side: host_side.to_string(),
            mac,
            ips,
        })
    }

    /// The sg port of the workload, in `netns` (an `ip netns` name, `None`
    /// for the daemon's own namespace).
    pub fn port(&self, name: String, groups: Vec<String>, netns: Option<String>) -> Port {
        Port {
            ips: self.ips.clone(),
            groups,
            netns,
            ..Port::new(name, self.host_side.as_str(), self.mac)
        }
    }

    /// What differs between the port the daemon has and the workload's, in
    /// words; nothing when it is the workload's.
    pub fn differences(&self, port: &Port, netns: Option<&str>) -> Vec<String> {
        let mut found = Vec::new();
        if port.ifname != self.host_side {
            found.push(format!(
                "it is on {}, not on {}",
                port.ifname, self.host_side
            ));
        }
        if port.netns.as_deref() != netns {
            let place = |netns: Option<&str>| netns.unwrap_or("the daemon's namespace").to_string();
            found.push(format!(
                "it is in {}, not in {}",
                place(port.netns.as_deref()),
                place(netns)
            ));
        }
        if port.mac != self.mac {
            found.push(format!("its MAC is {}, not {}", port.mac, self.mac));
        }
        let (mut have, mut want) = (port.ips.clone(), self.ips.clone());
        have.sort();
        want.sort();
        if have != want {
            found.push(format!("its IPs are {have:?}, not {want:?}"));
        }
        found
    }
}

/// Whether an interface of the plugin's namespace is a bridge (sysfs shows
/// the namespace the plugin runs in, as `ip netns exec` and runtimes mount
/// it).
pub fn is_bridge(name: &str) -> bool {
    Path::new("/sys/class/net")
        .join(name)
        .join("bridge")
        .exists()
}

/// The port of a container's interface: `cni-`, the container id's first
/// 12 characters, the interface, and 8 hex digits of a digest of both, so
/// that ids alike in their first characters never share a name. Stable
/// (DEL and CHECK find it again) and within sg's name rules.
pub fn port_name(container_id: &str, ifname: &str) -> String {
    // Neither a container id nor an interface name holds '/'.
    let digest = Sha256::digest(format!("{container_id}/{ifname}"));
    let short = |text: &str, most: usize| -> String {
        text.chars()
            .take(most)
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!(
        "cni-{}-{}-{:02x}{:02x}{:02x}{:02x}",
        short(container_id, 12),
        short(ifname, 15),
        digest[0],
        digest[1],
        digest[2],
        digest[3]
    )
}

/// `CNI_ARGS`' key that names a container's groups: `SG_GROUPS=web,db`.
pub const GROUPS_ARG: &str = "SG_GROUPS";

/// The port's groups, from the first that names them: `SG_GROUPS` in
/// `CNI_ARGS` (the container's own), the network configuration's
/// `groups`, else `default`. Other keys of `CNI_ARGS` are the runtime's
/// (`K8S_POD_NAME`, `IgnoreUnknown`, …) and left alone.
pub fn groups(configured: Option<&[String]>, cni_args: &str) -> Result<Vec<String>, Error> {
    let mut from_args = None;
    for pair in cni_args.split(';').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            Error::new(
                Code::InvalidEnvironment,
                format!("CNI_ARGS: '{pair}' is not KEY=VALUE"),
                "CNI_ARGS holds KEY=VALUE pairs separated by ';', e.g. SG_GROUPS=web,db",
            )
        })?;
        if key == GROUPS_ARG {
            from_args = Some(value);
        }
    }
    let (groups, source, code): (Vec<String>, _, _) = match (from_args, configured) {
        (Some(value), _) => (
            value
                .split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(String::from)
                .collect(),
            "CNI_ARGS' SG_GROUPS",
            Code::InvalidEnvironment,
        ),
        (None, Some(groups)) => (groups.to_vec(), "\"groups\"", Code::InvalidConfig),
        (None, None) => return Ok(vec![DEFAULT_GROUP.to_string()]),
    };
    if groups.is_empty() {
        return Err(Error::new(
            code,
            format!("{source} names no group"),
            "name one or more groups, or leave it out for the network's (or default)",
        ));
    }
    for group in &groups {
        check_name("groups", group)
            .map_err(|e| Error::new(code, format!("{source}: a group name"), e.to_string()))?;
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// bridge's result for a container in /run/netns/c1, as Recipe 2d shows.
    fn bridge_result() -> PrevResult {
        serde_json::from_value(json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni-t0", "mac": "52:24:a5:fd:ec:29"},
                {"name": "veth1bd43ed8", "mac": "6a:0f:24:3e:50:5d"},
                {"name": "eth0", "mac": "36:ff:94:e8:ec:15", "sandbox": "/run/netns/c1"}
            ],
            "ips": [{"interface": 2, "address": "198.18.60.2/24", "gateway": "198.18.60.1"},
                    {"interface": 2, "address": "2001:db8:60::2/64"}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        }))
        .unwrap()
    }

    #[test]
    fn the_host_side_mac_and_ips_come_from_bridges_result() {
        let workload =
            Workload::from_result(&bridge_result(), "/run/netns/c1", "eth0", |n| n == "cni-t0")
                .unwrap();
        assert_eq!(
            workload,
            Workload {
                host_side: "veth1bd43ed8".into(),
                mac: "36:ff:94:e8:ec:15".parse().unwrap(),
                ips: vec![
                    "198.18.60.2".parse().unwrap(),
                    "2001:db8:60::2".parse().unwrap()
                ],
            }
        );
        let port = workload.port("p".into(), vec!["web".into()], None);
        port.validate().unwrap();
        assert!(workload.differences(&port, None).is_empty());
        let moved = Port {
            ifname: "other".into(),
            ..port.clone()
        };
        assert_eq!(
            workload.differences(&moved, None),
            ["it is on other, not on veth1bd43ed8"]
        );
        assert_eq!(
            workload.differences(&port, Some("h1")),
            ["it is in the daemon's namespace, not in h1"]
        );
    }

    #[test]
    fn a_result_that_does_not_tell_the_interfaces_is_refused() {
        let result = bridge_result();
        // Another container's namespace, another name.
        for (netns, ifname) in [("/run/netns/c2", "eth0"), ("/run/netns/c1", "eth1")] {
            let error =
                Workload::from_result(&result, netns, ifname, |n| n == "cni-t0").unwrap_err();
            assert_eq!(error.code, Code::InvalidConfig);
            assert!(error.details.contains("eth0 in /run/netns/c1"), "{error:?}");
        }
        // Where the bridge cannot be told (sysfs of another namespace).
        let error = Workload::from_result(&result, "/run/netns/c1", "eth0", |_| false).unwrap_err();
        assert!(error.msg.contains("host side"), "{error:?}");

        // ptp: the host veth alone, and a 0.4.0 result.
        let ptp: PrevResult = serde_json::from_value(json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "veth9", "mac": "6a:0f:24:3e:50:5d"},
                           {"name": "eth0", "mac": "36:ff:94:e8:ec:15", "sandbox": "/run/netns/c1"}],
            "ips": [{"version": "4", "interface": 1, "address": "198.18.61.2/24"}]
        }))
        .unwrap();
        let workload = Workload::from_result(&ptp, "/run/netns/c1", "eth0", |_| false).unwrap();
        assert_eq!(workload.host_side, "veth9");
        assert_eq!(workload.ips, ["198.18.61.2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn port_names_are_stable_valid_and_apart() {
        let long = "0123456789abcdef".repeat(4);
        let name = port_name(&long, "eth0");
        assert_eq!(name, port_name(&long, "eth0"));
        assert!(name.starts_with("cni-0123456789ab-eth0-"), "{name}");
        let others = [
            port_name(&long, "eth1"),
            port_name(&format!("{long}0"), "eth0"),
            port_name("a", "b-eth0"),
            port_name("a-b", "eth0"),
        ];
        for other in &others {
            assert_ne!(&name, other);
        }
        assert_ne!(others[2], others[3]);
        for name in others.iter().chain([&name, &port_name("_x", "eth0@1")]) {
            check_name("name", name).unwrap();
        }
    }

    #[test]
    fn groups_come_from_the_args_then_the_configuration_then_default() {
        let web = ["web".to_string()];
        assert_eq!(groups(None, "").unwrap(), ["default"]);
        assert_eq!(groups(Some(&web), "IgnoreUnknown=1").unwrap(), ["web"]);
        assert_eq!(
            groups(Some(&web), "K8S_POD_NAME=x;SG_GROUPS=db, web;").unwrap(),
            ["db", "web"]
        );
        for (configured, args, code) in [
            (None, "SG_GROUPS", Code::InvalidEnvironment),
            (None, "SG_GROUPS=", Code::InvalidEnvironment),
            (None, "SG_GROUPS=we b", Code::InvalidEnvironment),
            (Some(&[][..]), "", Code::InvalidConfig),
            (Some(&["-web".to_string()][..]), "", Code::InvalidConfig),
        ] {
            assert_eq!(groups(configured, args).unwrap_err().code, code, "{args}");
        }
    }
}
