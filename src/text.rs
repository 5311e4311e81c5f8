//! Text that people read (key and plan names, revocation reasons, audit actors, meta keys): what it may
//! hold, and how text stored by an older version is shown. No I/O.
//!
//! Refused, besides control characters, are the characters that make text read differently than it is
//! stored, so that a name could pass for another in the console or a terminal:
//! - bidirectional controls: U+061C, U+200E, U+200F, U+202A..U+202E, U+2066..U+2069 (after a U+202E
//!   RIGHT-TO-LEFT OVERRIDE, `invoice` + U+202E + `fdp.exe` reads "invoiceexe.pdf");
//! - invisible characters, which make two different names look the same: U+00AD SOFT HYPHEN, U+180E,
//!   U+200B ZERO WIDTH SPACE, U+2060..U+2064, U+206A..U+206F, U+FEFF, U+FFF9..U+FFFB and the tag
//!   characters U+E0000..U+E007F;
//! - U+2028 and U+2029, which break a line where a terminal or a log shows one.
//!
//! U+200C and U+200D (zero-width non-joiner and joiner) are allowed: Persian, Indic scripts and emoji
//! sequences need them, and they do not reorder text.

use std::borrow::Cow;

use crate::error::{Error, Result};

/// Whether `c` changes how the text around it reads (see the module's list).
pub fn is_deceptive(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{00AD}'
            | '\u{180E}'
            | '\u{200B}'
            | '\u{2060}'..='\u{2064}'
            | '\u{206A}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E007F}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

/// Why `c` is refused, for the error message.
fn what_it_is(c: char) -> &'static str {
    match c {
        '\u{202E}' => "RIGHT-TO-LEFT OVERRIDE, a bidirectional control",
        '\u{202D}' => "LEFT-TO-RIGHT OVERRIDE, a bidirectional control",
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202C}' | '\u{2066}'..='\u{2069}' => {
            "a bidirectional control"
        }
        '\u{2028}' | '\u{2029}' => "a line or paragraph separator",
        c if c.is_control() => "a control character",
        _ => "an invisible character",
    }
}

/// Refuses text a person will read that holds a control character or one of [`is_deceptive`], naming
/// `field` and the code point.
pub fn check(field: &str, value: &str) -> Result<()> {
    match value.chars().find(|c| c.is_control() || is_deceptive(*c)) {
        None => Ok(()),
        Some(c) => Err(Error::invalid(format!(
            "{field} contains U+{:04X} ({}), which can make text read differently than it is stored; it is refused",
            c as u32,
            what_it_is(c)
        ))),
    }
}

/// `value` as it may be shown to a person: every control character and [`is_deceptive`] one written as
/// `\u{202E}`. Text stored by versions that did not refuse them is shown so.
pub fn visible(value: &str) -> Cow<'_, str> {
    if !value.chars().any(|c| c.is_control() || is_deceptive(c)) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if c.is_control() || is_deceptive(c) {
            out.push_str(&format!("\\u{{{:04X}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// JSON text with every control character and [`is_deceptive`] one written as a JSON escape (`\u202e`,
/// a surrogate pair above U+FFFF): the same JSON to a parser, and no reordering on a terminal. JSON
/// text holds such characters only inside strings, where the escape means the same character.
pub fn json_visible(json: &str) -> Cow<'_, str> {
    if !json.chars().any(|c| (c.is_control() && c != '\n') || is_deceptive(c)) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if (c.is_control() && c != '\n') || is_deceptive(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{:04x}", unit));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Bytes as lowercase hex text (digests and signatures travel as hex).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex text as bytes; `None` unless it is pairs of hex digits.
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_controls_and_invisible_characters_are_refused_by_field_and_code_point() {
        assert!(check("name", "acme").is_ok());
        assert!(check("name", "مرحبا עולם 東京 Ünïcödé 👩\u{200D}💻").is_ok(), "scripts and emoji sequences pass");
        let e = check("name", "acme\u{202E}lanretni").unwrap_err().message;
        assert_eq!(
            e,
            "name contains U+202E (RIGHT-TO-LEFT OVERRIDE, a bidirectional control), which can make text read \
             differently than it is stored; it is refused"
        );
        for (c, what) in [
            ('\u{2066}', "bidirectional"),
            ('\u{200F}', "bidirectional"),
            ('\u{061C}', "bidirectional"),
            ('\u{200B}', "invisible"),
            ('\u{FEFF}', "invisible"),
            ('\u{E0041}', "invisible"),
            ('\u{2028}', "separator"),
            ('\u{1B}', "control"),
        ] {
            let e = check("reason", &format!("a{c}b")).unwrap_err().message;
            assert!(e.starts_with(&format!("reason contains U+{:04X} (", c as u32)) && e.contains(what), "{e}");
        }
    }

    #[test]
    fn stored_text_is_shown_escaped() {
        assert!(matches!(visible("acme"), Cow::Borrowed("acme")));
        assert_eq!(visible("acme\u{202E}lanretni\u{1B}[31m"), "acme\\u{202E}lanretni\\u{001B}[31m");
        let json = serde_json::json!({"name": "a\u{202E}b\u{E0041}", "x": "\u{85}"}).to_string();
        let shown = json_visible(&json);
        assert_eq!(shown, r#"{"name":"a\u202eb\udb40\udc41","x":"\u0085"}"#);
        let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(back.to_string(), json, "the same JSON to a parser");
    }
}
