//! What can go wrong in the datapath, each error saying what to do.

use std::path::PathBuf;

use aya::programs::ProgramError;
use sg_common::{Direction, MAX_PORTS};
use sg_core::model::FieldError;

use super::mode::XdpModeArg;
use crate::netns;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("the packet to trace: {reason}")]
    Frame { reason: String },
    #[error("{action} needs root (CAP_BPF and CAP_NET_ADMIN): run sg-ctl as root, e.g. with sudo")]
    NotRoot { action: &'static str },
    #[error(
        "interface '{name}' does not exist in network namespace {netns}: \
         `ip link show` lists the interfaces (use --netns NAME for another namespace)"
    )]
    NoSuchInterface { name: String, netns: String },
    #[error(
        "interface '{name}' has no sg filter in network namespace {netns}: \
         `sg-ctl status` lists the attached ports"
    )]
    NotAttached { name: String, netns: String },
    #[error(
        "no port is attached under {}: attach one first (`sg-ctl attach IFACE`)",
        dir.display()
    )]
    NothingAttached { dir: PathBuf },
    #[error("all {MAX_PORTS} port slots are in use: detach a port first (`sg-ctl detach IFACE`)")]
    PortsFull,
    #[error(
        "attaching XDP to '{iface}' in {mode} mode failed: {source}; \
         try --xdp-mode generic, which every interface supports"
    )]
    XdpAttach {
        iface: String,
        mode: XdpModeArg,
        source: Box<ProgramError>,
    },
    #[error(
        "attaching the TC egress program to '{iface}' failed: {source}; \
         sg needs TCX links (Linux 6.6 or newer)"
    )]
    TcAttach {
        iface: String,
        source: Box<ProgramError>,
    },
    #[error(
        "the pinned maps under {dir} do not match this sg-ctl ({source}): \
         they come from another version; `sg-ctl detach --all` removes them"
    )]
    IncompatiblePins {
        dir: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "the {direction:?} program returned {code}, which sg does not use; is the object out of date? Rebuild with `cargo xtask build`"
    )]
    UnexpectedReturn { direction: Direction, code: u32 },
    #[error("invalid port security: {0}")]
    InvalidPortSecurity(FieldError),
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
}

pub type Result<T, E = DatapathError> = std::result::Result<T, E>;

/// What a failed kernel call was doing: `.context(|| format!(..))`.
pub(super) trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| DatapathError::Kernel {
            what: what(),
            source: Box::new(source),
        })
    }
}

/// A map removal's outcome: whether the key was there. aya gives the
/// kernel's ENOENT for a key that is not (never there, or removed by the
/// datapath meanwhile) as a failed system call.
pub(super) fn removed(
    removal: std::result::Result<(), aya::maps::MapError>,
) -> std::result::Result<bool, aya::maps::MapError> {
    match removal {
        Ok(()) => Ok(true),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

pub(super) fn require_root(action: &'static str) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(DatapathError::NotRoot { action })
    }
}

pub(super) fn not_attached(iface: &str, netns: u64) -> DatapathError {
    DatapathError::NotAttached {
        name: iface.to_string(),
        netns: netns::describe(netns),
    }
}

#[cfg(test)]
mod tests {
    use aya::{maps::MapError, sys::SyscallError};
    use nix::errno::Errno;

    use super::removed;

    #[test]
    fn a_removal_of_a_missing_key_says_it_was_not_there() {
        let failed = |errno| {
            Err(MapError::SyscallError(SyscallError {
                call: "bpf_map_delete_elem",
                io_error: std::io::Error::from_raw_os_error(errno),
            }))
        };
        assert!(removed(Ok(())).unwrap());
        assert!(!removed(failed(Errno::ENOENT as i32)).unwrap());
        assert!(removed(failed(Errno::EPERM as i32)).is_err());
    }
}
