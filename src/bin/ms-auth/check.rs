//! `ms-auth check KEY`: one request's decision, as a server would make it.

use std::process::ExitCode;

use serde_json::{json, Value};

use ms_auth::cli_values;
use ms_auth::{Error, Status, Store};

use crate::keys::read_secret;
use crate::output::{fmt_time, human_duration, output_format, print_json, visible, write_csv, Output};

/// Decides one request for `key` at `at` (default: `now`); exit code 0 when admitted, 3 when refused.
pub fn run(
    store: &Store,
    key: String,
    at: Option<String>,
    json: bool,
    global: Option<Output>,
    now: i64,
) -> Result<ExitCode, Error> {
    let fmt = |json: bool| output_format(global, json);
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
        print_json(&out.to_string());
    } else {
        println!("decision:  {} (HTTP {})", d.status.code(), d.status.http());
        if let Some(k) = &checked.key {
            let plan = k.plan().as_ref().map(|p| format!(" (plan {})", visible(p))).unwrap_or_default();
            println!("key:       {}{plan}", k.id());
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
    Ok(ExitCode::from(if d.status == Status::Ok { 0 } else { 3 }))
}
