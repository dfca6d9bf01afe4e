//! Ports whose interfaces come after them, as on a hypervisor: the port is
//! registered, then the VM's tap or the container's veth appears. The
//! daemon follows link events and attaches the port's programs, prepared
//! beforehand, as the interface appears, so that the workload's first
//! frames are filtered and counted; `sg-ctl port plug` puts the policy in
//! force before it returns, and fails when it cannot.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use serde_json::Value;
use sg_tests::{FrameFile, GUEST_MAC, Netns, TestDaemon, eventually, guest_mac, require_root};

/// How long the daemon may take to put a port in force (a reconcile).
const SETTLED: Duration = Duration::from_secs(20);

fn state(d: &TestDaemon, port: &str) -> (String, String) {
    let view = d.json(&["port", "show", port]).unwrap();
    (
        view["status"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        view["status"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// What `iface`'s port counted in `direction`, all outcomes together.
fn counted(d: &TestDaemon, netns: &str, iface: &str, direction: &str) -> u64 {
    let status: Value = serde_json::from_str(
        &d.pins
            .sg_ctl_ok(&["--netns", netns, "-o", "json", "status"])
            .unwrap(),
    )
    .unwrap();
    status
        .as_array()
        .unwrap()
        .iter()
        .filter(|port| port["interface"] == iface)
        .flat_map(|port| port["counters"].as_array().cloned().unwrap_or_default())
        .filter(|counter| counter["direction"] == direction)
        .filter_map(|counter| counter["packets"].as_u64())
        .sum()
}

/// The frames an interface received, as the kernel counts them.
fn received(ns: &Netns, iface: &str) -> u64 {
    let path = format!("/sys/class/net/{iface}/statistics/rx_packets");
    let out = ns.exec("cat", &[&path]).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn a_port_is_enforced_as_its_interface_appears_and_its_first_frames_are_counted() {
    require_root!();
    let d = TestDaemon::start().unwrap();
    let (host, workload) = (Netns::new().unwrap(), Netns::new().unwrap());
    d.ok(&[
        "--netns",
        host.name(),
        "port",
        "create",
        "vm0",
        "--iface",
        "p0",
        "--mac",
        &guest_mac(),
        "--ip",
        "198.18.0.2",
    ])
    .unwrap();
    let (phase, reason) = state(&d, "vm0");
    assert_eq!(phase, "pending", "{reason}");
    assert!(reason.contains("not there yet"), "{reason}");

    // The interface appears; the workload sends from the moment its link
    // is up.
    host.add_veth("p0", &workload).unwrap();
    workload
        .ip(&["link", "set", "eth0", "address", &guest_mac()])
        .unwrap();
    let mut socket = FrameFile::packet_socket(&workload, "eth0", false).unwrap();
    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let sender = {
        let (stop, sent) = (stop.clone(), sent.clone());
        // Broadcast ARP requests from the workload's own address: what
        // port security and the policy let through.
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&GUEST_MAC);
        frame.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        frame.extend_from_slice(&GUEST_MAC);
        frame.extend_from_slice(&[198, 18, 0, 2, 0, 0, 0, 0, 0, 0, 198, 18, 0, 1]);
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // A link that is not up yet takes nothing.
                if socket.send(&frame).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    workload.ip(&["link", "set", "eth0", "up"]).unwrap();
    host.ip(&["link", "set", "p0", "up"]).unwrap();
    eventually("vm0 active", SETTLED, || Ok(state(&d, "vm0").0 == "active")).unwrap();
    eventually("frames through the link", SETTLED, || {
        Ok(received(&host, "p0") >= 100)
    })
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    assert!(sent.load(Ordering::Relaxed) > 0);
    // The workload's kernel may still send (neighbour discovery, MLD)
    // while the counters are read, and p0 adds what it received after sg
    // saw it: a reading counts when p0's count was the same on both sides
    // of sg's.
    let mut last = (0, 0);
    let agreed = eventually("every frame p0 received counted by sg", SETTLED, || {
        let before = received(&host, "p0");
        let by_sg = counted(&d, host.name(), "p0", "egress");
        let after = received(&host, "p0");
        last = (by_sg, after);
        Ok(before == after && by_sg == after)
    });
    assert!(
        agreed.is_ok(),
        "every frame p0 received went through sg: sg counted {}, p0 received {}",
        last.0,
        last.1
    );
    assert!(d.log().contains("enforced"), "{}", d.log());
}

#[test]
fn plug_puts_the_policy_in_force_before_it_returns_and_fails_when_it_cannot() {
    require_root!();
    let d = TestDaemon::start().unwrap();
    let ns = Netns::new().unwrap();
    d.ok(&[
        "--netns",
        ns.name(),
        "port",
        "create",
        "vm1",
        "--iface",
        "tap-late",
        "--mac",
        "52:54:00:00:00:01",
    ])
    .unwrap();
    // No interface: not enforced, and the hook must fail.
    let out = d.sg_ctl(&["port", "plug", "vm1"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("is not enforced on tap-late"), "{stderr}");

    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "e0"])
        .unwrap();
    let out = d
        .sg_ctl(&[
            "--netns",
            ns.name(),
            "-o",
            "json",
            "port",
            "plug",
            "vm1",
            "--iface",
            "d0",
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["status"]["state"], "active", "{view}");
    assert_eq!(view["spec"]["ifname"], "d0");

    // No daemon: a clear error, exit code 1.
    let out = std::process::Command::new(sg_tests::sg_ctl_binary())
        .args(["--socket", "/nonexistent/sg.sock", "port", "plug", "vm1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach the daemon"),
        "{out:?}"
    );
}
