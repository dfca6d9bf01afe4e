//! The daemon as users meet it: a real `sg-ctl daemon` with its database,
//! socket and pins in a directory of the test, driven by the `sg-ctl`
//! client commands; real traffic through a veth port where the policy is
//! the point.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde_json::Value;
use sg_tests::{
    HOST_V4, Netns, PORT, TestDaemon, VethPort, WORKLOAD_V4, WORKLOAD_V6, addr, eventually,
    guest_mac, require_root, tcp_exchange,
};

/// How long a change may take to reach the datapath.
const SETTLED: Duration = Duration::from_secs(10);

/// The `nobody` user: a local client with neither root nor a token.
const NOBODY: u32 = 65534;

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|view| view["spec"]["name"].as_str().map(str::to_string))
        .collect()
}

fn rules(d: &TestDaemon, group: &str) -> Result<Vec<Value>> {
    Ok(d.json(&["rule", "list", group])?
        .as_array()
        .context("rules are a list")?
        .clone())
}

#[test]
fn groups_and_rules_are_created_listed_changed_and_deleted() {
    require_root!();
    let d = TestDaemon::start().unwrap();
    d.ok(&["group", "create", "web", "--description", "web tier"])
        .unwrap();
    assert_eq!(
        names(&d.json(&["group", "list"]).unwrap()),
        ["default", "web"]
    );
    let web = d.json(&["group", "show", "web"]).unwrap();
    assert_eq!(web["revision"], 1);
    assert_eq!(web["spec"]["description"], "web tier");
    assert_eq!(web["status"]["state"], "na");
    assert_eq!(
        rules(&d, "web").unwrap().len(),
        2,
        "new groups allow all egress"
    );

    d.ok(&[
        "group",
        "update",
        "web",
        "--public",
        "true",
        "--external-member",
        "198.51.100.0/24",
    ])
    .unwrap();
    let web = d.json(&["group", "show", "web"]).unwrap();
    assert_eq!(web["revision"], 2);
    assert_eq!(web["spec"]["public"], true);
    assert_eq!(web["spec"]["external_members"][0], "198.51.100.0/24");

    d.ok(&["group", "clone", "web", "web2"]).unwrap();
    let copy = d.json(&["group", "show", "web2"]).unwrap();
    assert_eq!(copy["spec"]["rules"], web["spec"]["rules"]);
    assert_eq!(copy["spec"]["public"], false);
    d.ok(&["group", "delete", "web2"]).unwrap();
    assert_eq!(d.fails(&["group", "show", "web2"]).unwrap().0, 3);
    let (code, message) = d.fails(&["group", "create", "web"]).unwrap();
    assert_eq!(
        (code, message.as_str()),
        (
            5,
            "sg-ctl: group 'web' exists; update it, or choose another name"
        )
    );
    let (code, message) = d.fails(&["group", "delete", "default"]).unwrap();
    assert_eq!(code, 5);
    assert!(
        message.contains("default group cannot be deleted"),
        "{message}"
    );

    d.ok(&[
        "rule",
        "add",
        "web",
        "--proto",
        "tcp",
        "--port",
        "80,443",
        "--remote",
        "0.0.0.0/0",
    ])
    .unwrap();
    d.ok(&[
        "rule",
        "add",
        "web",
        "--preset",
        "ssh",
        "--remote",
        "203.0.113.0/24",
    ])
    .unwrap();
    let list = rules(&d, "web").unwrap();
    assert_eq!(list.len(), 4);
    assert_eq!(list[2]["ports"], "80,443");
    assert_eq!(list[3]["ports"], "22");
    assert_eq!(list[3]["remote"][0], "203.0.113.0/24");
    d.ok(&["rule", "update", "web", "2", "--port", "8080"])
        .unwrap();
    assert_eq!(rules(&d, "web").unwrap()[2]["ports"], "8080");
    d.ok(&["rule", "delete", "web", "2"]).unwrap();
    assert_eq!(rules(&d, "web").unwrap().len(), 3);
    assert_eq!(d.fails(&["rule", "delete", "web", "9"]).unwrap().0, 3);
}

#[test]
fn invalid_changes_name_the_field_and_change_nothing() {
    require_root!();
    let d = TestDaemon::start().unwrap();
    d.ok(&["group", "create", "web"]).unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &["--proto", "icmp", "--port", "80"],
            "group 'web': rules[2]: ports: protocol icmp has no ports; \
             ports apply to tcp, udp, sctp, dccp, udplite",
        ),
        (
            &["--proto", "icmp", "--icmp-type", "300"],
            "icmp.type: 300 is out of range; use 0-255",
        ),
        (
            &["--ethertype", "ipv4", "--remote", "2001:db8::/32"],
            "group 'web': rules[2]: remote: 2001:db8::/32 is IPv6 but ethertype is ipv4",
        ),
        (
            &["--priority", "0"],
            "group 'web': rules[2]: priority: 0 is out of range; use 1-65535 (1 goes first)",
        ),
        (
            &["--remote-group", "nope"],
            "group 'web': rules[2]: remote: no group named 'nope'; create it first, \
             or use one of: default, web",
        ),
    ];
    for (args, expected) in cases {
        let mut command = vec!["rule", "add", "web"];
        command.extend_from_slice(args);
        let (code, message) = d.fails(&command).unwrap();
        assert_eq!(code, 2, "{command:?}: {message}");
        assert_eq!(message, format!("sg-ctl: {expected}"), "{command:?}");
    }
    let (code, message) = d
        .fails(&["rule", "add", "nope", "--preset", "ssh"])
        .unwrap();
    assert_eq!(code, 3);
    assert!(message.contains("no group named 'nope'"), "{message}");
    let web = d.json(&["group", "show", "web"]).unwrap();
    assert_eq!(web["revision"], 1, "nothing was written");
    assert_eq!(web["spec"]["rules"].as_array().map(Vec::len), Some(2));

    d.ok(&["settings", "set", "max_rules_per_group", "30"])
        .unwrap();
    assert_eq!(
        d.json(&["settings", "show"]).unwrap()["max_rules_per_group"],
        30
    );
    for port in 1..=28 {
        d.ok(&[
            "rule",
            "add",
            "web",
            "--proto",
            "tcp",
            "--port",
            &port.to_string(),
        ])
        .unwrap();
    }
    assert_eq!(rules(&d, "web").unwrap().len(), 30);
    let (code, message) = d
        .fails(&["rule", "add", "web", "--proto", "udp", "--port", "53"])
        .unwrap();
    assert_eq!(code, 2);
    assert_eq!(
        message,
        "sg-ctl: group 'web': rules: 31 rules is over the limit of 30 per group; remove rules \
         or raise the limit (`sg-ctl settings set max_rules_per_group N`)"
    );
    assert_eq!(rules(&d, "web").unwrap().len(), 30);
    let (code, message) = d
        .fails(&["settings", "set", "max_rules_per_group", "20"])
        .unwrap();
    assert_eq!(
        code, 2,
        "a limit below what groups hold is refused: {message}"
    );
}

#[test]
fn ports_are_created_attached_detached_and_deleted() {
    require_root!();
    let d = TestDaemon::start().unwrap();
    let ns = Netns::with_interfaces(1).unwrap();
    d.ok(&["group", "create", "web"]).unwrap();
    let create = |name: &str, iface: &str, group: &str| {
        d.sg_ctl(&[
            "--netns",
            ns.name(),
            "port",
            "create",
            name,
            "--iface",
            iface,
            "--mac",
            "52:54:00:12:34:56",
            "--ip",
            "198.18.0.5",
            "--group",
            group,
        ])
    };
    assert!(create("vm1", "d0", "web").unwrap().status.success());
    let vm1 = d.json(&["port", "show", "vm1"]).unwrap();
    assert_eq!(vm1["status"]["state"], "active", "{vm1}");
    assert_eq!(vm1["spec"]["netns"], ns.name());
    let first_policy = vm1["policy_id"]
        .as_u64()
        .context("an installed policy")
        .unwrap();
    assert_eq!(
        d.json(&["group", "show", "web"]).unwrap()["status"]["state"],
        "active"
    );

    // A port whose interface is missing waits for it, with the reason.
    assert!(create("vm2", "missing0", "web").unwrap().status.success());
    let vm2 = d.json(&["port", "show", "vm2"]).unwrap();
    assert_eq!(vm2["status"]["state"], "pending");
    let reason = vm2["status"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("its interface 'missing0' is not there yet"),
        "{reason}"
    );
    let web = d.json(&["group", "show", "web"]).unwrap();
    assert_eq!(web["status"]["state"], "pending");
    d.ok(&["port", "delete", "vm2"]).unwrap();

    let out = create("vm3", "d0", "nope").unwrap();
    assert_eq!(out.status.code(), Some(2));
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("port 'vm3': groups: no group named 'nope'"),
        "{message}"
    );

    // Assigning a group to many ports is all of them or none.
    let (code, message) = d
        .fails(&["group", "assign", "default", "vm1", "nope"])
        .unwrap();
    assert_eq!(code, 3, "{message}");
    assert!(message.contains("no port named 'nope'"), "{message}");
    let vm1 = d.json(&["port", "show", "vm1"]).unwrap();
    assert_eq!(vm1["spec"]["groups"], serde_json::json!(["web"]));

    let vm1 = d.json(&["port", "attach", "vm1", "default"]).unwrap();
    assert_eq!(vm1["spec"]["groups"], serde_json::json!(["web", "default"]));
    assert_ne!(
        vm1["policy_id"], first_policy,
        "the new policy is installed"
    );
    let (code, message) = d.fails(&["group", "delete", "web"]).unwrap();
    assert_eq!(code, 5);
    assert!(message.contains("attached to port(s) vm1"), "{message}");
    let (code, message) = d
        .fails(&["port", "detach", "vm1", "web", "default"])
        .unwrap();
    assert_eq!(code, 2);
    assert!(message.contains("keeps at least one group"), "{message}");
    let vm1 = d.json(&["port", "detach", "vm1", "web"]).unwrap();
    assert_eq!(vm1["spec"]["groups"], serde_json::json!(["default"]));
    d.ok(&["group", "delete", "web"]).unwrap();
    let vm1 = d
        .json(&["port", "update", "vm1", "--ip", "198.18.0.6"])
        .unwrap();
    assert_eq!(vm1["spec"]["ips"], serde_json::json!(["198.18.0.6"]));
    assert_eq!(vm1["revision"], 4);
    assert_eq!(names(&d.json(&["port", "list"]).unwrap()), ["vm1"]);
    let update = ["port", "update", "vm1", "--dhcp-server"];
    let vm1 = d
        .json(&[&update[..], &["198.18.0.1", "--dhcp-server", "fe80::1"]].concat())
        .unwrap();
    assert_eq!(
        vm1["spec"]["dhcp_servers"],
        serde_json::json!(["198.18.0.1", "fe80::1"])
    );
    let (code, message) = d
        .fails(&[&update[..], &["255.255.255.255"]].concat())
        .unwrap();
    assert_eq!(code, 2, "{message}");
    assert!(
        message.contains("dhcp_servers: 255.255.255.255 is not a server's address"),
        "{message}"
    );
    let vm1 = d
        .json(&["port", "update", "vm1", "--any-dhcp-server"])
        .unwrap();
    assert!(vm1["spec"].get("dhcp_servers").is_none(), "{vm1}");

    d.ok(&["port", "delete", "vm1"]).unwrap();
    assert_eq!(d.fails(&["port", "show", "vm1"]).unwrap().0, 3);
    let status = d.pins.sg_ctl_ok(&["--netns", ns.name(), "status"]).unwrap();
    assert_eq!(status.trim(), "no ports attached");
}

/// A raw PUT with `If-Match: revision` on the daemon's socket: status
/// code and body.
fn put(d: &TestDaemon, path: &str, revision: u64, body: &str) -> Result<(u16, String)> {
    let mut stream = UnixStream::connect(d.socket())?;
    write!(
        stream,
        "PUT {path} HTTP/1.1\r\nHost: sg\r\nConnection: close\r\nIf-Match: {revision}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("a status line: {response}"))?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    Ok((status, body.to_string()))
}

#[test]
fn concurrent_changes_never_corrupt_a_group() {
    require_root!();
    let d = TestDaemon::start().unwrap();
    d.ok(&["settings", "set", "max_rules_per_group", "100"])
        .unwrap();
    d.ok(&["group", "create", "shared"]).unwrap();
    thread::scope(|scope| {
        let writers: Vec<_> = [1000, 2000]
            .into_iter()
            .map(|base| {
                let d = &d;
                scope.spawn(move || -> Result<()> {
                    for port in base..base + 15 {
                        d.ok(&[
                            "rule",
                            "add",
                            "shared",
                            "--proto",
                            "tcp",
                            "--port",
                            &port.to_string(),
                        ])?;
                    }
                    Ok(())
                })
            })
            .collect();
        writers
            .into_iter()
            .try_for_each(|writer| writer.join().expect("a writer thread"))
    })
    .unwrap();
    let shared = d.json(&["group", "show", "shared"]).unwrap();
    assert_eq!(shared["revision"], 31);
    let mut ports: Vec<String> = shared["spec"]["rules"]
        .as_array()
        .context("rules")
        .unwrap()
        .iter()
        .filter_map(|rule| rule["ports"].as_str().map(str::to_string))
        .collect();
    ports.sort();
    let mut expected: Vec<String> = (1000..1015)
        .chain(2000..2015)
        .map(|p| p.to_string())
        .collect();
    expected.sort();
    assert_eq!(ports, expected, "every rule once");

    // A change made from a stale read is refused, not merged.
    let spec = serde_json::to_string(&shared["spec"]).unwrap();
    let (status, body) = put(&d, "/v1/groups/shared", 30, &spec).unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("is at revision 31, not 30"), "{body}");
    let (status, body) = put(&d, "/v1/groups/shared", 31, &spec).unwrap();
    assert_eq!(status, 200, "{body}");
}

#[test]
fn viewers_read_owners_change_anyone_reads_public_groups() {
    require_root!();
    let d = TestDaemon::start().unwrap();
    let viewer = d.token("viewer").unwrap();
    let owner = d.token("owner").unwrap();
    let (viewer, owner) = (viewer.as_str(), owner.as_str());
    d.ok(&["group", "create", "shared", "--public"]).unwrap();

    assert_eq!(
        names(&d.json(&["--token", viewer, "group", "list"]).unwrap()),
        ["default", "shared"]
    );
    for change in [
        &["group", "create", "x"][..],
        &["group", "update", "shared", "--description", "x"],
        &["group", "delete", "shared"],
        &["rule", "add", "default", "--preset", "ssh"],
        &["rule", "delete", "default", "0"],
        &["settings", "set", "max_rules_per_group", "10"],
        &["daemon", "token", "create", "--role", "owner"],
        &["daemon", "token", "revoke", "0123456789ab"],
    ] {
        let mut command = vec!["--token", viewer];
        command.extend_from_slice(change);
        let (code, message) = d.fails(&command).unwrap();
        assert_eq!(code, 4, "{change:?}");
        assert!(message.contains("viewer token is read-only"), "{message}");
    }
    assert_eq!(
        d.fails(&["--token", "bogus", "group", "list"]).unwrap().0,
        4
    );
    d.ok(&["--token", owner, "group", "create", "ops"]).unwrap();
    let tokens = d.json(&["daemon", "token", "list"]).unwrap();
    let roles: Vec<&str> = tokens
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["role"].as_str())
        .collect();
    assert_eq!(roles, ["viewer", "owner"]);
    assert_eq!(
        d.fails(&["--token", viewer, "daemon", "token", "list"])
            .unwrap()
            .0,
        4
    );
    let viewer_id = tokens[0]["id"].as_str().context("an id").unwrap();
    d.ok(&["daemon", "token", "revoke", viewer_id]).unwrap();
    let (code, message) = d.fails(&["--token", viewer, "group", "list"]).unwrap();
    assert_eq!(code, 4);
    assert!(message.contains("unknown token"), "{message}");
    assert_eq!(
        d.fails(&["daemon", "token", "revoke", viewer_id])
            .unwrap()
            .0,
        3
    );

    // Without root or a token: the public groups, read-only.
    let anonymous = |args: &[&str]| d.sg_ctl_as(Some(NOBODY), args);
    let out = anonymous(&["-o", "json", "group", "list"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        names(&serde_json::from_slice(&out.stdout).unwrap()),
        ["shared"]
    );
    assert!(
        anonymous(&["group", "show", "shared"])
            .unwrap()
            .status
            .success()
    );
    for refused in [
        &["group", "show", "default"][..],
        &["group", "update", "shared", "--description", "x"],
        &["port", "list"],
        &["export"],
    ] {
        assert_eq!(
            anonymous(refused).unwrap().status.code(),
            Some(4),
            "{refused:?}"
        );
    }
    assert_eq!(d.json(&["group", "show", "shared"]).unwrap()["revision"], 1);
}

#[test]
fn a_membership_change_recompiles_only_the_ports_it_affects() {
    require_root!();
    let d = TestDaemon::start().unwrap();
    let ns = Netns::with_interfaces(4).unwrap();
    d.ok(&["group", "create", "web"]).unwrap();
    d.ok(&["group", "create", "db"]).unwrap();
    d.ok(&[
        "rule",
        "add",
        "db",
        "--proto",
        "tcp",
        "--port",
        "3306",
        "--remote-group",
        "web",
    ])
    .unwrap();
    d.ok(&["group", "create", "other"]).unwrap();
    let port = |name: &str, iface: &str, ip: &str, group: &str| {
        d.ok(&[
            "--netns",
            ns.name(),
            "port",
            "create",
            name,
            "--iface",
            iface,
            "--mac",
            "52:54:00:12:34:56",
            "--ip",
            ip,
            "--group",
            group,
        ])
    };
    port("w1", "d0", "198.18.0.10", "web").unwrap();
    port("db1", "d1", "198.18.0.20", "db").unwrap();
    port("o1", "d2", "198.18.0.30", "other").unwrap();
    let policies = || -> Result<Vec<Value>> {
        let ports = d.json(&["port", "list"])?;
        Ok(["w1", "db1", "o1"]
            .iter()
            .map(|name| {
                ports
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["spec"]["name"] == *name)
                    .map(|p| p["policy_id"].clone())
                    .unwrap_or_default()
            })
            .collect())
    };
    let before = policies().unwrap();
    port("w2", "d3", "198.18.0.11", "web").unwrap();
    let after = policies().unwrap();
    assert_eq!(after[0], before[0], "w1's rules name no group");
    assert_ne!(after[1], before[1], "db1's rule admits members of web");
    assert_eq!(after[2], before[2], "o1 has nothing to do with web");
}

#[test]
fn a_port_s_flow_limit_is_its_own_or_the_host_s_and_shows_in_the_metrics() {
    require_root!();
    let d = TestDaemon::start().unwrap();
    let ns = Netns::with_interfaces(2).unwrap();
    let port = |name: &str, iface: &str, more: &[&str]| {
        let mut args = vec![
            "--netns",
            ns.name(),
            "port",
            "create",
            name,
            "--iface",
            iface,
            "--mac",
            "52:54:00:12:34:56",
        ];
        args.extend_from_slice(more);
        d.ok(&args)
    };
    port("p1", "d0", &["--max-flows", "100"]).unwrap();
    port("p2", "d1", &[]).unwrap();
    let limits = |want: [u64; 2]| {
        eventually(&format!("the flow limits {want:?}"), SETTLED, || {
            let got = ["p1", "p2"].map(|port| {
                d.metric(&format!("sg_port_flow_limit{{port=\"{port}\"}}"))
                    .unwrap_or_default()
            });
            Ok(got == want)
        })
        .unwrap();
    };
    limits([100, 65_536]);
    assert_eq!(d.metric("sg_port_flows{port=\"p1\"}").unwrap(), 0);
    d.ok(&["settings", "set", "max_flows_per_port", "500"])
        .unwrap();
    limits([100, 500]);
    d.ok(&["port", "update", "p1", "--host-max-flows"]).unwrap();
    limits([500, 500]);
    assert_eq!(
        d.json(&["port", "show", "p1"]).unwrap()["spec"]["max_flows"],
        Value::Null
    );
    d.ok(&["port", "update", "p1", "--max-flows", "7"]).unwrap();
    limits([7, 500]);
    let (code, err) = d
        .fails(&["settings", "set", "max_flows_per_port", "0"])
        .unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("max_flows_per_port: 0 leaves no room"),
        "{err}"
    );
    let (code, _) = d
        .fails(&["port", "update", "p2", "--max-flows", "0"])
        .unwrap();
    assert_eq!(code, 2);
}

#[test]
fn enforcement_goes_on_while_the_daemon_restarts_and_comes_back_after_a_reboot() {
    require_root!();
    let veth = VethPort::new().unwrap();
    let mut d = TestDaemon::start().unwrap();
    d.ok(&["group", "create", "pingable"]).unwrap();
    d.ok(&[
        "rule",
        "add",
        "pingable",
        "--proto",
        "icmp",
        "--icmp-type",
        "8",
    ])
    .unwrap();
    d.ok(&[
        "--netns",
        veth.host.name(),
        "port",
        "create",
        "vm",
        "--iface",
        PORT,
        "--mac",
        &guest_mac(),
        "--ip",
        WORKLOAD_V4,
        "--group",
        "pingable",
    ])
    .unwrap();
    let (v4, v6) = (addr(WORKLOAD_V4), addr(WORKLOAD_V6));
    assert!(veth.host.ping(v4).unwrap(), "echo requests are allowed");
    assert!(!veth.host.ping(v6).unwrap(), "ICMPv6 has no rule");
    let policy = d.json(&["port", "show", "vm"]).unwrap()["policy_id"].clone();
    assert!(
        d.metric("sg_conntrack_capacity").unwrap() > 0,
        "the table's size is a metric"
    );
    assert!(
        d.metric("sg_conntrack_entries").unwrap() >= 1,
        "the pings are a tracked flow"
    );
    let rule = r#"sg_rule_packets_total{group="pingable",rule="2"}"#;
    let counted = d.metric(rule).unwrap();
    assert!(counted >= 1);
    let hits = &d.json(&["group", "show", "pingable"]).unwrap()["hits"];
    assert_eq!(
        hits[2]["packets"], counted,
        "group show gives the same hits: {hits}"
    );
    let passed = d.pins.counter(PORT, "ingress", "pass").unwrap();

    d.kill().unwrap();
    assert!(
        veth.host.ping(v4).unwrap(),
        "the policy stays in force without the daemon"
    );
    assert!(
        !veth.host.ping(v6).unwrap(),
        "and still drops what it dropped"
    );

    d.spawn().unwrap();
    let port = d.json(&["port", "show", "vm"]).unwrap();
    assert_eq!(
        port["policy_id"], policy,
        "the restarted daemon adopts the policy"
    );
    assert_eq!(port["status"]["state"], "active");
    assert!(
        d.metric(rule).unwrap() > counted,
        "rule counters go on: {}",
        d.log()
    );
    assert!(d.pins.counter(PORT, "ingress", "pass").unwrap() > passed);
    assert!(veth.host.ping(v4).unwrap());

    // A reboot loses the pins: the daemon, started again, restores the
    // stored policy.
    d.kill().unwrap();
    d.pins.datapath().detach_all().unwrap();
    assert!(veth.host.ping(v6).unwrap(), "no filter left");
    d.spawn().unwrap();
    assert_eq!(
        d.json(&["port", "show", "vm"]).unwrap()["status"]["state"],
        "active"
    );
    assert!(veth.host.ping(v4).unwrap());
    assert!(!veth.host.ping(v6).unwrap(), "the policy is back");

    // Counts stay with their rule when a change renumbers the rules.
    let echo = d.metric(rule).unwrap();
    assert!(echo >= 1);
    d.ok(&["rule", "delete", "pingable", "0"]).unwrap();
    let moved = r#"sg_rule_packets_total{group="pingable",rule="1"}"#;
    assert!(
        d.metric(moved).unwrap() >= echo,
        "the echo rule keeps its counts"
    );
    d.ok(&["rule", "add", "pingable", "--proto", "tcp", "--port", "22"])
        .unwrap();
    assert_eq!(d.metric(rule).unwrap(), 0, "a new rule counts from zero");
}

#[test]
fn an_applied_web_group_passes_80_and_not_8080() {
    require_root!();
    let veth = VethPort::new().unwrap();
    let d = TestDaemon::start().unwrap();
    let file = d.dir().join("policy.yaml");
    std::fs::write(
        &file,
        format!(
            "groups:
  - name: web
    description: web tier
    rules:
      - {{direction: egress}}
      - {{direction: ingress, protocol: tcp, ports: '22,80,443'}}
  - name: replies
    rules:
      - {{direction: ingress, protocol: tcp, ports: 1024-65535, remote: {HOST_V4}}}
ports:
  - name: web1
    ifname: {PORT}
    netns: {netns}
    mac: '{mac}'
    ips: [{WORKLOAD_V4}]
    groups: [web]
",
            netns = veth.host.name(),
            mac = guest_mac(),
        ),
    )
    .unwrap();
    let file = file.to_str().context("a UTF-8 path").unwrap();
    let plan = d.ok(&["apply", "-f", file, "--dry-run"]).unwrap();
    assert_eq!(
        plan,
        "+ group web\n+ group replies\n+ port web1\ndry run: nothing changed\n"
    );
    assert_eq!(d.json(&["port", "list"]).unwrap(), serde_json::json!([]));
    d.ok(&["apply", "-f", file]).unwrap();
    assert_eq!(d.ok(&["apply", "-f", file]).unwrap(), "no changes\n");
    assert_eq!(
        d.json(&["port", "show", "web1"]).unwrap()["status"]["state"],
        "active"
    );

    let to = addr(WORKLOAD_V4);
    assert!(
        tcp_exchange(&veth.host, &veth.workload, to, 80).unwrap(),
        "80 passes"
    );
    assert!(
        !tcp_exchange(&veth.host, &veth.workload, to, 8080).unwrap(),
        "8080 does not"
    );

    // The port's tracked flows, through the API: a viewer needs no root.
    let viewer = d.token("viewer").unwrap();
    let flows = |args: &[&str]| -> Result<Value> {
        let mut all = vec![
            "--token",
            viewer.as_str(),
            "-o",
            "json",
            "port",
            "flows",
            "web1",
        ];
        all.extend_from_slice(args);
        let out = d.sg_ctl_as(Some(NOBODY), &all)?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let tcp = flows(&["--protocol", "tcp"]).unwrap();
    let tcp = tcp.as_array().context("a list").unwrap();
    assert!(
        tcp.iter()
            .any(|f| f["local_port"] == 80 && f["origin"] == "ingress" && f["interface"] == PORT),
        "{tcp:?}"
    );
    // No flow of 8080 started: the policy dropped its SYN.
    assert!(tcp.iter().all(|f| f["local_port"] != 8080), "{tcp:?}");
    assert_eq!(
        flows(&["--protocol", "udp"]).unwrap(),
        serde_json::json!([])
    );
    assert_eq!(d.fails(&["port", "flows", "nope"]).unwrap().0, 3);
    assert_eq!(
        d.fails(&["port", "flows", "web1", "--state", "open"])
            .unwrap()
            .0,
        2
    );

    // Trace names the rules of the daemon's policy.
    let trace = |direction: &str, from: &str, to: &str, dport: &str| {
        d.json(&[
            "--pin-dir",
            d.pins.dir(),
            "trace",
            "web1",
            "--direction",
            direction,
            "--protocol",
            "tcp",
            "--from",
            from,
            "--to",
            to,
            "--dport",
            dport,
        ])
        .map(|t| t["trace"].clone())
    };
    let web = trace("ingress", HOST_V4, WORKLOAD_V4, "80").unwrap();
    assert_eq!(web["outcome"], "pass", "{web}");
    assert_eq!(
        (&web["rule"]["group"], &web["rule"]["index"]),
        (&"web".into(), &1.into())
    );
    let closed = trace("ingress", HOST_V4, WORKLOAD_V4, "8080").unwrap();
    assert_eq!(closed["outcome"], "drop-default", "{closed}");

    // Outbound SMTP is blocked unless a rule names port 25.
    d.ok(&["port", "attach", "web1", "replies"]).unwrap();
    let host = addr(HOST_V4);
    assert!(tcp_exchange(&veth.workload, &veth.host, host, 587).unwrap());
    assert!(!tcp_exchange(&veth.workload, &veth.host, host, 25).unwrap());
    let smtp = trace("egress", WORKLOAD_V4, HOST_V4, "25").unwrap();
    assert_eq!(smtp["outcome"], "drop-rule", "{smtp}");
    assert_eq!(smtp["rule"]["group"], "_smtp-block", "{smtp}");
    // A rule naming 25 toward one relay lifts the block toward it alone,
    // not through the egress rule of another group.
    d.ok(&[
        "rule",
        "add",
        "web",
        "--dir",
        "egress",
        "--proto",
        "tcp",
        "--port",
        "25",
        "--remote",
        "198.18.200.25/32",
    ])
    .unwrap();
    assert!(!tcp_exchange(&veth.workload, &veth.host, host, 25).unwrap());
    let relay = trace("egress", WORKLOAD_V4, "198.18.200.25", "25").unwrap();
    assert_eq!(relay["outcome"], "pass", "{relay}");
    assert_eq!(relay["rule"]["group"], "_smtp-block.web1", "{relay}");
    d.ok(&["settings", "set", "block_outbound_smtp", "false"])
        .unwrap();
    assert!(tcp_exchange(&veth.workload, &veth.host, host, 25).unwrap());

    let exported = d.ok(&["export"]).unwrap();
    assert!(exported.contains("- name: web\n"), "{exported}");
    assert!(
        exported.contains("block_outbound_smtp: false"),
        "{exported}"
    );
}
