//! The CNI specification's side of the plugin (spec 1.0.0, and 0.4.0,
//! whose results read the same): the environment a runtime sets, the
//! fields of the network configuration sg-cni reads, the previous plugin's
//! result, and the replies (the error object with the spec's codes, the
//! version object).

use std::{net::IpAddr, path::PathBuf};

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{Value, json};
use sg_core::model::MacAddr;

/// The versions sg-cni speaks. 1.1's GC and STATUS are not implemented,
/// so 1.1 is not claimed.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0"];
/// The version of replies written before a configuration says one.
pub const VERSION: &str = "1.0.0";

/// An error code: the specification's (1–99), or sg-cni's own (100 on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    IncompatibleVersion = 1,
    InvalidEnvironment = 4,
    IoFailure = 5,
    DecodingFailure = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    /// The daemon refused the port (a group that does not exist, a limit).
    Refused = 100,
    /// The port's policy is not in force on the interface.
    NotEnforced = 101,
    /// CHECK: the port is gone, not enforced, or no longer the container's.
    CheckFailed = 102,
    /// The plugin runs in a namespace the daemon cannot be told of.
    UnnamedNamespace = 103,
}

/// What failed, as the error object says it: `msg` the gist, `details`
/// the specifics and the fix.
#[derive(Debug)]
pub struct Error {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl Error {
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error object of the specification, in `cni_version`.
    pub fn reply(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code as u32,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

/// The answer to VERSION.
pub fn version_reply() -> Value {
    json!({"cniVersion": VERSION, "supportedVersions": SUPPORTED_VERSIONS})
}

/// A command about a container; VERSION is about none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
}

/// What the runtime said in the environment about a container.
#[derive(Debug)]
pub struct Invocation {
    pub command: Command,
    pub container_id: String,
    pub ifname: String,
    /// `CNI_NETNS`: the container's namespace, a path; DEL may go without.
    pub netns: Option<String>,
    /// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
    pub args: String,
}

impl Invocation {
    /// Reads the `CNI_*` variables through `var` (the environment's, or a
    /// test's); `None` for VERSION.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, Error> {
        let var = |name: &str| var(name).filter(|value| !value.is_empty());
        let required = |name: &str| {
            var(name).ok_or_else(|| {
                Error::new(
                    Code::InvalidEnvironment,
                    format!("{name} is not set"),
                    "a runtime sets CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME \
                     and CNI_PATH, as the CNI specification says",
                )
            })
        };
        let command = match required("CNI_COMMAND")?.as_str() {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => return Ok(None),
            other => {
                return Err(Error::new(
                    Code::InvalidEnvironment,
                    format!("CNI_COMMAND {other} is not known"),
                    "sg-cni implements ADD, DEL, CHECK and VERSION of spec 1.0.0 \
                     (not 1.1's GC and STATUS)",
                ));
            }
        };
        let container_id = required("CNI_CONTAINERID")?;
        if let Some(bad) = container_id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(Error::new(
                Code::InvalidEnvironment,
                format!("CNI_CONTAINERID '{container_id}' contains {bad:?}"),
                "a container id has only letters, digits, '-', '_' and '.'",
            ));
        }
        let netns = var("CNI_NETNS");
        if netns.is_none() && command != Command::Del {
            required("CNI_NETNS")?;
        }
        Ok(Some(Self {
            command,
            container_id,
            ifname: required("CNI_IFNAME")?,
            netns,
            args: var("CNI_ARGS").unwrap_or_default(),
        }))
    }
}

/// The daemon's socket when the configuration names none.
pub const DEFAULT_SOCKET: &str = "/run/sg/sg.sock";

/// The fields of the network configuration sg-cni reads; the others are
/// the runtime's and the other plugins'.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    /// The daemon's API socket.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// The groups of the network's ports, unless a container names its own.
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    #[serde(default)]
    pub prev_result: Option<Value>,
}

impl NetConf {
    /// Parses stdin: JSON that does not parse is a decoding failure, JSON
    /// of the wrong shape an invalid configuration.
    pub fn parse(input: &[u8]) -> Result<Self, Error> {
        serde_json::from_slice(input).map_err(|e| {
            let code = if e.is_data() {
                Code::InvalidConfig
            } else {
                Code::DecodingFailure
            };
            Error::new(code, "cannot read the network configuration", e.to_string())
        })
    }

    pub fn check_version(&self) -> Result<(), Error> {
        if SUPPORTED_VERSIONS.contains(&self.cni_version.as_str()) {
            return Ok(());
        }
        Err(Error::new(
            Code::IncompatibleVersion,
            format!("cniVersion {} is not supported", self.cni_version),
            format!(
                "sg-cni supports {}; use \"cniVersion\": \"1.0.0\"",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ))
    }

    pub fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
    }

    /// The previous plugin's result, as given and as read; a chained
    /// plugin has one on ADD and CHECK.
    pub fn prev_result(&self) -> Result<(&Value, PrevResult), Error> {
        let value = self.prev_result.as_ref().ok_or_else(|| {
            Error::new(
                Code::InvalidConfig,
                "no prevResult",
                "sg-cni is a chained plugin: list it after bridge (or ptp) and host-local \
                 in a conflist, so that it gets their result",
            )
        })?;
        let result = PrevResult::deserialize(value).map_err(|e| {
            Error::new(Code::InvalidConfig, "cannot read prevResult", e.to_string())
        })?;
        Ok((value, result))
    }
}

/// What sg-cni reads of a result: its interfaces and addresses.
#[derive(Debug, Deserialize)]
pub struct PrevResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
}

#[derive(Debug, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// The container's namespace, as `CNI_NETNS` said it; none (or empty)
    /// for the host's interfaces.
    #[serde(default)]
    pub sandbox: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct IpConfig {
    pub address: IpNet,
    /// An index into `interfaces`.
    #[serde(default)]
    pub interface: Option<usize>,
}

impl IpConfig {
    pub fn addr(&self) -> IpAddr {
        self.address.addr()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn invocation(vars: &[(&str, &str)]) -> Result<Option<Invocation>, Error> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Invocation::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn the_environment_is_read_and_what_is_missing_named() {
        let add = invocation(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "SG_GROUPS=web"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(add.command, Command::Add);
        assert_eq!(add.netns.as_deref(), Some("/run/netns/c1"));
        assert_eq!(add.args, "SG_GROUPS=web");

        let del = invocation(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(del.netns, None);

        assert!(invocation(&[("CNI_COMMAND", "VERSION")]).unwrap().is_none());
        for (vars, named) in [
            (&[][..], "CNI_COMMAND"),
            (&[("CNI_COMMAND", "GC")][..], "GC"),
            (&[("CNI_COMMAND", "ADD")][..], "CNI_CONTAINERID"),
            (
                &[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c/1")][..],
                "'/'",
            ),
            (
                &[
                    ("CNI_COMMAND", "CHECK"),
                    ("CNI_CONTAINERID", "c1"),
                    ("CNI_IFNAME", "eth0"),
                ][..],
                "CNI_NETNS",
            ),
        ] {
            let error = invocation(vars).unwrap_err();
            assert_eq!(error.code, Code::InvalidEnvironment, "{error:?}");
            assert!(error.msg.contains(named), "{error:?}");
        }
    }

    #[test]
    fn a_configuration_is_decoded_or_refused_with_the_code_of_why() {
        let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"sg-cni"}"#).unwrap();
        assert_eq!(conf.socket(), PathBuf::from(DEFAULT_SOCKET));
        conf.check_version().unwrap();
        assert_eq!(conf.prev_result().unwrap_err().code, Code::InvalidConfig);

        let old = NetConf::parse(br#"{"cniVersion":"0.3.1"}"#).unwrap();
        assert_eq!(
            old.check_version().unwrap_err().code,
            Code::IncompatibleVersion
        );
        assert_eq!(
            NetConf::parse(b"{\"cniVersion\":").unwrap_err().code,
            Code::DecodingFailure
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","groups":"web"}"#)
                .unwrap_err()
                .code,
            Code::InvalidConfig
        );
    }

    #[test]
    fn errors_are_the_specifications_object() {
        let error = Error::new(Code::TryAgainLater, "down", "start it");
        assert_eq!(
            error.reply("1.0.0"),
            json!({"cniVersion": "1.0.0", "code": 11, "msg": "down", "details": "start it"})
        );
        assert_eq!(
            version_reply()["supportedVersions"],
            json!(["0.4.0", "1.0.0"])
        );
    }
}
