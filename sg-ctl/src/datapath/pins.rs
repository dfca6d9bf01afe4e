//! Where the datapath lives on the BPF filesystem, and the lock that
//! serialises changes to it by concurrent sg-ctl processes (in
//! [`LOCK_DIR`], which only root may enter).
//!
//! ```text
//! <root>/maps/SG_PORTS  SG_STATS  …        shared by every port
//! <root>/ports/<slot>/xdp  tc  tc-reply    the links of one port
//! ```

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::maps::{Map, MapData, MapError};

use super::error::{Context as _, DatapathError, Result};
use crate::lock::{self, LockFile};

/// Default pin directory on the host's bpffs.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/sg";

/// The directory of the datapath's locks: under /run (root's alone, where
/// /run/lock is anyone's), mode 0700.
const LOCK_DIR: &str = "/run/sg/locks";
/// How long a change waits for another sg-ctl's change to the same pins.
const LOCK_WAIT: Duration = Duration::from_secs(10);

const BPFFS_ROOT: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Paths under the pin directory.
#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Pins { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(super) fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    pub(super) fn ports(&self) -> PathBuf {
        self.root.join("ports")
    }

    pub(super) fn port_dir(&self, slot: u32) -> PathBuf {
        self.ports().join(slot.to_string())
    }

    pub(super) fn xdp_link(&self, slot: u32) -> PathBuf {
        self.port_dir(slot).join("xdp")
    }

    pub(super) fn tc_link(&self, slot: u32) -> PathBuf {
        self.port_dir(slot).join("tc")
    }

    pub(super) fn tc_reply_link(&self, slot: u32) -> PathBuf {
        self.port_dir(slot).join("tc-reply")
    }

    /// Opens a pinned map as the type it must have.
    pub fn open<T: TryFrom<Map, Error = MapError>>(&self, name: &str) -> Result<T> {
        let path = self.map(name);
        let what = || format!("opening {}", path.display());
        let data = MapData::from_pin(&path).context(what)?;
        let map = Map::from_map_data(data).context(what)?;
        map.try_into()
            .context(|| format!("{} has an unexpected type", path.display()))
    }

    /// The lock file of these pins, in [`LOCK_DIR`].
    pub fn lock_path(&self) -> PathBuf {
        Path::new(LOCK_DIR).join(self.lock_name())
    }

    fn lock_name(&self) -> String {
        let name = self.root.to_string_lossy().replace('/', "_");
        format!("pins{name}.lock")
    }

    /// Serialises changes to the pins by concurrent sg-ctl processes.
    pub(super) fn lock(&self) -> Result<LockFile> {
        let what = "the datapath's lock";
        lock::acquire(Path::new(LOCK_DIR), &self.lock_name(), what, LOCK_WAIT).map_err(|e| {
            DatapathError::Kernel {
                what: format!("changing the pins under {}", self.root.display()),
                source: Box::new(e),
            }
        })
    }

    /// Mounts the BPF filesystem at `/sys/fs/bpf` where nothing mounted it.
    pub(super) fn ensure_bpffs(&self) -> Result<()> {
        if !self.root.starts_with(BPFFS_ROOT) {
            return Ok(());
        }
        let stat =
            nix::sys::statfs::statfs(BPFFS_ROOT).context(|| format!("statfs {BPFFS_ROOT}"))?;
        if stat.filesystem_type().0 as i64 == BPF_FS_MAGIC {
            return Ok(());
        }
        nix::mount::mount(
            Some("bpf"),
            BPFFS_ROOT,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .context(|| format!("mounting the BPF filesystem at {BPFFS_ROOT}"))
    }
}

impl Default for Pins {
    fn default() -> Self {
        Pins::new(DEFAULT_PIN_DIR)
    }
}

pub(super) fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}
