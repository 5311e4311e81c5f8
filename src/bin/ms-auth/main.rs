//! `ms-auth`: the operators' command line, built on the same Rust API the C ABI uses. This file holds
//! the command line's shape and its dispatch; each command group lives in its own module beside it
//! (`ms-auth/keys.rs`, `plans.rs`, `policies.rs`, `audit.rs`, `usage.rs`, `check.rs`, `fleet.rs`,
//! `console/`), and what every command prints through in `output.rs`.

use std::process::ExitCode;

use chrono::Utc;
use clap::{Parser, Subcommand};

use ms_auth::{Error, Store, StoreOptions};

mod audit;
mod check;
mod completions;
mod console;
mod doctor;
mod fleet;
mod keys;
mod output;
mod plans;
mod policies;
mod usage;

use keys::KeyCommand;
use output::Output;
use plans::PlanCommand;
use policies::PolicyCommand;

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
    /// API to a browser; see docs/console.md.
    Console(console::ConsoleArgs),
    /// Check the database, the counters file against it, and the files' owners and modes; `--repair`
    /// rebuilds the counters file. Exits 0 when healthy, 3 when problems remain, 4 when `--repair`
    /// repaired every problem found. Never creates a store.
    Doctor(doctor::DoctorArgs),
    /// Print a completion script for a shell (e.g. `ms-auth completions bash > /etc/bash_completion.d/ms-auth`).
    Completions { shell: clap_complete::Shell },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Console(_) | Command::Fleet(fleet::FleetCommand::Sync { .. })) {
        output::end_quietly_on_closed_pipe();
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ms-auth: {}", e.message);
            ExitCode::from(1)
        }
    }
}

impl Command {
    /// Whether the command makes something, and so may create the store where `--db` names none; the
    /// others (reading, or changing what must already be there) refuse such a path: a mistyped `--db`
    /// must not become an empty store.
    fn creates(&self) -> bool {
        match self {
            Command::Key(command) => matches!(command, KeyCommand::Create { .. }),
            Command::Plan(command) => matches!(command, PlanCommand::Put { .. }),
            Command::Policy(command) => matches!(command, PolicyCommand::Set { .. }),
            // A new member's agent fills its store from the fleet's.
            Command::Fleet(command) => matches!(command, fleet::FleetCommand::Sync { .. }),
            Command::Console(args) => !args.read_only,
            Command::Check { .. } | Command::Audit { .. } | Command::Usage { .. } | Command::Metrics => false,
            Command::Completions { .. } | Command::Doctor(_) => false,
        }
    }
}

/// Opens the store at `db`; where there is none, creates it only if `may_create`, and says so.
fn open_store(db: &str, may_create: bool) -> Result<Store, Error> {
    if !may_create {
        return Store::open_with(db, StoreOptions { create: false, ..StoreOptions::default() });
    }
    let store = Store::open(db)?;
    if store.created() {
        eprintln!("ms-auth: created a new store at {db}");
    }
    Ok(store)
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn run(cli: Cli) -> Result<ExitCode, Error> {
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        completions::print(shell, &mut Cli::command());
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Doctor(args) = &cli.command {
        return doctor::run(&cli.db, args, cli.output); // before opening: that would heal and create
    }
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    // A given --actor is refused as the store refuses it, before the store is opened; $USER is escaped.
    let actor = cli.actor.unwrap_or_else(|| format!("cli:{}", ms_auth::text::visible(&user)));
    ms_auth::text::check("--actor", &actor)?;
    let store = open_store(&cli.db, cli.command.creates())?;
    store.set_actor(&actor)?;
    let command = match cli.command {
        Command::Console(args) => return console::run(store, args).map(|()| ExitCode::SUCCESS),
        other => other,
    };
    let now = now_ms();
    let global = cli.output;
    match command {
        Command::Key(command) => keys::run(&store, command, global, now)?,
        Command::Plan(command) => plans::run(&store, command, global, now)?,
        Command::Policy(command) => policies::run(&store, command, global, now)?,
        Command::Audit { key_id, since, limit, json } => audit::run(&store, key_id, since, limit, json, global, now)?,
        Command::Usage { id, days, json, csv } => usage::run(&store, &id, days, json, csv, global, now)?,
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
        Command::Completions { .. } | Command::Doctor(_) => unreachable!("answered before the store is opened"),
        Command::Console(_) => unreachable!("served above"),
        Command::Check { key, now: at, json } => {
            let code = check::run(&store, key, at, json, global, now)?;
            store.close()?;
            return Ok(code);
        }
    }
    store.close()?;
    Ok(ExitCode::SUCCESS)
}
