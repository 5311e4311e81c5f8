//! The JSON admin API under `/api/v1/`, the one the pages use: each route parses its input, calls the
//! store's Rust API (never SQL) and answers JSON. Authentication, CSRF and read-only are checked by the
//! caller ([`super::Console::serve_api`]) before a route runs.

use serde_json::{json, Map, Value};

use ms_auth::key_state::KeyState;
use ms_auth::period::DAY_MS;
use ms_auth::spec::{Cursor, MAX_PAGE};
use ms_auth::store::{AuditEvent, AuditFilter, PlanSpec, PolicySpec, DEFAULT_GRACE_MS};
use ms_auth::{Error, KeyFilter, KeyPatch, KeySpec};

use super::http::{self, Answer, Query};
use super::views::{self, ListFilter};
use super::Console;

pub fn route(c: &Console, user: &str, method: &str, url: &str, body: &str) -> Answer {
    let path = url.split('?').next().unwrap_or("");
    let q = Query::of(url);
    let parts: Vec<&str> = path.trim_start_matches("/api/v1/").split('/').collect();
    let now = ms_auth::store::clock_ms();
    // The two answers that are not JSON.
    match (method, parts.as_slice()) {
        ("GET", ["audit.csv"]) => return audit(c, &q).map_or_else(|Fail(a)| a, |events| audit_csv(&events)),
        ("GET", ["metrics"]) => {
            return c.store.metrics_text(now).map_or_else(
                |e| http::from_error(&e),
                |t| http::respond(200, "text/plain; version=0.0.4", t.into_bytes()),
            )
        }
        _ => {}
    }
    let answer = json_route(c, user, method, path, &parts, &q, body, now).map(views::visible_json);
    match answer {
        Ok(v) if method == "POST" && parts.as_slice() == ["keys"] => http::json(201, &v),
        Ok(v) => http::json(200, &v),
        Err(Fail(a)) => a,
    }
}

#[allow(clippy::too_many_arguments)]
fn json_route(
    c: &Console,
    user: &str,
    method: &str,
    path: &str,
    parts: &[&str],
    q: &Query,
    body: &str,
    now: i64,
) -> Result<Value, Fail> {
    match (method, parts) {
        ("GET", ["keys"]) => list_keys(c, q, now),
        ("POST", ["keys"]) => create_key(c, user, body, now),
        ("GET", ["keys", id]) => c.store.get_key(id).map(|r| views::key_json(&r, now)).map_err(Fail::from),
        ("PATCH", ["keys", id]) => {
            let patch = KeyPatch::from_json(body)?;
            c.write(user, |s| s.update_key(id, &patch)).map(|r| views::key_json(&r, now)).map_err(Fail::from)
        }
        ("POST", ["keys", id, "rotate"]) => rotate_key(c, user, id, body, now),
        ("POST", ["keys", id, "revoke"]) => revoke_key(c, user, id, body, now),
        ("GET", ["keys", id, "usage"]) => {
            let days = days(q)?;
            c.store.usage(id, now - (days - 1) * DAY_MS, now).map(|h| json!(h)).map_err(Fail::from)
        }
        ("GET", ["keys", id, "audit"]) => c
            .store
            .get_key(id)
            .and_then(|_| {
                c.store.audit_events(&AuditFilter { key_id: Some(id.to_string()), since_ms: None, limit: None })
            })
            .map(|events| json!({"events": events}))
            .map_err(Fail::from),
        ("GET", ["plans"]) => c.store.list_plans().map(|p| json!({"plans": p})).map_err(Fail::from),
        ("PUT", ["plans", name]) => put_plan(c, user, name, body, now),
        ("GET", ["policies"]) => c.store.policies().map(|p| json!(p)).map_err(Fail::from),
        ("PUT", ["policies"]) => {
            let change = PolicySpec::from_json(body)?;
            c.write(user, |s| s.set_policies(&change, now)).map(|p| json!(p)).map_err(Fail::from)
        }
        ("GET", ["audit"]) => audit(c, q).map(|events| json!({"events": events})),
        ("GET", ["overview"]) => overview(c, q, now),
        (_, ["session" | "keys" | "plans" | "policies" | "audit" | "audit.csv" | "overview" | "metrics", ..]) => {
            Err(Fail(http::error(405, "method_not_allowed", format!("{method} is not allowed on {path}"))))
        }
        _ => Err(Fail(http::error(404, "not_found", format!("no such API: {path}")))),
    }
}

/// A route's failure: a library error or an answer made here (the orphan rule keeps `?` from turning an
/// `Error` into a `tiny_http::Response` directly).
pub struct Fail(Answer);

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail(http::from_error(&e))
    }
}

impl From<Answer> for Fail {
    fn from(a: Answer) -> Fail {
        Fail(a)
    }
}

fn bad(message: impl Into<String>) -> Fail {
    Fail(http::error(400, "bad_request", message))
}

/// `days` of a chart: 1 to 366, default 30.
fn days(q: &Query) -> Result<i64, Fail> {
    match q.int("days")?.unwrap_or(30) {
        d @ 1..=366 => Ok(d),
        _ => Err(bad("days must be between 1 and 366")),
    }
}

/// The body as a JSON object (an empty body is an empty object).
fn object(body: &str) -> Result<Map<String, Value>, Fail> {
    if body.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str(body) {
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(bad("the body must be a JSON object")),
    }
}

/// `?q=&plan=&state=&expiring_days=&limit=&after=`: plan and state (one or several, comma-separated) are
/// the store's filter, the text and the expiry window are kept here as the page is read; `limit` keys
/// a page (1..1000; absent: every key) and `after` the `next` of the page before.
fn list_keys(c: &Console, q: &Query, now: i64) -> Result<Value, Fail> {
    let states = match q.get("state") {
        None => None,
        Some(names) => {
            Some(names.split(',').map(KeyState::parse).collect::<Result<Vec<_>, _>>().map_err(|e| bad(e.message))?)
        }
    };
    let limit = match q.int("limit")? {
        None => None,
        Some(n) => Some(
            usize::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| bad(format!("limit must be between 1 and {MAX_PAGE}")))?,
        ),
    };
    let filter = KeyFilter {
        plan: q.get("plan").map(str::to_string),
        states,
        limit,
        after: q.get("after").map(Cursor::parse).transpose().map_err(|e| bad(e.message))?,
        ..KeyFilter::default()
    };
    let text = ListFilter { q: q.get("q").map(str::to_string), expiring_days: q.int("expiring_days")? };
    let page = c.store.list_key_page_where(&filter, |r| text.admits(r, now))?;
    let keys: Vec<Value> = page.keys.iter().map(|r| views::key_json(r, now)).collect();
    Ok(json!({"keys": keys, "next": page.next.map(|c| c.to_string())}))
}

fn create_key(c: &Console, user: &str, body: &str, now: i64) -> Result<Value, Fail> {
    let spec = KeySpec::from_json(body)?;
    let created = c.write(user, |s| s.create_key(&spec, now))?;
    // The plaintext is in this one answer only: not stored, not logged, never shown again.
    let mut v = views::key_json(&created.record, now);
    v["key"] = created.key.into();
    Ok(v)
}

fn rotate_key(c: &Console, user: &str, id: &str, body: &str, now: i64) -> Result<Value, Fail> {
    let o = object(body)?;
    let grace_ms = match o.get("grace_ms") {
        None => DEFAULT_GRACE_MS,
        Some(v) => v.as_i64().ok_or_else(|| http::error(400, "bad_request", "grace_ms must be an integer"))?,
    };
    if let Some(k) = o.keys().find(|k| *k != "grace_ms") {
        return Err(bad(format!("unknown field {k:?}")));
    }
    let created = c.write(user, |s| s.rotate_key(id, grace_ms, now))?;
    let mut v = views::key_json(&created.record, now);
    v["key"] = created.key.into();
    Ok(v)
}

fn revoke_key(c: &Console, user: &str, id: &str, body: &str, now: i64) -> Result<Value, Fail> {
    let o = object(body)?;
    // What a reason may hold is the store's to say (ms_auth::text).
    let reason = match o.get("reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) => Some(r.as_str()),
        Some(_) => return Err(bad("reason must be a string or null")),
    };
    if let Some(k) = o.keys().find(|k| *k != "reason") {
        return Err(bad(format!("unknown field {k:?}")));
    }
    let record = c.write(user, |s| s.revoke_key(id, now, reason.filter(|r| !r.is_empty())))?;
    Ok(views::key_json(&record, now))
}

fn put_plan(c: &Console, user: &str, name: &str, body: &str, now: i64) -> Result<Value, Fail> {
    let mut o = object(body)?;
    match o.get("name") {
        Some(Value::String(n)) if n != name => return Err(bad("the body's name differs from the URL's")),
        _ => {}
    }
    o.insert("name".into(), name.into());
    let plan = PlanSpec::from_json(&Value::Object(o).to_string())?;
    c.write(user, |s| s.put_plan(&plan, now)).map(|p| json!(p)).map_err(Fail::from)
}

/// The audit log filtered by key, actor (substring), action (prefix) and time (`since`, `until` in Unix
/// ms), latest `limit` (default 1000) oldest first. The store filters by key and start; the rest here.
fn audit(c: &Console, q: &Query) -> Result<Vec<AuditEvent>, Fail> {
    let limit = match q.int("limit")?.unwrap_or(1000) {
        n @ 1..=100_000 => n as usize,
        _ => return Err(bad("limit must be between 1 and 100000")),
    };
    let (since, until) = (q.int("since")?, q.int("until")?);
    let filter = AuditFilter { key_id: q.get("key").map(str::to_string), since_ms: since, limit: Some(1_000_000) };
    let actor = q.get("actor");
    let action = q.get("action");
    let mut events: Vec<AuditEvent> = c
        .store
        .audit_events(&filter)?
        .into_iter()
        .filter(|e| actor.is_none_or(|a| e.actor.contains(a)))
        .filter(|e| action.is_none_or(|a| e.action.starts_with(a)))
        .filter(|e| until.is_none_or(|u| e.at_ms <= u))
        .collect();
    let skip = events.len().saturating_sub(limit);
    events.drain(..skip);
    Ok(events)
}

fn audit_csv(events: &[AuditEvent]) -> Answer {
    let mut out = String::from("seq,time,actor,action,key_id,detail\r\n");
    for e in events {
        let time = chrono::DateTime::from_timestamp_millis(e.at_ms).map(|t| t.to_rfc3339()).unwrap_or_default();
        let fields = [
            e.seq.to_string(),
            time,
            e.actor.clone(),
            e.action.clone(),
            e.key_id.clone().unwrap_or_default(),
            e.detail.to_string(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(&ms_auth::text::visible(f))).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    http::respond(200, "text/csv; charset=utf-8", out.into_bytes()).with_header(
        tiny_http::Header::from_bytes(&b"Content-Disposition"[..], &b"attachment; filename=\"audit.csv\""[..])
            .expect("ASCII"),
    )
}

/// RFC 4180 quoting; a field a spreadsheet would read as a formula gets a leading quote, since actors
/// and reasons are typed by people.
fn csv_field(f: &str) -> String {
    let f = if f.starts_with(['=', '+', '-', '@']) { format!("'{f}") } else { f.to_string() };
    if f.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f
    }
}

fn overview(c: &Console, q: &Query, now: i64) -> Result<Value, Fail> {
    let days = days(q)?;
    let records = c.store.list_keys(&KeyFilter::default())?;
    let mut v = views::overview(&records, now);
    v["days"] = json!(c.store.usage_totals(now - (days - 1) * DAY_MS, now)?);
    v["plans"] = json!(c.store.list_plans()?.len());
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_fields_are_quoted_and_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
    }
}
