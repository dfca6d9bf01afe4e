//! Errors of the model: a field with what it accepts, and where in a
//! policy that field is.

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

/// An invalid policy: which object, and the field error inside it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("group '{group}': {error}")]
    Group { group: String, error: FieldError },
    /// `index` counts from 0, as in `rules[0]` of a policy file.
    #[error("group '{group}': rules[{index}]: {error}")]
    Rule {
        group: String,
        index: usize,
        error: FieldError,
    },
    #[error("port '{port}': {error}")]
    Port { port: String, error: FieldError },
    #[error("{kind} '{name}' is defined twice; {kind} names must be unique")]
    Duplicate { kind: &'static str, name: String },
    #[error("port '{0}' does not exist; `sg-ctl port list` shows the ports")]
    UnknownPort(String),
}
