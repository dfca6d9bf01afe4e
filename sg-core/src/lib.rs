//! sg's pure core: every domain type and both compilers, with no I/O. The
//! rule model with its validation and its plain reference matcher
//! ([`model`]), the host's settings ([`settings`]), who may do what
//! ([`access`]), where a port's policy stands ([`status`]), a tracked
//! flow's state ([`flow`]), the presets
//! ([`preset`]), the policy compiler ([`compile`]), the port-security
//! compiler ([`port_security`]), what a state takes of the maps
//! ([`capacity`]), and how users' text appears in messages and tables
//! ([`text`]). The datapath, the store, the daemon and
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
pub mod text;

/// The path of the field and the error, as the readers of policy files and
/// API bodies report them (with `serde_path_to_error`).
#[cfg(test)]
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, String> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|e| format!("{}: {}", e.path(), e.inner()))
}
