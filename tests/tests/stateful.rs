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

use anyhow::{Context as _, Result, ensure};
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
fn a_server_answers_on_its_ingress_rule_alone_and_nothing_else_gets_in() -> Result<()> {
    require_root!(Ok(()));
    let (port, pins) = setup()?;
    for (workload, host) in [(WORKLOAD_V4, HOST_V4), (WORKLOAD_V6, HOST_V6)] {
        let (workload, host) = (addr(workload), addr(host));
        ensure!(
            tcp_exchange(&port.host, &port.workload, workload, 80)?,
            "to {workload}:80 and back"
        );
        ensure!(
            !tcp_exchange(&port.host, &port.workload, workload, 8080)?,
            "{workload}:8080 is closed"
        );
        ensure!(
            !tcp_exchange(&port.workload, &port.host, host, 0)?,
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
    .with_context(|| format!("{tcp:?}"))?;
    for flow in &tcp {
        ensure!(
            flow["local_port"] == 80 && flow["origin"] == "ingress",
            "{flow}"
        );
        ensure!(flow["packets_egress"].as_u64() >= Some(3), "{flow}");
    }
    ensure!(pins.counter(PORT, "egress", "pass-established")? >= 6);
    Ok(())
}

#[test]
fn a_reset_forgets_the_connection() -> Result<()> {
    require_root!(Ok(()));
    let (port, pins) = setup()?;
    let workload = addr(WORKLOAD_V4);
    let listener = port
        .workload
        .within(move || Ok(TcpListener::bind((workload, 80))?))?;
    let client = port.host.within(move || {
        let stream = TcpStream::connect_timeout(&(workload, 80).into(), WAIT)?;
        Ok(stream)
    })?;
    let (accepted, _) = listener.accept()?;
    ensure!(flows(&pins, &port, &["--state", "established"])?.len() == 1);
    // Linger 0: close with an RST.
    nix::sys::socket::setsockopt(
        &accepted,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )?;
    drop(accepted);
    let mut buf = [0u8; 1];
    client.set_read_timeout(Some(WAIT))?;
    ensure!(
        (&client).read(&mut buf).is_err(),
        "the client hears of the reset"
    );
    ensure!(flows(&pins, &port, &[])?.is_empty(), "no flow left");
    Ok(())
}

#[test]
fn dns_and_ping_answers_come_back_on_egress_rules() -> Result<()> {
    require_root!(Ok(()));
    let (port, pins) = setup()?;
    for (workload, host) in [(WORKLOAD_V4, HOST_V4), (WORKLOAD_V6, HOST_V6)] {
        let (workload, host): (IpAddr, IpAddr) = (addr(workload), addr(host));
        let server = port.host.within(move || Ok(UdpSocket::bind((host, 53))?))?;
        server.set_read_timeout(Some(WAIT))?;
        let client = port
            .workload
            .within(move || Ok(UdpSocket::bind((workload, 0))?))?;
        client.set_read_timeout(Some(WAIT))?;
        client.send_to(b"query", (host, 53))?;
        let mut buf = [0u8; 16];
        let (n, from) = server.recv_from(&mut buf)?;
        ensure!(&buf[..n] == b"query");
        server.send_to(b"answer", from)?;
        let n = client.recv(&mut buf).context("the answer")?;
        ensure!(&buf[..n] == b"answer");
        // The server, from another port, is no answer to anything.
        let other = port.host.within(move || Ok(UdpSocket::bind((host, 0))?))?;
        other.send_to(b"unsolicited", client.local_addr()?)?;
        ensure!(client.recv(&mut buf).is_err(), "unsolicited UDP is dropped");

        ensure!(port.workload.ping(host)?, "the workload pings {host}");
        ensure!(!port.host.ping(workload)?, "no ping rule toward {workload}");
    }
    let udp = flows(&pins, &port, &["--protocol", "udp", "--state", "replied"])?;
    ensure!(udp.len() == 2, "{udp:?}");
    ensure!(pins.counter(PORT, "ingress", "pass-established")? >= 4);
    Ok(())
}

#[test]
fn removing_the_rule_stops_an_established_connection() -> Result<()> {
    require_root!(Ok(()));
    let (port, pins) = setup()?;
    let workload = addr(WORKLOAD_V4);
    let listener = port
        .workload
        .within(move || Ok(TcpListener::bind((workload, 80))?))?;
    let mut client = port
        .host
        .within(move || Ok(TcpStream::connect_timeout(&(workload, 80).into(), WAIT)?))?;
    let (mut accepted, _) = listener.accept()?;
    accepted.set_read_timeout(Some(WAIT))?;
    let mut buf = [0u8; 5];
    client.write_all(b"first")?;
    accepted.read_exact(&mut buf)?;

    pins.install(PORT, &policy(false), "vm")?;
    client.write_all(b"again")?;
    ensure!(
        accepted.read_exact(&mut buf).is_err(),
        "nothing more gets through"
    );
    ensure!(pins.counter(PORT, "ingress", "drop-revoked")? == 1);
    ensure!(flows(&pins, &port, &[])?.is_empty(), "the flow is gone");
    Ok(())
}

#[test]
fn the_conntrack_commands_list_count_and_flush() -> Result<()> {
    require_root!(Ok(()));
    let (port, pins) = setup()?;
    let host = port.host.name();
    ensure!(port.workload.ping(addr(HOST_V4))?);
    ensure!(port.workload.ping(addr(HOST_V6))?);
    let table = pins.sg_ctl_ok(&["--netns", host, "conntrack", "list"])?;
    ensure!(
        table.contains("icmp id ") && table.contains("198.18.0.2 ") && table.contains("replied"),
        "{table}"
    );
    let v6 = flows(&pins, &port, &["--address", "2001:db8::/32"])?;
    ensure!(v6.len() == 1 && v6[0]["protocol"] == "ipv6-icmp", "{v6:?}");

    let stats: Value =
        serde_json::from_str(&pins.sg_ctl_ok(&["-o", "json", "conntrack", "stats"])?)?;
    ensure!(
        stats["entries"] == 2 && stats["established"].as_u64() >= Some(2),
        "{stats}"
    );

    // Errors say what to fix, with the exit codes of the CLI.
    let out = pins.sg_ctl(&["conntrack", "flush"])?;
    ensure!(out.status.code() == Some(2));
    ensure!(String::from_utf8_lossy(&out.stderr).contains("--all"));
    let out = pins.sg_ctl(&["conntrack", "list", "--state", "open"])?;
    ensure!(out.status.code() == Some(2));
    let out = pins.sg_ctl(&["--netns", host, "conntrack", "list", "--iface", "nope0"])?;
    ensure!(out.status.code() == Some(3));

    let flushed = pins.sg_ctl_ok(&[
        "--netns",
        host,
        "conntrack",
        "flush",
        "--iface",
        PORT,
        "--address",
        HOST_V4,
    ])?;
    ensure!(flushed.trim() == "flushed 1 flows", "{flushed}");
    ensure!(flows(&pins, &port, &[])?.len() == 1);
    let flushed = pins.sg_ctl_ok(&["conntrack", "flush", "--all"])?;
    ensure!(flushed.trim() == "flushed 1 flows", "{flushed}");
    let expired = pins.sg_ctl_ok(&["conntrack", "gc"])?;
    ensure!(expired.trim() == "expired 0 flows", "{expired}");
    Ok(())
}

/// The workload's bulk transfer to a server behind a link of a smaller
/// MTU: the host routes, and its "fragmentation needed" (IPv4) and "packet
/// too big" (IPv6) reach the workload as related to the connection,
/// though no rule lets ICMP in. Without them the transfer would stall.
#[test]
fn path_mtu_discovery_works_through_the_filter() -> Result<()> {
    require_root!(Ok(()));
    let port = VethPort::new()?;
    let pins = TestPins::new();
    pins.sg_ctl_ok(&["--netns", port.host.name(), "attach", PORT])?;
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
    pins.install(PORT, &serde_json::from_value(egress_tcp)?, "vm")?;
    let far = Netns::new()?;
    port.host.add_veth("far0", &far)?;
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
        ns.add_addr(dev, v4)?;
        ns.add_addr(dev, v6)?;
        ns.ip(&["link", "set", dev, "mtu", mtu, "up"])?;
    }
    for sysctl in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
        let out = port.host.exec("sysctl", &["-qw", sysctl])?;
        ensure!(out.status.success(), "sysctl {sysctl}: {out:?}");
    }
    port.workload
        .ip(&["route", "add", "198.18.2.0/24", "via", HOST_V4])?;
    port.workload
        .ip(&["-6", "route", "add", "2001:db8:2::/64", "via", HOST_V6])?;
    far.ip(&["route", "add", "198.18.0.0/24", "via", "198.18.2.1"])?;
    far.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8::/64",
        "via",
        "2001:db8:2::1",
    ])?;

    const BYTES: usize = 256 * 1024;
    for server in ["198.18.2.2", "2001:db8:2::2"] {
        let server = addr(server);
        let listener = far.within(move || Ok(TcpListener::bind((server, 0))?))?;
        let target = listener.local_addr()?;
        let reader = std::thread::spawn(move || -> Result<usize> {
            let (mut accepted, _) = listener.accept()?;
            accepted.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut received = Vec::new();
            accepted.read_to_end(&mut received)?;
            Ok(received.len())
        });
        let mut client = port
            .workload
            .within(move || Ok(TcpStream::connect_timeout(&target, Duration::from_secs(3))?))?;
        client.set_write_timeout(Some(Duration::from_secs(5)))?;
        client.write_all(&vec![7u8; BYTES])?;
        drop(client);
        let received = reader.join().expect("the reader ends")?;
        ensure!(received == BYTES, "{received} of {BYTES} bytes to {server}");
    }
    ensure!(pins.counter(PORT, "ingress", "pass-related")? >= 2);
    Ok(())
}

#[test]
fn watch_prints_flows_as_they_start_and_close() -> Result<()> {
    require_root!(Ok(()));
    let (port, pins) = setup()?;
    let mut watcher = std::process::Command::new(sg_tests::sg_ctl_binary())
        .args(["--pin-dir", pins.dir(), "-o", "json", "conntrack", "watch"])
        .args(["--count", "2", "--seconds", "30"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // It says so once the ring is open, before the connection.
    let stderr = watcher.stderr.take().context("the watcher's stderr")?;
    let mut said = String::new();
    std::io::BufReader::new(stderr).read_line(&mut said)?;
    ensure!(said.starts_with("watching"), "the watcher said: {said}");
    ensure!(tcp_exchange(
        &port.host,
        &port.workload,
        addr(WORKLOAD_V4),
        80
    )?);
    let out = watcher.wait_with_output()?;
    ensure!(out.status.success(), "{out:?}");
    let events: Vec<Value> = String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    ensure!(kinds == ["new", "closed"], "{events:?}");
    for event in &events {
        ensure!(
            event["protocol"] == "tcp"
                && event["local"] == WORKLOAD_V4
                && event["local_port"] == 80,
            "{event}"
        );
    }
    // Without an attached port there is nothing to watch.
    let out = TestPins::new().sg_ctl(&["conntrack", "watch", "--seconds", "1"])?;
    ensure!(out.status.code() == Some(3), "{out:?}");
    Ok(())
}
