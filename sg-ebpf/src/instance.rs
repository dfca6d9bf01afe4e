//! The program instance a stage runs in: a port's, which counts what it
//! decides, or a tracer's (`sg_common::TRACE_GLOBAL`), which records it
//! instead and counts nothing.
//!
//! The program file implements `Instance` from its globals, which no stage
//! reads itself; a stage that needs to know is generic over it. The calls
//! are static and inlined: each is the same read of the global, which the
//! verifier sees as a constant.

use sg_common::{Counter, TraceRecord};

use crate::maps::SG_TRACE;

pub trait Instance {
    /// Whether this instance traces rather than filters. A read-only
    /// global: in a port's instance the verifier knows it is zero and
    /// drops every branch that depends on it.
    fn tracing() -> bool;

    /// The tracer's record, when tracing.
    #[inline(always)]
    fn trace() -> Option<*mut TraceRecord> {
        if Self::tracing() {
            SG_TRACE.get_ptr_mut(0)
        } else {
            None
        }
    }

    /// Adds a packet of `bytes` to `counter`; a tracer counts nothing.
    #[inline(always)]
    fn add(counter: Option<*mut Counter>, bytes: u64) {
        if Self::tracing() {
            return;
        }
        if let Some(counter) = counter {
            // SAFETY: a per-CPU value, written by this CPU only.
            unsafe {
                (*counter).packets += 1;
                (*counter).bytes += bytes;
            }
        }
    }
}
