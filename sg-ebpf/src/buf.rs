//! The frame as the programs see it: `Resizable`, an XDP buffer or a TC
//! skb, and `Buf`, reads and writes of its bytes at offsets that differ
//! from packet to packet, each checked against the frame's end in a way
//! the verifier follows. The parser reads neighbour discovery options
//! with it, the connection tracker headers at offsets the parser found,
//! and REJECT writes its replies.

use aya_ebpf::{macros::map, maps::PerCpuArray};

/// Where offsets pass through on their way to a pointer: this CPU's cell,
/// written and read back, so that neither the compiler nor the verifier
/// knows the number that comes out (see `Buf::at`).
#[map(name = "SG_REPLY_CELL")]
static CELL: PerCpuArray<usize> = PerCpuArray::with_max_entries(1, 0);

/// The largest offset a `Buf` reaches.
const MAX_OFFSET: usize = 1024;

/// A frame whose length can change: an XDP buffer or a TC skb.
pub trait Resizable {
    /// The frame's bytes, `[start, end)`.
    fn bounds(&self) -> (usize, usize);
    /// Cuts the frame to `len` bytes, which it has.
    fn truncate(&mut self, len: usize) -> Option<()>;
    /// Adds `len` bytes in front of the frame.
    fn grow_head(&mut self, len: usize) -> Option<()>;
}

/// The frame's bytes, `[start, end)`, and the cell offsets pass through.
#[derive(Clone, Copy)]
pub(crate) struct Buf {
    start: usize,
    end: usize,
    cell: *mut usize,
}

impl Buf {
    /// The frame `[start, end)`, with this CPU's cell. (`None` if the cell's
    /// lookup fails, which the kernel never lets happen; the callers take
    /// it as bytes they cannot read rather than count `drop-internal`,
    /// which cost them stack.)
    #[inline(always)]
    pub(crate) fn of(start: usize, end: usize) -> Option<Buf> {
        Some(Buf {
            start,
            end,
            cell: CELL.get_ptr_mut(0)?,
        })
    }

    /// The bytes of `frame`, with this CPU's cell.
    #[inline(always)]
    pub(crate) fn of_frame<F: Resizable>(frame: &F) -> Option<Buf> {
        let cell = CELL.get_ptr_mut(0)?;
        let (start, end) = frame.bounds();
        Some(Buf { start, end, cell })
    }

    /// The same cell over the bytes of `frame` after its length changed:
    /// no second lookup of the cell.
    #[inline(always)]
    pub(crate) fn resized<F: Resizable>(self, frame: &F) -> Buf {
        let (start, end) = frame.bounds();
        Buf { start, end, ..self }
    }

    /// The offset as a number no one knows, but for its bounds.
    #[inline(always)]
    pub(crate) fn launder(&self, offset: usize) -> Option<usize> {
        // SAFETY: this CPU's cell; one program runs at a time on a CPU.
        let offset = unsafe {
            self.cell.write_volatile(offset);
            self.cell.read_volatile()
        };
        (offset <= MAX_OFFSET).then_some(offset)
    }

    /// `size_of::<T>()` bytes at `offset`, if the frame has them.
    ///
    /// The offsets here differ from packet to packet, and the verifier
    /// refuses to go backwards from a pointer made with such an offset,
    /// while the compiler gladly makes one pointer out of another and
    /// reaches it backwards. A laundered offset makes each pointer from
    /// the frame's start, and keeps no stack.
    #[inline(always)]
    pub(crate) fn at<T>(&self, offset: usize) -> Option<*mut T> {
        let at = self.start + self.launder(offset)?;
        (at + core::mem::size_of::<T>() <= self.end).then_some(at as *mut T)
    }

    /// Copies `bytes` to `offset`. (Not `write`: a value would be loaded
    /// early and kept on the stack.)
    #[inline(always)]
    pub(crate) fn copy<const N: usize>(&self, offset: usize, bytes: &[u8; N]) -> Option<()> {
        let to = self.at::<[u8; N]>(offset)?;
        // SAFETY: in bounds, checked by `at`; the program owns the frame.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), to as *mut u8, N) };
        Some(())
    }

    #[inline(always)]
    pub(crate) fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        // SAFETY: in bounds, checked by `at`.
        Some(unsafe { self.at::<[u8; N]>(offset)?.read_unaligned() })
    }

    #[inline(always)]
    pub(crate) fn write<const N: usize>(&self, offset: usize, bytes: [u8; N]) -> Option<()> {
        // SAFETY: in bounds, checked by `at`; the program owns the frame.
        unsafe { self.at::<[u8; N]>(offset)?.write_unaligned(bytes) };
        Some(())
    }
}
