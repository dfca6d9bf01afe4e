//! sg-cni as a container runtime runs it: a conflist of Debian's
//! reference `bridge` and `host-local` and sg-cni, run through the
//! specification's environment and stdin for containers in namespaces the
//! test makes, the bridge in a "host" namespace of its own, against a real
//! daemon. The groups decide the containers' traffic as soon as ADD
//! returns, a remote-group rule included; DEL removes the port and its
//! programs; without the daemon ADD fails closed; CHECK tells a port that
//! is no longer the container's.

mod runtime;

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use serde_json::{Value, json};
use sg_tests::{Netns, TestDaemon, require_root, tcp_exchange};

use runtime::{Container, Runtime};

/// Debian's containernetworking-plugins, which `cargo xtask setup` installs.
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
/// The bridge the `bridge` plugin makes in the host namespace.
const BRIDGE: &str = "cni-sg0";

/// Whether the reference plugins are there; says why the test skips when
/// they are not.
fn reference_plugins() -> bool {
    let there = ["bridge", "host-local"]
        .iter()
        .all(|plugin| Path::new(REFERENCE_PLUGINS).join(plugin).exists());
    if !there {
        eprintln!(
            "skipped: the reference CNI plugins are not in {REFERENCE_PLUGINS}; \
             `cargo xtask setup` installs containernetworking-plugins"
        );
    }
    there
}

/// A web group open on TCP 80 to anyone, a db group open on TCP 5432 to the
/// web group's members only; both open outbound.
const GROUPS: &str = "groups:
  - name: web
    rules:
      - {direction: egress}
      - {direction: ingress, protocol: tcp, ports: 80}
  - name: db
    rules:
      - {direction: egress}
      - {direction: ingress, protocol: tcp, ports: 5432, remote: {group: web}}
";

/// A daemon with the groups, and the runtime of a network whose ports are
/// in web unless a container says otherwise.
struct Lab {
    daemon: TestDaemon,
    host: Netns,
    runtime: Runtime,
}

impl Lab {
    fn new() -> Lab {
        let daemon = TestDaemon::start().unwrap();
        let groups = daemon.dir().join("groups.yaml");
        fs::write(&groups, GROUPS).unwrap();
        daemon
            .ok(&["apply", "-f", groups.to_str().unwrap()])
            .unwrap();
        let host = Netns::new().unwrap();
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": "sgnet",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": daemon.dir().join("ipam"),
                        "ranges": [[{"subnet": "198.18.60.0/24", "gateway": "198.18.60.1"}]],
                        "routes": [{"dst": "0.0.0.0/0"}]
                    }
                },
                {"type": "sg-cni", "socket": daemon.socket(), "groups": ["web"]}
            ]
        });
        let built = Path::new(env!("CARGO_BIN_EXE_sg-cni")).parent().unwrap();
        let runtime = Runtime::new(
            host.name(),
            conflist,
            vec![built.to_path_buf(), PathBuf::from(REFERENCE_PLUGINS)],
            &daemon.dir().join("cni-cache"),
        );
        Lab {
            daemon,
            host,
            runtime,
        }
    }

    /// The daemon's port on the host side of a result's veth.
    fn port_of(&self, result: &Value) -> Value {
        let veth = result["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i.get("sandbox").is_none() && i["name"] != BRIDGE)
            .unwrap()["name"]
            .clone();
        self.ports()
            .into_iter()
            .find(|port| port["spec"]["ifname"] == veth)
            .unwrap_or_else(|| panic!("no port on {veth}"))
    }

    fn ports(&self) -> Vec<Value> {
        self.daemon
            .json(&["port", "list"])
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// The interfaces of the host namespace that have sg's programs.
    fn attached(&self) -> Vec<String> {
        let status = self
            .daemon
            .pins
            .sg_ctl_ok(&["--netns", self.host.name(), "-o", "json", "status"])
            .unwrap();
        serde_json::from_str::<Value>(&status)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|port| port["interface"].as_str().unwrap().to_string())
            .collect()
    }
}

/// The container's address in an ADD result.
fn address_of(result: &Value) -> IpAddr {
    let cidr = result["ips"][0]["address"].as_str().unwrap();
    cidr.split('/').next().unwrap().parse().unwrap()
}

#[test]
fn groups_decide_a_containers_traffic_from_its_add_on_and_del_removes_the_port() {
    require_root!();
    if !reference_plugins() {
        return;
    }
    let lab = Lab::new();
    let (a_ns, b_ns) = (Netns::new().unwrap(), Netns::new().unwrap());

    // a names its own group in CNI_ARGS, among the runtime's other args.
    let a = Container::new("ctr-a", a_ns.name()).with_args("IgnoreUnknown=1;SG_GROUPS=db");
    let started = Instant::now();
    let result_a = lab.runtime.add(&a).unwrap();
    eprintln!(
        "ADD of a (bridge, host-local, sg-cni): {:?}",
        started.elapsed()
    );
    let a_ip = address_of(&result_a);
    let port_a = lab.port_of(&result_a);
    let name_a = port_a["spec"]["name"].as_str().unwrap().to_string();
    assert!(name_a.starts_with("cni-ctr-a-eth0-"), "{port_a}");
    assert_eq!(port_a["status"]["state"], "active", "{port_a}");
    assert_eq!(port_a["spec"]["groups"], json!(["db"]));
    assert_eq!(port_a["spec"]["netns"], lab.host.name());
    assert_eq!(port_a["spec"]["ips"], json!([a_ip.to_string()]));
    let container_if = &result_a["interfaces"][2];
    assert_eq!(container_if["name"], "eth0");
    assert_eq!(port_a["spec"]["mac"], container_if["mac"]);
    // The host is in no group: a's database is closed to it.
    assert!(!tcp_exchange(&lab.host, &a_ns, a_ip, 5432).unwrap());

    // b is in the network's group, web: as soon as its ADD returned, it
    // reaches a's database, and the host reaches b's port 80 but not 8080.
    let b = Container::new("ctr-b", b_ns.name());
    let started = Instant::now();
    let result_b = lab.runtime.add(&b).unwrap();
    eprintln!("ADD of b: {:?}", started.elapsed());
    let b_ip = address_of(&result_b);
    assert!(tcp_exchange(&b_ns, &a_ns, a_ip, 5432).unwrap());
    assert!(tcp_exchange(&lab.host, &b_ns, b_ip, 80).unwrap());
    assert!(!tcp_exchange(&lab.host, &b_ns, b_ip, 8080).unwrap());
    assert!(!tcp_exchange(&lab.host, &a_ns, a_ip, 5432).unwrap());
    assert_eq!(lab.port_of(&result_b)["spec"]["groups"], json!(["web"]));

    lab.runtime.check(&a).unwrap();
    lab.runtime.check(&b).unwrap();

    // DEL: a's port is gone, and its programs; a second DEL succeeds.
    let veth_a = port_a["spec"]["ifname"].as_str().unwrap().to_string();
    assert!(lab.attached().contains(&veth_a));
    let started = Instant::now();
    lab.runtime.del(&a).unwrap();
    eprintln!("DEL of a: {:?}", started.elapsed());
    assert!(
        lab.ports()
            .iter()
            .all(|port| port["spec"]["name"] != *name_a),
        "{:?}",
        lab.ports()
    );
    assert!(!lab.attached().contains(&veth_a), "{:?}", lab.attached());
    lab.runtime.del(&a).unwrap();
    // b is enforced as before.
    assert!(tcp_exchange(&lab.host, &b_ns, b_ip, 80).unwrap());
    assert!(!tcp_exchange(&lab.host, &b_ns, b_ip, 8080).unwrap());
    lab.runtime.del(&b).unwrap();
    assert!(lab.ports().is_empty(), "{:?}", lab.ports());
}

#[test]
fn add_fails_closed_without_the_daemon_and_check_fails_once_the_port_is_not_the_containers() {
    require_root!();
    if !reference_plugins() {
        return;
    }
    let mut lab = Lab::new();
    let c_ns = Netns::new().unwrap();
    let c = Container::new("ctr-c", c_ns.name());

    // No daemon: ADD fails with the error object, try again later, naming
    // the socket.
    lab.daemon.kill().unwrap();
    let failure = lab.runtime.add(&c).unwrap_err();
    assert_eq!(failure.plugin, "sg-cni");
    assert_eq!(failure.error["code"], 11, "{:?}", failure.error);
    let socket = lab.daemon.socket().display().to_string();
    assert!(
        failure.error["msg"].as_str().unwrap().contains(&socket),
        "{:?}",
        failure.error
    );

    // DEL cannot tell whether the port is gone: it fails too, and the
    // runtime tries again. The daemon back, DEL finds no port and
    // succeeds; ADD again puts the port in force.
    let failure = lab.runtime.del(&c).unwrap_err();
    assert_eq!(failure.plugin, "sg-cni");
    assert_eq!(failure.error["code"], 11, "{:?}", failure.error);
    lab.daemon.spawn().unwrap();
    lab.runtime.del(&c).unwrap();
    let result = lab.runtime.add(&c).unwrap();
    lab.runtime.check(&c).unwrap();

    // The port moved off the container's veth: sg-cni's CHECK fails.
    let name = lab.port_of(&result)["spec"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    lab.daemon
        .ok(&["port", "update", &name, "--iface", "elsewhere0"])
        .unwrap();
    let failure = lab.runtime.check(&c).unwrap_err();
    assert_eq!(failure.plugin, "sg-cni");
    assert_eq!(failure.error["code"], 102, "{:?}", failure.error);
    assert!(
        failure.error["details"]
            .as_str()
            .unwrap()
            .contains("it is on elsewhere0"),
        "{:?}",
        failure.error
    );

    // Deleted: CHECK fails; DEL succeeds, twice.
    lab.daemon.ok(&["port", "delete", &name]).unwrap();
    let failure = lab.runtime.check(&c).unwrap_err();
    assert_eq!(failure.error["code"], 102, "{:?}", failure.error);
    assert!(
        failure.error["msg"].as_str().unwrap().contains("no port"),
        "{:?}",
        failure.error
    );
    lab.runtime.del(&c).unwrap();
    lab.runtime.del(&c).unwrap();
}

#[test]
fn version_and_errors_are_the_specifications_objects() {
    let plugin = |command: &str, stdin: &str| {
        let (status, stdout, _) = runtime::run(
            Command::new(env!("CARGO_BIN_EXE_sg-cni"))
                .env_clear()
                .env("CNI_COMMAND", command)
                .env("CNI_CONTAINERID", "c1")
                .env("CNI_NETNS", "/run/netns/none")
                .env("CNI_IFNAME", "eth0"),
            stdin,
        );
        let reply: Value = serde_json::from_str(&stdout).unwrap();
        (status.code(), reply)
    };
    let (code, reply) = plugin("VERSION", r#"{"cniVersion": "1.0.0"}"#);
    assert_eq!(code, Some(0));
    assert_eq!(
        reply,
        json!({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]})
    );
    for (stdin, want) in [
        (
            r#"{"cniVersion": "1.0.0", "name": "n", "type": "sg-cni"}"#,
            7,
        ),
        (
            r#"{"cniVersion": "1.1.0", "name": "n", "type": "sg-cni"}"#,
            1,
        ),
        ("not json", 6),
    ] {
        let (code, reply) = plugin("ADD", stdin);
        assert_eq!(code, Some(1), "{reply}");
        assert_eq!(reply["code"], want, "{reply}");
    }
}
