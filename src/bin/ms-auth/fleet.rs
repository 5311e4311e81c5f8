//! `ms-auth fleet sync|status|new-identity`: the host's fleet agent, what it reports, and a new identity
//! for a store that is a copy of another member's.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{SecondsFormat, TimeZone, Utc};
use clap::Subcommand;
use serde_json::{json, Value};

use ms_auth::fleet::agent::{self, Ended};
use ms_auth::fleet::{private_file, Config, Secret, WhenDown};
use ms_auth::{Error, Store};

#[derive(Subcommand)]
pub enum FleetCommand {
    /// Run this host's fleet agent in the foreground: publish this store's admin changes to the fleet's
    /// log in Redis and apply everyone's. Stops (exit 0) on SIGTERM or SIGINT.
    Sync {
        /// redis://[user:password@]host:port[/db], rediss://… for TLS, or
        /// redis-sentinel://[[user]:password@]host[:port][,host[:port]][/db]#MASTER to find the master
        /// through Redis Sentinel (and follow its failovers). Keep a password out of it on the command
        /// line (`ps` shows it to every user): use --redis-password-file or $MS_AUTH_REDIS_PASSWORD.
        #[arg(long, env = "MS_AUTH_REDIS_URL")]
        redis: String,
        /// A file holding the password for Redis (mode 0600 or stricter; surrounding whitespace
        /// ignored). $MS_AUTH_REDIS_PASSWORD gives it too. Not with a password in the URL.
        #[arg(long, value_name = "FILE")]
        redis_password_file: Option<PathBuf>,
        /// The CA certificate (PEM) for rediss:// URLs.
        #[arg(long, value_name = "PEM")]
        redis_ca: Option<PathBuf>,
        /// The fleet's name: every host of one fleet names the same.
        #[arg(long, default_value = "default")]
        fleet: String,
        /// This host's name in the fleet, a label [default: the machine's hostname]. The host's identity
        /// is a random id its store made when it joined: two hosts may share a name.
        #[arg(long)]
        host: Option<String>,
        /// A file holding the fleet's secret (at least 16 bytes), the same on every host: changes are
        /// signed with it, and changes not signed with it are refused. Mode 0600 or stricter.
        #[arg(long, value_name = "FILE")]
        secret_file: PathBuf,
        /// During a rotation of the secret: a second secret that is accepted, never signed with, so that
        /// hosts on either secret understand each other until every host has the new one (the steps are
        /// in docs/fleet.md).
        #[arg(long = "accept-secret-file", visible_alias = "previous-secret-file", value_name = "FILE")]
        previous_secret_file: Option<PathBuf>,
        /// Log entries Redis keeps (older ones are trimmed; late hosts start from the state hash).
        #[arg(long, default_value_t = 100_000)]
        max_log: usize,
        /// What a host may admit once Redis has been unreachable for 2 s and its quota leases run out:
        /// `refuse` (exact: the fleet never admits more than a quota) or `share` (each host adds its
        /// share, 1/N of live members, of what was not leased when it last heard from Redis).
        #[arg(long, default_value = "refuse", value_parser = ["refuse", "share"])]
        when_redis_down: String,
        /// Run even though Redis's maxmemory-policy may evict keys (refused by default: an evicted quota
        /// hash is recovered, but a quota stays exact only if every host holding a lease re-asserts it).
        #[arg(long)]
        allow_evicting_redis: bool,
    },
    /// What this host's agent last reported: fleet, host, members and their last report, log position
    /// and lag, Redis reachable or not; and whether this host holds every entry of the change log (the
    /// entries it misses, by host) and how many it skipped as stale.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Give this store an identity of its own in its fleet: for a store copied from another member's (a
    /// cloned machine, a copied database), whose agent is refused while the original runs. The quota
    /// leases its counters file holds are dropped (they are the original's). Run with its agent stopped.
    NewIdentity,
}

/// The exit status of an agent that found its identity held by another running agent: systemd's
/// `RestartPreventExitStatus=` keeps it from being restarted in a loop.
const EXIT_IDENTITY_IN_USE: u8 = 5;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

pub fn run(store: &Store, command: FleetCommand) -> Result<ExitCode, Error> {
    match command {
        FleetCommand::Sync {
            redis,
            redis_password_file,
            redis_ca,
            fleet,
            host,
            secret_file,
            previous_secret_file,
            max_log,
            when_redis_down,
            allow_evicting_redis,
        } => {
            let host = host.unwrap_or_else(hostname);
            let mut secret = Secret::from_file(&secret_file)?;
            if let Some(previous) = previous_secret_file {
                secret = secret.with_previous(Secret::from_file(&previous)?);
            }
            let redis_password = redis_password(&redis, redis_password_file)?;
            let mut log = |line: &str| {
                eprintln!("{} ms-auth fleet: {line}", Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true));
            };
            let host_id = agent::join(store, &fleet, &host, &mut log)?;
            let config = Config {
                redis_url: redis,
                redis_password,
                ca_file: redis_ca,
                fleet,
                host,
                host_id,
                secret,
                max_log,
                heartbeat: Duration::from_secs(1),
                when_down: if when_redis_down == "share" { WhenDown::Share } else { WhenDown::Refuse },
                allow_evicting_redis,
            };
            unsafe {
                libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
                libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
            }
            match agent::run(store, &config, &STOP, &mut log)? {
                Ended::Stopped => Ok(ExitCode::SUCCESS),
                Ended::IdentityInUse(holder) => {
                    eprintln!(
                        "ms-auth: another agent is running with this host's identity in fleet {:?} (host id {}, held \
                         by {holder}): this store is a copy of another member's (a cloned machine or a copied \
                         database?), and two agents with one identity would spend the same quota leases twice. \
                         Give this store an identity of its own: `ms-auth --db {} fleet new-identity`, then start \
                         this agent again. (If the other agent is this store's own, stop it first.)",
                        config.fleet,
                        config.host_id,
                        store.path().display()
                    );
                    Ok(ExitCode::from(EXIT_IDENTITY_IN_USE))
                }
            }
        }
        FleetCommand::NewIdentity => {
            if let Some(pid) = running_agent(store)? {
                return Err(Error::invalid(format!(
                    "this store's agent is running (pid {pid}): stop it first (its identity is read when it starts)"
                )));
            }
            let (old, new) = store.fleet_new_identity()?;
            println!(
                "this store's identity in its fleet is now {new} (was {old}); the quota leases it held were dropped"
            );
            println!("start its agent again: it joins the fleet as a host of its own");
            Ok(ExitCode::SUCCESS)
        }
        FleetCommand::Status { json } => {
            let Some((fleet, host)) = store.fleet_membership()? else {
                return Err(Error::invalid("this store is not a member of a fleet (run `ms-auth fleet sync`)"));
            };
            let mut status = store.fleet_status()?.unwrap_or(Value::Null);
            let log = store.fleet_log_health()?;
            if !status.is_null() {
                status["log"] = json!({
                    "caught_up": log.gaps.is_empty(),
                    "stale": log.stale,
                    "gaps": log.gaps.iter().map(|g| json!({
                        "origin": g.origin, "host": g.host, "missing_from": g.from, "missing": g.missing,
                        "head": g.head, "since_ms": g.since_ms,
                    })).collect::<Vec<_>>(),
                });
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
                return Ok(ExitCode::SUCCESS);
            }
            let at = |v: &Value| {
                v.as_i64()
                    .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
                    .map_or("-".to_string(), |t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
            };
            let host_id = store.fleet_host_id()?.unwrap_or_default();
            println!("fleet:      {fleet}");
            println!("this host:  {host} (host id {host_id})");
            if status.is_null() {
                println!("agent:      has not reported yet");
                return Ok(ExitCode::SUCCESS);
            }
            let redis = &status["redis"];
            let reachable = if redis["reachable"] == true { "reachable" } else { "UNREACHABLE" };
            println!("redis:      {} ({reachable})", redis["url"].as_str().unwrap_or("?"));
            if let Some(e) = redis["last_error"].as_str() {
                println!("last error: {e}");
            }
            println!("reported:   {}", at(&status["reported_at_ms"]));
            println!(
                "position:   {} (log head {})",
                status["position"].as_str().unwrap_or("-"),
                status["log_head"].as_str().unwrap_or("-")
            );
            println!("lag:        {}", status["lag_ms"].as_i64().map_or("-".to_string(), |ms| format!("{ms} ms")));
            println!(
                "changes:    {} published, {} applied, {} refused (this run); {} stale skipped",
                status["published"], status["applied"], status["refused"], log.stale
            );
            let leases = &status["leases"];
            if leases.is_object() {
                println!(
                    "leases:     epoch {}; quota hashes refused: {} forged, {} lost, {} rolled back ({} recoveries)",
                    leases["epoch"].as_str().unwrap_or("-"),
                    leases["forged"],
                    leases["lost"],
                    leases["rolled_back"],
                    leases["recoveries"]
                );
            }
            if let (Some(put_back), Some(applied)) =
                (status["sweep"]["put_back"].as_u64(), status["sweep"]["applied"].as_u64())
            {
                println!("state hash: {put_back} entries put back, {applied} records applied from it (this run)");
            }
            if log.gaps.is_empty() {
                println!("log:        caught up (no entry missing)");
            } else {
                println!("log:        NOT caught up: entries missing (asked for again from their hosts)");
                for g in &log.gaps {
                    println!(
                        "  {:<24} {} missing from seq {} (its newest {}), since {}  origin {}",
                        g.host,
                        g.missing,
                        g.from,
                        g.head,
                        at(&json!(g.since_ms)),
                        g.origin
                    );
                }
            }
            match &status["rate_share"] {
                Value::String(s) => {
                    println!("rate share: {s} (the agent is not running: keys with a rate limit are refused)")
                }
                Value::Number(n) => println!("rate share: 1/{n} of each key's rate limit"),
                _ => {}
            }
            let members = status["members"].as_array().cloned().unwrap_or_default();
            println!("members:    (host id, live by Redis's clock)");
            for m in &members {
                let name = m["host"].as_str().unwrap_or("?");
                let id = m["host_id"].as_str().unwrap_or("?");
                let shared = members.iter().filter(|o| o["host"].as_str() == Some(name)).count() > 1;
                println!(
                    "  {name:<20} {:<12} {:<5} last seen {}  position {}{}{}",
                    id.get(..12).unwrap_or(id),
                    if m["live"] == false { "gone" } else { "live" },
                    at(&m["last_seen_ms"]),
                    m["position"].as_str().unwrap_or("-"),
                    if id == host_id { "  (this host)" } else { "" },
                    if shared { "  (another host has this name)" } else { "" },
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The Redis password given apart from the URL: from a file (kept private, like the secret) or
/// $MS_AUTH_REDIS_PASSWORD; never both, nor with a password in the URL.
fn redis_password(url: &str, file: Option<PathBuf>) -> Result<Option<String>, Error> {
    let from_env = std::env::var("MS_AUTH_REDIS_PASSWORD").ok().filter(|p| !p.is_empty());
    let password = match (file, from_env) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid(
                "the Redis password is given twice: by --redis-password-file and $MS_AUTH_REDIS_PASSWORD",
            ))
        }
        (Some(path), None) => {
            let bytes = private_file(&path, "the Redis password file")?;
            Some(String::from_utf8(bytes).map_err(|_| Error::invalid("the Redis password file is not UTF-8 text"))?)
        }
        (None, from_env) => from_env,
    };
    if password.is_some() && agent::url_has_password(url) {
        return Err(Error::invalid("the Redis password is given twice: in the URL and apart from it; keep one"));
    }
    Ok(password)
}

/// The pid of this store's agent if it is running (what it last reported, checked against the process
/// table: the process exists, is an ms-auth fleet agent, and has this store open).
fn running_agent(store: &Store) -> Result<Option<u32>, Error> {
    let Some(status) = store.fleet_status()? else { return Ok(None) };
    let Some(pid) = status["agent_pid"].as_u64().filter(|_| status["agent_running"] != false) else { return Ok(None) };
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return Ok(None) };
    if !String::from_utf8_lossy(&cmdline).contains("fleet\0sync") {
        return Ok(None);
    }
    let db = std::fs::canonicalize(store.path()).unwrap_or_else(|_| store.path().to_path_buf());
    match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(fds) => {
            Ok(fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == db)).then_some(pid as u32))
        }
        // Another user's process: assume it is this store's agent rather than change its identity under it.
        Err(_) => Ok(Some(pid as u32)),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
