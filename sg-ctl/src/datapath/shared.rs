//! Maps mapped into this process: memory the datapath reads (and adds to)
//! in place, which this side reads and writes there too, rather than
//! through map updates that would copy whole values back and forth.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use aya::maps::MapData;

use super::{
    error::{Context as _, Result},
    pins::Pins,
};

/// An array map mapped into this process. The datapath updates some of
/// these with atomic instructions on this same memory, so this side does
/// too (a map update would write back a value read before it):
/// `SG_PORT_FLOWS` and `SG_CONNTRACK_PRESENCE`; `SG_REMOTE_EXACT` it only
/// reads.
pub(super) struct Shared<T> {
    entries: NonNull<T>,
    len: usize,
    bytes: usize,
    /// Holds the map while it is mapped.
    _map: MapData,
}

// SAFETY: the mapping is shared memory that both sides use only through
// atomic operations, or writes ordered before the one that publishes them.
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    pub(super) fn open(pins: &Pins, name: &str) -> Result<Shared<T>> {
        // An array's entries are 8-aligned in its memory: a `T` of another
        // size would be read at the wrong places.
        const { assert!(size_of::<T>().is_multiple_of(8)) };
        let path = pins.map(name);
        let what = || format!("mapping {}", path.display());
        let map = MapData::from_pin(&path).context(what)?;
        let info = map.info().context(what)?;
        let len = info.max_entries() as usize;
        // SAFETY: a plain query.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let bytes = (len * size_of::<T>()).div_ceil(page) * page;
        // SAFETY: a shared mapping of the map's own memory, of its size.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context(what);
        }
        Ok(Shared {
            entries: NonNull::new(at.cast()).expect("mmap gives no null mapping"),
            len,
            bytes,
            _map: map,
        })
    }

    /// The map's entries.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The entry at `index`, if the map has it.
    pub(super) fn entry(&self, index: u32) -> Option<*mut T> {
        let index = index as usize;
        // SAFETY: within the mapping.
        (index < self.len).then(|| unsafe { self.entries.as_ptr().add(index) })
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, of that size.
        unsafe { libc::munmap(self.entries.as_ptr().cast(), self.bytes) };
    }
}
