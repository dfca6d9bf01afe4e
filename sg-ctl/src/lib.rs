//! sg's control plane as a library: the datapath loader and its maps.
//! The `sg-ctl` binary is a thin CLI over it.

pub mod compile;
pub mod datapath;
pub mod frame;
pub mod model;
pub mod netns;
pub mod trace;
