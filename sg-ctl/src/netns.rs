//! Network namespaces: entering a named one, and naming the current one.

use std::{
    fs::{self, File},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use nix::sched::{CloneFlags, setns};

/// Where `ip netns add` keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "network namespace '{name}' does not exist: `ip netns list` shows the names \
         (create one with `ip netns add {name}`)"
    )]
    NotFound { name: String },
    #[error("cannot enter network namespace '{name}': {source} (this needs root)")]
    Enter { name: String, source: nix::Error },
    #[error("cannot read the current network namespace: {0}")]
    Current(std::io::Error),
}

/// Path of a named namespace.
pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Moves the calling thread into the named namespace. Only the calling
/// thread moves: call it before spawning threads, or use a guard per thread.
pub fn enter(name: &str) -> Result<(), NetnsError> {
    let file = File::open(path_of(name)).map_err(|_| NetnsError::NotFound {
        name: name.to_string(),
    })?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
        name: name.to_string(),
        source,
    })
}

/// Inode of the calling thread's network namespace: its identity.
pub fn current() -> Result<u64, NetnsError> {
    fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino())
        .map_err(NetnsError::Current)
}

/// A human name for a namespace inode: `host` for init's, the `ip netns`
/// name where there is one, `current` for the caller's, else the inode.
pub fn describe(ino: u64) -> String {
    if fs::metadata("/proc/1/ns/net").is_ok_and(|m| m.ino() == ino) {
        return "host".to_string();
    }
    if let Some(name) = name_of(ino) {
        return name;
    }
    if current().is_ok_and(|current| current == ino) {
        return "current".to_string();
    }
    format!("netns:[{ino}]")
}

/// The `ip netns` name of a namespace inode, if it has one.
pub fn name_of(ino: u64) -> Option<String> {
    fs::read_dir(NETNS_RUN_DIR)
        .ok()?
        .flatten()
        .find(|entry| fs::metadata(entry.path()).is_ok_and(|m| m.ino() == ino))
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
}
