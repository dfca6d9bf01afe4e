//! Stateful filtering with real traffic through a veth port: replies pass
//! on the flow their request started, whatever the rules of their
//! direction; unsolicited traffic does not; a policy that drops its rule
//! stops an established connection; `sg-ctl conntrack` shows and flushes
//! the flows.

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{IpAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};
use sg_tests::{
    HOST_V4, HOST_V6, Netns, PORT, TestPins, VethPort, WORKLOAD_V4, WORKLOAD_V6, addr,
    dns_ping_http_policy as policy, eventually, require_root, tcp_exchange,
};

const WAIT: Duration = Duration::from_secs(1);

fn setup() -> Result<(VethPort, TestPins)> {
    let port = VethPort::new()?;
    let pins = TestPins::new();
    pins.sg_ctl_ok(&["--netns", port.host.name(), "attach", PORT])?;
    pins.install(PORT, &policy(true), "vm")?;
    Ok((port, pins))
}

fn flows(pins: &TestPins, port: &VethPort, filters: &[&str]) -> Result<Vec<Value>> {
    let mut args = vec![
        "--netns",
        port.host.name(),
        "-o",
        "json",
        "conntrack",
        "list",
        "--iface",
        PORT,
    ];
    args.extend_from_slice(filters);
    let list: Value = serde_json::from_str(&pins.sg_ctl_ok(&args)?)?;
    Ok(list.as_array().context("a list")?.clone())
}

#[test]
fn a_server_answers_on_its_ingress_rule_alone_and_nothing_else_gets_in() {
    require_root!();
    let (port, pins) = setup().unwrap();
    for (workload, host) in [(WORKLOAD_V4, HOST_V4), (WORKLOAD_V6, HOST_V6)] {
        let (workload, host) = (addr(workload), addr(host));
        assert!(
            tcp_exchange(&port.host, &port.workload, workload, 80).unwrap(),
            "to {workload}:80 and back"
        );
        assert!(
            !tcp_exchange(&port.host, &port.workload, workload, 8080).unwrap(),
            "{workload}:8080 is closed"
        );
        assert!(
            !tcp_exchange(&port.workload, &port.host, host, 0).unwrap(),
            "the workload may not connect out"
        );
    }
    // Both connections closed with FINs: in time-wait, or fin-wait where
    // the last ACK is still to come.
    let closed = |flow: &Value| flow["state"] == "time-wait" || flow["state"] == "fin-wait";
    let mut tcp = Vec::new();
    eventually("both connections closing", WAIT * 5, || {
        tcp = flows(&pins, &port, &["--protocol", "tcp"])?;
        Ok(tcp.len() == 2 && tcp.iter().all(closed))
    })
    .with_context(|| format!("{tcp:?}"))
    .unwrap();
    for flow in &tcp {
        assert!(
            flow["local_port"] == 80 && flow["origin"] == "ingress",
            "{flow}"
        );
        assert!(flow["packets_egress"].as_u64() >= Some(3), "{flow}");
    }
    assert!(pins.counter(PORT, "egress", "pass-established").unwrap() >= 6);
}

#[test]
fn a_reset_forgets_the_connection() {
    require_root!();
    let (port, pins) = setup().unwrap();
    let workload = addr(WORKLOAD_V4);
    let listener = port
        .workload
        .within(move || Ok(TcpListener::bind((workload, 80))?))
        .unwrap();
    let client = port
        .host
        .within(move || {
            let stream = TcpStream::connect_timeout(&(workload, 80).into(), WAIT)?;
            Ok(stream)
        })
        .unwrap();
    let (accepted, _) = listener.accept().unwrap();
    assert!(
        flows(&pins, &port, &["--state", "established"])
            .unwrap()
            .len()
            == 1
    );
    // Linger 0: close with an RST.
    nix::sys::socket::setsockopt(
        &accepted,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .unwrap();
    drop(accepted);
    let mut buf = [0u8; 1];
    client.set_read_timeout(Some(WAIT)).unwrap();
    assert!(
        (&client).read(&mut buf).is_err(),
        "the client hears of the reset"
    );
    assert!(flows(&pins, &port, &[]).unwrap().is_empty(), "no flow left");
}

#[test]
fn dns_and_ping_answers_come_back_on_egress_rules() {
    require_root!();
    let (port, pins) = setup().unwrap();
    for (workload, host) in [(WORKLOAD_V4, HOST_V4), (WORKLOAD_V6, HOST_V6)] {
        let (workload, host): (IpAddr, IpAddr) = (addr(workload), addr(host));
        let server = port
            .host
            .within(move || Ok(UdpSocket::bind((host, 53))?))
            .unwrap();
        server.set_read_timeout(Some(WAIT)).unwrap();
        let client = port
            .workload
            .within(move || Ok(UdpSocket::bind((workload, 0))?))
            .unwrap();
        client.set_read_timeout(Some(WAIT)).unwrap();
        client.send_to(b"query", (host, 53)).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert!(&buf[..n] == b"query");
        server.send_to(b"answer", from).unwrap();
        let n = client.recv(&mut buf).context("the answer").unwrap();
        assert!(&buf[..n] == b"answer");
        // The server, from another port, is no answer to anything.
        let other = port
            .host
            .within(move || Ok(UdpSocket::bind((host, 0))?))
            .unwrap();
        other
            .send_to(b"unsolicited", client.local_addr().unwrap())
            .unwrap();
        assert!(client.recv(&mut buf).is_err(), "unsolicited UDP is dropped");

        assert!(
            port.workload.ping(host).unwrap(),
            "the workload pings {host}"
        );
        assert!(
            !port.host.ping(workload).unwrap(),
            "no ping rule toward {workload}"
        );
    }
    let udp = flows(&pins, &port, &["--protocol", "udp", "--state", "replied"]).unwrap();
    assert!(udp.len() == 2, "{udp:?}");
    assert!(pins.counter(PORT, "ingress", "pass-established").unwrap() >= 4);
}

#[test]
fn removing_the_rule_stops_an_established_connection() {
    require_root!();
    let (port, pins) = setup().unwrap();
    let workload = addr(WORKLOAD_V4);
    let listener = port
        .workload
        .within(move || Ok(TcpListener::bind((workload, 80))?))
        .unwrap();
    let mut client = port
        .host
        .within(move || Ok(TcpStream::connect_timeout(&(workload, 80).into(), WAIT)?))
        .unwrap();
    let (mut accepted, _) = listener.accept().unwrap();
    accepted.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 5];
    client.write_all(b"first").unwrap();
    accepted.read_exact(&mut buf).unwrap();

    pins.install(PORT, &policy(false), "vm").unwrap();
    client.write_all(b"again").unwrap();
    assert!(
        accepted.read_exact(&mut buf).is_err(),
        "nothing more gets through"
    );
    assert!(pins.counter(PORT, "ingress", "drop-revoked").unwrap() == 1);
    assert!(
        flows(&pins, &port, &[]).unwrap().is_empty(),
        "the flow is gone"
    );
}

#[test]
fn the_conntrack_commands_list_count_and_flush() {
    require_root!();
    let (port, pins) = setup().unwrap();
    let host = port.host.name();
    assert!(port.workload.ping(addr(HOST_V4)).unwrap());
    assert!(port.workload.ping(addr(HOST_V6)).unwrap());
    let table = pins
        .sg_ctl_ok(&["--netns", host, "conntrack", "list"])
        .unwrap();
    assert!(
        table.contains("icmp id ") && table.contains("198.18.0.2 ") && table.contains("replied"),
        "{table}"
    );
    let v6 = flows(&pins, &port, &["--address", "2001:db8::/32"]).unwrap();
    assert!(v6.len() == 1 && v6[0]["protocol"] == "ipv6-icmp", "{v6:?}");

    let stats: Value = serde_json::from_str(
        &pins
            .sg_ctl_ok(&["-o", "json", "conntrack", "stats"])
            .unwrap(),
    )
    .unwrap();
    assert!(
        stats["entries"] == 2 && stats["established"].as_u64() >= Some(2),
        "{stats}"
    );

    // Errors say what to fix, with the exit codes of the CLI.
    let out = pins.sg_ctl(&["conntrack", "flush"]).unwrap();
    assert!(out.status.code() == Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--all"));
    let out = pins
        .sg_ctl(&["conntrack", "list", "--state", "open"])
        .unwrap();
    assert!(out.status.code() == Some(2));
    let out = pins
        .sg_ctl(&["--netns", host, "conntrack", "list", "--iface", "nope0"])
        .unwrap();
    assert!(out.status.code() == Some(3));

    let flushed = pins
        .sg_ctl_ok(&[
            "--netns",
            host,
            "conntrack",
            "flush",
            "--iface",
            PORT,
            "--address",
            HOST_V4,
        ])
        .unwrap();
    assert!(flushed.trim() == "flushed 1 flows", "{flushed}");
    assert!(flows(&pins, &port, &[]).unwrap().len() == 1);
    let flushed = pins.sg_ctl_ok(&["conntrack", "flush", "--all"]).unwrap();
    assert!(flushed.trim() == "flushed 1 flows", "{flushed}");
    let expired = pins.sg_ctl_ok(&["conntrack", "gc"]).unwrap();
    assert!(expired.trim() == "expired 0 flows", "{expired}");
}

/// The workload's bulk transfer to a server behind a link of a smaller
/// MTU: the host routes, and its "fragmentation needed" (IPv4) and "packet
/// too big" (IPv6) reach the workload as related to the connection,
/// though no rule lets ICMP in. Without them the transfer would stall.
#[test]
fn path_mtu_discovery_works_through_the_filter() {
    require_root!();
    let port = VethPort::new().unwrap();
    let pins = TestPins::new();
    pins.sg_ctl_ok(&["--netns", port.host.name(), "attach", PORT])
        .unwrap();
    let egress_tcp = json!({
        "groups": [{"name": "client", "rules": [{"direction": "egress", "protocol": "tcp"}]}],
        "ports": [{
            "name": "vm",
            "ifname": PORT,
            "mac": "02:00:00:00:00:02",
            "ips": [WORKLOAD_V4, WORKLOAD_V6],
            "groups": ["client"],
        }],
    });
    pins.install(PORT, &serde_json::from_value(egress_tcp).unwrap(), "vm")
        .unwrap();
    let far = Netns::new().unwrap();
    port.host.add_veth("far0", &far).unwrap();
    // The narrow link is the router's way out: the server's end keeps
    // 1500 bytes, so that its MSS does not spare the client the discovery.
    for (ns, dev, mtu, v4, v6) in [
        (
            &port.host,
            "far0",
            "1280",
            "198.18.2.1/24",
            "2001:db8:2::1/64",
        ),
        (&far, "eth0", "1500", "198.18.2.2/24", "2001:db8:2::2/64"),
    ] {
        ns.add_addr(dev, v4).unwrap();
        ns.add_addr(dev, v6).unwrap();
        ns.ip(&["link", "set", dev, "mtu", mtu, "up"]).unwrap();
    }
    for sysctl in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
        let out = port.host.exec("sysctl", &["-qw", sysctl]).unwrap();
        assert!(out.status.success(), "sysctl {sysctl}: {out:?}");
    }
    port.workload
        .ip(&["route", "add", "198.18.2.0/24", "via", HOST_V4])
        .unwrap();
    port.workload
        .ip(&["-6", "route", "add", "2001:db8:2::/64", "via", HOST_V6])
        .unwrap();
    far.ip(&["route", "add", "198.18.0.0/24", "via", "198.18.2.1"])
        .unwrap();
    far.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8::/64",
        "via",
        "2001:db8:2::1",
    ])
    .unwrap();

    const BYTES: usize = 256 * 1024;
    for server in ["198.18.2.2", "2001:db8:2::2"] {
        let server = addr(server);
        let listener = far
            .within(move || Ok(TcpListener::bind((server, 0))?))
            .unwrap();
        let target = listener.local_addr().unwrap();
        let reader = std::thread::spawn(move || -> Result<usize> {
            let (mut accepted, _) = listener.accept()?;
            accepted.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut received = Vec::new();
            accepted.read_to_end(&mut received)?;
            Ok(received.len())
        });
        // Long enough for the kernel's SYN retransmits (at 1 s and 3 s):
        // the test is of the transfer, not of how soon a loaded host
        // routes a first SYN.
        let mut client = port
            .workload
            .within(move || {
                Ok(TcpStream::connect_timeout(
                    &target,
                    Duration::from_secs(10),
                )?)
            })
            .unwrap();
        client
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client.write_all(&vec![7u8; BYTES]).unwrap();
        drop(client);
        let received = reader.join().expect("the reader ends").unwrap();
        assert!(received == BYTES, "{received} of {BYTES} bytes to {server}");
    }
    assert!(pins.counter(PORT, "ingress", "pass-related").unwrap() >= 2);
}

#[test]
fn watch_prints_flows_as_they_start_and_close() {
    require_root!();
    let (port, pins) = setup().unwrap();
    let mut watcher = std::process::Command::new(sg_tests::sg_ctl_binary())
        .args(["--pin-dir", pins.dir(), "-o", "json", "conntrack", "watch"])
        .args(["--count", "2", "--seconds", "30"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It says so once the ring is open, before the connection.
    let stderr = watcher
        .stderr
        .take()
        .context("the watcher's stderr")
        .unwrap();
    let mut said = String::new();
    std::io::BufReader::new(stderr)
        .read_line(&mut said)
        .unwrap();
    assert!(said.starts_with("watching"), "the watcher said: {said}");
    assert!(tcp_exchange(&port.host, &port.workload, addr(WORKLOAD_V4), 80).unwrap());
    let out = watcher.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let events: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .unwrap();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert!(kinds == ["new", "closed"], "{events:?}");
    for event in &events {
        assert!(
            event["protocol"] == "tcp"
                && event["local"] == WORKLOAD_V4
                && event["local_port"] == 80,
            "{event}"
        );
    }
    // Without an attached port there is nothing to watch.
    let out = TestPins::new()
        .sg_ctl(&["conntrack", "watch", "--seconds", "1"])
        .unwrap();
    assert!(out.status.code() == Some(3), "{out:?}");
}
