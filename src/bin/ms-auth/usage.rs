//! `ms-auth usage`: a key's decisions per UTC day.

use ms_auth::store::UsageHistory;
use ms_auth::{Error, Store};

use crate::output::{fmt_time, output_format, write_csv, Output};

/// `days` days up to today, as a table with a bar chart, JSON or CSV.
pub fn run(
    store: &Store,
    id: &str,
    days: i64,
    json: bool,
    csv: bool,
    global: Option<Output>,
    now: i64,
) -> Result<(), Error> {
    let fmt = |json: bool| output_format(global, json);
    let out = match (csv, global) {
        (true, None | Some(Output::Csv)) => Output::Csv,
        (true, Some(_)) => return Err(Error::invalid("--csv and --output disagree: give one of them")),
        (false, _) => fmt(json)?,
    };
    if !(1..=3650).contains(&days) {
        return Err(Error::invalid("--days must be between 1 and 3650"));
    }
    let history = store.usage(id, now - (days - 1) * 86_400_000, now)?;
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
                [d.admitted, r.api_key_expired, r.api_key_revoked, r.api_key_quota_exceeded, r.rate_limit_exceeded]
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
    Ok(())
}

fn print_usage(h: &UsageHistory) {
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
