//! sg's control plane as a library: the rule model and its compiler, the
//! datapath loader and its maps, the daemon with its store and API, and
//! the API's client. The `sg-ctl` binary is a thin CLI over it.

pub mod client;
pub mod daemon;
pub mod datapath;
pub mod frame;
pub mod netns;
pub mod store;
pub mod trace;
