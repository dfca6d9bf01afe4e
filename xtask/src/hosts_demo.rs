//! `cargo xtask demo --hosts N`: a group spanning hosts. An etcd on
//! loopback holds the desired state; each host is a network namespace with
//! a bridge (the bridges joined on a fabric namespace's) and a daemon of
//! its own (pins, socket, database, `--host`). Web workloads on the first
//! hosts, a database on the last open only to group web: the database's
//! host lets in the web members of every other host, and a workload that
//! joins web on one host is let in on another at once.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{Step, run};

const STATE_DIR: &str = "/run/sg-demo-hosts";
const FABRIC: &str = "sg-demo-fabric";

/// A workload: its name, host, address and MAC.
struct Workload {
    name: String,
    host: usize,
    ip: String,
    mac: String,
}

fn host_ns(host: usize) -> String {
    format!("sg-demo-h{host}")
}

fn pin_dir(host: usize) -> String {
    format!("/sys/fs/bpf/sg-demo-h{host}")
}

fn host_dir(host: usize) -> PathBuf {
    Path::new(STATE_DIR).join(format!("h{host}"))
}

fn socket(host: usize) -> PathBuf {
    host_dir(host).join("sg.sock")
}

/// Stops what the demo started, whatever happens.
struct Cleanup {
    children: Vec<Child>,
    sg_ctl: PathBuf,
    hosts: usize,
    namespaces: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Daemons first, etcd (the first child) last.
        for child in self.children.iter_mut().rev() {
            // SAFETY: signalling a child we own and have not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
        for host in 0..self.hosts {
            let _ = Command::new(&self.sg_ctl)
                .args(["--pin-dir", &pin_dir(host), "detach", "--all"])
                .stdout(Stdio::null())
                .status();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(STATE_DIR);
    }
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args))
}

fn shown(cmd: &mut Command) -> Result<()> {
    println!("    $ {}", crate::describe(cmd));
    run(cmd)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `ready` holds, for `what`, 20 s at most.
fn wait(what: &str, mut ready: impl FnMut() -> bool) -> Result<Duration> {
    let started = Instant::now();
    while !ready() {
        if started.elapsed() > Duration::from_secs(20) {
            bail!("{what}: not within 20 s");
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(started.elapsed())
}

/// Whether `from` gets an answer to one ping of `to`.
fn pings(from: &Workload, to: &Workload) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", &from.name, "ping", "-c", "1", "-W", "1", "-q",
        ])
        .arg(&to.ip)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn topology(hosts: usize, workloads: &[Workload], cleanup: &mut Cleanup) -> Result<()> {
    cleanup.namespaces.push(FABRIC.into());
    cleanup.namespaces.extend((0..hosts).map(host_ns));
    cleanup
        .namespaces
        .extend(workloads.iter().map(|w| w.name.clone()));
    for ns in cleanup.namespaces.clone() {
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    }
    ip(&["-n", FABRIC, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", FABRIC, "link", "set", "br0", "up"])?;
    for host in 0..hosts {
        let ns = host_ns(host);
        let uplink = format!("up{host}");
        ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &ns, "link", "set", "br0", "up"])?;
        ip(&[
            "-n", &ns, "link", "add", "uplink", "type", "veth", "peer", "name", &uplink, "netns",
            FABRIC,
        ])?;
        ip(&["-n", &ns, "link", "set", "uplink", "master", "br0", "up"])?;
        ip(&["-n", FABRIC, "link", "set", &uplink, "master", "br0", "up"])?;
    }
    for w in workloads {
        let ns = host_ns(w.host);
        let port = format!("p-{}", w.name);
        ip(&[
            "link", "add", &port, "netns", &ns, "type", "veth", "peer", "name", "eth0", "address",
            &w.mac, "netns", &w.name,
        ])?;
        ip(&["-n", &ns, "link", "set", &port, "master", "br0", "up"])?;
        ip(&[
            "-n",
            &w.name,
            "addr",
            "add",
            &format!("{}/24", w.ip),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &w.name, "link", "set", "eth0", "up"])?;
    }
    Ok(())
}

fn start_etcd(cleanup: &mut Cleanup) -> Result<String> {
    let (client, peer) = (free_port()?, free_port()?);
    let dir = Path::new(STATE_DIR).join("etcd");
    fs::create_dir_all(&dir)?;
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut etcd = Command::new("etcd");
    etcd.args(["--name", "default", "--logger", "zap", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("default={peer_url}")])
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("etcd.log"))?);
    println!("    $ {} &", crate::describe(&etcd));
    cleanup.children.push(
        etcd.spawn()
            .context("starting etcd (`cargo xtask setup` installs etcd-server)")?,
    );
    wait("etcd answers", || {
        Command::new("etcdctl")
            .args(["--endpoints", &client_url, "endpoint", "health"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })?;
    Ok(format!("etcd://127.0.0.1:{client}"))
}

fn start_daemon(sg_ctl: &Path, store: &str, host: usize, cleanup: &mut Cleanup) -> Result<()> {
    let dir = host_dir(host);
    fs::create_dir_all(&dir)?;
    let log = fs::File::create(dir.join("daemon.log"))?;
    let mut daemon = Command::new(sg_ctl);
    daemon
        .args(["--pin-dir", &pin_dir(host), "--socket"])
        .arg(socket(host))
        .args([
            "daemon",
            "--store",
            store,
            "--host",
            &format!("h{host}"),
            "--db",
        ])
        .arg(dir.join("sg.db"))
        .stdout(log.try_clone()?)
        .stderr(log);
    println!("    $ {} &", crate::describe(&daemon));
    cleanup
        .children
        .push(daemon.spawn().context("starting sg-ctl daemon")?);
    wait("the daemon's socket", || socket(host).exists()).map(drop)
}

pub fn run_demo(sg_ctl: &Path, hosts: usize) -> Result<()> {
    if hosts < 2 {
        bail!("--hosts: a group spans hosts from 2 on; use --hosts 3, say");
    }
    let sg = |host: usize| {
        let mut cmd = Command::new(sg_ctl);
        cmd.env("SG_PIN_DIR", pin_dir(host))
            .env("SG_SOCKET", socket(host));
        cmd
    };
    let db_host = hosts - 1;
    let mut workloads: Vec<Workload> = (0..db_host)
        .map(|host| Workload {
            name: format!("sg-demo-web{host}"),
            host,
            ip: format!("198.18.2.{}", 10 + host),
            mac: format!("02:00:5e:10:02:{:02x}", 10 + host),
        })
        .collect();
    workloads.push(Workload {
        name: "sg-demo-db".into(),
        host: db_host,
        ip: "198.18.2.100".into(),
        mac: "02:00:5e:10:02:64".into(),
    });
    workloads.push(Workload {
        name: "sg-demo-new".into(),
        host: 0,
        ip: "198.18.2.200".into(),
        mac: "02:00:5e:10:02:c8".into(),
    });
    let mut step = Step::new("demo", 7);
    let mut cleanup = Cleanup {
        children: Vec::new(),
        sg_ctl: sg_ctl.to_path_buf(),
        hosts,
        namespaces: Vec::new(),
    };

    step.next(&format!(
        "{hosts} hosts (namespaces with a bridge, joined on {FABRIC}); web workloads on \
         h0..h{}, a database on h{db_host}",
        db_host - 1
    ));
    topology(hosts, &workloads, &mut cleanup)?;

    step.next("etcd on loopback, and a daemon per host sharing its desired state");
    let store = start_etcd(&mut cleanup)?;
    for host in 0..hosts {
        start_daemon(sg_ctl, &store, host, &mut cleanup)?;
    }

    step.next("groups, made on h0: web, and db open to web's members (ping, 5432)");
    shown(sg(0).args(["group", "create", "web"]))?;
    shown(sg(0).args(["group", "create", "db"]))?;
    shown(sg(0).args([
        "rule",
        "add",
        "db",
        "--proto",
        "icmp",
        "--remote-group",
        "web",
    ]))?;
    shown(sg(0).args([
        "rule",
        "add",
        "db",
        "--proto",
        "tcp",
        "--port",
        "5432",
        "--remote-group",
        "web",
    ]))?;

    step.next("ports, each made through its own host's daemon");
    for w in &workloads {
        let group = match w.name.as_str() {
            "sg-demo-db" => "db",
            "sg-demo-new" => "default",
            _ => "web",
        };
        shown(sg(w.host).args([
            "--netns",
            &host_ns(w.host),
            "port",
            "create",
            &w.name,
            "--iface",
            &format!("p-{}", w.name),
            "--mac",
            &w.mac,
            "--ip",
            &w.ip,
            "--group",
            group,
        ]))?;
    }
    println!("    every host's daemon serves the whole cluster's state; h{db_host}'s:");
    shown(sg(db_host).args(["port", "list"]))?;
    shown(sg(db_host).args(["daemon", "status"]))?;

    step.next(&format!(
        "traffic: web on every host reaches the database on h{db_host}; the newcomer not"
    ));
    let db = &workloads[db_host];
    let newcomer = &workloads[db_host + 1];
    for web in &workloads[..db_host] {
        wait(&format!("{} pings the database", web.name), || {
            pings(web, db)
        })?;
        println!("    {} (h{}) → database: answered", web.name, web.host);
    }
    if pings(newcomer, db) {
        bail!("the newcomer, in no web group, reached the database");
    }
    println!(
        "    {} (h0, group default) → database: dropped",
        newcomer.name
    );

    step.next(&format!(
        "the newcomer joins web on h0: h{db_host} lets it in, the change carried by etcd"
    ));
    shown(sg(0).args(["port", "attach", &newcomer.name, "web"]))?;
    let took = wait("the newcomer let in", || pings(newcomer, db))?;
    println!(
        "    {} → database: answered ({took:.1?} after the attach returned)",
        newcomer.name
    );

    step.next("stopping the daemons and etcd, detaching sg, removing the namespaces");
    drop(cleanup);
    println!("demo done: one group's members on {hosts} hosts, enforced where the database is");
    Ok(())
}
