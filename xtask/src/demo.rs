//! The demo: a host with a bridge and two workloads, each in its own
//! network namespace; sg on the web workload's port lets traffic through,
//! then blocks it, and counts both; port security on the client's port
//! drops what it sends from an address it does not own.

use std::{path::Path, process::Command};

use anyhow::{Result, bail};

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

/// Deletes the demo's namespaces, with everything in them, when dropped.
struct Namespaces;

impl Namespaces {
    fn remove() {
        for ns in [HOST, WEB, CLIENT] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        Namespaces::remove();
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

pub fn run_demo(sg_ctl: &Path) -> Result<()> {
    let sg = || {
        let mut cmd = Command::new(sg_ctl);
        cmd.args(["--netns", HOST]);
        cmd
    };
    let mut step = Step::new("demo", 7);

    step.next(&format!(
        "network namespaces: {HOST} (a host with bridge br0), {WEB} ({WEB_V4}, {WEB_V6}) \
         and {CLIENT} ({CLIENT_V4}, {CLIENT_V6}), each workload on a veth port of br0"
    ));
    Namespaces::remove();
    let _namespaces = Namespaces;
    create_topology()?;

    step.next(&format!(
        "attaching sg to {WEB_PORT}, the host side of the web workload's port"
    ));
    shown(sg().args(["attach", WEB_PORT]))?;
    shown(Command::new("ip").args(["-n", HOST, "link", "show", WEB_PORT]))?;

    step.next("traffic passes: the client pings the web workload");
    if !(ping(&["-4", WEB_V4]) && ping(&["-6", WEB_V6])) {
        bail!("pings to the web workload failed before anything was blocked");
    }

    step.next(&format!(
        "port security on {CLIENT_PORT}: the client may send only from its MAC and addresses"
    ));
    shown(sg().args(["attach", CLIENT_PORT]))?;
    shown(sg().args([
        "port-security",
        CLIENT_PORT,
        "--mac",
        CLIENT_MAC,
        "--ip",
        CLIENT_V4,
        "--ip",
        CLIENT_V6,
    ]))?;
    if !ping(&["-4", WEB_V4]) {
        bail!("the client's ping from its own address failed under port security");
    }
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

    step.next("blocking the web workload's addresses: its traffic is dropped both ways");
    shown(sg().args(["block", WEB_PORT, WEB_V4, WEB_V6]))?;
    if ping(&["-4", WEB_V4]) || ping(&["-6", WEB_V6]) {
        bail!("pings to the web workload passed although its addresses are blocked");
    }
    println!("    (both pings failed, as they should)");

    step.next("the counters: passed and dropped packets per direction and reason");
    shown(sg().arg("status"))?;

    step.next("detaching and removing the namespaces");
    shown(sg().args(["detach", "--all"]))?;
    println!("demo done: traffic passed, was blocked, spoofing was dropped, all was counted");
    Ok(())
}
