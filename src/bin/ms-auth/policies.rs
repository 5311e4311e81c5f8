//! `ms-auth policy set|show`: the store-wide revocation policies, and how they are printed.

use clap::Subcommand;

use ms_auth::cli_values;
use ms_auth::store::PoliciesInForce;
use ms_auth::{Error, Store};

use crate::output::{output_format, to_json, write_csv, Output};

#[derive(Subcommand)]
pub enum PolicyCommand {
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

/// Runs one `ms-auth policy` command.
pub fn run(store: &Store, command: PolicyCommand, global: Option<Output>, now: i64) -> Result<(), Error> {
    let fmt = |json: bool| output_format(global, json);
    match command {
        PolicyCommand::Set { idle, no_idle, abuse, no_abuse, json } => {
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
        PolicyCommand::Show { json } => print_policies(&store.policies()?, fmt(json)?)?,
    }
    Ok(())
}

fn print_policies(p: &PoliciesInForce, out: Output) -> Result<(), Error> {
    match out {
        Output::Json => {
            println!("{}", to_json(p));
            return Ok(());
        }
        Output::Csv => {
            let n = |v: Option<i64>| v.map_or(String::new(), |n| n.to_string());
            let row = vec![n(p.idle.map(|i| i.days)), n(p.abuse.map(|a| a.limit)), n(p.abuse.map(|a| a.window_ms))];
            return write_csv(&["idle_days", "abuse_limit", "abuse_window_ms"], [row]);
        }
        Output::Table => {}
    }
    let idle = p.idle.map_or("off".into(), |i| format!("revoke keys unused for {} days", i.days));
    let abuse = p.abuse.map_or("off".into(), |a| {
        format!("revoke keys rate-limited more than {} times within {} ms", a.limit, a.window_ms)
    });
    println!("idle     {idle}\nabuse    {abuse}\nrotated  revoke rotated keys when their grace ends (always)");
    Ok(())
}
