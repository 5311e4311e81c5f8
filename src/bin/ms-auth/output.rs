//! How results are printed: `--output` (table, JSON, CSV) and the renderings of times and durations
//! that every command shares.

use chrono::{DateTime, SecondsFormat, Utc};

use ms_auth::Error;

/// The formats of `--output`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
    Csv,
}

/// Makes a closed output pipe end the process as it ends `cat` or `ls` (`ms-auth key list | head -1`):
/// killed by SIGPIPE, quietly (status 141 in a shell). Rust starts programs with SIGPIPE ignored, which
/// turns every print to a closed pipe into a panic. Not for the commands that serve (console, fleet
/// sync): a client or Redis hanging up on one of their sockets must not kill them.
pub fn end_quietly_on_closed_pipe() {
    // SAFETY: restores the default action of a signal, before this process has any other thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// `--output` of the command line with the command's own `--json` (its older spelling); a conflict
/// between the two is an error rather than a guess.
pub fn output_format(global: Option<Output>, json: bool) -> Result<Output, Error> {
    match (global, json) {
        (None | Some(Output::Json), true) => Ok(Output::Json),
        (Some(_), true) => Err(Error::invalid("--json and --output disagree: give one of them")),
        (global, false) => Ok(global.unwrap_or(Output::Table)),
    }
}

/// CSV through the csv crate, so names, actors and JSON details with commas, quotes or newlines are
/// quoted as RFC 4180 says and a spreadsheet reads the same cells back.
pub fn write_csv<R, C>(header: &[&str], rows: impl IntoIterator<Item = R>) -> Result<(), Error>
where
    R: IntoIterator<Item = C>,
    C: AsRef<[u8]>,
{
    let fail = |e: csv::Error| Error::internal(format!("cannot write CSV to standard output: {e}"));
    let mut w = csv::Writer::from_writer(std::io::stdout().lock());
    w.write_record(header).map_err(fail)?;
    for row in rows {
        // A spreadsheet shows the cells: bidi controls stored by older versions are written escaped.
        let cells = row.into_iter().map(|c| visible(&String::from_utf8_lossy(c.as_ref())).into_owned());
        w.write_record(cells.collect::<Vec<_>>()).map_err(fail)?;
    }
    w.flush().map_err(|e| Error::internal(format!("cannot write CSV to standard output: {e}")))
}

/// Stored text as a terminal may show it: characters that would change how it reads (bidirectional
/// controls, invisible and control characters, which older versions stored in names, reasons and
/// actors) written as `\u{202E}`.
pub fn visible(text: &str) -> std::borrow::Cow<'_, str> {
    ms_auth::text::visible(text)
}

/// Prints JSON with those characters as JSON escapes: the same JSON to a parser, safe on a terminal.
pub fn print_json(json: &str) {
    println!("{}", ms_auth::text::json_visible(json));
}

/// A typed answer as the same JSON the C ABI writes.
pub fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("an admin answer always serializes")
}

pub fn fmt_time(ms: Option<i64>) -> String {
    match ms.and_then(DateTime::<Utc>::from_timestamp_millis) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Secs, true),
        None => "never".to_string(),
    }
}

/// A wait as people read it, rounded up to the second: `7h 17m 57s`, `45s`; under a second, `250 ms`.
pub fn human_duration(ms: i64) -> String {
    if ms < 1_000 {
        return format!("{ms} ms");
    }
    let seconds = (ms + 999) / 1_000;
    let parts = [(seconds / 86_400, "d"), (seconds / 3_600 % 24, "h"), (seconds / 60 % 60, "m"), (seconds % 60, "s")];
    let first = parts.iter().position(|(n, _)| *n > 0).unwrap_or(3);
    parts[first..].iter().take(3).map(|(n, unit)| format!("{n}{unit}")).collect::<Vec<_>>().join(" ")
}

/// A window as people say it: `s`, `min`, `hour`, `day`, else `10s` or `1500ms`.
pub fn window_text(ms: i64) -> String {
    match ms {
        1_000 => "s".into(),
        60_000 => "min".into(),
        3_600_000 => "hour".into(),
        86_400_000 => "day".into(),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
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
