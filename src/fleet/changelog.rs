//! The fleet's change log (the agent's side; the store's is `store::fleet::{journal, versions}`):
//! publishing this host's changes to the log and the state hash, reading the log after this host's
//! position and applying it, and announcing this host's newest seq (`ms-auth:{F}:heads`). Catching up from
//! the state hash, gaps and repairs are `repair`'s.
//!
//! A change leaves the outbox for the journal with its seq and version before it is sent (`fleet_claim`),
//! so that sending it again after a crash sends the same signed entry: older than any change made since,
//! it changes nothing. A host applies a change only if newer than what it holds of the record.

use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::Commands;
use serde_json::json;

use super::link::{Config, Failure, Health, Link};
use super::repair::{load_snapshot, upkeep};
use super::secret::CHANGE_FORMAT;
use super::{Change, KINDS};
use crate::error::{Error, Result};
use crate::store::{Signed, Store};

/// Publishes one change: appends it to the log and, unless the state hash holds a newer change of the
/// record (a change sent again after a crash, a repair), makes it the record's newest state, atomically
/// (an audit event is history, not state: the log only). Origins are compared byte by byte, as the
/// agents do (Lua's `<` on strings follows the server's locale).
pub(super) const PUBLISH: &str = r#"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'v', ARGV[10],
    'kind', ARGV[2], 'id', ARGV[3], 'body', ARGV[4], 'origin', ARGV[5], 'host', ARGV[6],
    'seq', ARGV[7], 'version', ARGV[8], 'sig', ARGV[9])
if ARGV[2] ~= 'audit' then
  local field = ARGV[2] .. ':' .. ARGV[3]
  local held = redis.call('HGET', KEYS[2], field)
  if held then
    local ok, e = pcall(cjson.decode, held)
    if ok and type(e) == 'table' and e.v == ARGV[10] then
      local v, mine = tonumber(e.version) or 0, tonumber(ARGV[8])
      local o = tostring(e.origin)
      local function before(a, b)
        for i = 1, math.min(#a, #b) do
          local x, y = a:byte(i), b:byte(i)
          if x ~= y then return x < y end
        end
        return #a < #b
      end
      if v > mine or (v == mine and not before(o, ARGV[5])) then return id end
    end
  end
  redis.call('HSET', KEYS[2], field, cjson.encode({v = ARGV[10], kind = ARGV[2], id = ARGV[3], body = ARGV[4],
      origin = ARGV[5], host = ARGV[6], seq = ARGV[7], version = ARGV[8], sig = ARGV[9]}))
end
return id
"#;

/// Entries read from the log per round.
const READ_COUNT: usize = 500;

/// One round: catch up if needed, publish the outbox, apply what the log has after our position
/// (waiting up to 100 ms for news), and the log's upkeep (about once a second).
pub(super) fn step(link: &mut Link, log: &mut dyn FnMut(&str)) -> std::result::Result<(), Failure> {
    let mut position = match link.store.fleet_position()? {
        Some(p) if link.health.position_checked => p,
        Some(p) if !trimmed_past(link.conn, &link.names.log, &p)? => p,
        _ => load_snapshot(link, log)?,
    };
    if !link.health.position_checked {
        // Before sending what this host changed while its agent was away, take in what the others changed
        // meanwhile: its changes are then versioned after theirs, and do not tie with (and, by origin, beat)
        // a revocation made elsewhere in the meantime.
        while let Some((last, reached_end)) = read_and_apply(link, &position, None, log)? {
            position = last;
            if reached_end {
                break;
            }
        }
    }
    link.health.position_checked = true;
    publish_outbox(link)?;
    read_and_apply(link, &position, Some(100), log)?;
    upkeep(link, log)
}

/// Reads the log after `position` (waiting up to `block_ms` for news) and applies what it holds. The new
/// position and whether the log's end was reached; `None` when there was nothing.
fn read_and_apply(
    link: &mut Link,
    position: &str,
    block_ms: Option<usize>,
    log: &mut dyn FnMut(&str),
) -> std::result::Result<Option<(String, bool)>, Failure> {
    let mut options = StreamReadOptions::default().count(READ_COUNT);
    if let Some(ms) = block_ms {
        options = options.block(ms);
    }
    let reply: StreamReadReply = link.conn.xread_options(&[&link.names.log], &[position], &options)?;
    let entries: Vec<StreamId> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
    let reached_end = entries.len() < READ_COUNT;
    let last = entries.last().map(|e| e.id.clone());
    if let Some(last) = &last {
        let changes = verified(link.cfg, &entries, link.health, log);
        apply(link.store, &changes, last, link.health, log)?;
        link.health.last_id = Some(last.clone());
    }
    if reached_end {
        link.health.log.reached_end += 1;
    }
    Ok(last.map(|l| (l, reached_end)))
}

fn apply(
    store: &Store,
    changes: &[Signed],
    position: &str,
    health: &mut Health,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let done = store.fleet_apply(changes, position, true)?;
    health.applied += done.applied as u64;
    health.refused += done.refused.len() as u64;
    for r in &done.refused {
        log(&format!("not applied: {} {}: {}", r.kind, r.id, r.why));
    }
    if !done.stale.is_empty() {
        health.log.stale += done.stale.len() as u64;
        let some: Vec<String> = done.stale.iter().take(5).map(describe_stale).collect();
        log(&format!(
            "skipped {} stale log entries (had already, or older than what this host holds: replays, \
             changes sent again, changes that lost to a newer one): {}{}",
            done.stale.len(),
            some.join("; "),
            if done.stale.len() > some.len() { "; …" } else { "" }
        ));
    }
    Ok(())
}

fn describe_stale(s: &crate::store::Stale) -> String {
    let c = &s.change;
    let what = format!("{} {} version {} (seq {} of {})", c.kind, c.id, c.version, c.seq, c.host);
    match &s.held {
        _ if s.duplicate => format!("{what}: had it"),
        Some((version, host)) => format!("{what}: holds version {version} from {host}"),
        None => what,
    }
}

/// The changes of log entries in this version's format whose signature is the fleet's; the others are
/// logged and counted.
pub(super) fn verified(
    cfg: &Config,
    entries: &[StreamId],
    health: &mut Health,
    log: &mut dyn FnMut(&str),
) -> Vec<Signed> {
    let mut out = Vec::new();
    for e in entries {
        match signed_entry(cfg, e) {
            Ok(s) => out.push(s),
            Err(why) => {
                health.refused += 1;
                log(&format!("refused log entry {}{why}", e.id));
            }
        }
    }
    out
}

/// A log entry's signed change, or why it is refused.
pub(super) fn signed_entry(cfg: &Config, e: &StreamId) -> std::result::Result<Signed, String> {
    let field = |name: &str| e.get::<String>(name);
    let (Some(kind), Some(id), Some(body)) = (field("kind"), field("id"), field("body")) else {
        return Err(": not an ms-auth change".into());
    };
    let origin = field("origin").unwrap_or_default();
    let about = format!(" ({kind} {id} from {origin:?})");
    if !KINDS.contains(&kind.as_str()) {
        return Err(format!("{about}: not an ms-auth change"));
    }
    let number = |name: &str| field(name).and_then(|n| n.parse::<i64>().ok());
    let (Some(CHANGE_FORMAT), Some(host), Some(seq), Some(version), Some(sig)) =
        (field("v").as_deref(), field("host"), number("seq"), number("version"), field("sig"))
    else {
        return Err(format!(
            "{about}: not signed with this fleet's secret in this version's format (v{CHANGE_FORMAT}; \
             written by an agent of another version? upgrade every agent together)"
        ));
    };
    let change = Change { kind, id, body, origin, host, seq, version };
    if seq < 1 || version < 0 || !cfg.secret.verify(&cfg.fleet, &change, &sig) {
        return Err(format!("{about}: not signed with this fleet's secret"));
    }
    Ok(Signed { change, sig })
}

/// This host's identity in the fleet: the origin of its changes.
pub(super) fn origin(link: &mut Link) -> std::result::Result<String, Failure> {
    if let Some(origin) = &link.health.log.origin {
        return Ok(origin.clone());
    }
    let origin = link.store.fleet_host_id()?.ok_or_else(|| Error::store("this store is not a fleet member"))?;
    link.health.log.origin = Some(origin.clone());
    Ok(origin)
}

pub(super) fn publish_outbox(link: &mut Link) -> std::result::Result<(), Failure> {
    let origin = origin(link)?;
    let (store, cfg) = (link.store, link.cfg);
    let mut sent = false;
    loop {
        store.fleet_claim(&origin, &cfg.host, 200, &|change| cfg.secret.sign(&cfg.fleet, change))?;
        let unsent = store.fleet_unsent(200)?;
        let Some(last) = unsent.last().map(|s| s.change.clone()) else { break };
        for s in &unsent {
            send(link, s)?;
        }
        sent = true;
        // With replicas (a Sentinel setup), a change is marked published only once a replica has it, so
        // a failover cannot lose it; until then it is sent again, with its seq and version (a host that
        // has it skips it).
        if connected_replicas(link.conn)? > 0 {
            let acked: i64 = redis::cmd("WAIT").arg(1).arg(REPLICA_WAIT_MS).query(link.conn)?;
            if acked < 1 {
                link.health.last_error =
                    Some("no replica acknowledged the last changes: they will be sent again".into());
                break;
            }
        }
        store.fleet_mark_published(&last, cfg.max_log)?;
    }
    if sent {
        announce_head(link)?;
    }
    Ok(())
}

/// Appends a signed change to the log as it is (seq, version and signature included).
pub(super) fn send(link: &mut Link, s: &Signed) -> std::result::Result<String, Failure> {
    let c = &s.change;
    let id: String = link
        .scripts
        .publish
        .key(&link.names.log)
        .key(&link.names.state)
        .arg(link.cfg.max_log)
        .arg(&c.kind)
        .arg(&c.id)
        .arg(&c.body)
        .arg(&c.origin)
        .arg(&c.host)
        .arg(c.seq)
        .arg(c.version)
        .arg(&s.sig)
        .arg(CHANGE_FORMAT)
        .invoke(link.conn)?;
    link.health.published += 1;
    if Some(&c.origin) == link.health.log.origin.as_ref() {
        link.health.log.sent_head = link.health.log.sent_head.max(c.seq);
    }
    Ok(id)
}

/// The signed parts of an origin's head: its highest seq sent and its floor.
pub(super) fn head_parts<'a>(origin: &'a str, host: &'a str, seq: &'a str, floor: &'a str) -> [&'a str; 5] {
    ["head/2", origin, host, seq, floor]
}

/// Writes this host's head into the heads hash when it changed (or was found wrong).
pub(super) fn announce_head(link: &mut Link) -> std::result::Result<(), Failure> {
    let origin = origin(link)?;
    if link.health.log.sent_head == 0 {
        link.health.log.sent_head = link.store.fleet_published_head(&origin)?;
    }
    let (seq, floor) = (link.health.log.sent_head, link.store.fleet_floor()?);
    if seq == 0 || link.health.log.announced == Some((seq, floor)) {
        return Ok(());
    }
    let (seq_text, floor_text) = (seq.to_string(), floor.to_string());
    let sig = link.cfg.secret.sign_parts(&link.cfg.fleet, &head_parts(&origin, &link.cfg.host, &seq_text, &floor_text));
    let head = json!({"seq": seq, "floor": floor, "host": link.cfg.host, "sig": sig});
    let _: () = link.conn.hset(&link.names.heads, &origin, head.to_string())?;
    link.health.log.announced = Some((seq, floor));
    Ok(())
}

/// How long publishing waits for a replica to acknowledge (when the server has replicas).
const REPLICA_WAIT_MS: i64 = 500;

fn connected_replicas(c: &mut redis::Connection) -> redis::RedisResult<i64> {
    let info: String = redis::cmd("INFO").arg("replication").query(c)?;
    Ok(info.lines().find_map(|l| l.strip_prefix("connected_slaves:")).and_then(|n| n.trim().parse().ok()).unwrap_or(0))
}

/// True when the log no longer holds every entry after `position` (it was trimmed, or Redis lost it).
pub(crate) fn trimmed_past(c: &mut redis::Connection, stream: &str, position: &str) -> redis::RedisResult<bool> {
    let first: StreamRangeReply = c.xrange_count(stream, "-", "+", 1)?;
    let last: StreamRangeReply = c.xrevrange_count(stream, "+", "-", 1)?;
    let (Some(first), Some(last)) = (first.ids.first(), last.ids.first()) else {
        // An empty log: nothing to miss, unless Redis lost what we had applied (restarted empty).
        return Ok(position != "0-0");
    };
    // Our last applied entry is still in the log unless the log starts after it; a log that ends before
    // it lost entries (Redis restarted from older data).
    let pos = stream_id_key(position);
    Ok(stream_id_key(&first.id) > pos || stream_id_key(&last.id) < pos)
}

pub(super) fn stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

pub(super) fn stream_id_key(id: &str) -> (u64, u64) {
    stream_id(id).unwrap_or((0, 0))
}
