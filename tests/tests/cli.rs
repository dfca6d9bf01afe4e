//! `sg-ctl` as users meet it: errors that name what is wrong and how to fix
//! it, exit codes, idempotent attach, and detach leaving nothing behind.

use std::{os::unix::process::CommandExt as _, process::Command};

use anyhow::Result;
use serde_json::Value;
use sg_tests::{Netns, PORT, TestPins, VethPort, require_root, sg_ctl_binary};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_missing_interface_is_named_with_the_fix() {
    require_root!();
    let ns = Netns::new().unwrap();
    let pins = TestPins::new();
    let out = pins
        .sg_ctl(&["--netns", ns.name(), "attach", "nosuch0"])
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let message = stderr(&out);
    assert!(message.contains("'nosuch0' does not exist"), "{message}");
    assert!(message.contains("ip link show"), "{message}");
    assert!(!pins.pins.root().join("maps").exists(), "nothing pinned");
}

#[test]
fn a_missing_namespace_and_an_unattached_port_are_not_found() {
    require_root!();
    let pins = TestPins::new();
    let out = pins
        .sg_ctl(&["--netns", "sg-no-such-netns", "status"])
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("ip netns list"), "{}", stderr(&out));

    let ns = Netns::new().unwrap();
    let out = pins
        .sg_ctl(&["--netns", ns.name(), "detach", "lo"])
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("has no sg filter"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn without_root_it_says_root_is_needed() {
    require_root!();
    let pins = TestPins::new();
    let out = Command::new(sg_ctl_binary())
        .args(["--pin-dir", pins.dir(), "attach", "lo"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("root"), "{}", stderr(&out));
}

#[test]
fn a_malformed_prefix_is_refused_with_the_accepted_forms() {
    require_root!();
    let pins = TestPins::new();
    let out = pins.sg_ctl(&["block", PORT, "198.18.0.300/24"]).unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("2001:db8::/32"), "{}", stderr(&out));
    // Host bits: refused, as in a rule, with the network it may mean.
    let out = pins.sg_ctl(&["block", PORT, "198.18.3.7/16"]).unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("198.18.0.0/16"), "{}", stderr(&out));
}

fn ports(pins: &TestPins) -> Result<Vec<Value>> {
    let status: Value = serde_json::from_str(&pins.sg_ctl_ok(&["-o", "json", "status"])?)?;
    Ok(status.as_array().cloned().unwrap_or_default())
}

#[test]
fn attaching_twice_is_harmless_and_detach_removes_every_pin() {
    require_root!();
    let port = VethPort::new().unwrap();
    let pins = TestPins::new();
    let netns = port.host.name();
    let first = pins.sg_ctl_ok(&["--netns", netns, "attach", PORT]).unwrap();
    assert!(first.contains("attached to port0"), "{first}");
    let again = pins.sg_ctl_ok(&["--netns", netns, "attach", PORT]).unwrap();
    assert!(again.contains("already attached"), "{again}");
    let status = ports(&pins).unwrap();
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!(status[0]["state"], "active");

    pins.sg_ctl_ok(&["--netns", netns, "detach", PORT]).unwrap();
    assert!(ports(&pins).unwrap().is_empty());
    let left: Vec<_> = std::fs::read_dir(pins.pins.root())
        .map(|dir| dir.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_port_whose_interface_went_away_can_be_attached_anew() {
    require_root!();
    let port = VethPort::new().unwrap();
    let pins = TestPins::new();
    let netns = port.host.name();
    pins.sg_ctl_ok(&["--netns", netns, "attach", PORT]).unwrap();
    port.host.ip(&["link", "del", PORT]).unwrap();
    assert_eq!(ports(&pins).unwrap()[0]["state"], "interface-gone");

    port.host
        .ip(&["link", "add", PORT, "type", "veth", "peer", "name", "eth1"])
        .unwrap();
    let out = pins.sg_ctl_ok(&["--netns", netns, "attach", PORT]).unwrap();
    assert!(out.contains("attached to port0"), "{out}");
    let status = ports(&pins).unwrap();
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!(status[0]["state"], "active");

    let out = pins.sg_ctl_ok(&["detach", "--all"]).unwrap();
    assert!(out.contains("detached 1 port"), "{out}");
}

#[test]
fn port_security_input_is_checked_before_anything_is_written() {
    require_root!();
    let port = VethPort::new().unwrap();
    let pins = TestPins::new();
    let netns = port.host.name();
    pins.sg_ctl_ok(&["--netns", netns, "attach", PORT]).unwrap();
    let set = |args: &[&str]| {
        let mut all = vec!["--netns", netns, "port-security", PORT];
        all.extend_from_slice(args);
        pins.sg_ctl(&all)
    };
    for (args, names) in [
        (&["--mac", "52:54:00:12:34"][..], "six hex bytes"),
        (
            &["--mac", "01:00:5e:00:00:01"],
            "mac: 01:00:5e:00:00:01 is not a unicast address",
        ),
        (
            &["--mac", "52:54:00:12:34:56", "--ip", "198.18.0.256"],
            "198.18.0.256",
        ),
        (
            &[
                "--mac",
                "52:54:00:12:34:56",
                "--allowed-pair",
                "198.18.0.1/24",
            ],
            "did you mean 198.18.0.0/24",
        ),
        (
            &[
                "--mac",
                "52:54:00:12:34:56",
                "--allowed-pair",
                "198.18.0.9,52:54",
            ],
            "six hex bytes",
        ),
        (
            &["--off", "--mac", "52:54:00:12:34:56"],
            "cannot be used with",
        ),
        (&[], "--mac"),
    ] {
        let out = set(args).unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(names), "{args:?}: {}", stderr(&out));
    }
    let security = &ports(&pins).unwrap()[0]["port_security"];
    assert_eq!(security["enabled"], false, "nothing written: {security}");

    let out = pins
        .sg_ctl(&["--netns", netns, "port-security", "eth9", "--off"])
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = pins.sg_ctl(&["--netns", netns, "stats", "eth9"]).unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    let out = set(&[
        "--mac",
        "52:54:00:12:34:56",
        "--ip",
        "198.18.0.2",
        "--allow-vlan",
    ])
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let status = pins.sg_ctl_ok(&["--netns", netns, "status"]).unwrap();
    assert!(
        status.contains("port security: on, macs 52:54:00:12:34:56, allows vlan tags"),
        "{status}"
    );
    assert!(
        status.contains("owns 198.18.0.2/32 with 52:54:00:12:34:56"),
        "{status}"
    );
    assert!(
        status.contains("owns fe80::5054:ff:fe12:3456/128"),
        "{status}"
    );
}
