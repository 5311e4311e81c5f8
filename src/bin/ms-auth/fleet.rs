//! `ms-auth fleet sync|status`: the host's fleet agent and what it reports.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{SecondsFormat, TimeZone, Utc};
use clap::Subcommand;
use serde_json::Value;

use ms_auth::fleet::{agent, Config, Secret, WhenDown};
use ms_auth::{Error, Store};

#[derive(Subcommand)]
pub enum FleetCommand {
    /// Run this host's fleet agent in the foreground: publish this store's admin changes to the fleet's
    /// log in Redis and apply everyone's. Stops (exit 0) on SIGTERM or SIGINT.
    Sync {
        /// redis://[user:password@]host:port[/db], rediss://… for TLS, or
        /// redis-sentinel://[[user]:password@]host[:port][,host[:port]][/db]#MASTER to find the master
        /// through Redis Sentinel (and follow its failovers).
        #[arg(long, env = "MS_AUTH_REDIS_URL")]
        redis: String,
        /// The CA certificate (PEM) for rediss:// URLs.
        #[arg(long, value_name = "PEM")]
        redis_ca: Option<PathBuf>,
        /// The fleet's name: every host of one fleet names the same.
        #[arg(long, default_value = "default")]
        fleet: String,
        /// This host's name in the fleet [default: the machine's hostname].
        #[arg(long)]
        host: Option<String>,
        /// A file holding the fleet's secret (at least 16 bytes), the same on every host: changes are
        /// signed with it, and changes not signed with it are refused.
        #[arg(long, value_name = "FILE")]
        secret_file: PathBuf,
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
    /// and lag, Redis reachable or not.
    Status {
        #[arg(long)]
        json: bool,
    },
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

pub fn run(store: &Store, command: FleetCommand) -> Result<ExitCode, Error> {
    match command {
        FleetCommand::Sync {
            redis,
            redis_ca,
            fleet,
            host,
            secret_file,
            max_log,
            when_redis_down,
            allow_evicting_redis,
        } => {
            let host = host.unwrap_or_else(hostname);
            let config = Config {
                redis_url: redis,
                ca_file: redis_ca,
                fleet,
                host,
                secret: Secret::from_file(&secret_file)?,
                max_log,
                heartbeat: Duration::from_secs(1),
                when_down: if when_redis_down == "share" { WhenDown::Share } else { WhenDown::Refuse },
                allow_evicting_redis,
            };
            unsafe {
                libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
                libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
            }
            let mut log = |line: &str| {
                eprintln!("{} ms-auth fleet: {line}", Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true));
            };
            agent::run(store, &config, &STOP, &mut log)?;
            Ok(ExitCode::SUCCESS)
        }
        FleetCommand::Status { json } => {
            let Some((fleet, host)) = store.fleet_membership()? else {
                return Err(Error::invalid("this store is not a member of a fleet (run `ms-auth fleet sync`)"));
            };
            let status = store.fleet_status()?.unwrap_or(Value::Null);
            if json {
                println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
                return Ok(ExitCode::SUCCESS);
            }
            let at = |v: &Value| {
                v.as_i64()
                    .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
                    .map_or("-".to_string(), |t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
            };
            println!("fleet:      {fleet}");
            println!("this host:  {host}");
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
                "changes:    {} published, {} applied, {} refused",
                status["published"], status["applied"], status["refused"]
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
            println!("members:");
            for m in status["members"].as_array().into_iter().flatten() {
                println!(
                    "  {:<24} last seen {}  position {}",
                    m["host"].as_str().unwrap_or("?"),
                    at(&m["last_seen_ms"]),
                    m["position"].as_str().unwrap_or("-")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
