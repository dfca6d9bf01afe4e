//! Errors of the model: a field with what it accepts, and where in a
//! policy that field is.

use crate::text::Quoted;

/// A field holding a value it does not accept. The message says what the
/// field accepts, e.g. `ports: 0 is out of range; use 1-65535`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field as spelled in policy files (`ports`, `icmp.type`, ...).
    pub field: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// An invalid policy: which object, and the field error inside it. Names
/// are quoted as [`Quoted`] shows them: they may be what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("group {}: {error}", Quoted(group))]
    Group { group: String, error: FieldError },
    /// `index` counts from 0, as in `rules[0]` of a policy file.
    #[error("group {}: rules[{index}]: {error}", Quoted(group))]
    Rule {
        group: String,
        index: usize,
        error: FieldError,
    },
    #[error("port {}: {error}", Quoted(port))]
    Port { port: String, error: FieldError },
    #[error(
        "{kind} {} is defined twice; {kind} names must be unique",
        Quoted(name)
    )]
    Duplicate { kind: &'static str, name: String },
    #[error("port {} does not exist; `sg-ctl port list` shows the ports", Quoted(.0))]
    UnknownPort(String),
}
