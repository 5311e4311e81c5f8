//! `ms-auth`: the operators' command line, built on the same Rust API the C ABI uses.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};

use ms_auth::cli_values;
use ms_auth::gcra::RateLimit;
use ms_auth::key::Env;
use ms_auth::policy::Quota;
use ms_auth::spec::{checked_rate, Field};
use ms_auth::{Error, KeyFilter, KeyPatch, KeyRecord, KeySpec, Status, Store};

#[path = "ms-auth/console/mod.rs"]
mod console;
#[path = "ms-auth/fleet.rs"]
mod fleet;

/// Issue, inspect and revoke API keys in an ms-auth store, and check keys against its policy.
#[derive(Parser)]
#[command(name = "ms-auth", version, about)]
struct Cli {
    /// The store file [default: $MS_AUTH_DB, else ./ms_auth.db]
    #[arg(long, global = true, env = "MS_AUTH_DB", default_value = "ms_auth.db", hide_default_value = true)]
    db: String,
    /// Who the audit log names for this command's changes [default: cli:$USER].
    #[arg(long, global = true, env = "MS_AUTH_ACTOR")]
    actor: Option<String>,
    /// How to print results: table for people, json or csv for scripts and spreadsheets
    /// [default: table; `--json` is short for `--output json`].
    #[arg(long, short = 'o', global = true, value_enum, value_name = "FORMAT")]
    output: Option<Output>,
    #[command(subcommand)]
    command: Command,
}

/// The formats of `--output`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
    Csv,
}

#[derive(Subcommand)]
enum Command {
    /// Create, list, show, update and revoke keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Decide one request for KEY as a server would (an admitted check counts against the quota).
    /// Exits 0 when admitted, 3 when refused.
    Check {
        /// The key, as sent in X-API-Key ("-" reads it from standard input).
        key: String,
        /// The instant to decide at, RFC 3339 [default: now].
        #[arg(long)]
        now: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Named plans: default quota, rate limit and lifetime of the keys on them.
    #[command(subcommand)]
    Plan(PlanCommand),
    /// Fleet mode: keep this host's store in one policy with other hosts through Redis.
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
    /// Store-wide revocation policies (idle keys, abusive keys; rotated keys always).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The audit log of admin changes, oldest first.
    Audit {
        /// Only the changes to this key.
        #[arg(long = "key", value_name = "ID")]
        key_id: Option<String>,
        /// Only changes since this instant (RFC 3339) or this long ago (30d, 12h).
        #[arg(long)]
        since: Option<String>,
        /// At most this many (the latest) [default: 1000].
        #[arg(long)]
        limit: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// A key's decisions per UTC day: a table with a bar chart, or JSON or CSV for export.
    Usage {
        id: String,
        #[arg(long, default_value_t = 30)]
        days: i64,
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        #[arg(long)]
        csv: bool,
    },
    /// Prometheus text exposition of the store: decisions by status, keys by state, quota use by plan.
    Metrics,
    /// Serve the support console (keys, usage charts, plans, policies, the audit log) and its JSON admin
    /// API to a browser; see README, "Console".
    Console(console::ConsoleArgs),
    /// Print a completion script for a shell (e.g. `ms-auth completions bash > /etc/bash_completion.d/ms-auth`).
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum PlanCommand {
    /// Create or replace a plan; its keys without limits of their own follow it from their next request.
    Put {
        name: String,
        /// N/day or N/month.
        #[arg(long, conflicts_with = "no_quota")]
        quota: Option<String>,
        #[arg(long)]
        no_quota: bool,
        /// N/s, N/min or N/hour [default: 60/min].
        #[arg(long, conflicts_with = "no_rate_limit")]
        rate: Option<String>,
        #[arg(long, conflicts_with = "no_rate_limit")]
        burst: Option<i64>,
        #[arg(long)]
        no_rate_limit: bool,
        /// Lifetime of keys created on the plan: 365d, 12h.
        #[arg(long)]
        lifetime: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List plans.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Change policies; every server applies them from its next request on.
    Set {
        /// Revoke keys unused for this long: 90d.
        #[arg(long, conflicts_with = "no_idle")]
        idle: Option<String>,
        #[arg(long)]
        no_idle: bool,
        /// Revoke keys rate-limited more than N times within a window: 100/10m, 1000/1h.
        #[arg(long, value_name = "N/WINDOW", conflicts_with = "no_abuse")]
        abuse: Option<String>,
        #[arg(long)]
        no_abuse: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show the policies in force.
    Show {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create a key; the plaintext key is shown once, only its SHA-256 digest is stored.
    Create {
        /// live or test: the key starts ms_live_ or ms_test_.
        #[arg(long)]
        env: Option<String>,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Import an existing plaintext key instead of generating one ("-" reads it from standard input).
        #[arg(long, value_name = "KEY")]
        import: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List keys.
    List {
        #[arg(long)]
        plan: Option<String>,
        /// Only active keys that expire within this long: 30d.
        #[arg(long, value_name = "DURATION")]
        expiring: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Replace a key with a new one (same policy, plan, meta and quota count); the old one keeps working
    /// for the grace period, then is revoked (reason "rotated").
    Rotate {
        id: String,
        /// How long the old key keeps working: 24h, 7d, 0s.
        #[arg(long, default_value = "24h")]
        grace: String,
        #[arg(long)]
        json: bool,
    },
    /// Show one key.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Change a key's name, plan, expiry, quota, rate limit or meta.
    Update {
        id: String,
        #[command(flatten)]
        policy: PolicyArgs,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: every server refuses it from its next request on.
    Revoke {
        id: String,
        /// Why (recorded with the revocation) [default: manual].
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct PolicyArgs {
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    plan: Option<String>,
    /// Lifetime from now: 30d, 12h, 90m, 45s.
    #[arg(long, value_name = "DURATION", conflicts_with_all = ["expires_at", "no_expiry"])]
    expires_in: Option<String>,
    /// Expiry instant, RFC 3339 (2027-01-01T00:00:00Z).
    #[arg(long, value_name = "RFC3339", conflicts_with = "no_expiry")]
    expires_at: Option<String>,
    #[arg(long)]
    no_expiry: bool,
    /// N/day or N/month (calendar periods in UTC).
    #[arg(long, value_name = "N/day|N/month", conflicts_with = "no_quota")]
    quota: Option<String>,
    #[arg(long)]
    no_quota: bool,
    /// N/s, N/min or N/hour.
    #[arg(long, value_name = "N/s|N/min|N/hour", conflicts_with = "no_rate_limit")]
    rate: Option<String>,
    /// Requests admitted at once when the bucket is full [default: the rate's N].
    #[arg(long, conflicts_with = "no_rate_limit")]
    burst: Option<i64>,
    #[arg(long)]
    no_rate_limit: bool,
    /// A JSON object stored with the key.
    #[arg(long, value_name = "JSON")]
    meta: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ms-auth: {}", e.message);
            ExitCode::from(1)
        }
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn run(cli: Cli) -> Result<ExitCode, Error> {
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(shell, &mut Cli::command(), "ms-auth", &mut std::io::stdout());
        return Ok(ExitCode::SUCCESS);
    }
    let store = Store::open(&cli.db)?;
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    store.set_actor(&cli.actor.unwrap_or_else(|| format!("cli:{user}")));
    let command = match cli.command {
        Command::Console(args) => return console::run(store, args).map(|()| ExitCode::SUCCESS),
        other => other,
    };
    let now = now_ms();
    let global = cli.output;
    let fmt = |json: bool| output_format(global, json);
    match command {
        Command::Key(KeyCommand::Create { env, policy, import, json }) => {
            let key = import.map(|k| read_secret(&k)).transpose()?;
            let spec = KeySpec {
                env: env.map(|e| Env::parse(&e)).transpose()?,
                name: policy.name.clone(),
                plan: policy.plan.clone(),
                expires_at_ms: policy.expiry(now)?,
                quota: policy.quota()?.or(None),
                rate_limit: policy.rate(None)?,
                meta: policy.meta()?.or(None),
                key,
            };
            let out = fmt(json)?;
            let created = store.create_key(&spec, now)?;
            match out {
                Output::Json => println!("{}", created.to_json()),
                Output::Csv => {
                    write_csv(&key_csv_header(true), [key_csv_row(&created.record, Some(&created.key), now)])?
                }
                Output::Table => {
                    println!("Key (shown once, store it now): {}\n", created.key);
                    print_record(&created.record, now);
                }
            }
        }
        Command::Key(KeyCommand::List { plan, expiring, json }) => {
            let expiring_before_ms = expiring.map(|d| cli_values::after(now, &d)).transpose()?;
            let out = fmt(json)?;
            let records = store.list_keys(&KeyFilter { plan, env: None, expiring_before_ms })?;
            match out {
                Output::Json => println!("{}", ms_auth::spec::list_json(&records)),
                Output::Csv => write_csv(&key_csv_header(false), records.iter().map(|r| key_csv_row(r, None, now)))?,
                Output::Table => print_table(&records, now),
            }
        }
        Command::Key(KeyCommand::Show { id, json }) => show(&store.get_key(&id)?, fmt(json)?, now)?,
        Command::Key(KeyCommand::Update { id, policy, json }) => {
            let out = fmt(json)?;
            let current = store.get_key(&id)?;
            let patch = KeyPatch {
                name: policy.name.clone().map_or(Field::Absent, Field::Set),
                plan: policy.plan.clone().map_or(Field::Absent, Field::Set),
                expires_at_ms: policy.expiry(now)?,
                quota: policy.quota()?,
                rate_limit: policy.rate(current.rate_limit.as_ref().map(|r| RateLimit {
                    limit: r.limit,
                    window_ms: r.window_ms,
                    burst: r.burst,
                }))?,
                meta: policy.meta()?,
                quota_follows_plan: policy.quota.as_deref() == Some("plan"),
                rate_follows_plan: policy.rate.as_deref() == Some("plan"),
            };
            show(&store.update_key(&id, &patch)?, out, now)?;
        }
        Command::Key(KeyCommand::Revoke { id, reason, json }) => {
            let out = fmt(json)?;
            let record = store.revoke_key(&id, now, reason.as_deref())?;
            match out {
                Output::Table => {
                    println!("Revoked {} ({}): refused from the next request on.", record.id, record.prefix)
                }
                out => show(&record, out, now)?,
            }
        }
        Command::Key(KeyCommand::Rotate { id, grace, json }) => {
            let out = fmt(json)?;
            let created = store.rotate_key(&id, cli_values::duration_ms(&grace)?, now)?;
            if out == Output::Json {
                println!("{}", created.to_json());
            } else if out == Output::Csv {
                write_csv(&key_csv_header(true), [key_csv_row(&created.record, Some(&created.key), now)])?;
            } else {
                println!("Key (shown once, store it now): {}", created.key);
                println!(
                    "{id} keeps working until {}, then is revoked (rotated).\n",
                    fmt_time(Some(cli_values::after(now, &grace)?))
                );
                print_record(&created.record, now);
            }
        }
        Command::Plan(PlanCommand::Put { name, quota, no_quota, rate, burst, no_rate_limit, lifetime, json }) => {
            let limits = PolicyArgs {
                name: None,
                plan: None,
                expires_in: None,
                expires_at: None,
                no_expiry: false,
                quota,
                no_quota,
                rate,
                burst,
                no_rate_limit,
                meta: None,
            };
            let plan = ms_auth::store::PlanSpec {
                name,
                quota: limits.quota()?.or(None).map(Into::into),
                rate_limit: limits.rate(None)?.or(Some(ms_auth::store::DEFAULT_RATE)).map(Into::into),
                lifetime_ms: lifetime.map(|l| cli_values::duration_ms(&l)).transpose()?,
            };
            let out = fmt(json)?;
            let written = store.put_plan(&plan, now)?;
            match out {
                Output::Json => println!("{written}"),
                Output::Csv => write_plans_csv(&[written])?,
                Output::Table => print_plans(&[written]),
            }
        }
        Command::Plan(PlanCommand::List { json }) => {
            let out = fmt(json)?;
            let plans = store.list_plans()?;
            match out {
                Output::Json => println!("{}", json!({ "plans": plans })),
                Output::Csv => write_plans_csv(&plans)?,
                Output::Table => print_plans(&plans),
            }
        }
        Command::Policy(PolicyCommand::Set { idle, no_idle, abuse, no_abuse, json }) => {
            let out = fmt(json)?;
            let mut change = ms_auth::store::PolicySpec::default();
            if no_idle {
                change.idle_ms = Some(0);
            } else if let Some(idle) = idle {
                let ms = cli_values::duration_ms(&idle)?;
                if ms < 86_400_000 || ms % 86_400_000 != 0 {
                    return Err(Error::invalid("--idle must be a whole number of days, like 90d"));
                }
                change.idle_ms = Some(ms);
            }
            if no_abuse {
                change.abuse = Some((0, 0));
            } else if let Some(abuse) = abuse {
                let (n, window) = cli_values::split_rate(&abuse, "--abuse")?;
                change.abuse = Some((n, cli_values::duration_ms(window)?));
            }
            let now_in_force = store.set_policies(&change, now)?;
            print_policies(&now_in_force, out)?;
        }
        Command::Policy(PolicyCommand::Show { json }) => print_policies(&store.policies()?, fmt(json)?)?,
        Command::Audit { key_id, since, limit, json } => {
            let since_ms = since.map(|s| cli_values::since(now, &s)).transpose()?;
            let out = fmt(json)?;
            let events = store.audit_events(&ms_auth::store::AuditFilter { key_id, since_ms, limit })?;
            if out == Output::Json {
                println!("{}", json!({ "events": events }));
            } else if out == Output::Csv {
                let rows = events.iter().map(|e| {
                    vec![
                        e.seq.to_string(),
                        fmt_time(Some(e.at_ms)),
                        e.actor.clone(),
                        e.action.clone(),
                        e.key_id.clone().unwrap_or_default(),
                        e.detail.to_string(),
                    ]
                });
                write_csv(&["seq", "at", "actor", "action", "key_id", "detail"], rows)?;
            } else {
                // In a fleet, the host each change was made on.
                let hosts = events.iter().any(|e| e.host.is_some());
                for e in &events {
                    let host = match (&e.host, hosts) {
                        (Some(h), _) => format!("{h:<12} "),
                        (None, true) => format!("{:<12} ", "-"),
                        (None, false) => String::new(),
                    };
                    println!(
                        "{}  {host}{:<18} {:<24} {:<26} {}",
                        fmt_time(Some(e.at_ms)),
                        e.action,
                        e.key_id.as_deref().unwrap_or("-"),
                        e.actor,
                        e.detail
                    );
                }
                if events.is_empty() {
                    println!("(no changes)");
                }
            }
        }
        Command::Usage { id, days, json, csv } => {
            let out = match (csv, global) {
                (true, None | Some(Output::Csv)) => Output::Csv,
                (true, Some(_)) => return Err(Error::invalid("--csv and --output disagree: give one of them")),
                (false, _) => fmt(json)?,
            };
            if !(1..=3650).contains(&days) {
                return Err(Error::invalid("--days must be between 1 and 3650"));
            }
            let history = store.usage(&id, now - (days - 1) * 86_400_000, now)?;
            match out {
                Output::Json => println!("{}", serde_json::to_string(&history).expect("history serializes")),
                Output::Csv => {
                    let header = [
                        "date",
                        "admitted",
                        "api_key_expired",
                        "api_key_revoked",
                        "api_key_quota_exceeded",
                        "rate_limit_exceeded",
                    ];
                    let rows = history.days.iter().map(|d| {
                        let r = &d.rejected;
                        [
                            d.admitted,
                            r.api_key_expired,
                            r.api_key_revoked,
                            r.api_key_quota_exceeded,
                            r.rate_limit_exceeded,
                        ]
                        .iter()
                        .fold(vec![d.date.to_string()], |mut row, n| {
                            row.push(n.to_string());
                            row
                        })
                    });
                    write_csv(&header, rows)?;
                }
                Output::Table => print_usage(&history),
            }
        }
        Command::Metrics => {
            // Prometheus' text format is the one format of metrics: scrapers read nothing else.
            if global.is_some_and(|o| o != Output::Table) {
                return Err(Error::invalid("metrics prints the Prometheus text format only (no --output)"));
            }
            print!("{}", store.metrics_text(now)?)
        }
        Command::Fleet(mut command) => {
            match (&mut command, global) {
                (_, None | Some(Output::Table)) => {}
                (fleet::FleetCommand::Status { json }, Some(Output::Json)) => *json = true,
                _ => return Err(Error::invalid("of the fleet commands, only `fleet status` has an --output: json")),
            }
            return fleet::run(&store, command);
        }
        Command::Completions { .. } => unreachable!("answered before the store is opened"),
        Command::Console(_) => unreachable!("served above"),
        Command::Check { key, now: at, json } => {
            let at = match at {
                Some(t) => cli_values::time_ms(&t)?,
                None => now,
            };
            let out = fmt(json)?;
            let key = read_secret(&key)?;
            let checked = store.check(Some(key.as_bytes()), at)?;
            let d = checked.decision;
            let body: Value = serde_json::from_str(&d.status.error_json()).expect("static JSON");
            if out == Output::Csv {
                let key_id = checked.key.as_ref().map(|k| k.id().to_string()).unwrap_or_default();
                let plan = checked.key.as_ref().and_then(|k| k.plan().map(str::to_string)).unwrap_or_default();
                let header = [
                    "code",
                    "http_status",
                    "retry_after_ms",
                    "quota_limit",
                    "quota_remaining",
                    "quota_reset",
                    "rate_limit",
                    "rate_remaining",
                    "rate_reset",
                    "key_id",
                    "plan",
                ];
                let reset = |ms: i64| if ms > 0 { fmt_time(Some(ms)) } else { String::new() };
                let row = vec![
                    d.status.code().to_string(),
                    d.status.http().to_string(),
                    d.retry_after_ms.to_string(),
                    d.quota_limit.to_string(),
                    d.quota_remaining.to_string(),
                    reset(d.quota_reset_ms),
                    d.rate_limit.to_string(),
                    d.rate_remaining.to_string(),
                    reset(d.rate_reset_ms),
                    key_id,
                    plan,
                ];
                write_csv(&header, [row])?;
            } else if out == Output::Json {
                let out = json!({
                    "status": d.status as i32, "code": d.status.code(), "http_status": d.status.http(),
                    "retry_after_ms": d.retry_after_ms,
                    "quota_limit": d.quota_limit, "quota_remaining": d.quota_remaining, "quota_reset_ms": d.quota_reset_ms,
                    "rate_limit": d.rate_limit, "rate_remaining": d.rate_remaining, "rate_reset_ms": d.rate_reset_ms,
                    "key_id": checked.key.as_ref().map(|k| k.id().to_string()),
                    "plan": checked.key.as_ref().and_then(|k| k.plan().map(str::to_string)),
                    "body": body,
                });
                println!("{out}");
            } else {
                println!("decision:  {} (HTTP {})", d.status.code(), d.status.http());
                if let Some(k) = &checked.key {
                    println!(
                        "key:       {}{}",
                        k.id(),
                        k.plan().as_ref().map(|p| format!(" (plan {p})")).unwrap_or_default()
                    );
                }
                if d.retry_after_ms > 0 {
                    println!("retry in:  {} ({} ms)", human_duration(d.retry_after_ms), d.retry_after_ms);
                }
                if d.quota_limit >= 0 {
                    println!(
                        "quota:     {} of {} left, resets {}",
                        d.quota_remaining,
                        d.quota_limit,
                        fmt_time(Some(d.quota_reset_ms))
                    );
                }
                if d.rate_limit >= 0 {
                    println!("rate:      {} left now, full at {}", d.rate_remaining, fmt_time(Some(d.rate_reset_ms)));
                }
                println!("body:      {}", d.status.error_json());
            }
            store.close()?;
            return Ok(ExitCode::from(if d.status == Status::Ok { 0 } else { 3 }));
        }
    }
    store.close()?;
    Ok(ExitCode::SUCCESS)
}

/// A secret given as "-" is read from standard input, so it stays out of shell history and `ps`.
fn read_secret(arg: &str) -> Result<String, Error> {
    if arg != "-" {
        return Ok(arg.to_string());
    }
    if std::io::stdin().is_terminal() {
        eprintln!("Reading the key from standard input...");
    }
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).map_err(|e| Error::invalid(format!("cannot read standard input: {e}")))?;
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}

impl PolicyArgs {
    fn expiry(&self, now: i64) -> Result<Field<i64>, Error> {
        if self.no_expiry {
            return Ok(Field::Null);
        }
        if let Some(d) = &self.expires_in {
            return Ok(Field::Set(cli_values::after(now, d)?));
        }
        if let Some(t) = &self.expires_at {
            return Ok(Field::Set(cli_values::time_ms(t)?));
        }
        Ok(Field::Absent)
    }

    fn quota(&self) -> Result<Field<Quota>, Error> {
        if self.no_quota {
            return Ok(Field::Null);
        }
        let Some(q) = self.quota.as_ref().filter(|q| *q != "plan") else {
            return Ok(Field::Absent);
        };
        Ok(Field::Set(cli_values::quota(q)?))
    }

    /// The rate limit to set: `--rate` with `--burst`, or `--burst` alone applied to `current`.
    fn rate(&self, current: Option<RateLimit>) -> Result<Field<RateLimit>, Error> {
        if self.no_rate_limit {
            return Ok(Field::Null);
        }
        let base = match self.rate.as_ref().filter(|r| *r != "plan") {
            Some(r) => {
                let (n, window_ms) = cli_values::rate(r)?;
                RateLimit { limit: n, window_ms, burst: n }
            }
            None => match (self.burst, current) {
                (Some(_), Some(current)) => current,
                (Some(_), None) => return Err(Error::invalid("--burst needs --rate (this key has no rate limit)")),
                (None, _) => return Ok(Field::Absent),
            },
        };
        let burst = match self.burst {
            Some(b) if b < 1 => return Err(Error::invalid("--burst must be at least 1")),
            Some(b) => b,
            None => base.burst,
        };
        Ok(Field::Set(checked_rate(base.limit, base.window_ms, burst)?))
    }

    fn meta(&self) -> Result<Field<Map<String, Value>>, Error> {
        match &self.meta {
            None => Ok(Field::Absent),
            Some(text) => match serde_json::from_str(text) {
                Ok(Value::Object(m)) => Ok(Field::Set(m)),
                _ => Err(Error::invalid(format!("--meta must be a JSON object, not {text:?}"))),
            },
        }
    }
}

fn print_plans(plans: &[Value]) {
    println!("{:<16} {:<16} {:<24} {:<10} KEYS", "PLAN", "QUOTA", "RATE", "LIFETIME");
    for p in plans {
        let quota = p["quota"]
            .as_object()
            .map_or("none".into(), |q| format!("{}/{}", q["limit"], q["period"].as_str().unwrap_or("")));
        let rate = p["rate_limit"]
            .as_object()
            .map_or("none".into(), |r| format!("{}/{}ms burst {}", r["limit"], r["window_ms"], r["burst"]));
        let lifetime = p["lifetime_ms"].as_i64().map_or("default".into(), |ms| format!("{}d", ms / 86_400_000));
        println!("{:<16} {:<16} {:<24} {:<10} {}", p["name"].as_str().unwrap_or(""), quota, rate, lifetime, p["keys"]);
    }
    if plans.is_empty() {
        println!("(no plans)");
    }
}

fn print_policies(p: &Value, out: Output) -> Result<(), Error> {
    match out {
        Output::Json => {
            println!("{p}");
            return Ok(());
        }
        Output::Csv => {
            let n = |v: &Value| v.as_i64().map_or(String::new(), |n| n.to_string());
            let row = vec![n(&p["idle"]["days"]), n(&p["abuse"]["limit"]), n(&p["abuse"]["window_ms"])];
            return write_csv(&["idle_days", "abuse_limit", "abuse_window_ms"], [row]);
        }
        Output::Table => {}
    }
    let idle = p["idle"].get("days").map_or("off".into(), |d| format!("revoke keys unused for {d} days"));
    let abuse = p["abuse"].as_object().map_or("off".into(), |a| {
        format!("revoke keys rate-limited more than {} times within {} ms", a["limit"], a["window_ms"])
    });
    println!("idle     {idle}\nabuse    {abuse}\nrotated  revoke rotated keys when their grace ends (always)");
    Ok(())
}

/// `--output` of the command line with the command's own `--json` (its older spelling); a conflict
/// between the two is an error rather than a guess.
fn output_format(global: Option<Output>, json: bool) -> Result<Output, Error> {
    match (global, json) {
        (None | Some(Output::Json), true) => Ok(Output::Json),
        (Some(_), true) => Err(Error::invalid("--json and --output disagree: give one of them")),
        (global, false) => Ok(global.unwrap_or(Output::Table)),
    }
}

/// CSV through the csv crate, so names, actors and JSON details with commas, quotes or newlines are
/// quoted as RFC 4180 says and a spreadsheet reads the same cells back.
fn write_csv<R, C>(header: &[&str], rows: impl IntoIterator<Item = R>) -> Result<(), Error>
where
    R: IntoIterator<Item = C>,
    C: AsRef<[u8]>,
{
    let fail = |e: csv::Error| Error::internal(format!("cannot write CSV to standard output: {e}"));
    let mut w = csv::Writer::from_writer(std::io::stdout().lock());
    w.write_record(header).map_err(fail)?;
    for row in rows {
        w.write_record(row).map_err(fail)?;
    }
    w.flush().map_err(|e| Error::internal(format!("cannot write CSV to standard output: {e}")))
}

/// The columns of a key in CSV: one value a cell (limits split into their parts), times in RFC 3339,
/// "" for none. `with_key` puts the plaintext key first (create and rotate, the one time it is shown).
fn key_csv_header(with_key: bool) -> Vec<&'static str> {
    let mut h = if with_key { vec!["key"] } else { vec![] };
    h.extend([
        "id",
        "prefix",
        "env",
        "name",
        "plan",
        "state",
        "revoked_reason",
        "created_at",
        "expires_at",
        "quota_limit",
        "quota_period",
        "rate_limit",
        "rate_window_ms",
        "rate_burst",
        "used",
        "total",
        "last_used_at",
        "meta",
    ]);
    h
}

fn key_csv_row(r: &KeyRecord, key: Option<&str>, now: i64) -> Vec<String> {
    let time = |t: Option<i64>| t.map_or(String::new(), |t| fmt_time(Some(t)));
    let state = if r.revoked_at_ms.is_some() {
        "revoked"
    } else if r.expires_at_ms.is_some_and(|t| now >= t) {
        "expired"
    } else {
        "active"
    };
    let mut row: Vec<String> = key.map(str::to_string).into_iter().collect();
    row.extend([
        r.id.clone(),
        r.prefix.clone(),
        r.env.clone(),
        r.name.clone().unwrap_or_default(),
        r.plan.clone().unwrap_or_default(),
        state.to_string(),
        r.revoked_reason.clone().unwrap_or_default(),
        time(Some(r.created_at_ms)),
        time(r.expires_at_ms),
        r.quota.as_ref().map_or(String::new(), |q| q.limit.to_string()),
        r.quota.as_ref().map_or(String::new(), |q| q.period.to_string()),
        r.rate_limit.as_ref().map_or(String::new(), |l| l.limit.to_string()),
        r.rate_limit.as_ref().map_or(String::new(), |l| l.window_ms.to_string()),
        r.rate_limit.as_ref().map_or(String::new(), |l| l.burst.to_string()),
        r.usage.used.to_string(),
        r.usage.total.to_string(),
        time(r.usage.last_used_at_ms),
        Value::Object(r.meta.clone()).to_string(),
    ]);
    row
}

fn write_plans_csv(plans: &[Value]) -> Result<(), Error> {
    let cell = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let rows = plans.iter().map(|p| {
        vec![
            cell(&p["name"]),
            cell(&p["quota"]["limit"]),
            cell(&p["quota"]["period"]),
            cell(&p["rate_limit"]["limit"]),
            cell(&p["rate_limit"]["window_ms"]),
            cell(&p["rate_limit"]["burst"]),
            cell(&p["lifetime_ms"]),
            cell(&p["keys"]),
        ]
    });
    let header =
        ["name", "quota_limit", "quota_period", "rate_limit", "rate_window_ms", "rate_burst", "lifetime_ms", "keys"];
    write_csv(&header, rows)
}

fn print_usage(h: &ms_auth::store::UsageHistory) {
    let peak = h.days.iter().map(|d| d.admitted).max().unwrap_or(0).max(1);
    println!(
        "{:<10}  {:>9}  {:>8}  {:>8}  {:>8}  {:>8}  ADMITTED PER DAY",
        "DATE", "ADMITTED", "EXPIRED", "REVOKED", "QUOTA", "RATE"
    );
    for d in &h.days {
        let r = &d.rejected;
        let bar = "#".repeat(((d.admitted * 40 + peak - 1) / peak) as usize);
        println!(
            "{:<10}  {:>9}  {:>8}  {:>8}  {:>8}  {:>8}  {bar}",
            d.date, d.admitted, r.api_key_expired, r.api_key_revoked, r.api_key_quota_exceeded, r.rate_limit_exceeded
        );
    }
    println!("last used: {}", h.last_used_at_ms.map_or("never".into(), |t| fmt_time(Some(t))));
}

fn fmt_time(ms: Option<i64>) -> String {
    match ms.and_then(DateTime::<Utc>::from_timestamp_millis) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Secs, true),
        None => "never".to_string(),
    }
}

fn state(r: &KeyRecord, now: i64) -> String {
    if r.revoked_at_ms.is_some() {
        format!("revoked ({})", r.revoked_reason.as_deref().unwrap_or("manual"))
    } else if r.expires_at_ms.is_some_and(|t| now >= t) {
        "expired".to_string()
    } else {
        "active".to_string()
    }
}

fn quota_text(r: &KeyRecord) -> String {
    r.quota.as_ref().map_or("none".into(), |q| format!("{}/{}", q.limit, q.period))
}

fn rate_text(r: &KeyRecord) -> String {
    r.rate_limit.as_ref().map_or("none".into(), |rl| {
        let per = window_text(rl.window_ms);
        if rl.burst == rl.limit {
            format!("{}/{per}", rl.limit)
        } else {
            format!("{}/{per} burst {}", rl.limit, rl.burst)
        }
    })
}

/// A wait as people read it, rounded up to the second: `7h 17m 57s`, `45s`; under a second, `250 ms`.
fn human_duration(ms: i64) -> String {
    if ms < 1_000 {
        return format!("{ms} ms");
    }
    let seconds = (ms + 999) / 1_000;
    let parts = [(seconds / 86_400, "d"), (seconds / 3_600 % 24, "h"), (seconds / 60 % 60, "m"), (seconds % 60, "s")];
    let first = parts.iter().position(|(n, _)| *n > 0).unwrap_or(3);
    parts[first..].iter().take(3).map(|(n, unit)| format!("{n}{unit}")).collect::<Vec<_>>().join(" ")
}

/// A window as people say it: `s`, `min`, `hour`, `day`, else `10s` or `1500ms`.
fn window_text(ms: i64) -> String {
    match ms {
        1_000 => "s".into(),
        60_000 => "min".into(),
        3_600_000 => "hour".into(),
        86_400_000 => "day".into(),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

fn show(r: &KeyRecord, out: Output, now: i64) -> Result<(), Error> {
    match out {
        Output::Json => println!("{}", r.to_json()),
        Output::Csv => write_csv(&key_csv_header(false), [key_csv_row(r, None, now)])?,
        Output::Table => print_record(r, now),
    }
    Ok(())
}

fn print_record(r: &KeyRecord, now: i64) {
    let lines = [
        ("id", r.id.clone()),
        ("prefix", r.prefix.clone()),
        ("env", r.env.clone()),
        ("name", r.name.clone().unwrap_or_default()),
        ("plan", r.plan.clone().unwrap_or_default()),
        ("state", state(r, now)),
        ("created", fmt_time(Some(r.created_at_ms))),
        ("expires", fmt_time(r.expires_at_ms)),
        ("quota", quota_text(r)),
        ("rate limit", rate_text(r)),
        ("used", format!("{} this period, {} in all", r.usage.used, r.usage.total)),
        ("last used", r.usage.last_used_at_ms.map_or("never".into(), |t| fmt_time(Some(t)))),
        ("meta", Value::Object(r.meta.clone()).to_string()),
    ];
    for (label, value) in lines {
        println!("{label:<11} {value}");
    }
}

fn print_table(records: &[KeyRecord], now: i64) {
    let header = ["ID", "PREFIX", "ENV", "PLAN", "NAME", "STATE", "EXPIRES", "QUOTA", "USED", "TOTAL", "RATE"];
    let rows: Vec<[String; 11]> = records
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                r.prefix.clone(),
                r.env.clone(),
                r.plan.clone().unwrap_or_default(),
                r.name.clone().unwrap_or_default(),
                state(r, now),
                fmt_time(r.expires_at_ms),
                quota_text(r),
                r.usage.used.to_string(),
                r.usage.total.to_string(),
                rate_text(r),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    if records.is_empty() {
        println!("(no keys)");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(super::human_duration(26_276_977), "7h 17m 57s");
        assert_eq!(super::human_duration(45_000), "45s");
        assert_eq!(super::human_duration(44_001), "45s", "rounded up: a client that waits it is admitted");
        assert_eq!(super::human_duration(90_061_000), "1d 1h 1m");
        assert_eq!(super::human_duration(250), "250 ms");
        assert_eq!(super::window_text(60_000), "min");
        assert_eq!(super::window_text(10_000), "10s");
        assert_eq!(super::window_text(1_500), "1500ms");
    }
}
