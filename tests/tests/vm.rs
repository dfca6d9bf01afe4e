//! A real VM behind sg: Debian's kernel with a busybox initramfs this test
//! builds, under qemu (TCG: the machines this runs on have no KVM that
//! boots a stock kernel), its virtio-net on a tap that the qemu scripts sg
//! ships (`hooks/`, installed by `sg-ctl hooks install`) plug before the
//! guest runs and unplug as it stops. The guest takes its address from a
//! dnsmasq in the test's namespace, over DHCPv4 and SLAAC, through sg; it
//! answers pings and the TCP port its group allows, not another; what it
//! tries from inside (another source address, another MAC, an ARP reply
//! for an address it does not own, a datagram from the DHCP server's port)
//! is dropped and counted by reason. The guest kernel is unpacked by
//! `cargo xtask setup` into `target/vm-guest/`. libvirt's hook, run as
//! libvirt runs it, plugs the tap a domain's metadata describes, or fails.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use sg_tests::{Netns, TestDaemon, eventually, require_root, run, sg_ctl_binary};

const TAP: &str = "tapvm0";
const GUEST_MAC: &str = "52:54:00:12:34:56";
const GUEST_IPV4: &str = "198.18.50.10";
/// SLAAC's EUI-64 address of GUEST_MAC in dnsmasq's prefix.
const GUEST_IPV6: &str = "2001:db8:50::5054:ff:fe12:3456";
const HOST_IPV4: &str = "198.18.50.1";
const ALLOWED_PORT: u16 = 8081;
const BLOCKED_PORT: u16 = 8082;
/// Bounds for a machine five times slower than the one that takes 8 s from
/// qemu's start to the lease.
const BOOTED: Duration = Duration::from_secs(240);
const COMMAND: Duration = Duration::from_secs(60);

/// The kernel and modules `cargo xtask setup` unpacked.
struct GuestKernel {
    dir: PathBuf,
    modules: Vec<String>,
}

impl GuestKernel {
    fn find() -> Result<GuestKernel> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/vm-guest");
        let order = fs::read_to_string(dir.join("modules.load")).with_context(|| {
            format!(
                "no guest kernel in {}: `cargo xtask setup` downloads and unpacks Debian's",
                dir.display()
            )
        })?;
        let modules = order.lines().map(str::to_string).collect();
        Ok(GuestKernel { dir, modules })
    }

    /// An initramfs of busybox, the modules and `/init` (below), in cpio's
    /// newc format, in `dir`.
    fn initramfs(&self, dir: &Path) -> Result<PathBuf> {
        let root = dir.join("initramfs");
        for sub in ["bin", "proc", "sys", "dev", "mod"] {
            fs::create_dir_all(root.join(sub))?;
        }
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|path| Path::new(path).exists())
            .context("no busybox: `cargo xtask setup` installs busybox-static")?;
        fs::copy(busybox, root.join("bin/busybox"))?;
        for module in &self.modules {
            fs::copy(
                self.dir.join("modules").join(module),
                root.join("mod").join(module),
            )?;
        }
        fs::write(root.join("modules.load"), self.modules.join("\n"))?;
        write_script(&root.join("init"), INIT)?;
        write_script(&root.join("udhcpc.sh"), UDHCPC)?;
        let image = dir.join("initramfs.cpio");
        let packed = Command::new("sh")
            .arg("-c")
            .arg("find . | cpio -o -H newc --quiet > \"$0\"")
            .arg(&image)
            .current_dir(&root)
            .status()
            .context("running cpio (`cargo xtask setup` installs it)")?;
        ensure!(packed.success(), "cpio failed ({packed})");
        Ok(image)
    }
}

fn write_script(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The guest's PID 1: its network card up, DHCPv4 (SLAAC is the kernel's),
/// a TCP service on each port, ready once both listen (or after ten
/// seconds, for the test to find which does not), then a shell on the
/// console for the test's commands. PID 1 never exits (the kernel would
/// panic).
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin PS1=
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
stty -echo
for m in $(cat /modules.load); do
  [ "$m" = netconsole.ko ] || insmod /mod/$m || echo "GUEST-INSMOD-FAILED $m"
done
ip link set lo up
i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do usleep 100000; i=$((i+1)); done
ip link set eth0 up
udhcpc -i eth0 -n -q -t 20 -T 1 -s /udhcpc.sh || echo GUEST-DHCP-FAILED
( while true; do echo allowed | nc -l -p 8081; done ) &
( while true; do echo blocked | nc -l -p 8082; done ) &
i=0; until netstat -ltn | grep -q ':8081 ' && netstat -ltn | grep -q ':8082 ' || [ $i -ge 100 ]; do
  usleep 100000; i=$((i+1))
done
echo GUEST-READY
while true; do sh; done
"#;

const UDHCPC: &str = r#"#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev $interface scope global
    ip addr add $ip/${mask:-24} dev $interface
    echo "GUEST-LEASE $ip";;
  deconfig) ip -4 addr flush dev $interface;;
esac
"#;

/// A child process killed and reaped when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// qemu with the guest's console on its stdin and stdout.
struct Vm {
    qemu: Killed,
    console: ChildStdin,
    lines: Receiver<String>,
    /// Everything the console printed, for failures' messages.
    seen: String,
    commands: u32,
}

impl Vm {
    /// The next console line, within `timeout`.
    fn line(&mut self, timeout: Duration) -> Result<Option<String>> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                self.seen.push_str(&line);
                self.seen.push('\n');
                Ok(Some(line))
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => bail!("qemu ended; console:\n{}", self.seen),
        }
    }

    /// Reads the console until a line starts with `marker`; answers the
    /// lines before it.
    fn until(&mut self, marker: &str, timeout: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            ensure!(
                !left.is_zero(),
                "no {marker} within {timeout:?}; console:\n{}",
                self.seen
            );
            match self.line(left)? {
                Some(line) if line.starts_with(marker) => return Ok(lines),
                Some(line) => lines.push(line),
                None => {}
            }
        }
    }

    /// Runs a command in the guest's shell; its output, and fails unless
    /// it exits 0.
    fn run(&mut self, command: &str) -> Result<Vec<String>> {
        self.commands += 1;
        let done = format!("GUEST-DONE-{}", self.commands);
        // The marker is split in the command, so that an echo of it is no
        // match.
        writeln!(
            self.console,
            "{command}; echo \"GUEST-DONE\"-{} $?",
            self.commands
        )?;
        let mut lines = self.until(&done, COMMAND)?;
        let status = self
            .seen
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix(&format!("{done} ")))
            .unwrap_or("?")
            .trim()
            .to_string();
        lines.retain(|line| !line.is_empty());
        ensure!(
            status == "0",
            "`{command}` in the guest exited {status}: {lines:?}"
        );
        Ok(lines)
    }
}

/// Starts qemu in `ns` on the tap `TAP` with sg's scripts from `hooks`,
/// and `env` for them.
fn qemu(
    ns: &Netns,
    kernel: &GuestKernel,
    initramfs: &Path,
    hooks: &Path,
    env: &[(&str, &str)],
    stderr: &Path,
) -> Result<Child> {
    let netdev = format!(
        "tap,id=n0,ifname={TAP},script={},downscript={}",
        hooks.join("qemu-ifup").display(),
        hooks.join("qemu-ifdown").display()
    );
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", ns.name(), "qemu-system-x86_64"])
        .args(["-accel", "tcg", "-cpu", "qemu64", "-m", "256M", "-smp", "1"])
        .args(["-nodefaults", "-display", "none", "-monitor", "none"])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel.dir.join("vmlinuz"))
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 quiet loglevel=1 panic=-1"])
        .args(["-netdev", &netdev])
        .args([
            "-device",
            &format!("virtio-net-pci,netdev=n0,mac={GUEST_MAC},romfile="),
        ])
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(stderr)?);
    command.spawn().context("starting qemu-system-x86_64")
}

/// The console's lines as they come, without carriage returns.
fn console_lines(stdout: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (send, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            if send.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// Why qemu cannot run here at all, if it cannot.
fn qemu_unavailable() -> Option<String> {
    if std::env::consts::ARCH != "x86_64" {
        return Some("the guest is x86_64 and this host is not".into());
    }
    match Command::new("qemu-system-x86_64").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "qemu-system-x86_64 --version failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!(
            "no qemu-system-x86_64 ({e}); `cargo xtask setup` installs qemu-system-x86"
        )),
    }
}

fn packets(d: &TestDaemon, direction: &str, outcome: &str) -> u64 {
    d.metric(&format!(
        "sg_port_packets_total{{port=\"vm1\",direction=\"{direction}\",outcome=\"{outcome}\"}}"
    ))
    .unwrap_or(0)
}

/// What a TCP connection to the guest's `port` reads, or `None` when it
/// does not connect.
fn tcp_read(ns: &Netns, port: u16) -> Result<Option<String>> {
    ns.within(move || {
        let to = SocketAddr::new(GUEST_IPV4.parse()?, port);
        let Ok(mut stream) = TcpStream::connect_timeout(&to, Duration::from_secs(3)) else {
            return Ok(None);
        };
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(Some(text.trim().to_string()))
    })
}

#[test]
fn a_vm_is_plugged_by_the_qemu_scripts_gets_its_addresses_and_cannot_spoof() {
    require_root!();
    if let Some(why) = qemu_unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let started = Instant::now();
    let kernel = GuestKernel::find().unwrap();
    let d = TestDaemon::start().unwrap();
    let work = d.dir().join("vm");
    fs::create_dir_all(&work).unwrap();
    let initramfs = kernel.initramfs(&work).unwrap();
    let hooks = work.join("hooks");
    let installed = run(
        sg_ctl_binary().to_str().unwrap(),
        &["hooks", "install", "--dir", hooks.to_str().unwrap()],
    )
    .unwrap();
    assert!(
        String::from_utf8_lossy(&installed.stdout).contains("qemu-ifup"),
        "{installed:?}"
    );

    d.ok(&["group", "create", "vm"]).unwrap();
    for rule in [
        ["--proto", "icmp", "--remote", "198.18.50.0/24"],
        ["--proto", "ipv6-icmp", "--remote", "2001:db8:50::/64"],
        ["--proto", "tcp", "--port", "8081"],
    ] {
        let mut args = vec!["rule", "add", "vm"];
        args.extend(rule);
        d.ok(&args).unwrap();
    }

    // The host side: the tap (made beforehand, so that dnsmasq serves it
    // from the start) with the router's addresses, and dnsmasq.
    let ns = Netns::new().unwrap();
    ns.ip(&["tuntap", "add", "dev", TAP, "mode", "tap"])
        .unwrap();
    ns.run(
        "sysctl",
        &["-qw", &format!("net.ipv6.conf.{TAP}.accept_ra=0")],
    )
    .unwrap();
    ns.ip(&["addr", "add", "198.18.50.1/24", "dev", TAP])
        .unwrap();
    ns.ip(&["addr", "add", "2001:db8:50::1/64", "dev", TAP, "nodad"])
        .unwrap();
    ns.ip(&["link", "set", TAP, "up"]).unwrap();
    let host_mac = ns
        .exec("cat", &[&format!("/sys/class/net/{TAP}/address")])
        .unwrap();
    let host_mac = String::from_utf8_lossy(&host_mac.stdout).trim().to_string();
    let dnsmasq_log = work.join("dnsmasq.log");
    let _dnsmasq = Killed(
        Command::new("ip")
            .args(["netns", "exec", ns.name(), "dnsmasq", "--no-daemon"])
            .args(["--port=0", "--conf-file=/dev/null", "--bind-interfaces"])
            .arg(format!("--interface={TAP}"))
            .arg("--dhcp-range=198.18.50.10,198.18.50.50,255.255.255.0,1h")
            .arg(format!("--dhcp-host={GUEST_MAC},{GUEST_IPV4}"))
            .args(["--enable-ra", "--dhcp-range=2001:db8:50::,ra-only,64"])
            .arg(format!(
                "--dhcp-leasefile={}",
                work.join("leases").display()
            ))
            .arg("--log-dhcp")
            .arg(format!("--log-facility={}", dnsmasq_log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting dnsmasq (`cargo xtask setup` installs dnsmasq-base)"),
    );

    let socket = d.socket();
    let socket = socket.to_str().unwrap();
    let ips = format!("{GUEST_IPV4},{GUEST_IPV6}");
    let env = [
        ("SG_SOCKET", socket),
        ("SG_PORT", "vm1"),
        ("SG_MAC", GUEST_MAC),
        ("SG_IPS", ips.as_str()),
        ("SG_GROUPS", "vm"),
    ];

    // Fail closed: with no daemon to plug the tap, qemu does not start the
    // guest.
    let mut unplugged = env;
    unplugged[0] = ("SG_SOCKET", "/nonexistent/sg.sock");
    let stderr = work.join("qemu-refused.log");
    let mut refused = Killed(qemu(&ns, &kernel, &initramfs, &hooks, &unplugged, &stderr).unwrap());
    let status = wait(&mut refused.0, COMMAND).unwrap();
    let said = fs::read_to_string(&stderr).unwrap();
    assert!(!status.success(), "qemu ran without sg: {said}");
    assert!(said.contains("qemu-ifup"), "{said}");
    assert!(said.contains("/nonexistent/sg.sock"), "{said}");
    let (code, _) = d.fails(&["port", "show", "vm1"]).unwrap();
    assert_eq!(code, 3, "no port was made");

    // The guest, plugged by qemu-ifup before it runs.
    let stderr = work.join("qemu.log");
    let boot = Instant::now();
    let mut child = qemu(&ns, &kernel, &initramfs, &hooks, &env, &stderr).unwrap();
    let console = child.stdin.take().unwrap();
    let lines = console_lines(child.stdout.take().unwrap());
    let mut vm = Vm {
        qemu: Killed(child),
        console,
        lines,
        seen: String::new(),
        commands: 0,
    };
    // qemu runs the guest only once its script has plugged the port.
    eventually("qemu-ifup plugging the port", BOOTED, || {
        Ok(d.sg_ctl(&["port", "show", "vm1"])?.status.success())
    })
    .unwrap();
    let view = d.json(&["port", "show", "vm1"]).unwrap();
    assert_eq!(view["status"]["state"], "active", "{view}");
    eventually("dnsmasq's DHCPACK", BOOTED, || {
        Ok(fs::read_to_string(&dnsmasq_log).is_ok_and(|log| log.contains("DHCPACK")))
    })
    .unwrap();
    let leased = boot.elapsed();
    let before = vm.until("GUEST-READY", BOOTED).unwrap();
    let ready = boot.elapsed();
    assert!(
        before
            .iter()
            .any(|l| l == &format!("GUEST-LEASE {GUEST_IPV4}")),
        "{before:?}"
    );
    eprintln!("qemu start to DHCPACK {leased:.2?}, to the guest ready {ready:.2?}");
    for direction in ["egress", "ingress"] {
        assert!(packets(&d, direction, "pass-dhcp") >= 2, "{direction}");
    }

    // What the rules allow passes, what they do not is dropped.
    let guest4: IpAddr = GUEST_IPV4.parse().unwrap();
    assert!(ns.ping(guest4).unwrap(), "ping {GUEST_IPV4}");
    // The guest listens on both: what sg drops, it drops.
    let listening = vm.run("netstat -ltn").unwrap();
    for port in [ALLOWED_PORT, BLOCKED_PORT] {
        assert!(
            listening.iter().any(|l| l.contains(&format!(":{port} "))),
            "{listening:?}"
        );
    }
    assert_eq!(
        tcp_read(&ns, ALLOWED_PORT).unwrap().as_deref(),
        Some("allowed"),
        "counted toward the guest: pass {}, drop-default {}",
        packets(&d, "ingress", "pass"),
        packets(&d, "ingress", "drop-default")
    );
    let dropped = packets(&d, "ingress", "drop-default");
    assert_eq!(tcp_read(&ns, BLOCKED_PORT).unwrap(), None);
    assert!(packets(&d, "ingress", "drop-default") > dropped);

    // SLAAC from dnsmasq's router advertisements, through sg.
    let guest6: IpAddr = GUEST_IPV6.parse().unwrap();
    eventually("the guest's SLAAC address answering", BOOTED, || {
        ns.ping(guest6)
    })
    .unwrap();
    let addresses = vm.run("ip -6 -o addr show dev eth0 scope global").unwrap();
    let slaac = |line: &&String| {
        line.contains("dynamic")
            && line
                .split_whitespace()
                .any(|word| word.split('/').next().and_then(|a| a.parse().ok()) == Some(guest6))
    };
    assert!(addresses.iter().any(|l| slaac(&l)), "{addresses:?}");

    // Spoofing from inside, each counted by its reason.
    let spoofs = [
        (
            "drop-spoofed-ipv4",
            format!(
                "arp -i eth0 -s {HOST_IPV4} {host_mac} && \
                 ip addr add 198.18.50.99/32 dev eth0 && \
                 ping -c 3 -W 1 -I 198.18.50.99 {HOST_IPV4}; \
                 ip addr del 198.18.50.99/32 dev eth0"
            ),
        ),
        (
            "drop-spoofed-mac",
            format!(
                "ip link set dev eth0 address 52:54:00:66:66:66 && \
                 ping -c 3 -W 1 {HOST_IPV4}; \
                 ip link set dev eth0 address {GUEST_MAC}"
            ),
        ),
        (
            "drop-arp-spoof",
            // Claims the router's address.
            format!(
                "echo 1 > /proc/sys/net/ipv4/ip_nonlocal_bind && \
                 arping -A -c 3 -I eth0 -s {HOST_IPV4} {HOST_IPV4}"
            ),
        ),
        (
            "drop-dhcp-server",
            // The kernel's netconsole sends each message from UDP port 67
            // to 68, as a DHCP server answers a client.
            format!(
                "insmod /mod/netconsole.ko netconsole=67@{GUEST_IPV4}/eth0,68@{HOST_IPV4}/{host_mac} && \
                 dmesg -n 8 && for i in 1 2 3; do echo sg-offer-$i > /dev/kmsg; done; dmesg -n 1"
            ),
        ),
    ];
    let mut counted = Vec::new();
    for (outcome, command) in &spoofs {
        let before = packets(&d, "egress", outcome);
        assert_eq!(before, 0, "{outcome} before the guest tried");
        // The attempts fail, as they should: their output is for the
        // message only.
        let said = vm.run(command);
        if let Err(e) = eventually(&format!("{outcome} counted"), COMMAND, || {
            Ok(packets(&d, "egress", outcome) >= 3)
        }) {
            let egress: Vec<String> = d
                .metrics()
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("sg_port_packets_total") && l.contains("egress"))
                .filter(|l| !l.ends_with(" 0"))
                .map(str::to_string)
                .collect();
            panic!("{e:#}; the guest said {said:?}; counted: {egress:#?}");
        }
        counted.push(format!("{outcome} {}", packets(&d, "egress", outcome)));
    }
    eprintln!("counted from the guest's attempts: {}", counted.join(", "));
    // Still itself after them.
    assert!(
        ns.ping(guest4).unwrap(),
        "ping {GUEST_IPV4} after the spoofing"
    );

    // The guest powers off; qemu-ifdown unplugs the port.
    writeln!(vm.console, "poweroff -f").unwrap();
    let status = wait(&mut vm.qemu.0, BOOTED).unwrap();
    assert!(
        status.success(),
        "qemu: {status}: {}",
        fs::read_to_string(&stderr).unwrap_or_default()
    );
    let (code, _) = d.fails(&["port", "show", "vm1"]).unwrap();
    assert_eq!(code, 3, "qemu-ifdown removed the port");
    assert!(
        !d.pins.datapath().has_ports().unwrap(),
        "the port's programs and pins are gone"
    );
    let again = d.ok(&["port", "unplug", "vm1"]).unwrap();
    assert!(again.contains("unplugged already"), "{again}");
    eprintln!("the VM test took {:.1?}", started.elapsed());
}

/// Waits for `child` to exit, `timeout` at most.
fn wait(child: &mut Child, timeout: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        ensure!(
            Instant::now() < deadline,
            "qemu did not exit within {timeout:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A domain as libvirt gives it to its hook at "start begin": its tap
/// `vnet0` made, with `metadata`.
fn domain(metadata: &str) -> String {
    format!(
        "<domain type='kvm'><name>vm2</name><metadata>{metadata}</metadata><devices>\
         <interface type='ethernet'><mac address='{GUEST_MAC}'/><target dev='vnet0'/>\
         <model type='virtio'/></interface></devices></domain>"
    )
}

#[test]
fn the_libvirt_hook_plugs_the_taps_a_domain_describes_and_fails_closed() {
    require_root!();
    let d = TestDaemon::start().unwrap();
    d.ok(&["group", "create", "web"]).unwrap();
    let dir = d.dir().join("libvirt");
    let installed = run(
        sg_ctl_binary().to_str().unwrap(),
        &[
            "hooks",
            "install",
            "--dir",
            dir.join("sg").to_str().unwrap(),
            "--libvirt",
            "--libvirt-dir",
            dir.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert!(
        String::from_utf8_lossy(&installed.stdout).contains("libvirt/qemu"),
        "{installed:?}"
    );
    let ns = Netns::new().unwrap();
    ns.ip(&["tuntap", "add", "dev", "vnet0", "mode", "tap"])
        .unwrap();
    let socket = d.socket();
    // libvirt runs its hook with the domain's name, the operation, its
    // sub-operation and `-`, the XML on stdin.
    let hook = |operation: &str, sub: &str, xml: &str| {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(dir.join("qemu"))
            .args(["vm2", operation, sub, "-"])
            .env("SG_SOCKET", &socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(xml.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let port = |groups: &str| {
        domain(&format!(
            "<sg:ports xmlns:sg='urn:sg:libvirt:1'><sg:port name='vm2' mac='{GUEST_MAC}' \
             ips='198.18.51.2' groups='{groups}'/></sg:ports>"
        ))
    };

    // A group sg does not know: the VM must not start, and the tap is
    // not left unfiltered under another policy.
    let (ok, said) = hook("start", "begin", &port("nosuch"));
    assert!(!ok, "the hook let the domain start");
    assert!(said.contains("nosuch"), "{said}");
    assert_eq!(d.fails(&["port", "show", "vm2"]).unwrap().0, 3);

    let (ok, said) = hook("start", "begin", &port("web"));
    assert!(ok, "{said}");
    let view = d.json(&["port", "show", "vm2"]).unwrap();
    assert_eq!(view["status"]["state"], "active", "{view}");
    assert_eq!(view["spec"]["ifname"], "vnet0");
    assert_eq!(view["spec"]["netns"], ns.name());
    assert_eq!(view["spec"]["groups"][0], "web");
    // Other operations leave it alone; a domain with no sg metadata is
    // none of sg's.
    assert!(hook("started", "begin", &port("web")).0);
    assert!(hook("start", "begin", &domain("")).0);
    assert!(d.sg_ctl(&["port", "show", "vm2"]).unwrap().status.success());

    for _ in 0..2 {
        let (ok, said) = hook("stopped", "end", &port("web"));
        assert!(ok, "{said}");
        assert_eq!(d.fails(&["port", "show", "vm2"]).unwrap().0, 3);
    }
    assert!(!d.pins.datapath().has_ports().unwrap());

    // A tap libvirt has not made (yet): not enforced, so not started.
    ns.ip(&["link", "del", "vnet0"]).unwrap();
    let (ok, said) = hook("start", "begin", &port("web"));
    assert!(!ok, "the hook let the domain start without its tap");
    assert!(said.contains("not enforced"), "{said}");
}
