//! How a port's XDP program is attached: in the driver, in the kernel's
//! stack, or whichever the interface supports.

use std::fmt;

use aya::programs::XdpMode;
use serde::Serialize;

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeArg {
    /// Native if the driver supports it, else generic.
    #[default]
    Auto,
    /// In the driver (veth, tap, most physical NICs).
    Native,
    /// In the kernel's network stack, after the skb is built.
    Generic,
}

impl XdpModeArg {
    pub(super) fn to_aya(self) -> XdpMode {
        match self {
            XdpModeArg::Auto => XdpMode::Default,
            XdpModeArg::Native => XdpMode::Driver,
            XdpModeArg::Generic => XdpMode::Skb,
        }
    }

    pub(super) fn from_raw(raw: u32) -> Self {
        match raw {
            1 => XdpModeArg::Native,
            2 => XdpModeArg::Generic,
            _ => XdpModeArg::Auto,
        }
    }

    pub(super) fn to_raw(self) -> u32 {
        match self {
            XdpModeArg::Auto => 0,
            XdpModeArg::Native => 1,
            XdpModeArg::Generic => 2,
        }
    }
}

impl fmt::Display for XdpModeArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpModeArg::Auto => "auto",
            XdpModeArg::Native => "native",
            XdpModeArg::Generic => "generic",
        })
    }
}
