//! The key list: the keys a [`KeyFilter`] selects, every one or a page at a time (keyset pages: see
//! `spec::list`).
//!
//! A key's state depends on the instant and, under the idle policy, on its last use, which the counters
//! file knows better than the database (it lags by up to a flush). So a state filter runs in two steps:
//! SQL narrows the rows by what the stored fields decide, a superset of the keys in those states (every
//! rule of [`crate::key_state::state_at`] but idleness, of which it can only rule out keys created too
//! recently to be idle); then each row's record, its state worked out by `state_at` as in every view, is
//! kept or not here. A page ends at its `limit`-th kept key, so it is full whenever that many follow,
//! however many rows the SQL step let through; `next` is the cursor of its last key, and null when no
//! kept key follows (the look-ahead reads up to that one key more, so that a caller never asks for an
//! empty page).
//!
//! How it scales: rows are read in primary-key order from the cursor on (`k.row > ?`, no sort, no
//! offset), and reading stops once a page is full and one more key is seen. A page then costs the rows
//! read to find `limit` + 1 matching keys, wherever it starts: about `limit` + 1 when most keys match (no
//! state filter, a common state; with a plan, SQLite reads `keys_plan`, whose entries are in row order
//! too), but the whole rest of the table when few do (a page of the 10 revoked keys among a million). A
//! row SQL rules out costs little (0.14 µs); a row it lets through is read as a record, its counters
//! looked up (0.8 µs), which is what a state SQL cannot decide costs: under an idle policy, every
//! key old enough to be idle passes the `revoked` condition. An index per lifecycle column would bound
//! the rows read by the matching keys (a later change: the support desk's). Figures at a million keys:
//! docs/c-abi.md, "The key list", from `tests/scale.rs`.

use rusqlite::types::Value;

use super::rows::{key_record_from_row, RECORD_ROW, RECORD_SELECT};
use super::{clock_ms, Store};
use crate::error::{Error, Result};
use crate::key_state::{KeyState, EXPIRING_WITHIN_MS};
use crate::spec::{Cursor, KeyFilter, KeyPage, KeyRecord, MAX_PAGE};

impl Store {
    /// The records of the keys `filter` selects (all of them, without a `limit`), their states as of the
    /// store's clock. With a `limit`, the first page only: [`Store::list_key_page`] gives the next's cursor.
    pub fn list_keys(&self, filter: &KeyFilter) -> Result<Vec<KeyRecord>> {
        Ok(self.list_key_page(filter)?.keys)
    }

    /// The keys `filter` selects, from its `after` cursor on, at most its `limit`, with the cursor of the
    /// next page (`None` when no selected key follows, and always without a `limit`).
    pub fn list_key_page(&self, filter: &KeyFilter) -> Result<KeyPage> {
        self.list_key_page_where(filter, |_| true)
    }

    /// [`Store::list_key_page`] keeping only the records `keep` admits as well (the console's text search
    /// over names and ids): they count towards the `limit` like the filter's own, so pages stay full.
    pub fn list_key_page_where(&self, filter: &KeyFilter, mut keep: impl FnMut(&KeyRecord) -> bool) -> Result<KeyPage> {
        let limit = match filter.limit {
            None => usize::MAX,
            Some(n @ 1..=MAX_PAGE) => n,
            Some(_) => return Err(Error::invalid(format!("limit must be an integer from 1 to {MAX_PAGE}"))),
        };
        if filter.states.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::invalid("state names no state: leave it out for keys in any state"));
        }
        let now = clock_ms();
        let db = self.db()?;
        let live = self.shared.load();
        let cx = self.record_context(&db.conn, &live, now)?;
        let (sql, args) = select(filter, now, cx.idle_ms);
        let mut stmt = db.conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        let mut page = KeyPage { keys: Vec::new(), next: None };
        let mut last_row = None;
        while let Some(row) = rows.next()? {
            let record = key_record_from_row(row, &cx)??;
            if !finished_filter_keeps(filter, &record) || !keep(&record) {
                continue;
            }
            if page.keys.len() == limit {
                page.next = last_row.map(Cursor::after_row);
                break;
            }
            last_row = Some(row.get::<_, i64>(RECORD_ROW)?);
            page.keys.push(record);
        }
        Ok(page)
    }
}

/// What SQL cannot decide: the state as `state_at` works it out from the record (with its live last use),
/// and that "expiring" keys are the admitted ones (not rotated past their grace, not idle).
fn finished_filter_keeps(filter: &KeyFilter, record: &KeyRecord) -> bool {
    filter.states.as_ref().is_none_or(|states| states.contains(&record.state.state))
        && (filter.expiring_before_ms.is_none() || record.state.state.admits())
}

/// The statement of a page: [`RECORD_SELECT`] narrowed by what the stored fields decide, in row order
/// from the cursor on. Built per filter (a handful of shapes, each prepared once) so that SQLite sees
/// only the conditions in use and can take the plan's index.
fn select(filter: &KeyFilter, now: i64, idle_ms: i64) -> (String, Vec<Value>) {
    let mut args = Vec::new();
    let mut arg = |v: Value| {
        args.push(v);
        format!("?{}", args.len())
    };
    let mut clauses = Vec::new();
    if let Some(cursor) = filter.after {
        clauses.push(format!("k.row > {}", arg(Value::Integer(cursor.row()))));
    }
    if let Some(plan) = &filter.plan {
        clauses.push(format!("k.plan = {}", arg(Value::Text(plan.clone()))));
    }
    if let Some(env) = filter.env {
        clauses.push(format!("k.env = {}", arg(Value::Text(env.as_str().to_string()))));
    }
    if let Some(before) = filter.expiring_before_ms {
        clauses.push(format!("k.expires_at_ms <= {} AND k.revoked_at_ms IS NULL", arg(Value::Integer(before))));
    }
    if let Some(states) = &filter.states {
        let any: Vec<&str> = states.iter().map(|s| state_sql(*s, idle_ms > 0)).collect();
        let mut any = format!("({})", any.join(" OR "));
        // Only the instants the conditions name are bound: SQLite refuses a parameter no `?N` reads.
        for (name, at) in
            [(NOW, now), (SOON, now.saturating_add(EXPIRING_WITHIN_MS)), (IDLE_FROM, now.saturating_sub(idle_ms))]
        {
            if any.contains(name) {
                any = any.replace(name, &arg(Value::Integer(at)));
            }
        }
        clauses.push(any);
    }
    let mut sql = RECORD_SELECT.to_string();
    if !clauses.is_empty() {
        sql += &format!(" WHERE {}", clauses.join(" AND "));
    }
    sql += " ORDER BY k.row";
    (sql, args)
}

/// The instants a state's condition reads: now, now + [`EXPIRING_WITHIN_MS`], and under an idle policy
/// the latest creation of a key that may be idle (now − the policy's time).
const NOW: &str = "$now";
const SOON: &str = "$soon";
const IDLE_FROM: &str = "$idle_from";

/// Every key `state_at` puts in `state` passes this condition (the SQL step must let all of them
/// through; `tests/list.rs`'s property checks it against the list filtered here). Its rules in
/// `state_at`'s order: revoked (recorded, a rotation's grace over, idle), expired, rotating, expiring,
/// active; each later state excludes what decides an earlier one, except idleness.
fn state_sql(state: KeyState, idle_policy: bool) -> &'static str {
    match (state, idle_policy) {
        (KeyState::Revoked, false) => "(k.revoked_at_ms IS NOT NULL OR k.revoke_at_ms <= $now)",
        (KeyState::Revoked, true) => {
            "(k.revoked_at_ms IS NOT NULL OR k.revoke_at_ms <= $now OR k.created_at_ms <= $idle_from)"
        }
        (KeyState::Expired, _) => {
            "(k.revoked_at_ms IS NULL AND (k.revoke_at_ms IS NULL OR k.revoke_at_ms > $now) AND k.expires_at_ms <= $now)"
        }
        (KeyState::Rotating, _) => {
            "(k.revoked_at_ms IS NULL AND k.revoke_at_ms > $now AND (k.expires_at_ms IS NULL OR k.expires_at_ms > $now))"
        }
        (KeyState::Expiring, _) => {
            "(k.revoked_at_ms IS NULL AND k.revoke_at_ms IS NULL AND k.expires_at_ms > $now AND k.expires_at_ms <= $soon)"
        }
        (KeyState::Active, _) => {
            "(k.revoked_at_ms IS NULL AND k.revoke_at_ms IS NULL AND (k.expires_at_ms IS NULL OR k.expires_at_ms > $soon))"
        }
        (KeyState::Suspended, _) => "0", // no version suspends keys yet
    }
}
