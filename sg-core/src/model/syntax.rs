//! Textual forms shared by several fields (names, addresses and CIDRs),
//! and the serde glue that sends YAML/JSON values through the same parsers
//! as the command line, so both accept the same forms with the same errors.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, de::Error as _};

use super::FieldError;

const NAME_MAX: usize = 64;
const NAME_FORM: &str =
    "use 1-64 characters from a-z A-Z 0-9 . _ - starting with a letter or digit";

/// Checks a group or port name: 1–64 characters from `a-z A-Z 0-9 . _ -`,
/// the first a letter or digit.
pub fn check_name(field: &'static str, name: &str) -> Result<(), FieldError> {
    let problem = if name.is_empty() {
        "is empty".to_owned()
    } else if name.chars().count() > NAME_MAX {
        format!("'{name}' has {} characters", name.chars().count())
    } else if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        format!("'{name}' contains {bad:?}")
    } else if let Some(first) = name.chars().next().filter(|c| !c.is_ascii_alphanumeric()) {
        format!("'{name}' starts with {first:?}")
    } else {
        return Ok(());
    };
    Err(FieldError::new(field, format!("{problem}; {NAME_FORM}")))
}

/// One address or CIDR. A bare address means that host alone (`/32`,
/// `/128`); a CIDR with host bits set is refused with the two likely fixes,
/// since `10.0.0.1/8` usually means a typo, not a network.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    let not_cidr = || {
        format!(
            "'{text}' is not an address or CIDR; use one such as 203.0.113.5, \
             203.0.113.0/24 or 2001:db8::/32"
        )
    };
    let Some((addr, len)) = text.split_once('/') else {
        return text
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| not_cidr());
    };
    let addr: IpAddr = addr.parse().map_err(|_| not_cidr())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let net = len
        .parse::<u8>()
        .ok()
        .and_then(|len| IpNet::new(addr, len).ok())
        .ok_or_else(|| {
            let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
            format!("'{text}' has prefix length /{len}; use /0-/{max} for {family}")
        })?;
    check_cidr(&net)?;
    Ok(net)
}

/// A comma list of addresses and CIDRs (see [`parse_cidr`]), at least one.
pub fn parse_cidrs(field: &'static str, text: &str) -> Result<Vec<IpNet>, FieldError> {
    text.split(',')
        .map(parse_cidr)
        .collect::<Result<_, _>>()
        .map_err(|message| FieldError::new(field, message))
}

/// Refuses a CIDR whose address has bits set beyond its prefix.
pub fn check_cidr(net: &IpNet) -> Result<(), String> {
    if net.addr() == net.network() {
        return Ok(());
    }
    Err(format!(
        "{net} has host bits set; did you mean {} (the network) or {} (one address)?",
        net.trunc(),
        IpNet::from(net.addr())
    ))
}

/// What a user may write for a scalar or list field in YAML or JSON:
/// `80`, `"80,443"`, `[22, "8000-8080"]`. Joined with commas, it is the
/// text the field's `FromStr` parses.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Text {
    Number(i64),
    Word(String),
    List(Vec<Text>),
}

impl Text {
    pub(super) fn join(self) -> String {
        match self {
            Self::Number(number) => number.to_string(),
            Self::Word(word) => word,
            Self::List(items) => items
                .into_iter()
                .map(Self::join)
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// Serializes a type as its `Display` text and deserializes it from
/// [`Text`] through its `FromStr`.
macro_rules! serde_as_text {
    ($($ty:ty),+) => {$(
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                use serde::de::Error as _;
                $crate::model::syntax::Text::deserialize(deserializer)?
                    .join()
                    .parse()
                    .map_err(D::Error::custom)
            }
        }
    )+};
}
pub(super) use serde_as_text;

/// Serde `deserialize_with` for a list of addresses and CIDRs that may be
/// empty: a list, or one comma-separated string.
pub(super) fn cidr_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<IpNet>, D::Error> {
    match Text::deserialize(deserializer)?.join() {
        text if text.trim().is_empty() => Ok(Vec::new()),
        text => text
            .split(',')
            .map(parse_cidr)
            .collect::<Result<_, _>>()
            .map_err(D::Error::custom),
    }
}

/// Serde `deserialize_with` for one address or CIDR.
pub(super) fn cidr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpNet, D::Error> {
    parse_cidr(&String::deserialize(deserializer)?).map_err(D::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["web", "db-1", "a", "Web.Tier_2", &"x".repeat(64), "9lives"] {
            assert_eq!(check_name("name", good), Ok(()), "{good}");
        }
        let err = |name: &str| check_name("name", name).unwrap_err().to_string();
        assert_eq!(
            err(""),
            "name: is empty; use 1-64 characters from a-z A-Z 0-9 . _ - \
             starting with a letter or digit"
        );
        assert!(err(&"x".repeat(65)).starts_with("name: 'xxx"));
        assert!(err(&"x".repeat(65)).contains("has 65 characters; use 1-64"));
        assert!(err("web tier").starts_with("name: 'web tier' contains ' '; use 1-64"));
        assert!(err("wéb").contains("contains 'é'"));
        assert!(err("-web").starts_with("name: '-web' starts with '-'; use"));
        assert!(err(".hidden").contains("starts with"));
    }

    #[test]
    fn cidrs_parse() {
        let ok = |text: &str| parse_cidr(text).unwrap().to_string();
        assert_eq!(ok("10.0.0.0/8"), "10.0.0.0/8");
        assert_eq!(ok(" 203.0.113.5 "), "203.0.113.5/32");
        assert_eq!(ok("0.0.0.0/0"), "0.0.0.0/0");
        assert_eq!(ok("2001:db8::/32"), "2001:db8::/32");
        assert_eq!(ok("2001:db8::5"), "2001:db8::5/128");
        assert_eq!(ok("::/0"), "::/0");
        assert_eq!(ok("10.0.0.5/32"), "10.0.0.5/32");
    }

    #[test]
    fn cidr_errors_say_the_fix() {
        assert_eq!(
            parse_cidr("10.0.0.1/8").unwrap_err(),
            "10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8 (the network) \
             or 10.0.0.1/32 (one address)?"
        );
        assert!(
            parse_cidr("2001:db8::1/32")
                .unwrap_err()
                .contains("did you mean 2001:db8::/32")
        );
        assert_eq!(
            parse_cidr("10.0.0.0/33").unwrap_err(),
            "'10.0.0.0/33' has prefix length /33; use /0-/32 for IPv4"
        );
        assert!(
            parse_cidr("::/129")
                .unwrap_err()
                .contains("use /0-/128 for IPv6")
        );
        assert!(
            parse_cidr("10.0.0.0/x")
                .unwrap_err()
                .contains("prefix length /x")
        );
        assert!(
            parse_cidr("web")
                .unwrap_err()
                .starts_with("'web' is not an address or CIDR; use")
        );
        assert!(
            parse_cidr("10.0.0.256")
                .unwrap_err()
                .contains("not an address")
        );
        let err = parse_cidrs("local", "10.0.0.0/8,,")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("local: '' is not an address or CIDR"),
            "{err}"
        );
        assert_eq!(
            parse_cidrs("local", "10.0.0.0/8, 2001:db8::/32").unwrap(),
            [
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "2001:db8::/32".parse().unwrap()
            ]
        );
    }
}
