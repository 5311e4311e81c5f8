//! The key list's shapes: which keys (`KeyFilter`, as `ms_key_list` reads it in JSON), and one page of
//! them (`KeyPage`, with the opaque `Cursor` that leads to the next). v1's filter had `plan`, `env` and
//! `expiring_before_ms`; `state`, `limit` and `after` were added, and the answer gained `next`.
//!
//! Pages are keyset pages: a cursor names the last key a page showed (its row, which only grows), and
//! the next page is the matching keys after it. No offset: a page costs the same wherever it starts, and
//! keys created or revoked between pages neither repeat a key nor skip one that was there throughout.

use std::fmt;

use serde::ser::{Serialize, SerializeStruct, Serializer};
use serde::Deserialize;
use serde_json::Value;

use super::input::{parse_shape, string, time, Field};
use super::record::KeyRecord;
use crate::error::{Error, Result};
use crate::key::Env;
use crate::key_state::KeyState;

/// The most keys one page may hold: a page is built in memory and written as one JSON string.
pub const MAX_PAGE: usize = 1000;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyFilter {
    pub plan: Option<String>,
    pub env: Option<Env>,
    /// Only admitted keys (not revoked, not expired) that expire at or before this instant (Unix ms).
    pub expiring_before_ms: Option<i64>,
    /// Only keys in one of these states as of the store's clock ([`crate::key_state::state_at`]);
    /// `None`: any state.
    pub states: Option<Vec<KeyState>>,
    /// At most this many keys (1 to [`MAX_PAGE`]), and the cursor of the next page; `None`: every key
    /// (v1's answer).
    pub limit: Option<usize>,
    /// Only keys after this cursor: a page's `next`.
    pub after: Option<Cursor>,
}

/// Where a page ended: the keys after it come next. Its text (`k1.` and the hex of a row) is opaque to
/// callers, who pass back what a page gave; the `k1` names this form, so that a later one (a cursor for
/// another sort order) can tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    after_row: i64,
}

const CURSOR_TAG: &str = "k1.";

impl Cursor {
    /// The cursor of the keys after row `row` (of the store's `keys` table).
    pub fn after_row(row: i64) -> Cursor {
        Cursor { after_row: row }
    }

    pub fn row(self) -> i64 {
        self.after_row
    }

    /// Only the text [`Cursor`]'s `Display` writes is taken: anything else (cut, edited, from another
    /// list's future form) is refused rather than read as some other place in the list.
    pub fn parse(text: &str) -> Result<Cursor> {
        // The text is not repeated: it may be anything, of any length.
        let refused = || Error::invalid("after is not a cursor this list gave: pass a page's \"next\" back unchanged");
        let hex = text.strip_prefix(CURSOR_TAG).ok_or_else(refused)?;
        let row = (!hex.is_empty() && hex.len() <= 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| i64::from_str_radix(hex, 16).ok())
            .flatten()
            .filter(|row| *row >= 0)
            .ok_or_else(refused)?;
        let cursor = Cursor::after_row(row);
        if cursor.to_string() != text {
            return Err(refused()); // upper case, leading zeros: not a text this list writes
        }
        Ok(cursor)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{CURSOR_TAG}{:x}", self.after_row)
    }
}

/// One page of the key list: `{"keys": [record, ...], "next": "<cursor>" | null}`. `next` is null when
/// no matching key follows (always, without a `limit`), so a v1 reader of `keys` sees what it saw.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyPage {
    pub keys: Vec<KeyRecord>,
    pub next: Option<Cursor>,
}

impl Serialize for KeyPage {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut page = s.serialize_struct("KeyPage", 2)?;
        page.serialize_field("keys", &self.keys)?;
        page.serialize_field("next", &self.next.map(|c| c.to_string()))?;
        page.end()
    }
}

impl KeyPage {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a page always serializes")
    }
}

/// A key filter as `ms_key_list` reads it; `null` is the same as absent in every field.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyFilterJson {
    pub plan: Field<Value>,
    pub env: Field<Value>,
    pub expiring_before_ms: Field<Value>,
    pub state: Field<Value>,
    pub limit: Field<Value>,
    pub after: Field<Value>,
}

/// Fields are checked in declaration order; the first wrong one is reported.
impl TryFrom<KeyFilterJson> for KeyFilter {
    type Error = Error;

    fn try_from(json: KeyFilterJson) -> Result<KeyFilter> {
        Ok(KeyFilter {
            plan: string("plan", json.plan)?,
            env: string("env", json.env)?.map(|s| Env::parse(&s)).transpose()?,
            expiring_before_ms: time("expiring_before_ms", json.expiring_before_ms)?.or(None),
            states: states(json.state)?,
            limit: limit(json.limit)?,
            after: match json.after {
                Field::Absent | Field::Null => None,
                Field::Set(Value::String(text)) => Some(Cursor::parse(&text)?),
                Field::Set(_) => {
                    return Err(Error::invalid("after must be a cursor (a page's \"next\", a string) or null"))
                }
            },
        })
    }
}

impl KeyFilter {
    pub fn from_json(text: &str) -> Result<KeyFilter> {
        parse_shape::<KeyFilterJson>(text, "key filter", "key filter")?.try_into()
    }
}

/// `"revoked"` or `["revoked", "expired"]`: one state or several (a key in any of them).
fn states(field: Field<Value>) -> Result<Option<Vec<KeyState>>> {
    let wrong =
        || Error::invalid("state must be a state's name or a list of them (\"revoked\", [\"active\", \"expiring\"])");
    let names = match field {
        Field::Absent | Field::Null => return Ok(None),
        Field::Set(Value::String(name)) => vec![name],
        Field::Set(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(name) => Ok(name),
                _ => Err(wrong()),
            })
            .collect::<Result<_>>()?,
        Field::Set(_) => return Err(wrong()),
    };
    if names.is_empty() {
        return Err(Error::invalid("state names no state: leave it out for keys in any state"));
    }
    let mut states = Vec::new();
    for name in names {
        let state = KeyState::parse(&name)?;
        if !states.contains(&state) {
            states.push(state);
        }
    }
    Ok(Some(states))
}

fn limit(field: Field<Value>) -> Result<Option<usize>> {
    match field.given() {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_PAGE as u64).contains(&n) => Ok(Some(n as usize)),
            _ => Err(Error::invalid(format!(
                "limit must be an integer from 1 to {MAX_PAGE} (keys a page), or null for every key"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_nothing_else_is_one() {
        for row in [0, 1, 255, i64::MAX] {
            let c = Cursor::after_row(row);
            assert_eq!(Cursor::parse(&c.to_string()).unwrap(), c);
        }
        assert_eq!(Cursor::after_row(255).to_string(), "k1.ff");
        for bad in ["k1.FF", "k1.0ff", "k1.", "k1.g", "ff", "k1.ff "] {
            assert!(Cursor::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_filter_reads_v1_fields_and_the_added_ones() {
        let f = KeyFilter::from_json(
            r#"{"plan": "pro", "env": "test", "state": ["revoked", "expired", "revoked"], "limit": 10, "after": "k1.a"}"#,
        )
        .unwrap();
        assert_eq!(f.plan.as_deref(), Some("pro"));
        assert_eq!(f.states, Some(vec![KeyState::Revoked, KeyState::Expired]));
        assert_eq!((f.limit, f.after), (Some(10), Some(Cursor::after_row(10))));
        assert_eq!(KeyFilter::from_json(r#"{"expiring_before_ms": null}"#).unwrap(), KeyFilter::default());
        let page = KeyPage { keys: vec![], next: Some(Cursor::after_row(16)) };
        assert_eq!(page.to_json(), r#"{"keys":[],"next":"k1.10"}"#);
    }
}
