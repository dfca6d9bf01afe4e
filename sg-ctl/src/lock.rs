//! Lock files that only sg-ctl's own user (root) can open, taken with a
//! bounded wait. `flock` needs no more than a descriptor, so a lock file
//! anyone may open is one anyone may hold, stopping every change for as
//! long as they like: these live in a directory of mode 0700, each of mode
//! 0600, opened without following a symbolic link; one made by another
//! user is refused, a mode loosened by hand is put back. When a lock stays
//! held past the wait, the error names the lock and the process holding
//! it (from /proc/locks).

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io,
    os::unix::fs::{
        DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
    },
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

/// A lock held until dropped.
#[derive(Debug)]
pub struct LockFile {
    _lock: Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{what}: {} {problem}; remove it, sg-ctl did not make it", path.display())]
    Unsafe {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error(
        "{what}: {} is held by {} and was not given up within {waited:?}; wait for that to \
         finish, or stop it if it hangs",
        path.display(),
        holder.as_deref().unwrap_or("another process")
    )]
    Held {
        what: &'static str,
        path: PathBuf,
        holder: Option<String>,
        waited: Duration,
    },
    #[error("{what}: {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// How often a held lock is tried again.
const RETRY_EVERY: Duration = Duration::from_millis(20);

/// Takes the lock `name` in `dir` (made 0700 if it is not there), waiting
/// at most `wait` for whoever holds it; `what` says what the lock guards,
/// for errors.
pub fn acquire(
    dir: &Path,
    name: &str,
    what: &'static str,
    wait: Duration,
) -> Result<LockFile, LockError> {
    private_dir(dir, what)?;
    let path = dir.join(name);
    let io_error = |source| LockError::Io {
        what,
        path: path.clone(),
        source,
    };
    let unsafe_file = |problem: String| LockError::Unsafe {
        what,
        path: path.clone(),
        problem,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => unsafe_file("is a symbolic link".into()),
            _ => io_error(e),
        })?;
    let metadata = file.metadata().map_err(io_error)?;
    check_owner(&metadata, unsafe_file)?;
    if !metadata.file_type().is_file() {
        return Err(unsafe_file("is not a regular file".into()));
    }
    if metadata.mode() & 0o7777 != 0o600 {
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_error)?;
    }
    let started = Instant::now();
    let mut file = file;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(LockFile { _lock: lock }),
            Err((back, Errno::EWOULDBLOCK)) if started.elapsed() < wait => {
                file = back;
                thread::sleep(RETRY_EVERY);
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(LockError::Held {
                    what,
                    path,
                    holder: holder(&metadata),
                    waited: wait,
                });
            }
            Err((_, errno)) => return Err(io_error(errno.into())),
        }
    }
}

/// Makes `dir` (and what leads to it) if needed, and checks that it is a
/// directory of sg-ctl's user that no one else may enter: mode 0700, put
/// back if it was loosened.
fn private_dir(dir: &Path, what: &'static str) -> Result<(), LockError> {
    let io_error = |source| LockError::Io {
        what,
        path: dir.to_path_buf(),
        source,
    };
    let unsafe_dir = |problem: String| LockError::Unsafe {
        what,
        path: dir.to_path_buf(),
        problem,
    };
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).map_err(io_error)?;
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_error(e)),
        _ => {}
    }
    let metadata = fs::symlink_metadata(dir).map_err(io_error)?;
    if !metadata.file_type().is_dir() {
        return Err(unsafe_dir("is not a directory".into()));
    }
    check_owner(&metadata, unsafe_dir)?;
    if metadata.mode() & 0o777 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_error)?;
    }
    Ok(())
}

fn check_owner(
    metadata: &fs::Metadata,
    refused: impl FnOnce(String) -> LockError,
) -> Result<(), LockError> {
    let me = nix::unistd::geteuid().as_raw();
    if metadata.uid() == me {
        return Ok(());
    }
    Err(refused(format!(
        "belongs to uid {}, not to uid {me} that sg-ctl runs as",
        metadata.uid()
    )))
}

/// Who holds the flock of a file, from /proc/locks: `pid 4242 (sg-ctl,
/// uid 0)`.
fn holder(file: &fs::Metadata) -> Option<String> {
    let dev = file.dev();
    let id = format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        file.ino()
    );
    let locks = fs::read_to_string("/proc/locks").ok()?;
    let pid: u32 = locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // `1: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE START END`; waiters
        // have `->` after the number.
        match fields.as_slice() {
            [_, "FLOCK", _, _, pid, at, ..] if *at == id => pid.parse().ok(),
            _ => None,
        }
    })?;
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let command = fs::read_to_string(proc.join("comm")).unwrap_or_default();
    let uid = fs::read_to_string(proc.join("status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().next().map(str::to_string))
        });
    Some(match uid {
        Some(uid) => format!("pid {pid} ({}, uid {uid})", command.trim()),
        None => format!("pid {pid}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("sg-unit-lock-")
            .tempdir()
            .unwrap()
    }

    const WAIT: Duration = Duration::from_millis(200);

    #[test]
    fn locks_are_private_and_bounded() {
        let dir = temp_dir();
        let locks = dir.path().join("locks");
        let held = acquire(&locks, "a.lock", "the test lock", WAIT).unwrap();
        let mode = |path: &Path| fs::symlink_metadata(path).unwrap().mode() & 0o7777;
        assert_eq!(mode(&locks), 0o700);
        assert_eq!(mode(&locks.join("a.lock")), 0o600);
        let started = Instant::now();
        let error = acquire(&locks, "a.lock", "the test lock", WAIT).unwrap_err();
        assert!(started.elapsed() >= WAIT);
        let message = error.to_string();
        let me = format!("pid {} (", std::process::id());
        assert!(
            message.starts_with(&format!(
                "the test lock: {} is held by {me}",
                locks.join("a.lock").display()
            )),
            "{message}"
        );
        assert!(
            message.ends_with(
                "was not given up within 200ms; wait for that to finish, or stop it if it hangs"
            ),
            "{message}"
        );
        drop(held);
        acquire(&locks, "a.lock", "the test lock", WAIT).unwrap();
    }

    #[test]
    fn loosened_modes_are_put_back_and_links_refused() {
        let dir = temp_dir();
        let locks = dir.path().join("locks");
        fs::create_dir(&locks).unwrap();
        fs::set_permissions(&locks, fs::Permissions::from_mode(0o777)).unwrap();
        let file = locks.join("a.lock");
        fs::write(&file, "").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        drop(acquire(&locks, "a.lock", "the test lock", WAIT).unwrap());
        let mode = |path: &Path| fs::symlink_metadata(path).unwrap().mode() & 0o7777;
        assert_eq!((mode(&locks), mode(&file)), (0o700, 0o600));

        std::os::unix::fs::symlink(dir.path().join("elsewhere"), locks.join("b.lock")).unwrap();
        let error = acquire(&locks, "b.lock", "the test lock", WAIT).unwrap_err();
        assert!(matches!(error, LockError::Unsafe { .. }), "{error}");
        assert!(!dir.path().join("elsewhere").exists());
        let linked = dir.path().join("linked");
        std::os::unix::fs::symlink(&locks, &linked).unwrap();
        let error = acquire(&linked, "a.lock", "the test lock", WAIT).unwrap_err();
        assert!(error.to_string().contains("is not a directory"), "{error}");
    }

    /// A lock file or directory another user made is not used.
    #[test]
    fn others_locks_are_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: making files of another user needs root");
            return;
        }
        let nobody = Some(nix::unistd::Uid::from_raw(65534));
        let dir = temp_dir();
        let theirs = dir.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        nix::unistd::chown(&theirs, nobody, None).unwrap();
        let error = acquire(&theirs, "a.lock", "the test lock", WAIT).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("belongs to uid 65534, not to uid 0 that sg-ctl runs as"),
            "{error}"
        );
        let locks = dir.path().join("locks");
        fs::create_dir(&locks).unwrap();
        let file = locks.join("a.lock");
        fs::write(&file, "").unwrap();
        nix::unistd::chown(&file, nobody, None).unwrap();
        let error = acquire(&locks, "a.lock", "the test lock", WAIT).unwrap_err();
        assert!(matches!(error, LockError::Unsafe { .. }), "{error}");
    }
}
