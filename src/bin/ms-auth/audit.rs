//! `ms-auth audit`: the audit log of admin changes, oldest first.

use serde_json::json;

use ms_auth::cli_values;
use ms_auth::{Error, Store};

use crate::output::{fmt_time, output_format, print_json, visible, write_csv, Output};

/// The changes matching `--key`, `--since` and `--limit`, as a table, JSON or CSV.
pub fn run(
    store: &Store,
    key_id: Option<String>,
    since: Option<String>,
    limit: Option<i64>,
    json: bool,
    global: Option<Output>,
    now: i64,
) -> Result<(), Error> {
    let since_ms = since.map(|s| cli_values::since(now, &s)).transpose()?;
    let out = output_format(global, json)?;
    let events = store.audit_events(&ms_auth::store::AuditFilter { key_id, since_ms, limit })?;
    if out == Output::Json {
        print_json(&json!({ "events": events }).to_string());
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
                visible(&e.actor),
                visible(&e.detail.to_string())
            );
        }
        if events.is_empty() {
            println!("(no changes)");
        }
    }
    Ok(())
}
