//! The guest kernel of the VM test (`tests/tests/vm.rs`): Debian's, as
//! `linux-image-amd64` names it, downloaded with `apt-get download` (never
//! installed: /boot stays as it is) and unpacked with `dpkg-deb -x`; what
//! the test boots is kept in `target/vm-guest/`, the rest removed:
//!
//! ```text
//! target/vm-guest/package        the kernel package's name and version
//! target/vm-guest/vmlinuz
//! target/vm-guest/modules/*.ko   virtio-net's modules and netconsole's
//! target/vm-guest/modules.load   their file names, in insmod order
//! ```

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{cmd_output, run, workspace_root};

/// The modules the guest loads: its network card and the console that
/// sends from a chosen UDP port.
const MODULES: &[&str] = &["virtio_pci", "virtio_net", "netconsole"];

/// Fetches and unpacks the kernel unless the one there is the current
/// package's.
pub fn ensure_kernel() -> Result<()> {
    if std::env::consts::ARCH != "x86_64" {
        println!("    not an x86_64 host: the VM test's guest is x86_64 under TCG; skipped");
        return Ok(());
    }
    // A machine whose package lists were never fetched knows no kernel.
    let package = match kernel_package() {
        Ok(package) => package,
        Err(_) => {
            run(Command::new("apt-get").args(["update", "-q"]))?;
            kernel_package()?
        }
    };
    let version =
        cmd_output(Command::new("apt-cache").args(["show", "--no-all-versions", &package]))?
            .lines()
            .find_map(|line| line.strip_prefix("Version: "))
            .map(str::to_string)
            .with_context(|| format!("apt-cache knows no version of {package}"))?;
    let cache = workspace_root().join("target/vm-guest");
    let stamp = format!("{package} {version}\n");
    if fs::read_to_string(cache.join("package")).is_ok_and(|s| s == stamp) {
        println!(
            "    {package} {version} already unpacked in {}",
            cache.display()
        );
        return Ok(());
    }
    let work = cache.with_file_name("vm-guest.unpack");
    let _ = fs::remove_dir_all(&work);
    let _ = fs::remove_dir_all(&cache);
    fs::create_dir_all(&work)?;
    println!("    downloading {package} {version}");
    run(Command::new("apt-get")
        .args(["download", "-q", &format!("{package}={version}")])
        .current_dir(&work))?;
    let deb = fs::read_dir(&work)?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let root = work.join("root");
    println!("    unpacking {}", deb.display());
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let release = package
        .strip_prefix("linux-image-")
        .context("a kernel package is linux-image-RELEASE")?;
    // The package has no modules.dep (its postinst makes it).
    run(Command::new("depmod").arg("-b").arg(&root).arg(release))?;
    let modules = cache.join("modules");
    fs::create_dir_all(&modules)?;
    let mut order: Vec<String> = Vec::new();
    for module in MODULES {
        let depends = cmd_output(Command::new("modprobe").arg("-d").arg(&root).args([
            "-S",
            release,
            "--show-depends",
            module,
        ]))?;
        for line in depends.lines() {
            // `insmod /path/name.ko`; `builtin name` needs nothing.
            let Some(path) = line.strip_prefix("insmod ") else {
                continue;
            };
            let path = Path::new(path.trim());
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .context("a module's file name")?
                .to_string();
            if !name.ends_with(".ko") {
                bail!("{name}: the guest's busybox insmod loads uncompressed modules only");
            }
            if !order.contains(&name) {
                fs::copy(path, modules.join(&name))
                    .with_context(|| format!("copying {}", path.display()))?;
                order.push(name);
            }
        }
    }
    fs::copy(
        root.join(format!("boot/vmlinuz-{release}")),
        cache.join("vmlinuz"),
    )?;
    fs::write(cache.join("modules.load"), order.join("\n") + "\n")?;
    fs::write(cache.join("package"), stamp)?;
    fs::remove_dir_all(&work)?;
    println!("    {} with {}", cache.display(), order.join(" "));
    Ok(())
}

/// The kernel package `linux-image-amd64` depends on now.
fn kernel_package() -> Result<String> {
    cmd_output(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?
        .lines()
        .find_map(|line| line.trim().strip_prefix("Depends: linux-image-"))
        .map(|release| format!("linux-image-{release}"))
        .context("apt-cache names no kernel that linux-image-amd64 depends on")
}
