//! The providers' common configurations with real packets: workloads on a
//! bridge, each behind its own sg port, managed by the daemon. A web tier
//! open on 80/443 and to ping; a database open only to the web group, its
//! SSH rejected; a workload joining and leaving the web group live. No
//! group has rules for replies: they pass on their connection.

use std::{
    io::ErrorKind,
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use sg_tests::{Lan, TestDaemon, eventually, require_root};

/// How long a change may take to be in force: the daemon reconciles once
/// it committed.
const SETTLED: Duration = Duration::from_secs(10);

const POLICY: &str = "groups:
  - name: web
    rules:
      - {direction: egress}
      - {direction: ingress, protocol: tcp, ports: '80,443'}
      - {direction: ingress, protocol: icmp}
  - name: db
    rules:
      - {direction: egress}
      - {direction: ingress, protocol: tcp, ports: 5432, remote: {group: web}}
      - {direction: ingress, protocol: icmp, remote: {group: web}}
      - {direction: ingress, protocol: tcp, ports: 22, action: reject}
  - name: ops
    rules:
      - {direction: egress}
ports:
";

#[test]
fn a_web_tier_and_a_database_open_only_to_it() {
    require_root!();
    let lan = Lan::new(&[
        ("web1", "198.18.0.11"),
        ("web2", "198.18.0.12"),
        ("db", "198.18.0.20"),
    ])
    .unwrap();
    let d = TestDaemon::start().unwrap();
    let mut policy = POLICY.to_string();
    for (name, ns, ip) in &lan.workloads {
        let groups = match *name {
            "web1" => "web",
            "web2" => "ops",
            _ => "db",
        };
        let mac = ns.ip(&["-j", "link", "show", "eth0"]).unwrap();
        let mac: serde_json::Value = serde_json::from_slice(&mac.stdout).unwrap();
        let mac = mac[0]["address"].as_str().context("a MAC").unwrap();
        policy += &format!(
            "  - {{name: {name}, ifname: h-{name}, netns: {}, mac: '{mac}', ips: [{ip}], groups: [{groups}]}}\n",
            lan.host.name()
        );
    }
    let file = d.dir().join("policy.yaml");
    std::fs::write(&file, policy).unwrap();
    d.ok(&[
        "apply",
        "-f",
        file.to_str().context("a UTF-8 path").unwrap(),
    ])
    .unwrap();
    for (name, ..) in &lan.workloads {
        eventually(&format!("port {name} active"), SETTLED, || {
            Ok(d.json(&["port", "show", name])?["status"]["state"] == "active")
        })
        .unwrap();
    }

    // The web tier: 80 and 443 from anyone, ping.
    assert!(lan.tcp("web2", "web1", 80).unwrap(), "web2 → web1:80");
    assert!(lan.tcp("web2", "web1", 443).unwrap(), "web2 → web1:443");
    assert!(!lan.tcp("web2", "web1", 8080).unwrap(), "web2 → web1:8080");
    assert!(lan.ns("web2").ping(lan.ip("web1")).unwrap(), "ping web1");

    // The database: 5432 and ping from the web group only.
    assert!(lan.tcp("web1", "db", 5432).unwrap(), "web1 → db:5432");
    assert!(!lan.tcp("web2", "db", 5432).unwrap(), "web2 → db:5432");
    assert!(lan.ns("web1").ping(lan.ip("db")).unwrap(), "web1 pings db");
    assert!(!lan.ns("web2").ping(lan.ip("db")).unwrap(), "web2 pings db");

    // SSH to the database is rejected: refused at once, though sshd (a
    // listener here) would accept.
    let db = lan.ip("db");
    let listener = lan
        .ns("db")
        .within(move || Ok(TcpListener::bind((db, 22))?))
        .unwrap();
    let started = Instant::now();
    let refused = lan
        .ns("web1")
        .within(move || {
            Ok(
                TcpStream::connect_timeout(&(db, 22).into(), Duration::from_secs(3))
                    .map_err(|e| e.kind()),
            )
        })
        .unwrap();
    drop(listener);
    assert_eq!(refused.map(drop), Err(ErrorKind::ConnectionRefused));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );

    // web2 joins the web group: the database lets it in, live, with no
    // workload touched; and out again when it leaves.
    d.ok(&["port", "attach", "web2", "web"]).unwrap();
    eventually("web2 → db:5432 once in web", SETTLED, || {
        lan.tcp("web2", "db", 5432)
    })
    .unwrap();
    d.ok(&["port", "detach", "web2", "web"]).unwrap();
    eventually("web2 → db:5432 refused once out of web", SETTLED, || {
        Ok(!lan.tcp("web2", "db", 5432)?)
    })
    .unwrap();
    assert!(
        lan.tcp("web1", "db", 5432).unwrap(),
        "web1 still reaches db"
    );

    // The ports' records carry their MACs and addresses: port security is
    // on, and web1 may not send from an address it was not given.
    let web1 = lan.ns("web1");
    web1.add_addr("eth0", "198.18.0.99/24").unwrap();
    let db = db.to_string();
    let spoofed = web1
        .exec("ping", &["-c", "1", "-W", "1", "-I", "198.18.0.99", &db])
        .unwrap();
    assert!(
        !spoofed.status.success(),
        "a ping from an address not given"
    );
    assert!(
        d.pins
            .counter("h-web1", "egress", "drop-spoofed-ipv4")
            .unwrap()
            >= 1
    );
}
