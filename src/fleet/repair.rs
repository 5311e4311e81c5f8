//! Keeping the change log whole: catching up from the fleet's state hash and the whole log (a new host,
//! or one whose position the log trimmed past), and the upkeep every agent does about once a second:
//! reading the origins' heads (`ms-auth:{F}:heads`) to see entries deleted from the log, asking an origin
//! to send again what this host misses (`ms-auth:{F}:repair`), answering such requests from the journal,
//! and sweeping the state hash (putting back this host's newest signed change of a record where the hash
//! holds an older, missing or unsigned one; applying a newer one this host lacks).

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use redis::streams::{StreamId, StreamRangeReply};
use redis::Commands;
use serde_json::{json, Value};

use super::changelog::{announce_head, head_parts, origin, send, signed_entry};
use super::link::{Config, Failure, Link};
use super::secret::CHANGE_FORMAT;
use super::{Change, KINDS};
use crate::store::{Head, Signed};

/// How often the upkeep runs.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);
/// How long a host waits for a requested repair before asking again.
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(3);
/// At most this many entries are sent again per request (the requester asks again for the rest).
const RESEND_AT_MOST: usize = 1000;
/// Every record published again (the journal no longer holds what a host asks for) at most this often.
const REPUBLISH_AT_MOST_EVERY: Duration = Duration::from_secs(60);
/// Records the sweep looks at per upkeep round, in the state hash and in this host's records each.
const SWEEP_PAGE: usize = 200;

/// Puts a state entry only if the hash still holds what the agent read (by its SHA-1; an empty string:
/// nothing), so the sweep never overwrites a change published meanwhile.
const PUT_STATE: &str = r#"
local held = redis.call('HGET', KEYS[1], ARGV[1])
if (held and redis.sha1hex(held) or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"#;

static PUT_STATE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(PUT_STATE));

/// One HSCAN page of the state hash without the entries themselves: for each field, the version and
/// origin its entry claims and the entry's SHA-1, and the next cursor first. The agent fetches an entry
/// whole only when it has not verified that very text before.
const SCAN_STATE: &str = r#"
local page = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local out = {page[1]}
local kv = page[2]
for i = 1, #kv, 2 do
  local version, origin = '', ''
  local ok, e = pcall(cjson.decode, kv[i + 1])
  if ok and type(e) == 'table' then
    version, origin = tostring(e.version or ''), tostring(e.origin or '')
  end
  table.insert(out, kv[i])
  table.insert(out, version)
  table.insert(out, origin)
  table.insert(out, redis.sha1hex(kv[i + 1]))
end
return out
"#;

static SCAN_STATE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SCAN_STATE));

/// For each field named, 1 if the state hash has it, else 0 (the sweep's cheap look at this host's records).
const HAS_FIELDS: &str = r#"
local out = {}
for i, field in ipairs(ARGV) do out[i] = redis.call('HEXISTS', KEYS[1], field) end
return out
"#;

static HAS_FIELDS_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(HAS_FIELDS));

/// The state hash's entry of a change, as `changelog::PUBLISH` writes it.
fn state_json(s: &Signed) -> String {
    let c = &s.change;
    json!({"v": CHANGE_FORMAT, "kind": c.kind, "id": c.id, "body": c.body, "origin": c.origin, "host": c.host,
           "seq": c.seq.to_string(), "version": c.version.to_string(), "sig": s.sig})
    .to_string()
}

/// A state hash entry's signed change, or why it is refused.
fn state_entry(cfg: &Config, text: &str) -> std::result::Result<Signed, String> {
    let e: Value = serde_json::from_str(text).map_err(|_| "not an ms-auth change".to_string())?;
    let text_of = |name: &str| e[name].as_str().map(str::to_string);
    let number = |name: &str| e[name].as_i64().or_else(|| e[name].as_str().and_then(|n| n.parse().ok()));
    let (Some(kind), Some(id), Some(body)) = (text_of("kind"), text_of("id"), text_of("body")) else {
        return Err("not an ms-auth change".into());
    };
    if !KINDS.contains(&kind.as_str()) || kind == "audit" {
        return Err("not an ms-auth change".into());
    }
    let (Some(CHANGE_FORMAT), Some(origin), Some(host), Some(seq), Some(version), Some(sig)) =
        (text_of("v").as_deref(), text_of("origin"), text_of("host"), number("seq"), number("version"), text_of("sig"))
    else {
        return Err(format!("not signed with this fleet's secret in this version's format (v{CHANGE_FORMAT})"));
    };
    let change = Change { kind, id, body, origin, host, seq, version };
    if !cfg.secret.verify(&cfg.fleet, &change, &sig) {
        return Err("not signed with this fleet's secret".into());
    }
    Ok(Signed { change, sig })
}

/// The heads in the heads hash that are signed with the fleet's secret, and the origins of those that
/// are not.
fn read_heads(link: &mut Link) -> std::result::Result<(Vec<Head>, Vec<String>), Failure> {
    let all: HashMap<String, String> = link.conn.hgetall(&link.names.heads)?;
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for (origin, text) in all {
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let head = match (v["seq"].as_i64(), v["floor"].as_i64(), v["host"].as_str(), v["sig"].as_str()) {
            (Some(seq), Some(floor), Some(host), Some(sig)) => {
                let parts = head_parts(&origin, host, &seq.to_string(), &floor.to_string()).map(str::to_string);
                let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
                link.cfg.secret.verify_parts(&link.cfg.fleet, &parts, sig).then(|| Head {
                    origin: origin.clone(),
                    host: host.to_string(),
                    seq,
                    floor,
                })
            }
            _ => None,
        };
        match head {
            Some(h) => good.push(h),
            None => bad.push(origin),
        }
    }
    Ok((good, bad))
}

/// Applies the newest state of every record (the state hash) and the whole log it still holds, each
/// change only if newer than what this host holds, and returns the log position reached. An entry of
/// the log newer than the state's (a revocation, when someone put an older signed state back) wins.
/// If Redis lost everything (restarted empty), this host's records are published again; records the
/// fleet holds in no version are published.
pub(super) fn load_snapshot(link: &mut Link, log: &mut dyn FnMut(&str)) -> std::result::Result<String, Failure> {
    let had_position = link.store.fleet_position()?.is_some();
    let (heads, _) = read_heads(link)?;
    let last: StreamRangeReply = link.conn.xrevrange_count(&link.names.log, "+", "-", 1)?;
    let position = last.ids.first().map_or_else(|| "0-0".to_string(), |e| e.id.clone());
    // In pages (HSCAN), not one HGETALL: with 100,000 records that is a 78 MB reply that blocks Redis for
    // a fifth of a second, per host catching up (docs/fleet.md, "Scale").
    let mut state: Vec<(String, String)> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, page): (u64, Vec<(String, String)>) =
            redis::cmd("HSCAN").arg(&link.names.state).arg(cursor).arg("COUNT").arg(1000).query(link.conn)?;
        state.extend(page);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut refused: Vec<String> = Vec::new();
    let mut records: Vec<Signed> = Vec::new();
    for (field, text) in &state {
        match state_entry(link.cfg, text) {
            Ok(s) => records.push(s),
            Err(why) => refused.push(format!("state {field}: {why}")),
        }
    }
    // Policies and plans before keys; keys in the order they were created, so that a rotated key's
    // successor finds the key it counts with.
    let rank = |c: &Change| KINDS.iter().position(|k| *k == c.kind).unwrap_or(KINDS.len());
    let created =
        |c: &Change| serde_json::from_str::<Value>(&c.body).ok().and_then(|v| v["created_at_ms"].as_i64()).unwrap_or(0);
    records.sort_by_key(|s| (rank(&s.change), created(&s.change), s.change.version));
    let from_state = link.store.fleet_apply_state(&records)?;
    let (mut in_log, mut applied) = (0, from_state.applied);
    let mut firsts: HashMap<String, (String, i64)> = HashMap::new();
    if position != "0-0" {
        let mut from = "-".to_string();
        loop {
            let page: StreamRangeReply = link.conn.xrange_count(&link.names.log, &from, &position, 1000)?;
            let Some(page_end) = page.ids.last().map(|e| e.id.clone()) else { break };
            let signed = quietly_verified(link.cfg, &page.ids, &mut refused);
            // An origin's entries before its first one in the log were trimmed: the state covers them.
            let mut new: Vec<(String, String, i64)> = Vec::new();
            for s in &signed {
                let c = &s.change;
                if !firsts.contains_key(&c.origin) && !new.iter().any(|(o, _, _)| *o == c.origin) {
                    let first = signed.iter().filter(|o| o.change.origin == c.origin).map(|o| o.change.seq).min();
                    new.push((c.origin.clone(), c.host.clone(), first.unwrap_or(c.seq)));
                }
            }
            link.store.fleet_start_from(&new, &[])?;
            firsts.extend(new.into_iter().map(|(o, h, f)| (o, (h, f))));
            in_log += signed.len();
            applied += link.store.fleet_apply(&signed, &page_end, false)?.applied;
            if page_end == position {
                break;
            }
            from = format!("({page_end}");
        }
    }
    // An origin with no entry left in the log: the state covers every entry up to its head.
    let covered: Vec<Head> = heads.iter().filter(|h| !firsts.contains_key(&h.origin)).cloned().collect();
    link.store.fleet_start_from(&[], &covered)?;
    link.store.fleet_note_heads(&heads)?;
    link.store.fleet_apply(&[], &position, false)?;
    link.health.applied += applied as u64;
    link.health.refused += refused.len() as u64;
    log(&format!(
        "catching up from the fleet's state ({} records) and log ({in_log} entries): {applied} applied, position {position}",
        records.len()
    ));
    if let Some(first) = refused.first() {
        log(&format!("refused {} entries of the fleet's state and log, such as {first}", refused.len()));
    }
    if records.is_empty() && in_log == 0 && had_position {
        // Redis came back empty: republish this host's records (the others do the same).
        link.store.fleet_republish()?;
        log("the fleet's state was empty: this host's records are published again");
    }
    let unversioned = link.store.fleet_republish_unversioned()?;
    if unversioned > 0 {
        log(&format!("{unversioned} records of this store are in no version of the fleet's state: published"));
    }
    link.health.log.heads_before.clear();
    Ok(position)
}

fn quietly_verified(cfg: &Config, entries: &[StreamId], refused: &mut Vec<String>) -> Vec<Signed> {
    let mut out = Vec::new();
    for e in entries {
        match signed_entry(cfg, e) {
            Ok(s) => out.push(s),
            Err(why) => refused.push(format!("log entry {}{why}", e.id)),
        }
    }
    out
}

/// The change log's upkeep, about once a second: heads, gaps, repairs, and a page of the sweep.
pub(super) fn upkeep(link: &mut Link, log: &mut dyn FnMut(&str)) -> std::result::Result<(), Failure> {
    let now = Instant::now();
    if link.health.log.next_round.is_some_and(|due| now < due) {
        return Ok(());
    }
    link.health.log.next_round = Some(now + UPKEEP_EVERY);
    heads(link, log)?;
    ask_for_what_is_missing(link, log)?;
    answer_requests(link, log)?;
    sweep(link, log)
}

/// Reads the origins' heads. A head read at the previous round counts once this host has read the log
/// to its end since (so an entry announced is one it has read, unless it was deleted): an origin whose
/// head is past what this host applied has entries missing. This host's own head is written again if
/// the hash does not hold it.
fn heads(link: &mut Link, log: &mut dyn FnMut(&str)) -> std::result::Result<(), Failure> {
    let origin = origin(link)?;
    let (heads, bad) = read_heads(link)?;
    for o in bad.iter().filter(|o| !link.health.log.bad_heads.contains(o)) {
        log(&format!("refused the head of origin {o:?} in the heads hash: not signed with this fleet's secret"));
    }
    link.health.log.bad_heads = bad;
    let mine = heads.iter().find(|h| h.origin == origin).map(|h| (h.seq, h.floor));
    if link.health.log.announced.is_some() && mine != link.health.log.announced {
        log("the heads hash did not hold this host's head: written again");
        link.health.log.announced = None;
        announce_head(link)?;
    } else if link.health.log.announced.is_none() {
        announce_head(link)?;
    }
    let reached = link.health.log.reached_end;
    let confirmed: Vec<Head> =
        link.health.log.heads_before.iter().filter(|(_, at)| reached > *at).map(|(h, _)| h.clone()).collect();
    link.store.fleet_note_heads(&confirmed)?;
    link.health.log.heads_before = heads.into_iter().map(|h| (h, reached)).collect();
    Ok(())
}

/// Asks each origin this host misses entries of to send them again (from the lowest missing), and
/// again every few seconds until they arrive.
fn ask_for_what_is_missing(link: &mut Link, log: &mut dyn FnMut(&str)) -> std::result::Result<(), Failure> {
    let health = link.store.fleet_log_health()?;
    for g in &health.gaps {
        let due = link.health.log.asked.get(&g.origin).is_none_or(|at| at.elapsed() >= ASK_AGAIN_AFTER);
        if !due {
            continue;
        }
        let asked: Option<String> = link.conn.hget(&link.names.repair, &g.origin)?;
        let asked_from = asked.as_deref().and_then(|text| request_from(link.cfg, &g.origin, text));
        if asked_from.is_none_or(|from| from > g.from) {
            let at = redis_time_ms(link.conn)?;
            let _: () =
                link.conn.hset(&link.names.repair, &g.origin, signed_request(link.cfg, &g.origin, g.from, at))?;
        }
        if !link.health.log.asked.contains_key(&g.origin) {
            log(&format!(
                "NOT CAUGHT UP: {} entries of host {} (origin {}) are missing from seq {} (its newest is {}); \
                 it is asked to send them again",
                g.missing, g.host, g.origin, g.from, g.head
            ));
        }
        link.health.log.asked.insert(g.origin.clone(), Instant::now());
    }
    let closed: Vec<String> =
        link.health.log.asked.keys().filter(|o| !health.gaps.iter().any(|g| g.origin == **o)).cloned().collect();
    for o in closed {
        link.health.log.asked.remove(&o);
        log(&format!("the missing entries of origin {o} arrived: caught up with it"));
    }
    Ok(())
}

/// Sends again what another host asked for: the journal's entries from the seq asked, unchanged (same
/// seq, version and signature); when the journal no longer holds it, every record as new versions (at
/// most once a minute), from a floor the others need nothing below.
fn answer_requests(link: &mut Link, log: &mut dyn FnMut(&str)) -> std::result::Result<(), Failure> {
    let origin = origin(link)?;
    let asked: Option<String> = link.conn.hget(&link.names.repair, &origin)?;
    let Some(text) = asked else { return Ok(()) };
    // Answered at most once per ASK_AGAIN_AFTER (the pace a host with a gap asks at), so that a request,
    // even a genuine one replayed, never makes this host flood the log.
    if link.health.log.answered_at.is_some_and(|at| at.elapsed() < ASK_AGAIN_AFTER) {
        return Ok(());
    }
    let _: () = link.conn.hdel(&link.names.repair, &origin)?;
    let Some(from) = request_from(link.cfg, &origin, &text)
        .filter(|_| request_is_recent(link.cfg, &origin, &text, redis_time_ms(link.conn).unwrap_or(0)))
    else {
        link.health.refused += 1;
        log("refused a request to send this host's entries again: not signed with the fleet's secret, or stale");
        return Ok(());
    };
    link.health.log.answered_at = Some(Instant::now());
    let last = link.store.fleet_next_seq(&origin)? - 1;
    if from > last {
        log(&format!("ignored a request for this host's entries from seq {from}: it has sent {last}"));
        return Ok(());
    }
    match link.store.fleet_journal_from(&origin, from.max(1), RESEND_AT_MOST)? {
        Some(entries) => {
            for s in &entries {
                send(link, s)?;
            }
            log(&format!(
                "a host misses this host's entries from seq {from}: sent {} again, unchanged, from the journal",
                entries.len()
            ));
        }
        None if link.health.log.republished_at.is_some_and(|at| at.elapsed() < REPUBLISH_AT_MOST_EVERY) => {
            log(&format!(
                "a host misses this host's entries from seq {from}, older than the journal holds: every record \
                 was published again less than a minute ago"
            ));
        }
        None => {
            let floor = link.store.fleet_republish_from_floor(&origin)?;
            link.health.log.republished_at = Some(Instant::now());
            log(&format!(
                "a host misses this host's entries from seq {from}, older than the journal holds: every record \
                 is published again as new versions, from seq {floor} on"
            ));
        }
    }
    Ok(())
}

/// One page of the sweep, each way. The state hash: where it holds an entry older than this host's
/// newest signed change of the record, or one that is not signed, that change is put back; an entry
/// newer than what this host holds is applied (its log entry never reached this host). Only each
/// entry's version, origin and SHA-1 travel, the entry itself once per new text (to verify it). This
/// host's records (only whether the hash has a field for each travels): a missing entry is put back. A
/// full pass over N records takes N / 200 rounds (about a second each).
fn sweep(link: &mut Link, log: &mut dyn FnMut(&str)) -> std::result::Result<(), Failure> {
    let page: Vec<String> =
        SCAN_STATE_SCRIPT.key(&link.names.state).arg(link.health.log.scan_cursor).arg(SWEEP_PAGE).invoke(link.conn)?;
    link.health.log.scan_cursor = page.first().and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut newer = Vec::new();
    for entry in page.get(1..).unwrap_or_default().chunks(4) {
        let [field, version, origin, sha] = entry else { continue };
        let Some((kind, id)) = field.split_once(':') else { continue };
        let held = link.store.fleet_held(kind, id)?;
        let claimed = (version.parse::<i64>().unwrap_or(-1), origin.as_str());
        let why = if link.health.log.verified.get(field) == Some(sha) {
            // This very text was verified: its version and origin are what it says.
            match &held {
                Some(h) if claimed < h.change.order() => format!("version {version} from origin {origin}"),
                _ => continue,
            }
        } else {
            let text: Option<String> = link.conn.hget(&link.names.state, field)?;
            let Some(text) = text else { continue };
            match (state_entry(link.cfg, &text), &held) {
                (Ok(s), Some(h)) if s.change.order() < h.change.order() => {
                    format!("version {} from {}", s.change.version, s.change.host)
                }
                (Ok(s), _) => {
                    link.health.log.verified.insert(field.clone(), sha.clone());
                    newer.push(s);
                    continue;
                }
                (Err(why), Some(_)) => format!("an entry {why}"),
                (Err(_), None) => continue,
            }
        };
        if let Some(h) = held {
            put_back(link, field, sha, &h, &why, log)?;
        }
    }
    let done = link.store.fleet_apply_state(&newer)?;
    if done.applied > 0 {
        link.health.log.state_applied += done.applied as u64;
        link.health.applied += done.applied as u64;
        log(&format!(
            "applied {} records from the fleet's state, newer than this host held (their log entries never reached it)",
            done.applied
        ));
    }
    for r in &done.refused {
        log(&format!("not applied from the fleet's state: {} {}: {}", r.kind, r.id, r.why));
    }

    let page = link.store.fleet_versions_page(link.health.log.sweep_after.as_ref(), SWEEP_PAGE)?;
    link.health.log.sweep_after =
        if page.len() < SWEEP_PAGE { None } else { page.last().map(|s| (s.change.kind.clone(), s.change.id.clone())) };
    if page.is_empty() {
        return Ok(());
    }
    let fields: Vec<String> = page.iter().map(|s| format!("{}:{}", s.change.kind, s.change.id)).collect();
    let exists: Vec<i64> = HAS_FIELDS_SCRIPT.key(&link.names.state).arg(&fields).invoke(link.conn)?;
    for ((held, field), there) in page.iter().zip(&fields).zip(exists) {
        if there == 0 {
            put_back(link, field, "", held, "nothing", log)?;
        }
    }
    Ok(())
}

/// Puts this host's newest signed change of a record into the state hash, if the hash still holds the
/// entry whose SHA-1 is `expected` there (empty: none).
fn put_back(
    link: &mut Link,
    field: &str,
    expected: &str,
    held: &Signed,
    why: &str,
    log: &mut dyn FnMut(&str),
) -> std::result::Result<(), Failure> {
    let put: i64 =
        PUT_STATE_SCRIPT.key(&link.names.state).arg(field).arg(expected).arg(state_json(held)).invoke(link.conn)?;
    if put == 1 {
        link.health.log.state_repaired += 1;
        log(&format!(
            "put back the fleet's state of {field} (version {} from {}): the state hash held {why}",
            held.change.version, held.change.host
        ));
    }
    Ok(())
}

/// How long a signed repair request stays good (by Redis's clock, which asker and answerer share).
const REQUEST_LIVES_MS: i64 = 30_000;

/// A request that `origin` send its entries again from seq `from`, signed, stamped with Redis's clock:
/// `from:at:signature`.
fn signed_request(cfg: &Config, origin: &str, from: i64, at_ms: i64) -> String {
    let (from, at) = (from.to_string(), at_ms.to_string());
    let sig = cfg.secret.sign_parts(&cfg.fleet, &["repair", origin, &from, &at]);
    format!("{from}:{at}:{sig}")
}

fn request_parts(text: &str) -> Option<(i64, i64, &str)> {
    let mut parts = text.splitn(3, ':');
    let from = parts.next()?.parse().ok()?;
    let at = parts.next()?.parse().ok()?;
    Some((from, at, parts.next()?))
}

/// The seq a request signed with the fleet's secret asks from; `None` for anything else.
fn request_from(cfg: &Config, origin: &str, text: &str) -> Option<i64> {
    let (from, at, sig) = request_parts(text)?;
    cfg.secret.verify_parts(&cfg.fleet, &["repair", origin, &from.to_string(), &at.to_string()], sig).then_some(from)
}

fn request_is_recent(cfg: &Config, origin: &str, text: &str, now_ms: i64) -> bool {
    request_from(cfg, origin, text).is_some()
        && request_parts(text).is_some_and(|(_, at, _)| (now_ms - at).abs() <= REQUEST_LIVES_MS)
}

fn redis_time_ms(c: &mut redis::Connection) -> redis::RedisResult<i64> {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query(c)?;
    Ok(secs * 1000 + micros / 1000)
}
