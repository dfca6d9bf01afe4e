//! The raw system calls the datapath needs that aya does not wrap:
//! interface names and indexes, an interface's driver, a pinned link's
//! interface, the batch map operations (`BPF_MAP_*_BATCH`), which write,
//! list or delete thousands of entries in one call each, and the wait for
//! the program runs under way to end.

use std::{
    ffi::CString,
    io,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    thread,
    time::Duration,
};

use aya::{Pod, maps::MapData};

use sg_common::PortConfig;

pub(super) fn ifname_bytes(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let n = name.len().min(15);
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    out
}

pub(super) fn ifname_of(config: &PortConfig) -> String {
    let end = config.ifname.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&config.ifname[..end]).into_owned()
}

pub(super) fn ifindex_of(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => None,
        index => Some(index),
    }
}

/// The name of an interface's driver ("veth", "tun", …) as ethtool gives
/// it; `None` when the interface does not say.
pub(super) fn driver_of(iface: &str) -> Option<String> {
    /// `struct ethtool_drvinfo` of `<linux/ethtool.h>`.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        counts: [u32; 5],
    }
    const ETHTOOL_GDRVINFO: u32 = 3;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;

    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        version: [0; 32],
        fw_version: [0; 32],
        bus_info: [0; 32],
        erom_version: [0; 32],
        reserved2: [0; 12],
        counts: [0; 5],
    };
    // SAFETY: `ifreq` is plain data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = ifname_bytes(iface);
    for (to, from) in request.ifr_name.iter_mut().zip(name) {
        *to = from as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: a new socket, owned by `socket` below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a socket we just opened and own.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: SIOCETHTOOL reads `request` and writes `info`, both live.
    if unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &raw mut request) } != 0 {
        return None;
    }
    let len = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    String::from_utf8(info.driver[..len].to_vec()).ok()
}

/// A pinned link whose device went away is defunct: the kernel reports no
/// interface for it any more.
pub(super) fn link_alive(path: &Path) -> bool {
    link_ifindex(path).is_some_and(|ifindex| ifindex != 0)
}

/// The interface of a pinned XDP or TCX link, from `BPF_OBJ_GET_INFO_BY_FD`
/// (aya does not expose the per-type part of the link info).
fn link_ifindex(path: &Path) -> Option<u32> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    /// `bpf_link_info`: type, id, prog_id, then the per-type union at
    /// offset 16, where both `xdp` and `tcx` start with the ifindex.
    const IFINDEX_OFFSET: usize = 16;

    /// `bpf_attr` for BPF_OBJ_GET.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    /// `bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }

    let path = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let get = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: the attribute and the path outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &get, size_of::<ObjGet>()) };
    // SAFETY: a descriptor the kernel just gave us, owned from here on.
    let fd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })?;
    let mut info = [0u8; 128];
    let query = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: the attribute and the info buffer outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &query,
            size_of::<InfoByFd>(),
        )
    };
    if rc != 0 {
        return None;
    }
    let bytes = info[IFINDEX_OFFSET..IFINDEX_OFFSET + 4].try_into().ok()?;
    Some(u32::from_ne_bytes(bytes))
}

/// `bpf_attr` for the `BPF_MAP_*_BATCH` commands.
#[repr(C)]
#[derive(Default)]
struct Batch {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// One batch command; on failure the error and how many entries the
/// kernel did before it.
fn batch(command: libc::c_long, attr: &mut Batch) -> Result<(), (usize, io::Error)> {
    // SAFETY: the attribute and the buffers it points to outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut Batch,
            size_of::<Batch>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err((attr.count as usize, io::Error::last_os_error()))
    }
}

/// Writes `entries` into `map` (each added or replaced) in one call. On
/// failure, how many were written before the one that failed.
pub(super) fn update_batch<K: Pod, V: Pod>(
    map: &MapData,
    entries: impl Iterator<Item = (K, V)>,
) -> Result<(), (usize, io::Error)> {
    let (keys, values): (Vec<K>, Vec<V>) = entries.unzip();
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = Batch {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..Batch::default()
    };
    batch(BPF_MAP_UPDATE_BATCH, &mut attr)
}

/// Deletes `keys` from `map` in one call; a key that is not there fails
/// it (ENOENT) after the ones before it.
pub(super) fn delete_batch<K: Pod>(map: &MapData, keys: &[K]) -> Result<(), (usize, io::Error)> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = Batch {
        keys: keys.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..Batch::default()
    };
    batch(BPF_MAP_DELETE_BATCH, &mut attr)
}

/// Every key of `map` (whose values are `V`s), listed a few thousand per
/// call.
pub(super) fn keys_batch<K: Pod, V: Pod>(map: &MapData) -> io::Result<Vec<K>> {
    /// Entries a call lists at most; more than a hash bucket ever holds.
    const CHUNK: usize = 4096;
    let mut keys: Vec<K> = Vec::new();
    let mut chunk_keys: Vec<K> = Vec::with_capacity(CHUNK);
    let mut chunk_values: Vec<V> = Vec::with_capacity(CHUNK);
    // The position the kernel hands back to go on from: a bucket index
    // for a hash, the last key listed for the others; room for a key.
    let mut position = vec![0u64; size_of::<K>().div_ceil(8).max(1)];
    let mut first = true;
    loop {
        let mut attr = Batch {
            in_batch: if first { 0 } else { position.as_ptr() as u64 },
            out_batch: position.as_mut_ptr() as u64,
            keys: chunk_keys.as_mut_ptr() as u64,
            values: chunk_values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..Batch::default()
        };
        let done = match batch(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(()) => false,
            Err((_, e)) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err((_, e)) => return Err(e),
        };
        // SAFETY: the kernel wrote `attr.count` keys, at most `CHUNK`.
        unsafe { chunk_keys.set_len((attr.count as usize).min(CHUNK)) };
        keys.append(&mut chunk_keys);
        if done {
            return Ok(keys);
        }
        first = false;
    }
}

/// Returns once every program run that began before the call has ended.
/// XDP and TC programs run under RCU's read lock, and
/// `membarrier(MEMBARRIER_CMD_GLOBAL)` is the kernel's `synchronize_rcu`;
/// where the kernel refuses it (`nohz_full`), `fallback` is slept instead,
/// far longer than a program runs.
pub(super) fn wait_for_program_runs(fallback: Duration) {
    // SAFETY: a command and flags, no pointers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            libc::MEMBARRIER_CMD_GLOBAL,
            0 as libc::c_uint,
            0 as libc::c_int,
        )
    };
    if rc != 0 {
        thread::sleep(fallback);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_nul_padded() {
        let config = PortConfig {
            ifname: ifname_bytes("tap0"),
            ..PortConfig::EMPTY
        };
        assert_eq!(ifname_of(&config), "tap0");
        assert_eq!(ifname_bytes("a-very-long-interface-name")[15], 0);
    }
}
