//! Reading JSON and YAML into the model (the API's bodies, `apply -f`
//! files, `settings set`) with errors in the model's field-error form:
//! where (`group 'web': rules[3]`), the field (`icmp.type`), what it
//! accepts. The path comes from `serde_path_to_error`; groups and ports are
//! named from the document itself when it says their names.

use std::fmt;

use serde::{
    Deserialize, Deserializer,
    de::{self, DeserializeOwned, IgnoredAny, MapAccess, Visitor},
};
use serde_json::Value;
use serde_path_to_error::{Path, Segment};
use sg_core::text::{Cut, QUOTE_MAX, Quoted, escaped};

/// What a document is, which says how its paths read.
#[derive(Clone, Copy, Debug)]
pub enum Subject<'a> {
    /// A whole desired state (`apply`): `groups[i]` is `group 'NAME'`.
    Document,
    /// A group; named by the body, else by this (the request's) name.
    Group(Option<&'a str>),
    /// Rules appended to a group that holds `offset` rules already, so
    /// that their indexes are those they would have in the group.
    NewRules {
        group: &'a str,
        offset: usize,
    },
    /// Rule `index` of a group.
    Rule {
        group: &'a str,
        index: usize,
    },
    /// A port; named by the body, else by this name.
    Port(Option<&'a str>),
    Settings,
    /// Anything else: the field's path alone.
    Body,
}

/// Reads one JSON value, the whole of `bytes`.
pub fn from_json<T: DeserializeOwned>(bytes: &[u8], subject: Subject) -> Result<T, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let names = serde_json::from_slice(bytes).unwrap_or_default();
        located(subject, e.path(), &names, &json_message(e.inner()))
    })?;
    deserializer.end().map_err(|e| json_message(&e))?;
    Ok(value)
}

/// Reads a YAML (or JSON) document; errors end with the line and column.
pub fn from_yaml<T: DeserializeOwned>(text: &str, subject: Subject) -> Result<T, String> {
    let deserializer = serde_norway::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let names = serde_norway::from_str(text).unwrap_or_default();
        let inner = e.inner();
        let mut message = inner.to_string();
        if let Some(location) = inner.location() {
            let at = format!(" at line {} column {}", location.line(), location.column());
            if let Some(stripped) = message.strip_suffix(&at) {
                message = stripped.to_string();
            }
        }
        // serde_norway puts the path of the map it was in front; ours
        // replaces it.
        let segments: Vec<&Segment> = e.path().iter().collect();
        if let Some(stripped) = (1..=segments.len())
            .rev()
            .find_map(|n| message.strip_prefix(&format!("{}: ", dotted(&segments[..n]))))
        {
            message = stripped.to_string();
        }
        let mut located = located(subject, e.path(), &names, &message);
        if let Some(location) = inner.location() {
            located += &format!(" (line {}, column {})", location.line(), location.column());
        }
        located
    })
}

/// Reads a query string (`address=…&state=…`).
pub fn from_query<T: DeserializeOwned>(query: &str) -> Result<T, String> {
    let deserializer =
        serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        located(
            Subject::Body,
            e.path(),
            &Names::default(),
            &e.inner().to_string(),
        )
    })
}

/// Reads a value built in memory (`settings set`).
pub fn from_value<T: DeserializeOwned>(value: Value, subject: Subject) -> Result<T, String> {
    serde_path_to_error::deserialize(&value)
        .map_err(|e| located(subject, e.path(), &Names::default(), &e.inner().to_string()))
}

/// The names a document gives itself (`name`) and its groups and ports,
/// read on their own and leniently, for errors: whatever else is wrong
/// with the document, the objects it names are named.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Names {
    name: Name,
    groups: Vec<Name>,
    ports: Vec<Name>,
}

/// A string, or the `name` string of a map. Anything else fails, and with
/// it the reading of the names (an error then goes without them).
#[derive(Debug, Default)]
struct Name(Option<String>);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NameVisitor)
    }
}

struct NameVisitor;

impl<'de> Visitor<'de> for NameVisitor {
    type Value = Name;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a name, or a map with one")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Name, E> {
        Ok(Name(Some(v.to_string())))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Name, A::Error> {
        let mut name = Name(None);
        while let Some(key) = map.next_key::<Name>()? {
            if key.0.as_deref() == Some("name") {
                name = map.next_value()?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(name)
    }
}

/// A JSON error without its position, which the path replaces; a syntax
/// error keeps it, having no path.
fn json_message(error: &serde_json::Error) -> String {
    let message = error.to_string();
    if error.is_syntax() || error.is_eof() {
        return format!("not valid JSON: {message}");
    }
    let at = format!(" at line {} column {}", error.line(), error.column());
    message
        .strip_suffix(&at)
        .map_or(message.clone(), str::to_string)
}

/// `message` at `path` of a `subject`, as the model's errors read:
/// `group 'web': rules[3]: icmp.type: 256 is out of range; use 0-255`.
fn located(subject: Subject, path: &Path, names: &Names, message: &str) -> String {
    let mut segments: Vec<&Segment> = path.iter().collect();
    // An unknown field's path ends with it, which the message names.
    if message.starts_with("unknown field `") {
        segments.pop();
    }
    let mut parts = Vec::new();
    let mut rest = segments.as_slice();
    let mut in_group = false;
    match subject {
        Subject::Document => match rest {
            [Segment::Map { key }, Segment::Seq { index }, tail @ ..]
                if key == "groups" || key == "ports" =>
            {
                let (kind, named) = if key == "groups" {
                    ("group", &names.groups)
                } else {
                    ("port", &names.ports)
                };
                parts.push(match named.get(*index).and_then(|name| name.0.as_ref()) {
                    Some(name) => format!("{kind} {}", Quoted(name)),
                    None => format!("{key}[{index}]"),
                });
                in_group = key == "groups";
                rest = tail;
            }
            [Segment::Map { key }, tail @ ..] if key == "settings" => {
                parts.push("settings".to_string());
                rest = tail;
            }
            _ => {}
        },
        Subject::Group(name) => {
            if let Some(name) = names.name.0.as_deref().or(name) {
                parts.push(format!("group {}", Quoted(name)));
            }
            in_group = true;
        }
        Subject::NewRules { group, offset } => {
            parts.push(format!("group {}", Quoted(group)));
            if let [Segment::Seq { index }, tail @ ..] = rest {
                parts.push(format!("rules[{}]", offset + index));
                rest = tail;
            }
        }
        Subject::Rule { group, index } => {
            parts.push(format!("group {}", Quoted(group)));
            parts.push(format!("rules[{index}]"));
        }
        Subject::Port(name) => {
            if let Some(name) = names.name.0.as_deref().or(name) {
                parts.push(format!("port {}", Quoted(name)));
            }
        }
        Subject::Settings => parts.push("settings".to_string()),
        Subject::Body => {}
    }
    if in_group
        && let [Segment::Map { key }, Segment::Seq { index }, tail @ ..] = rest
        && key == "rules"
    {
        parts.push(format!("rules[{index}]"));
        rest = tail;
    }
    let field = dotted(rest);
    if !field.is_empty() {
        parts.push(field);
    }
    parts.push(cut_quotes(message));
    parts.join(": ")
}

/// A path as `serde_path_to_error` writes it, `rules[1].icmp.type`, with
/// its keys cut and escaped.
fn dotted(segments: &[&Segment]) -> String {
    let mut field = String::new();
    for segment in segments {
        match segment {
            Segment::Seq { index } => field += &format!("[{index}]"),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !field.is_empty() {
                    field.push('.');
                }
                field += &Cut(key).to_string();
            }
            Segment::Unknown => field += "?",
        }
    }
    field
}

/// A message of serde's with what it quotes of the input (`` `…` `` and
/// `"…"`) cut to [`QUOTE_MAX`] characters, and control characters escaped.
fn cut_quotes(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(1024));
    let mut rest = message;
    while let Some(start) = rest.find(['`', '"']) {
        let delimiter = rest[start..].chars().next().expect("found at start");
        out += &rest[..=start];
        rest = &rest[start + 1..];
        let Some(end) = rest.find(delimiter) else {
            break;
        };
        let quoted = &rest[..end];
        if quoted.chars().count() > QUOTE_MAX {
            out += &Cut(quoted).to_string();
        } else {
            out += quoted;
        }
        out.push(delimiter);
        rest = &rest[end + 1..];
    }
    out += rest;
    escaped(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sg_core::{
        model::{Group, Port, Rule},
        settings::Settings,
    };

    fn rule_error(json: &str, subject: Subject) -> String {
        from_json::<Rule>(json.as_bytes(), subject).unwrap_err()
    }

    #[test]
    fn body_errors_read_as_the_model_s() {
        let rule = Subject::Rule {
            group: "web",
            index: 3,
        };
        assert_eq!(
            rule_error(
                r#"{"direction": "ingress", "protocol": "icmp", "icmp": {"type": 256}}"#,
                rule
            ),
            "group 'web': rules[3]: icmp.type: 256 is out of range; use 0-255"
        );
        assert_eq!(
            rule_error(
                r#"{"direction": "ingress", "priority": 18446744073709551616}"#,
                rule
            ),
            "group 'web': rules[3]: priority: 18446744073709552000 is out of range; \
             use 1-65535 (1 goes first)"
        );
        let new = Subject::NewRules {
            group: "web",
            offset: 2,
        };
        let error = from_json::<Vec<Rule>>(
            br#"[{"direction": "egress"}, {"direction": "egress", "ports": 80.5}]"#,
            new,
        )
        .unwrap_err();
        assert!(
            error.starts_with("group 'web': rules[3]: ports: '80.5' is not a port; use"),
            "{error}"
        );
        let error = from_json::<Group>(
            br#"{"name": "db", "rules": [{"direction": "egress", "remote": {"group": "x", "extra": 1}}]}"#,
            Subject::Group(Some("other")),
        )
        .unwrap_err();
        assert!(
            error.starts_with(
                "group 'db': rules[0]: remote: 'extra' is not a key of a remote; \
                 a map names a group, as {group: NAME}"
            ),
            "{error}"
        );
        let error = from_json::<Port>(
            br#"{"name": "vm1", "ifname": "tap1", "mac": "52:54:00:12:34:56",
                 "groups": ["default"], "ips": ["198.18.0.0/24"]}"#,
            Subject::Port(None),
        )
        .unwrap_err();
        assert!(
            error.starts_with("port 'vm1': ips: 198.18.0.0/24 is a prefix, not an address"),
            "{error}"
        );
        assert_eq!(
            from_json::<Settings>(br#"{"max_rules_per_group": "abc"}"#, Subject::Settings)
                .unwrap_err(),
            "settings: max_rules_per_group: 'abc' is not a number; use a whole number, 1 or more"
        );
        let error = from_json::<Rule>(br#"{"direction": "ingress"} x"#, Subject::Body);
        assert_eq!(
            error.unwrap_err(),
            "not valid JSON: trailing characters at line 1 column 26"
        );
        let error = from_json::<Rule>(br#"{"direction": "#, Subject::Body).unwrap_err();
        assert!(
            error.starts_with("direction: not valid JSON: EOF while parsing"),
            "{error}"
        );
    }

    /// A whole desired state as `apply` reads it (the API's `Document`,
    /// which this module does not name).
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Document {
        #[serde(default)]
        groups: Vec<Group>,
        #[serde(default)]
        ports: Vec<Port>,
        settings: Option<Settings>,
    }

    #[test]
    fn documents_name_their_groups_and_ports() {
        let yaml = "groups:\n  - name: web\n    rules:\n      - {direction: ingress}\n      \
                    - {direction: ingress, protocol: icmp, icmp: {type: 256}}\n\
                    ports:\n  - {name: vm1, ifname: tap1, mac: '52:54:00:12:34:56', \
                    groups: [web], ips: [198.18.0.0/24]}\n";
        assert_eq!(
            from_yaml::<Document>(yaml, Subject::Document).unwrap_err(),
            "group 'web': rules[1]: icmp.type: 256 is out of range; use 0-255 \
             (line 5, column 52)"
        );
        let big = yaml.replace("icmp: {type: 256}", "priority: 18446744073709551616");
        let error = from_yaml::<Document>(&big, Subject::Document).unwrap_err();
        assert!(
            error.starts_with("group 'web': rules[1]: priority: 18446744073709551616 is out of"),
            "{error}"
        );
        let yaml = yaml.replace("type: 256", "type: 8");
        let error = from_yaml::<Document>(&yaml, Subject::Document).unwrap_err();
        assert!(
            error.starts_with("port 'vm1': ips: 198.18.0.0/24 is a prefix"),
            "{error}"
        );
        let error = from_json::<Document>(
            br#"{"groups": [{"rules": [{"direction": 1}]}]}"#,
            Subject::Document,
        )
        .unwrap_err();
        assert!(
            error.starts_with("groups[0]: rules[0]: direction: "),
            "{error}"
        );
        let error = from_yaml::<Document>("settings:\n  conntrack: {udp: x}\n", Subject::Document);
        assert!(
            error
                .unwrap_err()
                .starts_with("settings: conntrack.udp: 'x' is not a number"),
        );
        let document: Document =
            from_yaml("groups: [{name: web}]\nsettings: {}\n", Subject::Document).unwrap();
        assert_eq!(
            (
                document.groups.len(),
                document.ports.len(),
                document.settings.is_some()
            ),
            (1, 0, true)
        );
        let error = from_yaml::<Document>("groups: [[[", Subject::Document).unwrap_err();
        assert!(error.contains("line 1"), "{error}");
    }

    #[test]
    fn what_serde_quotes_is_cut_and_escaped() {
        let key = "k".repeat(10_000);
        let error = from_json::<Rule>(
            format!(r#"{{"direction": "ingress", "{key}\u001b[2J": 1}}"#).as_bytes(),
            Subject::Body,
        )
        .unwrap_err();
        assert!(error.len() < 400, "{error}");
        assert!(
            error.starts_with(&format!("unknown field `{}…`", "k".repeat(64))),
            "{error}"
        );
        let error = from_json::<Rule>(
            br#"{"direction": "ingress", "x\u001b[2J": 1}"#,
            Subject::Body,
        )
        .unwrap_err();
        assert!(error.starts_with(r"unknown field `x\u{1b}[2J`"), "{error}");
        let value = serde_json::json!({"max_rules_per_group": "x".repeat(500)});
        let error = from_value::<Settings>(value, Subject::Settings).unwrap_err();
        assert!(error.len() < 300, "{error}");
    }
}
