//! The rule model: groups of rules, ports that attach them, and the plain
//! reference matcher that says what a policy means for one packet.
//!
//! Pure code, no I/O. Every field parses from the text users write (the
//! CLI's `FromStr`, YAML/JSON through serde, both with the same parsers)
//! and every object has a `validate()` whose errors name the field and the
//! accepted form. The compiler takes a validated [`Policy`] and cannot fail
//! on its contents.

mod error;
mod group;
mod policy;
mod protocol;
pub mod reference;
mod rule;
mod syntax;

pub use error::{FieldError, PolicyError};
pub use group::{DEFAULT_GROUP, Group};
pub use policy::{AddressPair, MacAddr, Policy, Port, SMTP_BLOCK_GROUP, SMTP_PORT};
pub use protocol::{IpProtocol, Protocol, ProtocolInfo, catalogue};
pub use rule::{
    Action, DEFAULT_PRIORITY, Direction, EtherType, IcmpMatch, MAX_DESCRIPTION, PRIORITIES,
    PortRange, PortSpec, Remote, Rule,
};
pub use syntax::{check_cidr, check_name, parse_cidr, parse_cidrs, parse_ip};
pub(crate) use syntax::{flows, number_field};
