//! How text from users appears in messages and tables: control characters
//! (and the bidirectional overrides that reorder what a terminal shows)
//! escaped, so that a name or description cannot drive the reader's
//! terminal; values quoted in errors cut to [`QUOTE_MAX`] characters, so
//! that a 10 kB value is not echoed back whole.

use std::{borrow::Cow, fmt};

/// The most characters of a value an error message quotes.
pub const QUOTE_MAX: usize = 64;

/// Whether a character is one a terminal acts on rather than shows: C0 and
/// C1 controls, DEL, and the bidirectional embeddings, overrides and
/// isolates (U+202A–U+202E, U+2066–U+2069).
pub fn is_control(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every [`is_control`] character written as its escape
/// (`\t`, `\n`, `\u{1b}`); borrowed when there is none.
pub fn escaped(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_control(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A value as error messages show it: escaped, and cut after
/// [`QUOTE_MAX`] characters with `…`.
pub struct Cut<'a>(pub &'a str);

impl fmt::Display for Cut<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: String = self.0.chars().take(QUOTE_MAX).collect();
        f.write_str(&escaped(&shown))?;
        if shown.len() < self.0.len() {
            f.write_str("…")?;
        }
        Ok(())
    }
}

/// A value as error messages quote it: [`Cut`] in single quotes, with its
/// length when it was cut.
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}'", Cut(self.0))?;
        let length = self.0.chars().count();
        if length > QUOTE_MAX {
            write!(f, " ({length} characters)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        assert!(matches!(escaped("web tier é"), Cow::Borrowed("web tier é")));
        assert_eq!(escaped("a\u{1b}[31mred"), "a\\u{1b}[31mred");
        assert_eq!(escaped("tab\there\r\n"), "tab\\there\\r\\n");
        assert_eq!(escaped("\u{7f}\u{9b}"), "\\u{7f}\\u{9b}");
        assert_eq!(escaped("abc\u{202e}def"), "abc\\u{202e}def");
    }

    #[test]
    fn quotes_cut_long_values() {
        assert_eq!(Quoted("web").to_string(), "'web'");
        assert_eq!(Quoted("x\u{1b}").to_string(), "'x\\u{1b}'");
        let long = "x".repeat(10_000);
        let quoted = Quoted(&long).to_string();
        assert_eq!(
            quoted,
            format!("'{}…' (10000 characters)", "x".repeat(QUOTE_MAX))
        );
        assert_eq!(
            Cut(&"1".repeat(100)).to_string(),
            format!("{}…", "1".repeat(QUOTE_MAX))
        );
        assert_eq!(Quoted(&"é".repeat(64)).to_string().chars().count(), 66);
    }
}
