//! `ms-auth plan put|list`: named plans, and how a plan is printed.

use clap::Subcommand;
use serde_json::json;

use ms_auth::cli_values;
use ms_auth::store::PlanRecord;
use ms_auth::{Error, Store};

use crate::keys::KeyFieldArgs;
use crate::output::{output_format, print_json, to_json, visible, write_csv, Output};

#[derive(Subcommand)]
pub enum PlanCommand {
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

/// Runs one `ms-auth plan` command.
pub fn run(store: &Store, command: PlanCommand, global: Option<Output>, now: i64) -> Result<(), Error> {
    let fmt = |json: bool| output_format(global, json);
    match command {
        PlanCommand::Put { name, quota, no_quota, rate, burst, no_rate_limit, lifetime, json } => {
            let limits = KeyFieldArgs {
                name: None,
                plan: None,
                new_plan: false,
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
                Output::Json => print_json(&to_json(&written)),
                Output::Csv => write_plans_csv(&[written])?,
                Output::Table => print_plans(&[written]),
            }
        }
        PlanCommand::List { json } => {
            let out = fmt(json)?;
            let plans = store.list_plans()?;
            match out {
                Output::Json => print_json(&json!({ "plans": plans }).to_string()),
                Output::Csv => write_plans_csv(&plans)?,
                Output::Table => print_plans(&plans),
            }
        }
    }
    Ok(())
}

fn print_plans(plans: &[PlanRecord]) {
    println!("{:<16} {:<16} {:<24} {:<10} KEYS", "PLAN", "QUOTA", "RATE", "LIFETIME");
    for p in plans {
        let quota = p.quota.as_ref().map_or("none".into(), |q| format!("{}/{}", q.limit, q.period));
        let rate =
            p.rate_limit.as_ref().map_or("none".into(), |r| format!("{}/{}ms burst {}", r.limit, r.window_ms, r.burst));
        let lifetime = p.lifetime_ms.map_or("default".into(), |ms| format!("{}d", ms / 86_400_000));
        println!("{:<16} {:<16} {:<24} {:<10} {}", visible(&p.name), quota, rate, lifetime, p.keys);
    }
    if plans.is_empty() {
        println!("(no plans)");
    }
}

fn write_plans_csv(plans: &[PlanRecord]) -> Result<(), Error> {
    let cell = |v: Option<i64>| v.map_or(String::new(), |n| n.to_string());
    let rows = plans.iter().map(|p| {
        vec![
            p.name.clone(),
            cell(p.quota.as_ref().map(|q| q.limit)),
            p.quota.as_ref().map_or(String::new(), |q| q.period.to_string()),
            cell(p.rate_limit.as_ref().map(|r| r.limit)),
            cell(p.rate_limit.as_ref().map(|r| r.window_ms)),
            cell(p.rate_limit.as_ref().map(|r| r.burst)),
            cell(p.lifetime_ms),
            p.keys.to_string(),
        ]
    });
    let header =
        ["name", "quota_limit", "quota_period", "rate_limit", "rate_window_ms", "rate_burst", "lifetime_ms", "keys"];
    write_csv(&header, rows)
}
