//! The demo: a host with a bridge and two workloads, each in its own
//! network namespace, each on a port of the bridge. `sg-ctl daemon` keeps
//! their security groups; the CLI makes the groups, rules and ports. Real
//! connections are allowed, dropped and rejected, a spoofed source is
//! dropped, `trace` says why, and the counters show it all.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{Step, run};

const HOST: &str = "sg-demo-host";
const WEB: &str = "sg-demo-web";
const CLIENT: &str = "sg-demo-client";
const WEB_PORT: &str = "web0";
const CLIENT_PORT: &str = "client0";
const WEB_V4: &str = "198.18.1.10";
const WEB_V6: &str = "2001:db8:1::10";
const WEB_MAC: &str = "02:00:5e:10:01:10";
const CLIENT_V4: &str = "198.18.1.20";
const CLIENT_V6: &str = "2001:db8:1::20";
const CLIENT_MAC: &str = "02:00:5e:10:01:20";
/// An address the client takes without owning it.
const SPOOFED_V4: &str = "198.18.1.99";
/// The demo's own pins, state and socket: a real sg on the machine is left
/// alone.
const PIN_DIR: &str = "/sys/fs/bpf/sg-demo";
const STATE_DIR: &str = "/run/sg-demo";

/// Stops what the demo started, whatever happens: the daemon, the web
/// server, sg's filters and pins, the namespaces.
struct Cleanup {
    children: Vec<Child>,
    sg_ctl: PathBuf,
}

impl Cleanup {
    fn remove_namespaces() {
        for ns in [HOST, WEB, CLIENT] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for child in &mut self.children {
            // SAFETY: signalling a child we own and have not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
        let _ = Command::new(&self.sg_ctl)
            .args(["--pin-dir", PIN_DIR, "detach", "--all"])
            .stdout(Stdio::null())
            .status();
        Cleanup::remove_namespaces();
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

/// Whether `ping ARGS` from the client gets its replies.
fn ping(args: &[&str]) -> bool {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", CLIENT, "ping"])
        .args(args)
        .args(["-c", "3", "-i", "0.2", "-W", "1", "-q"]);
    println!("    $ {}", crate::describe(&cmd));
    cmd.status().is_ok_and(|s| s.success())
}

/// What a TCP connection from the client to the web workload's `port`
/// ends with: "connected", "refused" or "timed out" (after 2 s).
fn connect(port: u16) -> Result<String> {
    let script = "import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
    print('connected')
except ConnectionRefusedError:
    print('refused')
except OSError:
    print('timed out')";
    let out = Command::new("ip")
        .args(["netns", "exec", CLIENT, "python3", "-c", script, WEB_V4])
        .arg(port.to_string())
        .output()
        .context("running python3 in the client's namespace")?;
    let result = String::from_utf8_lossy(&out.stdout).trim().to_string();
    println!("    client → {WEB_V4}:{port}: {result}");
    Ok(result)
}

fn create_topology() -> Result<()> {
    for ns in [HOST, WEB, CLIENT] {
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    ip(&["-n", HOST, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", HOST, "link", "set", "br0", "up"])?;
    for (ns, port, mac, v4, v6) in [
        (WEB, WEB_PORT, WEB_MAC, WEB_V4, WEB_V6),
        (CLIENT, CLIENT_PORT, CLIENT_MAC, CLIENT_V4, CLIENT_V6),
    ] {
        ip(&[
            "link", "add", port, "netns", HOST, "type", "veth", "peer", "name", "eth0", "address",
            mac, "netns", ns,
        ])?;
        ip(&["-n", HOST, "link", "set", port, "master", "br0", "up"])?;
        ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    }
    Ok(())
}

/// Starts `sg-ctl daemon` on the demo's state and waits for its socket.
fn start_daemon(sg_ctl: &Path, cleanup: &mut Cleanup) -> Result<()> {
    fs::create_dir_all(STATE_DIR)?;
    let log = fs::File::create(Path::new(STATE_DIR).join("daemon.log"))?;
    let mut daemon = Command::new(sg_ctl);
    daemon
        .args(["--pin-dir", PIN_DIR, "--socket"])
        .arg(socket())
        .args(["daemon", "--db"])
        .arg(Path::new(STATE_DIR).join("sg.db"))
        .stdout(log.try_clone()?)
        .stderr(log);
    println!("    $ {} &", crate::describe(&daemon));
    cleanup
        .children
        .push(daemon.spawn().context("starting sg-ctl daemon")?);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket().exists() {
        if Instant::now() > deadline {
            bail!(
                "sg-ctl daemon did not start: {}",
                fs::read_to_string(Path::new(STATE_DIR).join("daemon.log")).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn socket() -> PathBuf {
    Path::new(STATE_DIR).join("sg.sock")
}

pub fn run_demo(sg_ctl: &Path) -> Result<()> {
    let sg = || {
        let mut cmd = Command::new(sg_ctl);
        cmd.env("SG_PIN_DIR", PIN_DIR).env("SG_SOCKET", socket());
        cmd
    };
    let mut step = Step::new("demo", 9);

    step.next(&format!(
        "network namespaces: {HOST} (a host with bridge br0), {WEB} ({WEB_V4}, {WEB_V6}) \
         and {CLIENT} ({CLIENT_V4}, {CLIENT_V6}), each workload on a veth port of br0"
    ));
    Cleanup::remove_namespaces();
    let mut cleanup = Cleanup {
        children: Vec::new(),
        sg_ctl: sg_ctl.to_path_buf(),
    };
    create_topology()?;
    let mut server = Command::new("ip");
    server
        .args(["netns", "exec", WEB, "python3", "-m", "http.server", "80"])
        .args(["--bind", WEB_V4])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cleanup
        .children
        .push(server.spawn().context("starting the web server")?);

    step.next("the daemon: desired state in SQLite, the API on a Unix socket");
    start_daemon(sg_ctl, &mut cleanup)?;

    step.next("security groups: web (HTTP and ping in, telnet rejected) and client (egress only)");
    shown(sg().args(["group", "create", "web", "--description", "web tier"]))?;
    shown(sg().args(["rule", "add", "web", "--preset", "http"]))?;
    shown(sg().args(["rule", "add", "web", "--preset", "ping"]))?;
    shown(sg().args([
        "rule", "add", "web", "--proto", "tcp", "--port", "23", "--action", "reject",
    ]))?;
    // The client's group has only the allow-all egress a new group starts
    // with: connection tracking lets the replies in.
    shown(sg().args(["group", "create", "client"]))?;
    shown(sg().args(["rule", "list", "web"]))?;

    step.next("ports: each workload's MAC, addresses and groups; sg attaches to them");
    for (name, iface, mac, v4, v6, group) in [
        ("web", WEB_PORT, WEB_MAC, WEB_V4, WEB_V6, "web"),
        (
            "client",
            CLIENT_PORT,
            CLIENT_MAC,
            CLIENT_V4,
            CLIENT_V6,
            "client",
        ),
    ] {
        shown(sg().args([
            "--netns", HOST, "port", "create", name, "--iface", iface, "--mac", mac, "--ip", v4,
            "--ip", v6, "--group", group,
        ]))?;
    }
    shown(sg().args(["port", "list"]))?;

    step.next("traffic: HTTP and ping pass, 8080 is dropped, telnet is rejected at once");
    if !ping(&["-4", WEB_V4]) {
        bail!("the client's ping to the web workload failed");
    }
    let outcomes = [(80, "connected"), (8080, "timed out"), (23, "refused")];
    for (port, want) in outcomes {
        let got = connect(port)?;
        if got != want {
            bail!("client → {WEB_V4}:{port}: {got}, expected {want}");
        }
    }

    step.next("why 8080 was dropped: the web port's own programs on a described packet");
    shown(sg().args([
        "trace",
        "web",
        "--direction",
        "ingress",
        "--protocol",
        "tcp",
        "--from",
        CLIENT_V4,
        "--to",
        WEB_V4,
        "--dport",
        "8080",
    ]))?;

    step.next("port security: the client may send only from its own MAC and addresses");
    shown(Command::new("ip").args([
        "-n",
        CLIENT,
        "addr",
        "add",
        &format!("{SPOOFED_V4}/24"),
        "dev",
        "eth0",
    ]))?;
    if ping(&["-4", "-I", SPOOFED_V4, WEB_V4]) {
        bail!("the client's ping from an address it does not own passed");
    }
    println!("    (the ping from {SPOOFED_V4} failed: sg dropped what the client sent from it)");

    step.next("the counters: hits per rule, packets per port, direction and reason, the flows");
    shown(sg().args(["group", "show", "web"]))?;
    shown(sg().arg("stats"))?;
    shown(sg().args(["--netns", HOST, "conntrack", "list"]))?;

    step.next("stopping the daemon, detaching sg and removing the namespaces");
    drop(cleanup);
    println!(
        "demo done: traffic passed, was dropped and rejected, spoofing was dropped, all was counted"
    );
    Ok(())
}
