//! `sg-ctl hooks`: `install` puts the hypervisor scripts sg ships (`hooks/`
//! of the source tree, built into the binary) where qemu and libvirt run
//! them, each naming this binary, so that a VM's tap is enforced before its
//! guest runs; `libvirt` is what libvirt's hook runs: the domain's XML in,
//! its ports plugged or unplugged.

use std::{
    fs,
    io::{Read as _, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use sg_core::model::{MacAddr, Port, parse_ip};
use sg_ctl::{daemon::api::PlugBody, netns};

use super::{Invalid, Session};

/// A shipped script: its name and text.
struct Hook {
    name: &'static str,
    text: &'static str,
}

const QEMU: [Hook; 2] = [
    Hook {
        name: "qemu-ifup",
        text: include_str!("../../../hooks/qemu-ifup"),
    },
    Hook {
        name: "qemu-ifdown",
        text: include_str!("../../../hooks/qemu-ifdown"),
    },
];

const LIBVIRT: Hook = Hook {
    name: "qemu",
    text: include_str!("../../../hooks/libvirt-qemu"),
};

/// The line of every script that names sg-ctl, found on `PATH` unless the
/// install names it (libvirt runs hooks with a short `PATH`).
const SG_CTL_LINE: &str = "SG_CTL=${SG_CTL:-sg-ctl}\n";

#[derive(Args)]
pub struct HooksInstall {
    /// Where qemu's scripts go (`-netdev tap,script=DIR/qemu-ifup,downscript=DIR/qemu-ifdown`).
    #[arg(long, default_value = "/etc/sg")]
    dir: PathBuf,
    /// Install libvirt's hook too, as `qemu` in --libvirt-dir.
    #[arg(long)]
    libvirt: bool,
    #[arg(long, default_value = "/etc/libvirt/hooks", requires = "libvirt")]
    libvirt_dir: PathBuf,
}

impl HooksInstall {
    pub fn run(&self) -> Result<()> {
        let sg_ctl = std::env::current_exe().context("cannot tell where sg-ctl is")?;
        let mut hooks: Vec<(PathBuf, &Hook)> = QEMU
            .iter()
            .map(|hook| (self.dir.join(hook.name), hook))
            .collect();
        if self.libvirt {
            let path = self.libvirt_dir.join(LIBVIRT.name);
            // Another hook of the operator's is theirs to keep.
            if let Ok(text) = fs::read_to_string(&path)
                && !text.contains(LIBVIRT_MARK)
            {
                bail!(
                    "{} is a hook of its own, not sg's: run `sg-ctl hooks libvirt \"$@\"` from \
                     it (with the domain's XML on its stdin), or move it and install again",
                    path.display()
                );
            }
            hooks.push((path, &LIBVIRT));
        }
        for (path, hook) in hooks {
            let dir = path.parent().context("a hook's directory")?;
            fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
            install(&path, &with_sg_ctl(hook.text, &sg_ctl))?;
            println!("installed {}", path.display());
        }
        if self.libvirt {
            println!("libvirt reads its hooks as it starts: restart libvirtd (or virtqemud)");
        }
        Ok(())
    }
}

/// What tells sg's libvirt hook from another.
const LIBVIRT_MARK: &str = "# sg's libvirt hook";

/// The XML namespace of sg's element in a domain's `<metadata>`.
pub const METADATA_NAMESPACE: &str = "urn:sg:libvirt:1";

/// What libvirt's hook (`/etc/libvirt/hooks/qemu`) runs, with its
/// arguments and the domain's XML on stdin.
#[derive(Args)]
pub struct LibvirtHook {
    /// The domain's name.
    guest: String,
    /// libvirt's operation: prepare, start, started, stopped, release, …
    operation: String,
    /// Its sub-operation: begin or end.
    sub_operation: String,
    /// What libvirt adds after them (not read).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    extra: Vec<String>,
}

impl LibvirtHook {
    /// At "start begin", once libvirt made the taps and before qemu runs,
    /// describes and plugs every port of the domain's metadata, failing
    /// (so that libvirt does not start the VM) unless each is enforced; at
    /// "stopped end", unplugs them. Other operations do nothing.
    pub async fn run(&self, session: &Session) -> Result<()> {
        let plugging = match (self.operation.as_str(), self.sub_operation.as_str()) {
            ("start", "begin") => true,
            ("stopped", "end") => false,
            _ => return Ok(()),
        };
        let mut xml = String::new();
        std::io::stdin()
            .read_to_string(&mut xml)
            .context("reading the domain's XML on stdin")?;
        let guest = &self.guest;
        let ports = domain_ports(&xml).map_err(|e| Invalid(format!("domain {guest}: {e}")))?;
        // libvirt made the taps where it runs: in the namespace of `ip
        // netns` this runs in, if it is one, else in the daemon's.
        let netns = session
            .netns
            .clone()
            .or_else(|| netns::current().ok().and_then(netns::name_of));
        let client = &session.client;
        for mut port in ports {
            port.netns = netns.clone();
            // The daemon's refusals name the port.
            if plugging {
                client.put_port(&port).await?;
                client.plug(&port.name, &PlugBody::default()).await?;
            } else {
                match client.unplug(&port.name).await {
                    Err(e) if e.is_not_found() => {}
                    unplugged => drop(unplugged?),
                }
            }
        }
        Ok(())
    }
}

/// The ports a domain's XML describes for sg: one per `<sg:port>` of its
/// `<metadata>`, on the tap of the `<interface>` of its MAC.
///
/// ```xml
/// <metadata>
///   <sg:ports xmlns:sg="urn:sg:libvirt:1">
///     <sg:port name="vm1" mac="52:54:00:12:34:56" ips="198.18.0.5 2001:db8::5" groups="web"/>
///   </sg:ports>
/// </metadata>
/// ```
fn domain_ports(xml: &str) -> Result<Vec<Port>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("its XML: {e}"))?;
    let domain = doc.root_element();
    if !domain.has_tag_name("domain") {
        return Err(format!(
            "its XML is a <{}>, not a <domain>",
            domain.tag_name().name()
        ));
    }
    // Each interface's MAC and tap.
    let interfaces: Vec<(MacAddr, Option<&str>)> = domain
        .children()
        .filter(|n| n.has_tag_name("devices"))
        .flat_map(|devices| devices.children())
        .filter(|n| n.has_tag_name("interface"))
        .filter_map(|interface| {
            let child = |tag: &str, attribute: &str| {
                interface
                    .children()
                    .find(|n| n.has_tag_name(tag))
                    .and_then(|n| n.attribute(attribute))
            };
            let mac = child("mac", "address")?.parse().ok()?;
            Some((mac, child("target", "dev")))
        })
        .collect();
    // `virsh metadata DOMAIN urn:sg:libvirt:1 --key sg --set '<ports>…'`
    // puts the namespace on `ports` alone.
    let described = domain
        .children()
        .filter(|n| n.has_tag_name("metadata"))
        .flat_map(|metadata| metadata.children())
        .filter(|n| n.has_tag_name((METADATA_NAMESPACE, "ports")))
        .flat_map(|ports| ports.children())
        .filter(|n| n.is_element() && n.tag_name().name() == "port");
    let mut ports = Vec::new();
    for (i, element) in described.enumerate() {
        let field = |name: &str| element.attribute(name).unwrap_or_default().trim();
        let at = format!("sg:port[{i}]");
        let name = field("name");
        if name.is_empty() {
            return Err(format!("{at}: name is missing; give the port's name"));
        }
        let at = format!("{at} ({name})");
        let mac: MacAddr = field("mac")
            .parse()
            .map_err(|e| format!("{at}: mac: {e}"))?;
        let ifname = match interfaces.iter().find(|(of, _)| *of == mac) {
            Some((_, Some(dev))) => *dev,
            Some((_, None)) => {
                return Err(format!(
                    "{at}: the interface of {mac} has no <target dev>: libvirt names its tap \
                     there once it made it"
                ));
            }
            None => {
                return Err(format!(
                    "{at}: mac: no <interface> of the domain has {mac}; give an interface's \
                     <mac address>"
                ));
            }
        };
        let mut port = Port::new(name, ifname, mac);
        let words = |text: &'_ str| {
            text.split([' ', ',', '\t', '\n'])
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect::<Vec<String>>()
        };
        port.ips = words(field("ips"))
            .iter()
            .map(|ip| parse_ip(ip).map_err(|e| format!("{at}: ips: {e}")))
            .collect::<Result<_, _>>()?;
        let groups = words(field("groups"));
        if !groups.is_empty() {
            port.groups = groups;
        }
        ports.push(port);
    }
    Ok(ports)
}

/// The script naming `sg_ctl` as its default.
fn with_sg_ctl(text: &str, sg_ctl: &Path) -> String {
    let line = format!("SG_CTL=${{SG_CTL:-{}}}\n", sg_ctl.display());
    text.replacen(SG_CTL_LINE, &line, 1)
}

/// Writes `text` beside `path`, executable by all and writable by its
/// owner only, then renames it over `path`: a hypervisor starting a VM
/// meanwhile runs the old script or the new one, never half of one.
fn install(path: &Path, text: &str) -> Result<()> {
    let staged = path.with_extension("sg-new");
    let _ = fs::remove_file(&staged);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(&staged)
        .with_context(|| format!("cannot write {}", staged.display()))?;
    file.write_all(text.as_bytes())?;
    file.set_permissions(fs::Permissions::from_mode(0o755))?;
    file.sync_all()?;
    fs::rename(&staged, path).with_context(|| format!("cannot put {} in place", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_names_the_installed_binary() {
        assert!(LIBVIRT.text.contains(LIBVIRT_MARK));
        for hook in QEMU.iter().chain([&LIBVIRT]) {
            assert!(hook.text.starts_with("#!/bin/sh\n"), "{}", hook.name);
            let text = with_sg_ctl(hook.text, Path::new("/opt/sg/bin/sg-ctl"));
            assert!(
                text.contains("\nSG_CTL=${SG_CTL:-/opt/sg/bin/sg-ctl}\n"),
                "{}: {text}",
                hook.name
            );
        }
    }

    /// A domain as libvirt gives it to its hook at "start begin", its taps
    /// named.
    fn domain(metadata: &str) -> String {
        format!(
            "<domain type='kvm' id='1'>\n  <name>vm1</name>\n  <metadata>{metadata}</metadata>\n  \
             <devices>\n    <interface type='bridge'>\n      <mac address='52:54:00:12:34:56'/>\n      \
             <source bridge='br0'/>\n      <target dev='vnet3'/>\n      <model type='virtio'/>\n    \
             </interface>\n    <interface type='ethernet'>\n      <mac address='52:54:00:00:00:02'/>\n    \
             </interface>\n  </devices>\n</domain>\n"
        )
    }

    #[test]
    fn a_domain_names_its_ports_in_its_metadata() {
        let xml = domain(
            "<sg:ports xmlns:sg='urn:sg:libvirt:1'>\
             <sg:port name='vm1-0' mac='52:54:00:12:34:56' ips='198.18.0.5, 2001:db8::5' \
             groups='web db'/></sg:ports><other xmlns='urn:x'/>",
        );
        let ports = domain_ports(&xml).unwrap();
        assert_eq!(ports.len(), 1);
        let port = &ports[0];
        assert_eq!(
            (
                port.name.as_str(),
                port.ifname.as_str(),
                port.mac.to_string()
            ),
            ("vm1-0", "vnet3", "52:54:00:12:34:56".to_string())
        );
        assert_eq!(
            port.ips,
            [
                "198.18.0.5".parse::<std::net::IpAddr>().unwrap(),
                "2001:db8::5".parse().unwrap()
            ]
        );
        assert_eq!(port.groups, ["web", "db"]);
        assert_eq!(port.netns, None);
        // Without groups, the port is in default; without metadata, the
        // domain is none of sg's.
        let xml = domain(
            "<sg:ports xmlns:sg='urn:sg:libvirt:1'><sg:port name='a' mac='52:54:00:12:34:56'/></sg:ports>",
        );
        assert_eq!(domain_ports(&xml).unwrap()[0].groups, ["default"]);
        // As `virsh metadata --key sg --set` stores it.
        let xml = domain(
            "<sg:ports xmlns:sg='urn:sg:libvirt:1'><port name='a' mac='52:54:00:12:34:56'/></sg:ports>",
        );
        assert_eq!(domain_ports(&xml).unwrap()[0].name, "a");
        assert!(domain_ports(&domain("")).unwrap().is_empty());
    }

    #[test]
    fn a_wrong_description_is_refused_naming_the_field() {
        let refused = |metadata: &str| domain_ports(&domain(metadata)).unwrap_err();
        let port = |attributes: &str| {
            refused(&format!(
                "<sg:ports xmlns:sg='urn:sg:libvirt:1'><sg:port {attributes}/></sg:ports>"
            ))
        };
        let cases = [
            (
                port("mac='52:54:00:12:34:56'"),
                "sg:port[0]: name is missing",
            ),
            (
                port("name='a' mac='52:54:00:12:34'"),
                "sg:port[0] (a): mac:",
            ),
            (
                port("name='a' mac='52:54:00:99:99:99'"),
                "no <interface> of the domain has 52:54:00:99:99:99",
            ),
            (
                port("name='a' mac='52:54:00:00:00:02'"),
                "the interface of 52:54:00:00:00:02 has no <target dev>",
            ),
            (
                port("name='a' mac='52:54:00:12:34:56' ips='198.18.0.0/24'"),
                "sg:port[0] (a): ips: 198.18.0.0/24 is a prefix",
            ),
        ];
        for (error, expected) in cases {
            assert!(error.contains(expected), "{error}");
        }
        assert!(
            domain_ports("<domain>")
                .unwrap_err()
                .starts_with("its XML:")
        );
        assert!(
            domain_ports("<network/>")
                .unwrap_err()
                .contains("not a <domain>")
        );
    }

    #[test]
    fn an_operators_own_libvirt_hook_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let install = HooksInstall {
            dir: dir.path().join("sg"),
            libvirt: true,
            libvirt_dir: dir.path().join("libvirt"),
        };
        install.run().unwrap();
        let hook = dir.path().join("libvirt/qemu");
        assert!(fs::read_to_string(&hook).unwrap().contains(LIBVIRT_MARK));
        install.run().unwrap();
        fs::write(&hook, "#!/bin/sh\necho mine\n").unwrap();
        let error = install.run().unwrap_err().to_string();
        assert!(error.contains("is a hook of its own"), "{error}");
        assert_eq!(fs::read_to_string(&hook).unwrap(), "#!/bin/sh\necho mine\n");
    }

    #[test]
    fn installing_again_replaces_the_scripts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qemu-ifup");
        install(&path, "#!/bin/sh\nold\n").unwrap();
        install(&path, "#!/bin/sh\nnew\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "#!/bin/sh\nnew\n");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
