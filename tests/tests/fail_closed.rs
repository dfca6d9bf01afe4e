//! Failing closed through the daemon: a change whose policies would not fit
//! the maps is refused as a whole, naming the map, what it needs and holds,
//! and the rule that needs the most, and every port keeps its policy; a
//! port whose install the kernel refuses keeps its previous one; deleting a
//! port removes its programs whatever its state.

use std::{
    fs,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::maps::{LpmTrie, MapData, lpm_trie::Key};
use serde_json::{Value, json};
use sg_common::{Class, RemoteKey, SCOPE_BITS, Scope, map_names};
use sg_tests::{Netns, TestDaemon, require_root};

/// A document of group `web` (ingress TCP 80 from `remotes`, egress all)
/// on the ports `vm0`… on the interfaces `d0`… of `ns`.
fn document(ns: &Netns, ports: usize, remotes: &[String]) -> Value {
    let ports: Vec<Value> = (0..ports)
        .map(|i| {
            json!({
                "name": format!("vm{i}"),
                "ifname": format!("d{i}"),
                "netns": ns.name(),
                "mac": format!("52:54:00:00:00:{:02x}", i + 1),
                "ips": [format!("198.18.0.{}", i + 10)],
                "groups": ["web"],
            })
        })
        .collect();
    json!({
        "groups": [{"name": "web", "rules": [
            {"direction": "ingress", "protocol": "tcp", "ports": 80, "remote": remotes},
            {"direction": "egress"},
        ]}],
        "ports": ports,
    })
}

/// `count` single addresses from 198.19.0.1.
fn hosts(count: u32) -> Vec<String> {
    (1..=count)
        .map(|i| std::net::Ipv4Addr::from(u32::from_be_bytes([198, 19, 0, 0]) + i).to_string())
        .collect()
}

/// Applies a document; the command's output.
fn apply(d: &TestDaemon, document: &Value) -> std::process::Output {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("sg-fail-closed-{}-{n}.json", std::process::id()));
    fs::write(&path, document.to_string()).unwrap();
    let out = d.sg_ctl(&["apply", "-f", path.to_str().unwrap()]).unwrap();
    fs::remove_file(&path).unwrap();
    out
}

/// Each port's state and policy id.
fn ports(d: &TestDaemon) -> Vec<(String, String, Option<u64>)> {
    let list = d.json(&["port", "list"]).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|view| {
            (
                view["spec"]["name"].as_str().unwrap().to_string(),
                view["status"]["state"].as_str().unwrap().to_string(),
                view["policy_id"].as_u64(),
            )
        })
        .collect()
}

#[test]
fn a_policy_that_does_not_fit_is_refused_whole_and_every_port_keeps_its_own() {
    require_root!();
    let d = TestDaemon::start_with(&["--map-size", "SG_REMOTE_EXACT=1000"]).unwrap();
    let ns = Netns::with_interfaces(5).unwrap();
    let out = apply(&d, &document(&ns, 5, &hosts(10)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = ports(&d);
    assert!(
        before.iter().all(|(_, state, _)| state == "active"),
        "{before:?}"
    );
    let exported = d.json(&["export"]).unwrap();

    // 300 addresses on 5 ports: 1500 entries of a map of 1000.
    let out = apply(&d, &document(&ns, 5, &hosts(300)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for part in [
        "SG_REMOTE_EXACT would need ",
        "entries and holds 1000",
        "group 'web' rule 0 has 300 single remote addresses, on 5 port(s)",
        "--map-size SG_REMOTE_EXACT=",
    ] {
        assert!(stderr.contains(part), "{part}: {stderr}");
    }
    assert_eq!(ports(&d), before, "every port keeps its policy");
    assert_eq!(
        d.json(&["export"]).unwrap(),
        exported,
        "nothing was written"
    );
}

/// Fills the pinned `SG_REMOTE` of the daemon with entries of a policy id
/// no port has, as if the kernel had no room left.
fn fill_remote(d: &TestDaemon) {
    let mut map: LpmTrie<MapData, RemoteKey, Class> = d.pins.pins.open(map_names::REMOTE).unwrap();
    let class = Class {
        best: 0,
        class: 0,
        pair: Class::NO_PAIR,
        pair_best: 0,
    };
    for i in 0u32.. {
        let key = RemoteKey {
            scope: Scope {
                policy: u32::MAX - 1,
                local_class: 0,
                direction: 0,
                family: 0,
            },
            addr: {
                let mut addr = [0u8; 16];
                addr[12..].copy_from_slice(&i.to_be_bytes());
                addr
            },
        };
        if map
            .insert(&Key::new(SCOPE_BITS + 128, key), class, 0)
            .is_err()
        {
            break;
        }
    }
}

#[test]
fn a_refused_install_keeps_the_previous_policy_and_delete_removes_the_programs() {
    require_root!();
    let d = TestDaemon::start_with(&[
        "--map-size",
        "SG_REMOTE=1000",
        "--map-size",
        "SG_REMOTE_EXACT=1000",
    ])
    .unwrap();
    let ns = Netns::with_interfaces(2).unwrap();
    let out = apply(&d, &document(&ns, 1, &hosts(10)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = ports(&d);
    fill_remote(&d);

    // vm0 changes, vm1 is new: the kernel takes neither's entries.
    let out = apply(&d, &document(&ns, 2, &hosts(20)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = ports(&d);
    assert_eq!(after[0].1, "error", "{after:?}");
    assert_eq!(
        after[0].2, before[0].2,
        "vm0's previous policy stays in force"
    );
    assert_eq!(
        (after[1].1.as_str(), after[1].2),
        ("error", None),
        "{after:?}"
    );
    for port in ["vm0", "vm1"] {
        let view = d.json(&["port", "show", port]).unwrap();
        let reason = view["status"]["reason"].as_str().unwrap();
        assert!(reason.contains("writing SG_REMOTE "), "{view}");
    }

    for port in ["vm0", "vm1"] {
        d.ok(&["port", "delete", port]).unwrap();
    }
    let status: Value =
        serde_json::from_str(&d.pins.sg_ctl_ok(&["-o", "json", "status"]).unwrap()).unwrap();
    assert_eq!(status, json!([]), "no port, no programs");
}

#[test]
fn a_pair_of_every_address_is_refused_unless_meant() {
    require_root!();
    let d = TestDaemon::start().unwrap();
    let ns = Netns::with_interfaces(1).unwrap();
    let create = |extra: &[&str]| {
        let mut args = vec![
            "--netns",
            ns.name(),
            "port",
            "create",
            "vm0",
            "--iface",
            "d0",
            "--mac",
            "52:54:00:00:00:01",
            "--address-pair",
            "0.0.0.0/0",
        ];
        args.extend_from_slice(extra);
        d.sg_ctl(&args).unwrap()
    };
    let out = create(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("0.0.0.0/0 is wider than /8"), "{stderr}");
    assert!(stderr.contains("--allow-wide-pair"), "{stderr}");
    assert!(
        d.json(&["port", "list"])
            .unwrap()
            .as_array()
            .unwrap()
            .is_empty()
    );

    let out = create(&["--allow-wide-pair"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: with the pair 0.0.0.0/0"),
        "{stderr}"
    );
    let pair = &d.json(&["port", "show", "vm0"]).unwrap()["spec"]["allowed_address_pairs"][0];
    assert_eq!(pair["allow_wide"], true, "{pair}");
}
