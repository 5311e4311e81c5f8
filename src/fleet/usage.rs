//! Fleet-wide usage (the agent's side; the store's is `store::fleet::usage`): so that `usage` and
//! `metrics` on any host show the fleet's totals, every agent publishes its host's daily counts per key
//! (what changed since it last did, about once a second) and takes in everyone else's. A host is its id
//! (`Config::host_id`), its name only a label: two hosts may share a name (machines cloned from one
//! image), never an id.
//!
//! Redis keys, for fleet F: `ms-auth:{F}:usage` (a Stream: each entry one host's batch of changed rows,
//! fields `v`, `host_id`, `host`, `rows`), `ms-auth:{F}:usage-host:ID` (a hash: that host's rows of the last
//! [`HISTORY_DAYS`] days, field `KEY:DAY`, and its name, field `host`, for hosts that join or whose
//! position the stream trimmed past) and `ms-auth:{F}:usage-host-ids` (a set: the hosts that ever
//! published). A row is a host's absolute count, so a row seen twice, or late, changes nothing. Each row
//! is signed with the fleet's secret, with the host's id and name: a writer of Redis without it cannot
//! make a host report usage it did not see, nor pass one host's rows off as another's. Entries of the
//! previous format (keyed by name, fields `host` and `rows` only) are refused; its keys
//! (`ms-auth:{F}:usage-hosts`, `ms-auth:{F}:usage:NAME`) are no longer read.

use std::time::{Duration, Instant};

use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::Commands;

use super::link::{Config, Failure, Link};
use crate::store::{clock_ms, FleetUsageRow, Store};

/// Days of history each host keeps in Redis for hosts that join later (a 90-day chart, and a few more).
pub const HISTORY_DAYS: i64 = 93;
const DAY_MS: i64 = 86_400_000;
/// Rows per stream entry.
const BATCH: usize = 500;
/// The format of the usage stream's entries this version writes and reads (their `v` field).
const USAGE_FORMAT: &str = "2";

/// Appends one batch to the stream and keeps each row, and the host's name, in the host's hash. KEYS:
/// stream, host hash, host set. ARGV: stream length kept, format, host id, host name, rows (`ROW;SIG`
/// lines, a row starting `KEY,DAY,`).
const PUBLISH: &str = r#"
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'v', ARGV[2], 'host_id', ARGV[3], 'host', ARGV[4],
  'rows', ARGV[5])
for line in string.gmatch(ARGV[5], '[^\n]+') do
  local key, day = string.match(line, '^([^,]+),([^,]+),')
  if key then redis.call('HSET', KEYS[2], key .. ':' .. day, line) end
end
redis.call('HSET', KEYS[2], 'host', ARGV[4])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"#;

/// The agent's usage state across rounds.
pub(crate) struct UsageSync {
    script: redis::Script,
    /// The whole retained history has been published since the agent started (then only today and
    /// yesterday are compared, which is what flushes still change).
    history_published: bool,
    /// Whether Redis was asked, since the last (re)connection, if it still has this host's rows.
    checked_since_connect: bool,
    /// Whether the stream was asked, since the last (re)connection, if it still holds our position.
    checked_since_connect_position: bool,
    next_retire: Instant,
    pub published_rows: u64,
    pub received_rows: u64,
    pub refused_rows: u64,
    /// Hosts (by name) whose entries of the previous format were refused and logged, in this run: once each.
    previous_format_logged: std::collections::HashSet<String>,
}

impl Default for UsageSync {
    fn default() -> UsageSync {
        UsageSync {
            script: redis::Script::new(PUBLISH),
            history_published: false,
            checked_since_connect: false,
            checked_since_connect_position: false,
            next_retire: Instant::now(),
            published_rows: 0,
            received_rows: 0,
            refused_rows: 0,
            previous_format_logged: Default::default(),
        }
    }
}

struct Names {
    stream: String,
    hosts: String,
}

fn names(cfg: &Config) -> Names {
    Names {
        stream: format!("ms-auth:{{{}}}:usage", cfg.fleet),
        hosts: format!("ms-auth:{{{}}}:usage-host-ids", cfg.fleet),
    }
}

fn host_hash(cfg: &Config, host_id: &str) -> String {
    format!("ms-auth:{{{}}}:usage-host:{host_id}", cfg.fleet)
}

/// The hash field holding a host's name (a row's field is `KEY:DAY`, never without a colon).
const NAME_FIELD: &str = "host";

impl UsageSync {
    /// Redis was (re)connected: check once that it still holds what this host published.
    pub(crate) fn reconnected(&mut self) {
        self.checked_since_connect = false;
        self.checked_since_connect_position = false;
    }

    /// One round: publish what changed here, take in what the others published.
    pub(super) fn round(&mut self, link: &mut Link, log: &mut dyn FnMut(&str)) -> std::result::Result<(), Failure> {
        let Link { store, cfg, conn: c, .. } = link;
        let (store, cfg): (&Store, &Config) = (store, cfg);
        let n = names(cfg);
        let own = host_hash(cfg, &cfg.host_id);
        if !self.checked_since_connect {
            let there: bool = c.exists(&own)?;
            if !there && store.fleet_usage_published_any(&cfg.host_id)? {
                log("Redis no longer has this host's usage (restarted empty?): publishing it again");
                store.fleet_usage_forget(&cfg.host_id)?;
                self.history_published = false;
            }
            self.checked_since_connect = true;
        }
        self.publish(store, cfg, &n, &own, c)?;
        self.receive(store, cfg, &n, c, log)?;
        if Instant::now() >= self.next_retire {
            let today = clock_ms().div_euclid(DAY_MS);
            let retired = store.fleet_usage_retire(&cfg.host_id, today - HISTORY_DAYS)?;
            for chunk in retired.chunks(BATCH) {
                let fields: Vec<String> = chunk.iter().map(|(key, day)| format!("{key}:{day}")).collect();
                let _: i64 = c.hdel(&own, fields)?;
            }
            self.next_retire = Instant::now() + Duration::from_secs(3600);
        }
        Ok(())
    }

    fn publish(
        &mut self,
        store: &Store,
        cfg: &Config,
        n: &Names,
        own: &str,
        c: &mut redis::Connection,
    ) -> std::result::Result<(), Failure> {
        let today = clock_ms().div_euclid(DAY_MS);
        let since = if self.history_published { today - 1 } else { today - HISTORY_DAYS };
        // Bounded per round, so a long history never holds up the change log; the rest follows.
        for _ in 0..20 {
            let rows = store.fleet_usage_changed(&cfg.host_id, &cfg.host, since, BATCH)?;
            if rows.is_empty() {
                self.history_published = true;
                return Ok(());
            }
            let text: String = rows.iter().map(|r| signed_line(cfg, &cfg.host_id, &cfg.host, r) + "\n").collect();
            let _: i64 = self
                .script
                .key(&n.stream)
                .key(own)
                .key(&n.hosts)
                .arg(cfg.max_log)
                .arg(USAGE_FORMAT)
                .arg(&cfg.host_id)
                .arg(&cfg.host)
                .arg(text)
                .invoke(c)?;
            store.fleet_usage_merge(&cfg.host_id, &cfg.host, &rows)?;
            self.published_rows += rows.len() as u64;
        }
        Ok(())
    }

    fn receive(
        &mut self,
        store: &Store,
        cfg: &Config,
        n: &Names,
        c: &mut redis::Connection,
        log: &mut dyn FnMut(&str),
    ) -> std::result::Result<(), Failure> {
        // Whether the stream still holds our position is asked once per connection, as for the change log.
        let position = match store.fleet_usage_position()? {
            Some(p) if self.checked_since_connect_position => p,
            Some(p) if !super::changelog::trimmed_past(c, &n.stream, &p)? => p,
            _ => self.catch_up(store, cfg, n, c, log)?,
        };
        self.checked_since_connect_position = true;
        let options = StreamReadOptions::default().count(200);
        let reply: StreamReadReply = c.xread_options(&[&n.stream], &[&position], &options)?;
        let entries: Vec<StreamId> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
        let Some(last) = entries.last().map(|e| e.id.clone()) else { return Ok(()) };
        for e in &entries {
            let field = |name: &str| e.get::<String>(name);
            match (field("v").as_deref(), field("host_id"), field("host"), field("rows")) {
                (Some(USAGE_FORMAT), Some(host_id), Some(host), Some(rows)) if !host_id.is_empty() => {
                    if host_id != cfg.host_id {
                        self.take_in(store, cfg, &host_id, &host, rows.lines(), log)?;
                    }
                }
                (_, _, host, rows) => self.refuse_format(e, host, rows, log),
            }
        }
        store.fleet_set_usage_position(&last)?;
        Ok(())
    }

    /// Takes in every other host's retained rows (this host is new, or the stream trimmed past it) and
    /// returns the stream position they cover.
    fn catch_up(
        &mut self,
        store: &Store,
        cfg: &Config,
        n: &Names,
        c: &mut redis::Connection,
        log: &mut dyn FnMut(&str),
    ) -> std::result::Result<String, Failure> {
        // The position first: entries added while the hashes are read are read again, harmlessly.
        let last: StreamRangeReply = c.xrevrange_count(&n.stream, "+", "-", 1)?;
        let position = last.ids.first().map_or_else(|| "0-0".to_string(), |e| e.id.clone());
        let hosts: Vec<String> = c.smembers(&n.hosts)?;
        for host_id in hosts.iter().filter(|h| !h.is_empty() && **h != cfg.host_id) {
            let fields: Vec<(String, String)> =
                c.hscan::<_, (String, String)>(host_hash(cfg, host_id))?.collect::<redis::RedisResult<_>>()?;
            // Without its name no row verifies: they are refused, counted and logged as unsigned.
            let name = fields.iter().find(|(f, _)| f == NAME_FIELD).map_or("", |(_, name)| name.as_str());
            let lines = fields.iter().filter(|(f, _)| f != NAME_FIELD).map(|(_, line)| line.as_str());
            self.take_in(store, cfg, host_id, name, lines, log)?;
        }
        store.fleet_set_usage_position(&position)?;
        Ok(position)
    }

    /// Counts and logs (once per host name in this run) an entry not in this version's format: an agent
    /// of the previous one keys usage by host name and signs no host id, so its rows cannot be told apart
    /// from another host's of that name.
    fn refuse_format(&mut self, e: &StreamId, host: Option<String>, rows: Option<String>, log: &mut dyn FnMut(&str)) {
        let refused = rows.as_deref().map_or(1, |r| r.lines().count().max(1)) as u64;
        self.refused_rows += refused;
        let host = host.unwrap_or_default();
        if self.previous_format_logged.insert(host.clone()) {
            log(&format!(
                "refused {refused} usage rows from host {host:?} (entry {}) in the previous format, or none: not \
                 signed for a host id in this version's format (v{USAGE_FORMAT}; written by an agent of another \
                 version? upgrade every agent together; further such entries from this host are counted, not logged)",
                e.id
            ));
        }
    }

    fn take_in<'a>(
        &mut self,
        store: &Store,
        cfg: &Config,
        host_id: &str,
        host: &str,
        lines: impl Iterator<Item = &'a str>,
        log: &mut dyn FnMut(&str),
    ) -> std::result::Result<(), Failure> {
        let mut rows = Vec::new();
        let mut refused = 0;
        for line in lines {
            match verified_row(cfg, host_id, host, line) {
                Some(row) => rows.push(row),
                None => refused += 1,
            }
        }
        if refused > 0 {
            self.refused_rows += refused;
            log(&format!(
                "refused {refused} usage rows from host {host:?} (host id {host_id}): not signed with this \
                 fleet's secret for this host"
            ));
        }
        for chunk in rows.chunks(BATCH) {
            store.fleet_usage_merge(host_id, host, chunk)?;
        }
        self.received_rows += rows.len() as u64;
        Ok(())
    }
}

/// The fields a usage row's signature covers, after a tag that names the format (the previous format
/// signed `["usage", NAME, ROW]`: no row of it verifies as one of these).
fn row_parts<'a>(host_id: &'a str, host: &'a str, row: &'a str) -> [&'a str; 4] {
    ["usage/2", host_id, host, row]
}

/// `KEY,DAY,ADMITTED,EXPIRED,REVOKED,QUOTA,RATE,LAST_USED;SIG` (LAST_USED empty when unknown).
fn signed_line(cfg: &Config, host_id: &str, host: &str, r: &FleetUsageRow) -> String {
    let [a, e, v, q, l] = r.counts;
    let last = r.last_used_at_ms.map_or(String::new(), |t| t.to_string());
    let row = format!("{},{},{a},{e},{v},{q},{l},{last}", r.key_id, r.day);
    let sig = cfg.secret.sign_parts(&cfg.fleet, &row_parts(host_id, host, &row));
    format!("{row};{sig}")
}

fn verified_row(cfg: &Config, host_id: &str, host: &str, line: &str) -> Option<FleetUsageRow> {
    let (row, sig) = line.rsplit_once(';')?;
    if !cfg.secret.verify_parts(&cfg.fleet, &row_parts(host_id, host, row), sig) {
        return None;
    }
    let fields: Vec<&str> = row.split(',').collect();
    let [key_id, day, a, e, v, q, l, last] = fields.as_slice() else { return None };
    let count = |s: &str| s.parse::<i64>().ok().filter(|n| *n >= 0);
    Some(FleetUsageRow {
        key_id: key_id.to_string(),
        day: day.parse().ok()?,
        counts: [count(a)?, count(e)?, count(v)?, count(q)?, count(l)?],
        last_used_at_ms: if last.is_empty() { None } else { Some(last.parse().ok()?) },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Secret;

    fn cfg() -> Config {
        Config {
            redis_url: String::new(),
            redis_password: None,
            ca_file: None,
            fleet: "prod".into(),
            host: "a".into(),
            host_id: "a".into(),
            secret: Secret::new(b"0123456789abcdef"),
            max_log: 100,
            heartbeat: Duration::from_secs(1),
            when_down: crate::fleet::WhenDown::Refuse,
            allow_evicting_redis: false,
        }
    }

    #[test]
    fn a_usage_row_is_read_back_only_with_its_signature_host_id_name_and_fleet() {
        let row =
            FleetUsageRow { key_id: "key_1".into(), day: 20_000, counts: [5, 0, 1, 2, 3], last_used_at_ms: Some(7) };
        let line = signed_line(&cfg(), "id-b", "web", &row);
        assert_eq!(verified_row(&cfg(), "id-b", "web", &line), Some(row.clone()));
        assert_eq!(verified_row(&cfg(), "id-c", "web", &line), None, "another host of the same name");
        assert_eq!(verified_row(&cfg(), "id-b", "api", &line), None, "another name");
        let forged = line.replacen(",5,", ",9,", 1);
        assert_eq!(verified_row(&cfg(), "id-b", "web", &forged), None, "a count changed");
        let other_fleet = Config { fleet: "staging".into(), ..cfg() };
        assert_eq!(verified_row(&other_fleet, "id-b", "web", &line), None);
        let none = FleetUsageRow { last_used_at_ms: None, ..row.clone() };
        assert_eq!(verified_row(&cfg(), "id-b", "web", &signed_line(&cfg(), "id-b", "web", &none)), Some(none));
        assert_eq!(verified_row(&cfg(), "id-b", "web", "garbage"), None);
        // A row of the previous format (signed by name, no id) verifies as no host's.
        let text = "key_1,20000,5,0,1,2,3,7";
        let previous = format!("{text};{}", cfg().secret.sign_parts("prod", &["usage", "web", text]));
        assert_eq!(verified_row(&cfg(), "web", "web", &previous), None);
        assert_eq!(verified_row(&cfg(), "", "web", &previous), None);
    }
}
