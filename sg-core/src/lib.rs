//! sg's pure core: every domain type and both compilers, with no I/O. The
//! rule model with its validation and its plain reference matcher
//! ([`model`]), the host's settings ([`settings`]), who may do what
//! ([`access`]), where a port's policy stands ([`status`]), a tracked
//! flow's state ([`flow`]), the presets
//! ([`preset`]), the policy compiler ([`compile`]) and the port-security
//! compiler ([`port_security`]), and what a state takes of the maps
//! ([`capacity`]). The datapath, the store, the daemon and
//! the CLI (`sg-ctl`) are built around it.

pub mod access;
pub mod capacity;
pub mod compile;
pub mod flow;
pub mod model;
pub mod port_security;
pub mod preset;
pub mod settings;
pub mod status;
