//! `sg-ctl hooks install`: puts the hypervisor scripts sg ships (`hooks/`
//! of the source tree, built into the binary) where qemu and libvirt run
//! them, each naming this binary, so that a VM's tap is enforced before its
//! guest runs.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use clap::Args;

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

/// The line of every script that names sg-ctl, found on `PATH` unless the
/// install names it (libvirt runs hooks with a short `PATH`).
const SG_CTL_LINE: &str = "SG_CTL=${SG_CTL:-sg-ctl}\n";

#[derive(Args)]
pub struct HooksInstall {
    /// Where qemu's scripts go (`-netdev tap,script=DIR/qemu-ifup,downscript=DIR/qemu-ifdown`).
    #[arg(long, default_value = "/etc/sg")]
    dir: PathBuf,
}

impl HooksInstall {
    pub fn run(&self) -> Result<()> {
        let sg_ctl = std::env::current_exe().context("cannot tell where sg-ctl is")?;
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot make {}", self.dir.display()))?;
        for hook in &QEMU {
            let path = self.dir.join(hook.name);
            install(&path, &with_sg_ctl(hook.text, &sg_ctl))?;
            println!("installed {}", path.display());
        }
        Ok(())
    }
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
        for hook in &QEMU {
            assert!(hook.text.starts_with("#!/bin/sh\n"), "{}", hook.name);
            let text = with_sg_ctl(hook.text, Path::new("/opt/sg/bin/sg-ctl"));
            assert!(
                text.contains("\nSG_CTL=${SG_CTL:-/opt/sg/bin/sg-ctl}\n"),
                "{}: {text}",
                hook.name
            );
        }
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
