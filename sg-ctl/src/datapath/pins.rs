//! Where the datapath lives on the BPF filesystem, and the lock that
//! serialises changes to it by concurrent sg-ctl processes.
//!
//! ```text
//! <root>/maps/SG_PORTS  SG_STATS  …        shared by every port
//! <root>/ports/<slot>/xdp  tc  tc-reply    the links of one port
//! ```

use std::{
    fs::{self, File},
    io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use aya::maps::{Map, MapData, MapError};

use super::error::{Context as _, Result};

/// Default pin directory on the host's bpffs.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/sg";

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

    pub(super) fn map(&self, name: &str) -> PathBuf {
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
    pub(super) fn open<T: TryFrom<Map, Error = MapError>>(&self, name: &str) -> Result<T> {
        let path = self.map(name);
        let what = || format!("opening {}", path.display());
        let data = MapData::from_pin(&path).context(what)?;
        let map = Map::from_map_data(data).context(what)?;
        map.try_into()
            .context(|| format!("{} has an unexpected type", path.display()))
    }

    /// Serialises changes to the pins by concurrent sg-ctl processes.
    pub(super) fn lock(&self) -> Result<File> {
        let dir = Path::new("/run/lock");
        fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
        let name = self.root.to_string_lossy().replace('/', "_");
        let path = dir.join(format!("sg{name}.lock"));
        let file = File::create(&path).context(|| format!("creating {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error())
                .context(|| format!("locking {}", path.display()));
        }
        Ok(file)
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
