//! Textual forms shared by several fields (names, addresses and CIDRs),
//! and the serde glue that sends YAML/JSON values through the same parsers
//! as the command line, so both accept the same forms with the same errors.

use std::{fmt, net::IpAddr};

use ipnet::IpNet;
use serde::{
    Deserialize, Deserializer,
    de::{Error as _, Visitor},
};

use super::FieldError;
use crate::text::{Cut, Quoted};

const NAME_MAX: usize = 64;
const NAME_FORM: &str =
    "use 1-64 characters from a-z A-Z 0-9 . _ - starting with a letter or digit";

/// Checks a group or port name: 1–64 characters from `a-z A-Z 0-9 . _ -`,
/// the first a letter or digit.
pub fn check_name(field: &'static str, name: &str) -> Result<(), FieldError> {
    let quoted = Quoted(name);
    let problem = if name.is_empty() {
        "is empty".to_owned()
    } else if name.chars().count() > NAME_MAX {
        format!("{quoted} has {} characters", name.chars().count())
    } else if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        format!("{quoted} contains {bad:?}")
    } else if let Some(first) = name.chars().next().filter(|c| !c.is_ascii_alphanumeric()) {
        format!("{quoted} starts with {first:?}")
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
            "{} is not an address or CIDR; use one such as 203.0.113.5, \
             203.0.113.0/24 or 2001:db8::/32",
            Quoted(text)
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
            // The whole text is quoted (and cut) already.
            let len = if len.chars().count() <= 8 { len } else { "…" };
            format!(
                "{} has prefix length /{}; use /0-/{max} for {family}",
                Quoted(text),
                crate::text::escaped(len)
            )
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
/// `80`, `"80,443"`, `[22, "8000-8080"]`, and any other number or a
/// boolean as its text. Joined with commas, it is the text the field's
/// `FromStr` parses, so that `ports: 80.5` is refused by the parser of
/// ports with its own message.
pub(super) struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextVisitor)
    }
}

struct TextVisitor;

impl TextVisitor {
    fn text<E: serde::de::Error>(self, text: String) -> Result<Text, E> {
        Ok(Text(text))
    }
}

/// The methods of a serde `Visitor` that take a scalar or a list of them
/// as [`Text`] and hand its text to the visitor's own `text` method.
macro_rules! visit_text {
    () => {
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
            self.text(v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            self.text(v.to_string())
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            self.text(v.to_string())
        }
        fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Self::Value, E> {
            self.text(v.to_string())
        }
        fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Self::Value, E> {
            self.text(v.to_string())
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            self.text(v.to_string())
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            self.text(v.to_owned())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut items = Vec::new();
            while let Some($crate::model::syntax::Text(item)) = seq.next_element()? {
                items.push(item);
            }
            self.text(items.join(","))
        }
    };
}
pub(super) use visit_text;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number, a string or a list of them")
    }

    visit_text!();
}

/// Serializes a type as its `Display` text and deserializes it from
/// [`Text`] through its `FromStr`, whose error names the field itself
/// (the deserializer's path says where it is).
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
                    .0
                    .parse()
                    .map_err(|e: $crate::model::FieldError| D::Error::custom(e.message))
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
    list(deserializer, parse_cidr)
}

/// Serde `deserialize_with` for a port's fixed IPs: single addresses, as a
/// list or one comma-separated string.
pub(super) fn ip_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpAddr>, D::Error> {
    list(deserializer, parse_ip)
}

/// Serde `deserialize_with` for a port's DHCP servers: addresses, as a
/// list or one comma-separated string.
pub(super) fn server_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<IpAddr>, D::Error> {
    list(deserializer, |text| {
        let text = text.trim();
        text.parse().map_err(|_| {
            format!(
                "{} is not a server's address; use one such as 198.18.0.1 or fe80::1",
                Quoted(text)
            )
        })
    })
}

fn list<'de, D: Deserializer<'de>, T>(
    deserializer: D,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, D::Error> {
    match Text::deserialize(deserializer)?.0 {
        text if text.trim().is_empty() => Ok(Vec::new()),
        text => text
            .split(',')
            .map(parse)
            .collect::<Result<_, _>>()
            .map_err(D::Error::custom),
    }
}

/// One IP address, as a port's fixed IPs are: a prefix is refused with
/// where it belongs instead.
pub fn parse_ip(text: &str) -> Result<IpAddr, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Err(format!(
            "{net} is a prefix, not an address; use one address such as {} \
             (a prefix the workload may use is an allowed address pair)",
            net.addr()
        ));
    }
    text.parse().map_err(|_| {
        format!(
            "{} is not an IP address; use one such as 203.0.113.5 or 2001:db8::5",
            Quoted(text)
        )
    })
}

/// A whole number from `0` to `max`, from its text; `form` says what the
/// field accepts (`1-65535 (1 goes first)`), for both errors.
pub(crate) fn whole_number(text: &str, max: u64, form: &str) -> Result<u64, String> {
    let text = text.trim();
    let out_of_range = || format!("{} is out of range; use {form}", Cut(text));
    if let Ok(number) = text.parse::<i128>() {
        return u64::try_from(number)
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(out_of_range);
    }
    match text.parse::<f64>() {
        Ok(number) if number.is_finite() && number.fract() == 0.0 => Err(out_of_range()),
        Ok(number) if number.is_finite() => Err(format!(
            "{} is not a whole number; use {form}",
            Quoted(text)
        )),
        _ => Err(format!("{} is not a number; use {form}", Quoted(text))),
    }
}

/// Serde `deserialize_with` for a whole number up to `T`'s largest,
/// written as a number or a string; `form` as for [`whole_number`].
pub(crate) fn number_field<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
    deserializer: D,
    max: u64,
    form: &str,
) -> Result<T, D::Error> {
    let number =
        whole_number(&Text::deserialize(deserializer)?.0, max, form).map_err(D::Error::custom)?;
    T::try_from(number)
        .map_err(|_| D::Error::custom(format!("{number} is out of range; use {form}")))
}

/// What a number of flows is written as.
pub(crate) const FLOWS_FORM: &str = "a number of flows, 1 or more";

/// Serde `deserialize_with` for a number of flows (a port's limit, the
/// host's default of it), as a number or its text.
pub(crate) fn flows<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    number_field(deserializer, u32::MAX.into(), FLOWS_FORM)
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
