//! The fleet's change log (the agent's side; the store's is `store::fleet::replica`): publishing this host's
//! outbox to the log and the state hash, reading the log after this host's position and applying it,
//! and catching up from the state hash when the host is new or the log trimmed past it.

use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::Commands;
use serde_json::Value;

use super::link::{Config, Failure, Health, Link};
use super::{Change, KINDS};
use crate::error::Result;
use crate::store::Store;

/// Publishes one change: appends it to the log and makes it the record's newest state, atomically (an
/// audit event is history, not state: the log only).
pub(super) const PUBLISH: &str = r#"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
    'kind', ARGV[2], 'id', ARGV[3], 'body', ARGV[4], 'origin', ARGV[5], 'sig', ARGV[6])
if ARGV[2] ~= 'audit' then
  redis.call('HSET', KEYS[2], ARGV[2] .. ':' .. ARGV[3], cjson.encode({stream_id = id, kind = ARGV[2],
      id = ARGV[3], body = ARGV[4], origin = ARGV[5], sig = ARGV[6]}))
end
return id
"#;

/// One round: catch up if needed, publish the outbox, apply what the log has after our position
/// (waiting up to 100 ms for news).
pub(super) fn step(link: &mut Link, log: &mut dyn FnMut(&str)) -> std::result::Result<(), Failure> {
    let position = match link.store.fleet_position()? {
        Some(p) if link.health.position_checked => p,
        Some(p) if !trimmed_past(link.conn, &link.names.log, &p)? => p,
        _ => load_snapshot(link, log)?,
    };
    link.health.position_checked = true;
    publish_outbox(link)?;
    let options = StreamReadOptions::default().count(500).block(100);
    let reply: StreamReadReply = link.conn.xread_options(&[&link.names.log], &[&position], &options)?;
    let entries: Vec<StreamId> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
    let Some(last) = entries.last().map(|e| e.id.clone()) else { return Ok(()) };
    let changes = verified(link.cfg, &entries, link.health, log);
    apply(link.store, &changes, &last, link.health, log)?;
    link.health.last_id = Some(last);
    Ok(())
}

fn apply(
    store: &Store,
    changes: &[Change],
    position: &str,
    health: &mut Health,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let refused = store.fleet_apply(changes, position)?;
    health.applied += (changes.len() - refused.len()) as u64;
    health.refused += refused.len() as u64;
    for r in refused {
        log(&format!("not applied: {} {}: {}", r.kind, r.id, r.why));
    }
    Ok(())
}

/// The changes of log entries whose signature is the fleet's; the others are logged and counted.
fn verified(cfg: &Config, entries: &[StreamId], health: &mut Health, log: &mut dyn FnMut(&str)) -> Vec<Change> {
    let mut out = Vec::new();
    for e in entries {
        let field = |name: &str| e.get::<String>(name);
        let change = match (field("kind"), field("id"), field("body"), field("origin")) {
            (Some(kind), Some(id), Some(body), Some(origin)) if KINDS.contains(&kind.as_str()) => {
                Change { kind, id, body, origin }
            }
            _ => {
                health.refused += 1;
                log(&format!("refused log entry {}: not an ms-auth change", e.id));
                continue;
            }
        };
        match field("sig") {
            Some(sig) if cfg.secret.verify(&cfg.fleet, &change, &sig) => out.push(change),
            _ => {
                health.refused += 1;
                log(&format!(
                    "refused log entry {} ({} {} from {:?}): not signed with this fleet's secret",
                    e.id, change.kind, change.id, change.origin
                ));
            }
        }
    }
    out
}

pub(super) fn publish_outbox(link: &mut Link) -> std::result::Result<(), Failure> {
    let Link { store, cfg, names, scripts, conn: c, health } = link;
    loop {
        let (changes, upto) = store.fleet_outbox(&cfg.host, 200)?;
        if changes.is_empty() {
            return Ok(());
        }
        for change in &changes {
            let sig = cfg.secret.sign(&cfg.fleet, change);
            let _id: String = scripts
                .publish
                .key(&names.log)
                .key(&names.state)
                .arg(cfg.max_log)
                .arg(&change.kind)
                .arg(&change.id)
                .arg(&change.body)
                .arg(&change.origin)
                .arg(sig)
                .invoke(c)?;
            health.published += 1;
        }
        // With replicas (a Sentinel setup), a change leaves the outbox only once a replica has it, so a
        // failover cannot lose it; until then it is published again (applying twice changes nothing).
        let replicas = connected_replicas(c)?;
        if replicas > 0 {
            let acked: i64 = redis::cmd("WAIT").arg(1).arg(REPLICA_WAIT_MS).query(c)?;
            if acked < 1 {
                health.last_error = Some("no replica acknowledged the last changes: they stay in the outbox".into());
                return Ok(());
            }
        }
        store.fleet_published(upto)?;
    }
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

/// Applies the newest state of every record (the state hash) and returns the log position it covers.
/// If Redis lost everything (restarted empty), this host's records are published again.
fn load_snapshot(link: &mut Link, log: &mut dyn FnMut(&str)) -> std::result::Result<String, Failure> {
    let Link { cfg, names, conn: c, health, .. } = link;
    let last: StreamRangeReply = c.xrevrange_count(&names.log, "+", "-", 1)?;
    let position = last.ids.first().map_or_else(|| "0-0".to_string(), |e| e.id.clone());
    let state: std::collections::HashMap<String, String> = c.hgetall(&names.state)?;
    let mut records: Vec<(String, Change, String)> = Vec::new();
    for (field, text) in state {
        let entry: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let get = |name: &str| entry[name].as_str().map(str::to_string);
        match (get("kind"), get("id"), get("body"), get("origin"), get("sig"), get("stream_id")) {
            (Some(kind), Some(id), Some(body), Some(origin), Some(sig), Some(stream_id)) => {
                let change = Change { kind, id, body, origin };
                if cfg.secret.verify(&cfg.fleet, &change, &sig) {
                    records.push((stream_id, change, field));
                } else {
                    health.refused += 1;
                    log(&format!("refused state {field}: not signed with this fleet's secret"));
                }
            }
            _ => {
                health.refused += 1;
                log(&format!("refused state {field}: not an ms-auth change"));
            }
        }
    }
    // Policies and plans before keys; keys in the order they were created, so that a rotated key's
    // successor finds the key it counts with.
    let rank = |c: &Change| KINDS.iter().position(|k| *k == c.kind).unwrap_or(KINDS.len());
    let created =
        |c: &Change| serde_json::from_str::<Value>(&c.body).ok().and_then(|v| v["created_at_ms"].as_i64()).unwrap_or(0);
    records.sort_by_key(|(stream_id, c, _)| (rank(c), created(c), stream_id_key(stream_id)));
    let mut changes: Vec<Change> = records.into_iter().map(|(_, c, _)| c).collect();
    changes.extend(audit_in_log(link, &position, log)?);
    let Link { store, health, .. } = link;
    let had_position = store.fleet_position()?.is_some();
    log(&format!("catching up from the fleet's state: {} records, position {position}", changes.len()));
    apply(store, &changes, &position, health, log)?;
    if changes.is_empty() && had_position {
        // Redis came back empty: republish this host's records (the others do the same).
        store.fleet_republish()?;
        log("the fleet's state was empty: this host's records are published again");
    }
    Ok(position)
}

/// The audit events the log still holds up to `position` (they are history, not in the state hash): a
/// host starting from the state gets the fleet's recent audit trail too.
fn audit_in_log(
    link: &mut Link,
    position: &str,
    log: &mut dyn FnMut(&str),
) -> std::result::Result<Vec<Change>, Failure> {
    let Link { cfg, names, conn: c, health, .. } = link;
    let mut out = Vec::new();
    let mut from = "-".to_string();
    loop {
        let page: StreamRangeReply = c.xrange_count(&names.log, &from, position, 1000)?;
        let Some(last) = page.ids.last().map(|e| e.id.clone()) else { break };
        let audit: Vec<StreamId> =
            page.ids.into_iter().filter(|e| e.get::<String>("kind").as_deref() == Some("audit")).collect();
        out.extend(verified(cfg, &audit, health, log));
        if last == position {
            break;
        }
        from = format!("({last}");
    }
    Ok(out)
}

fn stream_id_key(id: &str) -> (u64, u64) {
    stream_id(id).unwrap_or((0, 0))
}
