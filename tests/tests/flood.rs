//! One workload cannot take the connection table from the others. Port A's
//! workload floods new UDP and raw-protocol flows (251–254) at its full
//! rate, from an AF_PACKET socket in its namespace, for at least 10 s;
//! meanwhile port B's workload opens 1,000 TCP connections and 1,000 UDP
//! flows to a server on the same bridge, each of which must succeed, and
//! none of B's packets is dropped for want of room. Once with the daemon
//! running, once with it killed first (the pins go on enforcing, and no
//! one expires flows but the datapath itself).

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use sg_common::DEFAULT_FLOWS_PER_PORT;
use sg_ctl::frame::{Packet, Transport};
use sg_tests::{
    FrameFile, Lan, TestDaemon, eventually, join, mac_of, ones_complement_sum, require_root,
};

/// The flood goes on at least this long, and until B is done.
const FLOOD: Duration = Duration::from_secs(10);
/// Bounds of everything: the flood, B's work, the servers.
const BOUND: Duration = Duration::from_secs(120);
/// Frames the flood sends at most.
const MAX_FRAMES: u64 = 50_000_000;
/// B's connections and flows.
const FLOWS: usize = 1000;
/// How long one of B's exchanges may take.
const WAIT: Duration = Duration::from_secs(3);
const SERVICE: u16 = 7;

/// What a run saw.
struct Seen {
    frames: u64,
    flood: Duration,
    /// New flows A started (its `pass` egress), the entries it held at
    /// the end, and its new flows dropped for its limit.
    a_started: u64,
    a_held: u64,
    a_port_full: u64,
    /// B's exchanges that failed, and its packets dropped for room.
    b_failures: usize,
    b_room_drops: u64,
    b_took: Duration,
    entries: u64,
    capacity: u64,
}

/// The addresses on the bridge.
const A: &str = "198.18.0.11";
const B: &str = "198.18.0.12";
const SERVER: &str = "198.18.0.20";

fn run(kill_daemon: bool) -> Seen {
    let lan = Lan::new(&[("a", A), ("b", B), ("s", SERVER)]).unwrap();
    let mut d = TestDaemon::start().unwrap();
    // A and B are sg ports in the default group (all egress allowed);
    // the server is not.
    let mut ports = String::from("ports:\n");
    for name in ["a", "b"] {
        let mac = mac_of(lan.ns(name), "eth0").unwrap();
        let mac: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
        ports += &format!(
            "  - {{name: {name}, ifname: h-{name}, netns: {}, mac: '{}', ips: [{}], groups: [default]}}\n",
            lan.host.name(),
            mac.join(":"),
            lan.ip(name)
        );
    }
    let file = d.dir().join("policy.yaml");
    std::fs::write(&file, ports).unwrap();
    d.ok(&["apply", "-f", file.to_str().unwrap()]).unwrap();
    for name in ["a", "b"] {
        eventually(&format!("port {name} active"), BOUND, || {
            Ok(d.json(&["port", "show", name])?["status"]["state"] == "active")
        })
        .unwrap();
    }
    if kill_daemon {
        // A's unreplied flows expire within the flood, and with no daemon
        // only the datapath can take their room.
        d.ok(&["settings", "set", "conntrack.unreplied", "2"])
            .unwrap();
        d.kill().unwrap();
    }
    let pins = &d.pins;
    let datapath = pins.datapath();
    let slot_a = pins.slot("h-a").unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let servers = serve(&lan, stop.clone()).unwrap();
    let b_done = Arc::new(AtomicBool::new(false));
    let flood = {
        let frames = flood_frames(&lan).unwrap();
        let mut socket = FrameFile::packet_socket(lan.ns("a"), "eth0", false).unwrap();
        let b_done = b_done.clone();
        thread::spawn(move || -> Result<(u64, Duration)> {
            let started = Instant::now();
            let mut sent = 0;
            let mut frame = Vec::new();
            while sent < MAX_FRAMES {
                if sent % 1024 == 0 {
                    let elapsed = started.elapsed();
                    if elapsed >= BOUND || elapsed >= FLOOD && b_done.load(Ordering::Relaxed) {
                        break;
                    }
                }
                frames.nth(sent, &mut frame);
                // A frame the kernel could not take (no buffer) is not a
                // flow; the next one is.
                let _ = socket.send(&frame);
                sent += 1;
            }
            Ok((sent, started.elapsed()))
        })
    };
    let b = {
        let b_done = b_done.clone();
        lan.ns("b").spawn(move || {
            // With the flood.
            let started = Instant::now();
            let failures = workload(started);
            b_done.store(true, Ordering::Relaxed);
            Ok((failures, started.elapsed()))
        })
    };
    let (b_failures, b_took) = join(b).unwrap();
    let (frames, flood) = flood.join().unwrap().unwrap();
    stop.store(true, Ordering::Relaxed);
    for server in servers {
        server.join().unwrap().unwrap();
    }

    let counter = |iface: &str, direction: &str, outcome: &str| {
        pins.counter(iface, direction, outcome).unwrap()
    };
    let room_drops = |iface: &str| -> u64 {
        ["egress", "ingress"]
            .iter()
            .flat_map(|dir| {
                ["drop-conntrack-full", "drop-conntrack-port-full"].map(|o| counter(iface, dir, o))
            })
            .sum()
    };
    let stats = datapath.conntrack_stats().unwrap();
    Seen {
        frames,
        flood,
        a_started: counter("h-a", "egress", "pass"),
        a_held: datapath.port_flows(slot_a).unwrap().flows,
        a_port_full: counter("h-a", "egress", "drop-conntrack-port-full"),
        b_failures,
        b_room_drops: room_drops("h-b"),
        b_took,
        entries: stats.entries as u64,
        capacity: stats.capacity.into(),
    }
}

/// The server's TCP and UDP echo on port 7, until `stop`.
fn serve(lan: &Lan, stop: Arc<AtomicBool>) -> Result<Vec<thread::JoinHandle<Result<()>>>> {
    let at = SocketAddr::new(lan.ip("s"), SERVICE);
    let (listener, udp) = lan.ns("s").within(move || {
        let listener = TcpListener::bind(at)?;
        listener.set_nonblocking(true)?;
        let udp = UdpSocket::bind(at)?;
        udp.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok((listener, udp))
    })?;
    let started = Instant::now();
    let running =
        move |stop: &AtomicBool| !stop.load(Ordering::Relaxed) && started.elapsed() < BOUND;
    let tcp_stop = stop.clone();
    let tcp = thread::spawn(move || -> Result<()> {
        while running(&tcp_stop) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false)?;
                    stream.set_read_timeout(Some(WAIT))?;
                    let mut byte = [0u8];
                    if stream.read_exact(&mut byte).is_ok() {
                        let _ = stream.write_all(&byte);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e).context("accepting"),
            }
        }
        Ok(())
    });
    let udp = thread::spawn(move || -> Result<()> {
        let mut buf = [0u8; 64];
        while running(&stop) {
            if let Ok((n, from)) = udp.recv_from(&mut buf) {
                udp.send_to(&buf[..n], from)?;
            }
        }
        Ok(())
    });
    Ok(vec![tcp, udp])
}

/// B's work, in its namespace: `FLOWS` TCP connections, each a byte
/// there and back, then `FLOWS` UDP flows (a socket each, so a port
/// each), each a datagram and its echo, spread over the flood (one no
/// sooner than every `FLOOD / 2 FLOWS`). The exchanges that failed, and
/// those not tried within the bound.
fn workload(started: Instant) -> usize {
    let pace = FLOOD / (2 * FLOWS as u32);
    let server = SocketAddr::new(IpAddr::V4(SERVER.parse::<Ipv4Addr>().unwrap()), SERVICE);
    let tcp = || -> Result<()> {
        let mut stream = TcpStream::connect_timeout(&server, WAIT)?;
        stream.set_read_timeout(Some(WAIT))?;
        stream.write_all(b"t")?;
        let mut byte = [0u8];
        stream.read_exact(&mut byte)?;
        anyhow::ensure!(&byte == b"t", "the echo");
        Ok(())
    };
    let udp = || -> Result<()> {
        let socket = UdpSocket::bind((B, 0))?;
        socket.set_read_timeout(Some(WAIT))?;
        socket.send_to(b"u", server)?;
        let mut byte = [0u8];
        let (_, from) = socket.recv_from(&mut byte)?;
        anyhow::ensure!(from == server && &byte == b"u", "the echo");
        Ok(())
    };
    let mut failures = 0;
    for (k, exchange) in [&tcp as &dyn Fn() -> Result<()>, &udp].iter().enumerate() {
        for n in 0..FLOWS {
            if started.elapsed() >= BOUND {
                failures += FLOWS - n;
                break;
            }
            let due = pace * (k * FLOWS + n) as u32;
            thread::sleep(due.saturating_sub(started.elapsed()));
            if let Err(e) = exchange() {
                if failures < 5 {
                    eprintln!("B's exchange {n}: {e:#}");
                }
                failures += 1;
            }
        }
    }
    failures
}

/// A's frames, from its MAC and address to the bridge's MAC (the host
/// namespace, which forwards nothing, drops them: they reach no other
/// workload): UDP to 65,536 addresses × 50,000 ports, and protocols
/// 251–254 to the 65,536 addresses, in turn.
struct FloodFrames {
    udp: Vec<u8>,
    raw: Vec<u8>,
}

/// Where the IPv4 header starts in an untagged frame.
const IP: usize = 14;

fn flood_frames(lan: &Lan) -> Result<FloodFrames> {
    let src_mac = mac_of(lan.ns("a"), "eth0")?;
    let dst_mac = mac_of(&lan.host, "br0")?;
    let template = |transport: Transport| -> Result<Vec<u8>> {
        let mut packet = Packet::udp(lan.ip("a"), "198.19.0.0".parse()?, 40000, 10000);
        packet.transport = transport;
        packet.src_mac = src_mac;
        packet.dst_mac = dst_mac;
        Ok(packet.frame()?)
    };
    Ok(FloodFrames {
        udp: template(Transport::Udp {
            src_port: 40000,
            dst_port: 10000,
        })?,
        raw: template(Transport::Other { protocol: 251 })?,
    })
}

impl FloodFrames {
    /// Writes the `n`th frame of the flood into `frame`.
    fn nth(&self, n: u64, frame: &mut Vec<u8>) {
        let (kind, k) = (n % 2, n / 2);
        let address = (k % 65_536) as u16;
        let round = k / 65_536;
        frame.clear();
        if kind == 0 {
            frame.extend_from_slice(&self.udp);
            let port = 10_000 + (round % 50_000) as u16;
            frame[IP + 22..IP + 24].copy_from_slice(&port.to_be_bytes());
            // No UDP checksum (IPv4 allows it).
            frame[IP + 26..IP + 28].copy_from_slice(&[0, 0]);
        } else {
            frame.extend_from_slice(&self.raw);
            frame[IP + 9] = 251 + (round % 4) as u8;
        }
        frame[IP + 18..IP + 20].copy_from_slice(&address.to_be_bytes());
        frame[IP + 10..IP + 12].copy_from_slice(&[0, 0]);
        let checksum = !ones_complement_sum(&frame[IP..IP + 20]);
        frame[IP + 10..IP + 12].copy_from_slice(&checksum.to_be_bytes());
    }
}

/// What every run must show: B untouched, A held to its limit.
fn check(seen: &Seen) {
    eprintln!(
        "A: {} frames in {:.1} s ({:.0}/s), {} flows started, {} held at the end, {} new \
         flows dropped as drop-conntrack-port-full; B: {} exchanges in {:.1} s, {} failed, \
         {} packets dropped for room; the table: {} of {} entries",
        seen.frames,
        seen.flood.as_secs_f64(),
        seen.frames as f64 / seen.flood.as_secs_f64(),
        seen.a_started,
        seen.a_held,
        seen.a_port_full,
        2 * FLOWS,
        seen.b_took.as_secs_f64(),
        seen.b_failures,
        seen.b_room_drops,
        seen.entries,
        seen.capacity
    );
    assert!(seen.flood >= FLOOD, "the flood lasted {:?}", seen.flood);
    assert_eq!(seen.b_failures, 0, "B's failures");
    assert_eq!(seen.b_room_drops, 0, "B's packets dropped for room");
    // A reached its limit and no more (by the CPUs adding at once at most).
    let slack = thread::available_parallelism().map_or(64, |n| n.get() as u64);
    assert!(seen.a_port_full > 0, "A never reached its limit");
    let limit = u64::from(DEFAULT_FLOWS_PER_PORT);
    assert!(seen.a_held <= limit + slack, "A holds {}", seen.a_held);
    assert!(seen.entries < seen.capacity, "the table is full");
}

#[test]
fn a_flooding_port_holds_its_limit_and_another_port_s_flows_all_succeed() {
    require_root!();
    let seen = run(false);
    check(&seen);
}

#[test]
fn with_the_daemon_killed_the_datapath_holds_the_flood_and_reclaims_expired_flows() {
    require_root!();
    let seen = run(true);
    check(&seen);
    // A's flows expired within the flood, and the datapath took their
    // room for new ones: A started more flows than its limit.
    assert!(
        seen.a_started > u64::from(DEFAULT_FLOWS_PER_PORT),
        "A started {} flows",
        seen.a_started
    );
}
