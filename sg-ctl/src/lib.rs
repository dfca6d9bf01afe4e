//! sg's control plane as a library, around the pure core (`sg_core`): the
//! datapath (loader, attach, maps), the daemon with its store and API, the
//! API's client, tracing, and the reading of YAML and JSON into the model
//! with errors that name the field ([`fields`]). The `sg-ctl` binary is a thin CLI over it.

pub mod client;
pub mod daemon;
pub mod datapath;
pub mod fields;
pub mod frame;
pub mod lock;
pub mod netns;
pub mod store;
pub mod trace;
