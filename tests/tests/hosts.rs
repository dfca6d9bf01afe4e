//! Several hosts sharing their desired state in a real etcd, started here
//! on loopback with a data directory of its own: a daemon per host (its
//! own pins, socket and namespaces), workloads on each host's bridge, the
//! hosts' bridges joined. A database on host C open only to group web,
//! whose members are on A and B; a web port added on B let in on C, and
//! blocked again once deleted; etcd stopped and started again under it;
//! one host's daemon killed and started again; two hosts changing one
//! group at once; how long a change takes to reach the other hosts.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use sg_tests::{Netns, TestDaemon, addr, eventually, mac_of, require_root};

/// How long a change may take to be in force on every host.
const SETTLED: Duration = Duration::from_secs(10);

/// How long etcd may take to revoke a lease (of `LEASE_TTL`, 5 s) that is
/// no longer kept alive.
const LEASE_REVOKED: Duration = Duration::from_secs(60);

/// A single-member etcd on loopback, in a temporary data directory;
/// stopped and removed when dropped.
struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    client: u16,
    peer: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Etcd {
    fn start() -> Result<Etcd> {
        let dir =
            std::env::temp_dir().join(format!("sg-etcd-{}-{}", std::process::id(), free_port()));
        // A port found free may be another test's by the time etcd binds
        // it, and etcd exits: then it starts on others.
        let mut tries = 0;
        loop {
            fs::create_dir_all(&dir)?;
            let client = free_port();
            let mut etcd = Etcd {
                child: None,
                dir: dir.clone(),
                client,
                peer: std::iter::repeat_with(free_port)
                    .find(|&peer| peer != client)
                    .expect("a second free port"),
            };
            match etcd.resume() {
                Ok(()) => return Ok(etcd),
                Err(e) if tries < 4 => {
                    eprintln!("etcd did not start ({e:#}); on other ports");
                    tries += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `etcd://127.0.0.1:PORT`, for `--store`.
    fn store(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client)
    }

    /// The URL etcd serves its clients on.
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    /// Whether etcd holds `key`, as `etcdctl` reads it.
    fn holds(&self, key: &str) -> Result<bool> {
        let out = Command::new("etcdctl")
            .args(["--endpoints", &self.client_url()])
            .args(["get", "--keys-only", key])
            .stderr(Stdio::inherit())
            .output()?;
        ensure!(out.status.success(), "etcdctl get {key}: {}", out.status);
        Ok(!out.stdout.trim_ascii().is_empty())
    }

    /// Starts etcd (again) on its data directory and waits until it answers.
    fn resume(&mut self) -> Result<()> {
        let client = self.client_url();
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let log = fs::File::create(self.dir.join("etcd.log"))?;
        let child = Command::new("etcd")
            .args(["--name", "default", "--logger", "zap", "--data-dir"])
            .arg(self.dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting etcd (`cargo xtask setup` installs etcd-server)")?;
        self.child = Some(child);
        let (child, log) = (&mut self.child, self.dir.join("etcd.log"));
        eventually("etcd answers", Duration::from_secs(30), || {
            if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let log = fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(3).collect();
                bail!("etcd exited ({status}): {}", tail.join(" | "));
            }
            Ok(Command::new("etcdctl")
                .args(["--endpoints", &client, "endpoint", "health"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?
                .success())
        })
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A daemon for host `name` on `etcd`.
fn daemon(etcd: &Etcd, name: &str) -> TestDaemon {
    TestDaemon::start_with(&["--store", &etcd.store(), "--host", name]).unwrap()
}

/// Hosts, each a namespace with a bridge, the bridges joined on
/// `fabric`'s; workloads behind a veth on their host's bridge.
struct Hosts {
    /// Holds the bridge joining the hosts'.
    _fabric: Netns,
    hosts: Vec<Netns>,
    workloads: Vec<(String, Netns, String)>,
}

impl Hosts {
    fn new(count: usize) -> Result<Hosts> {
        let fabric = Netns::new()?;
        fabric.ip(&["link", "add", "br0", "type", "bridge"])?;
        fabric.ip(&["link", "set", "br0", "up"])?;
        let mut hosts = Vec::new();
        for index in 0..count {
            let host = Netns::new()?;
            host.ip(&["link", "add", "br0", "type", "bridge"])?;
            host.ip(&["link", "set", "br0", "up"])?;
            let uplink = format!("up{index}");
            host.ip(&[
                "link",
                "add",
                "uplink",
                "type",
                "veth",
                "peer",
                "name",
                &uplink,
                "netns",
                fabric.name(),
            ])?;
            host.ip(&["link", "set", "uplink", "master", "br0", "up"])?;
            fabric.ip(&["link", "set", &uplink, "master", "br0", "up"])?;
            hosts.push(host);
        }
        Ok(Hosts {
            _fabric: fabric,
            hosts,
            workloads: Vec::new(),
        })
    }

    /// A workload on host `host` with address `ip`, its port's interface
    /// `h-NAME` there.
    fn workload(&mut self, host: usize, name: &str, ip: &str) -> Result<()> {
        let ns = Netns::new()?;
        let port = format!("h-{name}");
        self.hosts[host].add_veth(&port, &ns)?;
        self.hosts[host].ip(&["link", "set", &port, "master", "br0", "up"])?;
        ns.add_addr("eth0", &format!("{ip}/24"))?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        self.workloads.push((name.into(), ns, ip.into()));
        Ok(())
    }

    fn ns(&self, name: &str) -> &Netns {
        &self.workloads.iter().find(|w| w.0 == name).unwrap().1
    }

    fn pings(&self, from: &str, to: &str) -> Result<bool> {
        let ip = &self.workloads.iter().find(|w| w.0 == to).unwrap().2;
        self.ns(from).ping(addr(ip))
    }

    /// Makes `name`'s port on `host`'s daemon, in `groups`.
    fn port(&self, d: &TestDaemon, host: usize, name: &str, groups: &str) -> Result<()> {
        let ip = &self.workloads.iter().find(|w| w.0 == name).unwrap().2;
        let mac = mac_of(self.ns(name), "eth0")?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        let iface = format!("h-{name}");
        d.ok(&[
            "--netns",
            self.hosts[host].name(),
            "port",
            "create",
            name,
            "--iface",
            &iface,
            "--mac",
            &mac,
            "--ip",
            ip,
            "--group",
            groups,
        ])?;
        eventually(&format!("port {name} active"), SETTLED, || {
            Ok(d.json(&["port", "show", name])?["status"]["state"] == "active")
        })
    }
}

const GROUPS: &str = "groups:
  - name: web
    rules:
      - {direction: egress}
  - name: db
    rules:
      - {direction: egress}
      - {direction: ingress, protocol: icmp, remote: {group: web}}
      - {direction: ingress, protocol: tcp, ports: 5432, remote: {group: web}}
";

/// A TCP connection between two workloads, kept open to tell whether its
/// flow outlives what happens meanwhile.
struct Flow {
    client: TcpStream,
    server: TcpStream,
}

impl Flow {
    fn open(hosts: &Hosts, from: &str, to: &str, port: u16) -> Result<Flow> {
        let ip = addr(&hosts.workloads.iter().find(|w| w.0 == to).unwrap().2);
        let listener = hosts
            .ns(to)
            .within(move || Ok(std::net::TcpListener::bind((ip, port))?))?;
        let client = hosts.ns(from).within(move || {
            Ok(TcpStream::connect_timeout(
                &(ip, port).into(),
                Duration::from_secs(5),
            )?)
        })?;
        let (server, _) = listener.accept()?;
        for stream in [&client, &server] {
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        }
        Ok(Flow { client, server })
    }

    /// Whether a request and its answer still cross.
    fn exchanges(&mut self) -> bool {
        let mut buf = [0u8; 4];
        self.client.write_all(b"ping").is_ok()
            && self.server.read_exact(&mut buf).is_ok()
            && self.server.write_all(b"pong").is_ok()
            && self.client.read_exact(&mut buf).is_ok()
            && &buf == b"pong"
    }
}

/// The store as a daemon's status tells it.
fn status(d: &TestDaemon) -> serde_json::Value {
    d.json(&["daemon", "status"]).unwrap()
}

fn host_up(d: &TestDaemon, host: &str) -> bool {
    status(d)["hosts"]
        .as_array()
        .is_some_and(|hosts| hosts.iter().any(|h| h["name"] == host && h["up"] == true))
}

#[test]
fn a_group_spans_hosts_and_outlives_etcd_and_a_daemon() {
    require_root!();
    let mut etcd = Etcd::start().unwrap();
    let mut hosts = Hosts::new(3).unwrap();
    hosts.workload(0, "web1", "198.18.0.11").unwrap();
    hosts.workload(1, "web2", "198.18.0.12").unwrap();
    hosts.workload(2, "db", "198.18.0.20").unwrap();
    let mut a = daemon(&etcd, "a");
    let b = daemon(&etcd, "b");
    let c = daemon(&etcd, "c");
    let file = a.dir().join("groups.yaml");
    fs::write(&file, GROUPS).unwrap();
    a.ok(&["apply", "-f", file.to_str().unwrap()]).unwrap();
    hosts.port(&a, 0, "web1", "web").unwrap();
    hosts.port(&c, 2, "db", "db").unwrap();

    // Every host's API serves the cluster's state; each enforces its own.
    for d in [&a, &b, &c] {
        eventually("every port seen", SETTLED, || {
            Ok(d.json(&["port", "list"])?.as_array().map(Vec::len) == Some(2))
        })
        .unwrap();
    }
    let db = b.json(&["port", "show", "db"]).unwrap();
    assert_eq!(db["spec"]["host"], "c");
    assert_eq!(db["status"]["state"], "remote");
    assert!(status(&c)["reachable"] == true);

    // The database on C lets in web1 of A; web2 of B, in no group yet, not.
    eventually("web1 on A pings db on C", SETTLED, || {
        hosts.pings("web1", "db")
    })
    .unwrap();
    assert!(!hosts.pings("web2", "db").unwrap(), "web2 is no member yet");

    // A web port made on B: C installs db's policy with it and lets it in.
    let policy_id = |d: &TestDaemon| -> Result<serde_json::Value> {
        Ok(d.json(&["port", "show", "db"])?["policy_id"].clone())
    };
    let before = policy_id(&c).unwrap();
    let c_socket = c.socket();
    let made = Instant::now();
    let watching = thread::spawn(move || {
        eventually("db's policy on C recompiled", SETTLED, || {
            let db: serde_json::Value = serde_json::from_str(&get(&c_socket, "/v1/ports/db")?)?;
            Ok(db["policy_id"] != before)
        })
        .map(|()| made.elapsed())
    });
    hosts.port(&b, 1, "web2", "web").unwrap();
    let on_b = made.elapsed();
    let on_c = watching.join().unwrap().unwrap();
    eprintln!(
        "web2 made on B: active there after {on_b:?}; db's policy with it in force on C after \
         {on_c:?}"
    );
    eventually("web2 on B let in on C", SETTLED, || {
        hosts.pings("web2", "db")
    })
    .unwrap();
    // Deleted: blocked again.
    b.ok(&["port", "delete", "web2"]).unwrap();
    eventually("web2 blocked on C once deleted", SETTLED, || {
        Ok(!hosts.pings("web2", "db")?)
    })
    .unwrap();

    // etcd stopped: enforcement goes on, changes are refused naming the
    // store (exit 1), status and the metric say so; a tracked flow lives
    // through it and through the resync.
    let mut flow = Flow::open(&hosts, "web1", "db", 5432).unwrap();
    assert!(flow.exchanges(), "the flow before");
    etcd.stop();
    let (code, message) = c.fails(&["group", "create", "cache"]).unwrap();
    assert_eq!(code, 1, "{message}");
    assert!(
        message.contains(&etcd.store()) && message.contains("unreachable"),
        "{message}"
    );
    eventually("C sees the store unreachable", SETTLED, || {
        Ok(status(&c)["reachable"] == false)
    })
    .unwrap();
    assert_eq!(
        c.metric(&format!("sg_store_up{{store=\"{}\"}}", etcd.store()))
            .unwrap(),
        0
    );
    assert!(hosts.pings("web1", "db").unwrap(), "web1 still let in");
    assert!(!hosts.pings("web2", "db").unwrap(), "web2 still blocked");
    // Started again: changes are accepted, and seen on every host.
    etcd.resume().unwrap();
    eventually("a change accepted once etcd is back", SETTLED, || {
        Ok(c.sg_ctl(&["group", "create", "cache"])?.status.success())
    })
    .unwrap();
    for d in [&a, &b] {
        eventually("the change seen on the other hosts", SETTLED, || {
            Ok(d.sg_ctl(&["group", "show", "cache"])?.status.success())
        })
        .unwrap();
    }
    assert!(status(&a)["reachable"] == true);
    assert!(hosts.pings("web1", "db").unwrap(), "web1 let in after");
    assert!(flow.exchanges(), "the flow through etcd's restart");

    // A's daemon killed: the others go on; A shows down once its lease
    // expires, and its port stays a member (A's datapath still enforces
    // its policy). When etcd revokes the lease is etcd's timing, which a
    // loaded machine can stretch well past the TTL; sg's is from then on.
    a.kill().unwrap();
    let killed = Instant::now();
    eventually("etcd revoking A's lease", LEASE_REVOKED, || {
        Ok(!etcd.holds("/sg/hosts/a")?)
    })
    .unwrap();
    eprintln!(
        "A's lease revoked {:?} after its daemon was killed",
        killed.elapsed()
    );
    eventually("A down", SETTLED, || Ok(!host_up(&c, "a"))).unwrap();
    assert_eq!(
        c.json(&["port", "show", "web1"]).unwrap()["status"]["state"],
        "remote"
    );
    assert!(
        hosts.pings("web1", "db").unwrap(),
        "web1 let in while A is down"
    );
    b.ok(&["group", "create", "while-a-was-down"]).unwrap();
    hosts.workload(1, "web3", "198.18.0.13").unwrap();
    hosts.port(&b, 1, "web3", "web").unwrap();
    eventually("web3 on B let in on C", SETTLED, || {
        hosts.pings("web3", "db")
    })
    .unwrap();
    // A restarted catches up.
    a.spawn().unwrap();
    eventually("A catches up", SETTLED, || {
        Ok(a.sg_ctl(&["group", "show", "while-a-was-down"])?
            .status
            .success()
            && a.json(&["port", "show", "web3"])?["status"]["state"] == "remote"
            && host_up(&c, "a"))
    })
    .unwrap();
    eventually("web1 active again on A", SETTLED, || {
        Ok(a.json(&["port", "show", "web1"])?["status"]["state"] == "active")
    })
    .unwrap();
    assert!(
        hosts.pings("web1", "db").unwrap(),
        "web1 let in after A's restart"
    );
}

/// `PUT path` of `body` with `If-Match: revision` on a daemon's socket; the
/// answer's status.
fn put_if_match(socket: &Path, path: &str, body: &str, revision: u64) -> Result<u16> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "PUT {path} HTTP/1.1\r\nHost: sg\r\nContent-Type: application/json\r\n\
         If-Match: {revision}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .context("an HTTP status")?
        .parse()?;
    Ok(status)
}

#[test]
fn two_hosts_changing_one_group_at_once() {
    require_root!();
    let etcd = Etcd::start().unwrap();
    let a = daemon(&etcd, "a");
    let b = daemon(&etcd, "b");
    a.ok(&["group", "create", "web"]).unwrap();
    eventually("web seen on B", SETTLED, || {
        Ok(b.sg_ctl(&["group", "show", "web"])?.status.success())
    })
    .unwrap();
    for round in 0..5 {
        let revision = a.json(&["group", "show", "web"]).unwrap()["revision"]
            .as_u64()
            .unwrap();
        eventually("B at the same revision", SETTLED, || {
            Ok(b.json(&["group", "show", "web"])?["revision"] == revision)
        })
        .unwrap();
        let answers: Vec<u16> = [(&a, "by-a"), (&b, "by-b")]
            .map(|(d, who)| {
                let socket = d.socket();
                let body = format!(r#"{{"name": "web", "description": "{who} {round}"}}"#);
                thread::spawn(move || put_if_match(&socket, "/v1/groups/web", &body, revision))
            })
            .into_iter()
            .map(|t| t.join().unwrap().unwrap())
            .collect();
        let mut sorted = answers.clone();
        sorted.sort();
        assert_eq!(sorted, [200, 409], "round {round}: one wins, one gets 409");
        let winner = if answers[0] == 200 { "by-a" } else { "by-b" };
        for d in [&a, &b] {
            eventually("the winner's change everywhere", SETTLED, || {
                let web = d.json(&["group", "show", "web"])?;
                Ok(web["revision"] == revision + 1
                    && web["spec"]["description"] == format!("{winner} {round}"))
            })
            .unwrap();
        }
    }
    // Without If-Match, both changes land: nothing is lost (the group has
    // no rules since the rounds replaced it).
    let adds: Vec<bool> = [&a, &b]
        .map(|d| {
            let socket = d.socket();
            thread::spawn(move || {
                Command::new(sg_tests::sg_ctl_binary())
                    .arg("--socket")
                    .arg(socket)
                    .args(["rule", "add", "web", "--proto", "tcp", "--port", "80"])
                    .stdout(Stdio::null())
                    .status()
                    .map(|s| s.success())
            })
        })
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    assert_eq!(adds, [true, true]);
    // A token made on one host is good on the other; a port goes only to
    // a host whose daemon is up.
    let token = a.token("viewer").unwrap();
    eventually("the token good on B", SETTLED, || {
        Ok(
            b.sg_ctl(&["--token", token.as_str(), "group", "show", "web"])?
                .status
                .success(),
        )
    })
    .unwrap();
    let doc = a.dir().join("elsewhere.yaml");
    fs::write(
        &doc,
        "ports:\n  - {name: vm, ifname: tap0, mac: '52:54:00:00:00:01', groups: [default], \
         host: nowhere}\n",
    )
    .unwrap();
    let (code, message) = a.fails(&["apply", "-f", doc.to_str().unwrap()]).unwrap();
    assert_eq!(code, 2, "{message}");
    assert!(
        message.contains("no daemon of host 'nowhere' is up"),
        "{message}"
    );
    eventually("both rules on both hosts", SETTLED, || {
        let counts: Vec<usize> = [&a, &b]
            .iter()
            .map(|d| {
                d.json(&["group", "show", "web"])
                    .map(|web| web["spec"]["rules"].as_array().map_or(0, Vec::len))
            })
            .collect::<Result<_>>()?;
        Ok(counts == [2, 2])
    })
    .unwrap();
}

/// `GET path` on a daemon's socket as root; the body of a success.
fn get(socket: &Path, path: &str) -> Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: sg\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    ensure!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
    let (_, body) = answer.split_once("\r\n\r\n").context("an HTTP body")?;
    Ok(body.to_string())
}

/// `METHOD path` with `body` on a daemon's socket as root; fails unless
/// the answer is a success.
fn ask(socket: &Path, method: &str, path: &str, body: &str) -> Result<()> {
    let mut stream = UnixStream::connect(socket)?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: sg\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    ensure!(
        answer.starts_with("HTTP/1.1 2"),
        "{method} {path}: {answer}"
    );
    Ok(())
}

/// How long a change made on one host takes to be served by two others:
/// 100 groups made through A's API, each timed from the request until
/// B's and C's APIs show it. Prints p50 and p99; asserts nothing of speed.
#[test]
fn changes_reach_the_other_hosts() {
    require_root!();
    let etcd = Etcd::start().unwrap();
    let hosts: Vec<TestDaemon> = ["a", "b", "c"].iter().map(|h| daemon(&etcd, h)).collect();
    let mut took = Vec::new();
    for index in 0..100 {
        let name = format!("g{index}");
        let body = format!(r#"{{"name": "{name}"}}"#);
        let started = Instant::now();
        ask(&hosts[0].socket(), "POST", "/v1/groups", &body).unwrap();
        for d in &hosts[1..] {
            eventually("the group on the other hosts", SETTLED, || {
                Ok(ask(&d.socket(), "GET", &format!("/v1/groups/{name}"), "").is_ok())
            })
            .unwrap();
        }
        took.push(started.elapsed());
    }
    took.sort();
    eprintln!(
        "a change asked of host a, served by hosts b and c after: p50 {:?}, p99 {:?}, \
         max {:?} (100 changes)",
        took[49], took[98], took[99]
    );
}

/// The store and compiler layer of 50 hosts of 20 ports each, in this
/// process (no datapath): every port in the default group, whose rules
/// admit its members from every host. 100 changes (`SG_CHANGES`), each a
/// port made on the first host, timed until each host's store has it
/// from its watch; then what a host does with it, recompiling its 20
/// ports, timed. Prints p50 and p99; asserts nothing of speed.
#[test]
fn fifty_hosts_of_twenty_ports_see_a_change() {
    use sg_core::{compile, model::Port};
    use sg_ctl::store::Store;
    use std::{
        collections::HashMap,
        sync::{
            Arc, Condvar, Mutex,
            atomic::{AtomicBool, Ordering},
        },
    };
    require_root!();
    const HOSTS: usize = 50;
    const PORTS: usize = 20;
    let changes: usize = std::env::var("SG_CHANGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let etcd = Etcd::start().unwrap();
    let dir = tempfile_dir();
    let endpoints = vec![etcd.store().trim_start_matches("etcd://").to_string()];
    let stores: Vec<Arc<Mutex<Store>>> = (0..HOSTS)
        .map(|host| {
            let db = dir.join(format!("h{host}.db"));
            Arc::new(Mutex::new(
                Store::with_etcd(&db, &endpoints, &format!("h{host}")).unwrap(),
            ))
        })
        .collect();
    let port = |host: usize, index: usize| Port {
        ips: vec![addr(&format!("198.18.{}.{}", host, index + 1))],
        host: Some(format!("h{host}")),
        ..Port::new(
            format!("p{host}-{index}"),
            format!("tap{index}"),
            format!("52:54:00:00:{host:02x}:{:02x}", index + 1)
                .parse()
                .unwrap(),
        )
    };
    {
        let mut store = stores[0].lock().unwrap();
        let all: Vec<Port> = (0..HOSTS)
            .flat_map(|host| (0..PORTS).map(move |index| (host, index)))
            .map(|(host, index)| port(host, index))
            .collect();
        // One change is one transaction: etcd's --max-txn-ops (128 by
        // default) bounds it, and says so.
        let old = store.load().unwrap();
        let policy = sg_core::model::Policy {
            ports: all.clone(),
            ..old.policy.clone()
        };
        let refused = store.save(&old, &policy, &old.settings).unwrap_err();
        assert!(refused.to_string().contains("--max-txn-ops"), "{refused}");
        assert!(store.health().reachable, "a refusal is an answer");
        for chunk in all.chunks(100) {
            let old = store.load().unwrap();
            let mut policy = old.policy.clone();
            policy.ports.extend_from_slice(chunk);
            store.save(&old, &policy, &old.settings).unwrap();
        }
    }
    // Each host: when its store moves, record when it saw the revision.
    let seen: Arc<Mutex<HashMap<u64, Vec<Instant>>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = stores
        .iter()
        .map(|store| {
            let woken = Arc::new((Mutex::new(false), Condvar::new()));
            let waker = woken.clone();
            store.lock().unwrap().on_change(Arc::new(move || {
                *waker.0.lock().unwrap() = true;
                waker.1.notify_one();
            }));
            let (store, seen, stop) = (store.clone(), seen.clone(), stop.clone());
            thread::spawn(move || {
                let mut last = 0;
                while !stop.load(Ordering::Relaxed) {
                    let mut flag = woken.0.lock().unwrap();
                    flag = woken
                        .1
                        .wait_timeout_while(flag, Duration::from_millis(100), |woken| !*woken)
                        .unwrap()
                        .0;
                    *flag = false;
                    drop(flag);
                    let revision = store.lock().unwrap().revision();
                    if revision != last {
                        last = revision;
                        let now = Instant::now();
                        seen.lock().unwrap().entry(revision).or_default().push(now);
                    }
                }
            })
        })
        .collect();
    let (mut first, mut all) = (Vec::new(), Vec::new());
    for change in 0..changes {
        let old = stores[0].lock().unwrap().load().unwrap();
        let mut policy = old.policy.clone();
        policy.ports.push(Port {
            ips: vec![addr(&format!(
                "198.19.{}.{}",
                change / 200,
                change % 200 + 1
            ))],
            ..port(0, 100 + change)
        });
        let started = Instant::now();
        let state = stores[0]
            .lock()
            .unwrap()
            .save(&old, &policy, &old.settings)
            .unwrap();
        eventually("every host saw the change", Duration::from_secs(60), || {
            Ok(seen
                .lock()
                .unwrap()
                .get(&state.revision)
                .is_some_and(|hosts| hosts.len() == HOSTS))
        })
        .unwrap();
        let mut times: Vec<Duration> = seen.lock().unwrap()[&state.revision]
            .iter()
            .map(|at| at.saturating_duration_since(started))
            .collect();
        times.sort();
        first.push(times[0]);
        all.push(times[HOSTS - 1]);
    }
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    // What a host then does: recompile its ports, each admitting the
    // default group's members on every host (one host at a time, as each
    // has its own CPUs).
    let mut compiles: Vec<Duration> = stores[..5]
        .iter()
        .enumerate()
        .map(|(host, store)| {
            let state = store.lock().unwrap().load().unwrap();
            let policy = state.policy.effective(&state.settings);
            let started = Instant::now();
            let counters = compile::counter_ids(&policy).unwrap();
            let host = format!("h{host}");
            let mine = policy
                .ports
                .iter()
                .filter(|p| p.host.as_ref() == Some(&host));
            for port in mine {
                compile::compile(&policy, &port.name, 1, &counters).unwrap();
            }
            started.elapsed()
        })
        .collect();
    compiles.sort();
    first.sort();
    all.sort();
    let at = |times: &[Duration], share: usize| times[(times.len() * share).div_ceil(100) - 1];
    eprintln!(
        "{HOSTS} hosts × {PORTS} ports, {changes} changes: seen by the first host after p50 \
         {:?} p99 {:?}, by all {HOSTS} after p50 {:?} p99 {:?}; a host recompiles its \
         {PORTS} ports ({} members in the default group) in {:?} (median of 5)",
        at(&first, 50),
        at(&first, 99),
        at(&all, 50),
        at(&all, 99),
        HOSTS * PORTS + changes,
        compiles[2]
    );
    let _ = fs::remove_dir_all(&dir);
}

/// A directory of this test's own under the temporary directory.
fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sg-hosts-{}-{}", std::process::id(), free_port()));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A daemon whose watch comes back only after etcd compacted away what it
/// missed reads the whole state again: B is stopped (SIGSTOP) while etcd
/// restarts, A makes changes and etcd compacts; B, continued, finds its
/// watch gone, cannot resume it from its revision, and reads everything.
#[test]
fn a_daemon_behind_a_compaction_reads_the_whole_state() {
    require_root!();
    let mut etcd = Etcd::start().unwrap();
    let a = daemon(&etcd, "a");
    let b = daemon(&etcd, "b");
    a.ok(&["group", "create", "before"]).unwrap();
    eventually("B has the group", SETTLED, || {
        Ok(b.sg_ctl(&["group", "show", "before"])?.status.success())
    })
    .unwrap();
    let signal = |signal| {
        // SAFETY: signalling a child the guard owns and has not reaped.
        let done = unsafe { libc::kill(b.pid().unwrap() as libc::pid_t, signal) };
        assert_eq!(done, 0);
    };
    signal(libc::SIGSTOP);
    etcd.stop();
    etcd.resume().unwrap();
    eventually("A's change accepted once etcd is back", SETTLED, || {
        Ok(a.sg_ctl(&["group", "create", "missed"])?.status.success())
    })
    .unwrap();
    a.ok(&["group", "delete", "before"]).unwrap();
    let endpoint = etcd.store().replace("etcd://", "http://");
    let revision: serde_json::Value = serde_json::from_slice(
        &Command::new("etcdctl")
            .args(["--endpoints", &endpoint, "-w", "json", "get", "/sg/state"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let revision = revision["header"]["revision"].as_i64().unwrap().to_string();
    let compacted = Command::new("etcdctl")
        .args(["--endpoints", &endpoint, "compact", &revision])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(compacted.success());
    signal(libc::SIGCONT);
    eventually("B read the whole state again", SETTLED, || {
        Ok(b.sg_ctl(&["group", "show", "missed"])?.status.success()
            && !b.sg_ctl(&["group", "show", "before"])?.status.success())
    })
    .unwrap();
    assert!(b.log().contains("compacted the revisions"), "{}", b.log());
}
