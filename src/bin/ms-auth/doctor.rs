//! `ms-auth doctor [--repair]`: checks a store's database, its counters file against it, and its files'
//! owners and modes; with `--repair`, rebuilds what is derived (the counters file). Runs before the store
//! is opened (opening would already rebuild a damaged counters file, and would create a missing store).

use std::path::Path;
use std::process::ExitCode;

use serde_json::{json, Value};

use ms_auth::store::{diagnose, Diagnosis, Finding};
use ms_auth::{Error, Store};

use crate::output::{output_format, write_csv, Output};

/// Every check passed (after `--repair`, there was nothing to repair).
const HEALTHY: u8 = 0;
/// Problems were found, and (with `--repair`) not all of them could be repaired.
const PROBLEMS: u8 = 3;
/// `--repair` repaired every problem found: the store is healthy now.
const REPAIRED: u8 = 4;

#[derive(clap::Args)]
pub struct DoctorArgs {
    /// Rebuild the counters file from the database if it is damaged, differs from the database or has
    /// the wrong owner or mode (what is derived; the database and its files' modes are left to you).
    #[arg(long)]
    repair: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(db: &str, args: &DoctorArgs, global: Option<Output>) -> Result<ExitCode, Error> {
    let out = output_format(global, args.json)?;
    let found = diagnose(Path::new(db))?;
    let after = if args.repair && found.repairable() { Some(repair(db, &found)?) } else { None };
    let code = match &after {
        None if found.healthy() => HEALTHY,
        Some(after) if after.healthy() => REPAIRED,
        _ => PROBLEMS,
    };
    let rows: Vec<Row> = found
        .findings
        .iter()
        .map(|f| Row { found: f, now: after.as_ref().and_then(|a| a.finding(f.check)).filter(|_| !f.ok) })
        .collect();
    match out {
        Output::Json => {
            let checks: Vec<Value> = rows.iter().map(Row::to_json).collect();
            let healthy = after.as_ref().unwrap_or(&found).healthy();
            println!("{}", json!({"store": found.store, "healthy": healthy, "exit_code": code, "checks": checks}));
        }
        Output::Csv => write_csv(
            &["check", "status", "detail"],
            rows.iter().map(|r| vec![r.found.check.to_string(), r.status().to_string(), r.detail().to_string()]),
        )?,
        Output::Table => {
            let width = rows.iter().map(|r| r.found.check.len()).max().unwrap_or(0);
            for r in &rows {
                println!("{:<8} {:<width$}  {}", r.status(), r.found.check, r.detail());
            }
            println!(
                "{}",
                match code {
                    HEALTHY => "healthy",
                    REPAIRED => "repaired: healthy now",
                    _ if args.repair => "problems remain (see above)",
                    _ if found.repairable() => "problems found: `ms-auth doctor --repair` rebuilds the counters file",
                    _ => "problems found (see above)",
                }
            );
        }
    }
    Ok(ExitCode::from(code))
}

/// Rebuilds the counters file (unless the database itself is damaged: it would be rebuilt from that) and
/// looks again.
fn repair(db: &str, found: &Diagnosis) -> Result<Diagnosis, Error> {
    if found.finding("database.integrity").is_some_and(|f| !f.ok) {
        return Ok(found.clone());
    }
    let store = Store::open(db)?;
    store.rebuild_counters()?;
    store.close()?;
    diagnose(Path::new(db))
}

/// A check as found, and (after `--repair`, for a problem) as found again.
struct Row<'a> {
    found: &'a Finding,
    now: Option<&'a Finding>,
}

impl Row<'_> {
    fn status(&self) -> &'static str {
        match (self.found.ok, self.now) {
            (true, _) => "ok",
            (false, Some(now)) if now.ok => "repaired",
            (false, _) => "PROBLEM",
        }
    }

    fn detail(&self) -> &str {
        self.now.map_or(&self.found.detail, |now| &now.detail)
    }

    fn to_json(&self) -> Value {
        let mut v = json!({"check": self.found.check, "ok": self.found.ok, "detail": self.found.detail});
        if !self.found.ok {
            v["repairable"] = json!(self.found.repairable);
        }
        if let Some(now) = self.now {
            v["repaired"] = json!(now.ok);
            v["now"] = json!(now.detail);
        }
        v
    }
}
