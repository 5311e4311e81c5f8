//! `ms-auth key ...`: create, list, show, update, rotate and revoke keys, and how a key is printed.

use std::io::{IsTerminal, Read};

use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use ms_auth::cli_values;
use ms_auth::gcra::checked_rate;
use ms_auth::gcra::RateLimit;
use ms_auth::key::Env;
use ms_auth::key_state::KeyState;
use ms_auth::policy::Quota;
use ms_auth::spec::{Cursor, Field};
use ms_auth::{Error, KeyFilter, KeyPatch, KeyRecord, KeySpec, Store};

use crate::output::{fmt_time, output_format, print_json, visible, window_text, write_csv, Output};

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Create a key; the plaintext key is shown once, only its SHA-256 digest is stored.
    Create {
        /// live or test: the key starts ms_live_ or ms_test_.
        #[arg(long)]
        env: Option<String>,
        #[command(flatten)]
        fields: KeyFieldArgs,
        /// Import an existing plaintext key instead of generating one ("-" reads it from standard input).
        #[arg(long, value_name = "KEY")]
        import: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List keys, in the order they were created; every key, or a page at a time with --limit.
    List {
        #[arg(long)]
        plan: Option<String>,
        /// Only active keys that expire within this long: 30d.
        #[arg(long, value_name = "DURATION")]
        expiring: Option<String>,
        /// Only keys in these states: active, expiring, rotating, revoked, expired (revoked,expired: either).
        #[arg(long, value_name = "STATE", value_delimiter = ',')]
        state: Vec<String>,
        /// At most this many keys (1 to 1000); the cursor of the next page is printed on standard error
        /// (in the JSON output, its "next").
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// The keys after this cursor: the one the page before printed.
        #[arg(long, value_name = "CURSOR")]
        after: Option<String>,
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
        fields: KeyFieldArgs,
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

// A key's fields as options, shared by `key create` and `key update` (and `plan put`, for the limits);
// a plain comment, not a doc comment, which clap would take for help text.
#[derive(Args)]
pub struct KeyFieldArgs {
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub plan: Option<String>,
    /// Allow --plan to name a plan that is not defined (yet): without it, such a name is refused while any
    /// plan is defined, since a typo would leave the key without its plan's quota.
    #[arg(long, requires = "plan")]
    pub new_plan: bool,
    /// Lifetime from now: 30d, 12h, 90m, 45s.
    #[arg(long, value_name = "DURATION", conflicts_with_all = ["expires_at", "no_expiry"])]
    pub expires_in: Option<String>,
    /// Expiry instant, RFC 3339 (2027-01-01T00:00:00Z).
    #[arg(long, value_name = "RFC3339", conflicts_with = "no_expiry")]
    pub expires_at: Option<String>,
    #[arg(long)]
    pub no_expiry: bool,
    /// N/day or N/month (calendar periods in UTC).
    #[arg(long, value_name = "N/day|N/month", conflicts_with = "no_quota")]
    pub quota: Option<String>,
    #[arg(long)]
    pub no_quota: bool,
    /// N/s, N/min or N/hour.
    #[arg(long, value_name = "N/s|N/min|N/hour", conflicts_with = "no_rate_limit")]
    pub rate: Option<String>,
    /// Requests admitted at once when the bucket is full [default: the rate's N].
    #[arg(long, conflicts_with = "no_rate_limit")]
    pub burst: Option<i64>,
    #[arg(long)]
    pub no_rate_limit: bool,
    /// A JSON object stored with the key.
    #[arg(long, value_name = "JSON")]
    pub meta: Option<String>,
}

/// Runs one `ms-auth key` command.
pub fn run(store: &Store, command: KeyCommand, global: Option<Output>, now: i64) -> Result<(), Error> {
    let fmt = |json: bool| output_format(global, json);
    match command {
        KeyCommand::Create { env, fields, import, json } => {
            let key = import.map(|k| read_secret(&k)).transpose()?;
            let spec = KeySpec {
                env: env.map(|e| Env::parse(&e)).transpose()?,
                name: fields.name.clone(),
                plan: fields.plan.clone(),
                new_plan: fields.new_plan,
                expires_at_ms: fields.expiry(now)?,
                quota: fields.quota()?.or(None),
                rate_limit: fields.rate(None)?,
                meta: fields.meta()?.or(None),
                key,
            };
            let out = fmt(json)?;
            let created = store.create_key(&spec, now)?;
            match out {
                Output::Json => print_json(&created.to_json()),
                Output::Csv => write_csv(&key_csv_header(true), [key_csv_row(&created.record, Some(&created.key))])?,
                Output::Table => {
                    println!("Key (shown once, store it now): {}\n", created.key);
                    print_record(&created.record);
                }
            }
        }
        KeyCommand::List { plan, expiring, state, limit, after, json } => {
            let filter = KeyFilter {
                plan,
                env: None,
                expiring_before_ms: expiring.map(|d| cli_values::after(now, &d)).transpose()?,
                states: match state.is_empty() {
                    true => None,
                    false => Some(state.iter().map(|s| KeyState::parse(s)).collect::<Result<_, _>>()?),
                },
                limit,
                after: after.map(|c| Cursor::parse(&c)).transpose()?,
            };
            let out = fmt(json)?;
            let page = store.list_key_page(&filter)?;
            match out {
                Output::Json => print_json(&page.to_json()),
                Output::Csv => write_csv(&key_csv_header(false), page.keys.iter().map(|r| key_csv_row(r, None)))?,
                Output::Table => print_table(&page.keys),
            }
            if let (Some(next), false) = (page.next, out == Output::Json) {
                // Standard error, so that the table or the CSV on standard output stays whole.
                eprintln!("more keys follow: --after {next}");
            }
        }
        KeyCommand::Show { id, json } => show(&store.get_key(&id)?, fmt(json)?)?,
        KeyCommand::Update { id, fields, json } => {
            let out = fmt(json)?;
            let current = store.get_key(&id)?;
            let patch = KeyPatch {
                name: fields.name.clone().map_or(Field::Absent, Field::Set),
                plan: fields.plan.clone().map_or(Field::Absent, Field::Set),
                new_plan: fields.new_plan,
                expires_at_ms: fields.expiry(now)?,
                quota: fields.quota()?,
                rate_limit: fields.rate(current.rate_limit.as_ref().map(|r| RateLimit {
                    limit: r.limit,
                    window_ms: r.window_ms,
                    burst: r.burst,
                }))?,
                meta: fields.meta()?,
                quota_follows_plan: fields.quota.as_deref() == Some("plan"),
                rate_follows_plan: fields.rate.as_deref() == Some("plan"),
            };
            show(&store.update_key(&id, &patch)?, out)?;
        }
        KeyCommand::Revoke { id, reason, json } => {
            let out = fmt(json)?;
            let record = store.revoke_key(&id, now, reason.as_deref())?;
            match out {
                Output::Table => {
                    println!("Revoked {} ({}): refused from the next request on.", record.id, record.prefix)
                }
                out => show(&record, out)?,
            }
        }
        KeyCommand::Rotate { id, grace, json } => {
            let out = fmt(json)?;
            let created = store.rotate_key(&id, cli_values::duration_ms(&grace)?, now)?;
            if out == Output::Json {
                print_json(&created.to_json());
            } else if out == Output::Csv {
                write_csv(&key_csv_header(true), [key_csv_row(&created.record, Some(&created.key))])?;
            } else {
                println!("Key (shown once, store it now): {}", created.key);
                println!(
                    "{id} keeps working until {}, then is revoked (rotated).\n",
                    fmt_time(Some(cli_values::after(now, &grace)?))
                );
                print_record(&created.record);
            }
        }
    }
    Ok(())
}

/// A secret given as "-" is read from standard input, so it stays out of shell history and `ps`.
pub fn read_secret(arg: &str) -> Result<String, Error> {
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

impl KeyFieldArgs {
    pub fn expiry(&self, now: i64) -> Result<Field<i64>, Error> {
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

    pub fn quota(&self) -> Result<Field<Quota>, Error> {
        if self.no_quota {
            return Ok(Field::Null);
        }
        let Some(q) = self.quota.as_ref().filter(|q| *q != "plan") else {
            return Ok(Field::Absent);
        };
        Ok(Field::Set(cli_values::quota(q)?))
    }

    /// The rate limit to set: `--rate` with `--burst`, or `--burst` alone applied to `current`.
    pub fn rate(&self, current: Option<RateLimit>) -> Result<Field<RateLimit>, Error> {
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

    pub fn meta(&self) -> Result<Field<Map<String, Value>>, Error> {
        match &self.meta {
            None => Ok(Field::Absent),
            Some(text) => match serde_json::from_str(text) {
                Ok(Value::Object(m)) => Ok(Field::Set(m)),
                _ => Err(Error::invalid(format!("--meta must be a JSON object, not {text:?}"))),
            },
        }
    }
}

fn show(r: &KeyRecord, out: Output) -> Result<(), Error> {
    match out {
        Output::Json => print_json(&r.to_json()),
        Output::Csv => write_csv(&key_csv_header(false), [key_csv_row(r, None)])?,
        Output::Table => print_record(r),
    }
    Ok(())
}

fn print_record(r: &KeyRecord) {
    let lines = [
        ("id", r.id.clone()),
        ("prefix", r.prefix.clone()),
        ("env", r.env.clone()),
        ("name", shown(&r.name)),
        ("plan", shown(&r.plan)),
        ("state", state_text(r)),
        ("created", fmt_time(Some(r.created_at_ms))),
        ("expires", fmt_time(r.expires_at_ms)),
        ("quota", quota_text(r)),
        ("rate limit", rate_text(r)),
        ("used", format!("{} this period, {} in all", r.usage.used, r.usage.total)),
        ("last used", r.usage.last_used_at_ms.map_or("never".into(), |t| fmt_time(Some(t)))),
        ("meta", visible(&Value::Object(r.meta.clone()).to_string()).into_owned()),
    ];
    for (label, value) in lines {
        println!("{label:<11} {value}");
    }
}

fn print_table(records: &[KeyRecord]) {
    let header = ["ID", "PREFIX", "ENV", "PLAN", "NAME", "STATE", "EXPIRES", "QUOTA", "USED", "TOTAL", "RATE"];
    let rows: Vec<[String; 11]> = records
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                r.prefix.clone(),
                r.env.clone(),
                shown(&r.plan),
                shown(&r.name),
                state_text(r),
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

/// The record's state as people read it: `revoked (rotated)`, `rotating (grace ends ...)`, `expiring`.
fn state_text(r: &KeyRecord) -> String {
    let s = &r.state;
    match (&s.state_reason, s.grace_ends_at_ms) {
        (Some(reason), _) => format!("{} ({})", s.state.as_str(), visible(reason)),
        (None, Some(end)) => format!("{} (grace ends {})", s.state.as_str(), fmt_time(Some(end))),
        (None, None) => s.state.as_str().to_string(),
    }
}

/// An optional stored text as a table shows it: "" for none, escaped where it would change how it reads.
fn shown(text: &Option<String>) -> String {
    text.as_deref().map_or(String::new(), |t| visible(t).into_owned())
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

fn key_csv_row(r: &KeyRecord, key: Option<&str>) -> Vec<String> {
    let time = |t: Option<i64>| t.map_or(String::new(), |t| fmt_time(Some(t)));
    let mut row: Vec<String> = key.map(str::to_string).into_iter().collect();
    row.extend([
        r.id.clone(),
        r.prefix.clone(),
        r.env.clone(),
        r.name.clone().unwrap_or_default(),
        r.plan.clone().unwrap_or_default(),
        r.state.state.as_str().to_string(),
        // Also a revocation no flush has recorded yet (a rotation's grace over, an idle key).
        r.state.state_reason.clone().unwrap_or_default(),
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
