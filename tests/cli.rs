//! The `ms-auth` command line as operators use it.

use std::process::{Command, Output, Stdio};

use serde_json::Value;

struct Cli {
    dir: tempfile::TempDir,
}

impl Cli {
    fn new() -> Cli {
        Cli { dir: tempfile::tempdir().unwrap() }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_ms-auth"))
            .env_remove("MS_AUTH_DB")
            .current_dir(self.dir.path())
            .args(args)
            .output()
            .unwrap()
    }

    fn ok_json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn check(&self, key: &str, extra: &[&str]) -> (i32, Value) {
        let mut args = vec!["check", key, "--json"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        (out.status.code().unwrap(), serde_json::from_slice(&out.stdout).unwrap())
    }
}

#[test]
fn issue_check_and_revoke_on_the_default_store() {
    let cli = Cli::new();
    let created = cli.ok_json(&["key", "create", "--plan", "pro", "--name", "billing", "--quota", "2/day", "--json"]);
    let key = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    assert!(cli.dir.path().join("ms_auth.db").exists(), "--db defaults to ./ms_auth.db");
    assert_eq!(created["quota"], serde_json::json!({"limit": 2, "period": "daily"}));

    let (code, ok) = cli.check(key, &[]);
    assert_eq!((code, ok["code"].as_str(), ok["http_status"].as_i64()), (0, Some("ok"), Some(200)));
    assert_eq!(ok["key_id"], id);
    assert_eq!(ok["plan"], "pro");
    let (code, _) = cli.check(key, &[]);
    assert_eq!(code, 0);
    let (code, refused) = cli.check(key, &[]);
    assert_eq!(code, 3, "a refusal exits 3");
    assert_eq!(refused["code"], "api_key_quota_exceeded");
    assert_eq!(refused["body"]["error"]["httpStatus"], 429);

    let show = cli.ok_json(&["key", "show", id, "--json"]);
    assert_eq!(show["usage"]["used"], 2, "counts from earlier processes are in the file");
    assert!(show.get("key").is_none());

    let out = cli.run(&["key", "revoke", id, "--reason", "leaked"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Revoked"));
    let (_, revoked) = cli.check(key, &[]);
    assert_eq!(revoked["code"], "api_key_revoked");
    assert_eq!(cli.ok_json(&["key", "show", id, "--json"])["revoked_reason"], "leaked");
}

#[test]
fn every_documented_answer_from_the_cli() {
    let cli = Cli::new();
    let expired = cli.ok_json(&["key", "create", "--expires-at", "2001-01-01T00:00:00Z", "--json"]);
    let rate = cli.ok_json(&["key", "create", "--rate", "1/min", "--no-expiry", "--json"]);
    let (_, missing) = cli.check("", &[]);
    assert_eq!(
        missing["body"].to_string(),
        r#"{"success":false,"error":{"code":"api_key_missing","message":"API key is missing.","httpStatus":401}}"#
    );
    assert_eq!(cli.check("ms_live_unknown", &[]).1["code"], "api_key_invalid");
    assert_eq!(cli.check(expired["key"].as_str().unwrap(), &[]).1["code"], "api_key_expired");
    let key = rate["key"].as_str().unwrap();
    assert_eq!(cli.check(key, &["--now", "2030-01-01T00:00:00Z"]).1["code"], "ok");
    let (_, limited) = cli.check(key, &["--now", "2030-01-01T00:00:01Z"]);
    assert_eq!(limited["code"], "rate_limit_exceeded");
    assert_eq!(limited["retry_after_ms"], 59_000);
}

#[test]
fn update_list_import_and_human_output() {
    let cli = Cli::new();
    let id = cli.ok_json(&["key", "create", "--plan", "free", "--json"])["id"].as_str().unwrap().to_string();
    let updated = cli.ok_json(&[
        "key",
        "update",
        &id,
        "--no-expiry",
        "--rate",
        "10/s",
        "--burst",
        "20",
        "--meta",
        r#"{"team":"x"}"#,
        "--json",
    ]);
    assert_eq!(updated["expires_at_ms"], Value::Null);
    assert_eq!(updated["rate_limit"], serde_json::json!({"limit": 10, "window_ms": 1000, "burst": 20}));
    assert_eq!(updated["meta"]["team"], "x");
    let burst_only = cli.ok_json(&["key", "update", &id, "--burst", "5", "--json"]);
    assert_eq!(burst_only["rate_limit"]["limit"], 10);
    assert_eq!(burst_only["rate_limit"]["burst"], 5);

    // Importing from standard input keeps the secret out of `ps`.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ms-auth"))
        .args([
            "--db",
            cli.dir.path().join("ms_auth.db").to_str().unwrap(),
            "key",
            "create",
            "--import",
            "-",
            "--plan",
            "pro",
            "--json",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"ms_live_1a2b3c4d5e6f7g8h9i0j\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(cli.check("ms_live_1a2b3c4d5e6f7g8h9i0j", &[]).1["code"], "ok");

    let pro = cli.ok_json(&["key", "list", "--plan", "pro", "--json"]);
    assert_eq!(pro["keys"].as_array().unwrap().len(), 1);
    let table = String::from_utf8(cli.run(&["key", "list"]).stdout).unwrap();
    assert!(table.starts_with("ID ") && table.contains(&id) && table.contains("ms_live_1a2b"), "{table}");
    // Every row has a cell under every heading, and rate limits read as people say them.
    let mut lines = table.lines();
    let headings: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(headings.last(), Some(&"RATE"));
    let rate_column = table.lines().next().unwrap().find("RATE").unwrap();
    for row in lines {
        let rate = row.get(rate_column..).unwrap_or("");
        assert!(rate == "none" || (rate.contains('/') && !rate.contains("000ms")), "{row}");
    }
    let human = String::from_utf8(cli.run(&["key", "create", "--env", "test"]).stdout).unwrap();
    assert!(human.starts_with("Key (shown once, store it now): ms_test_"), "{human}");
}

#[test]
fn errors_are_one_line_on_stderr_with_a_nonzero_exit() {
    let cli = Cli::new();
    cli.ok_json(&["key", "create", "--json"]);
    for args in [
        &["key", "show", "key_nope"][..],
        &["key", "create", "--quota", "5/week"],
        &["key", "create", "--rate", "fast"],
        &["key", "create", "--expires-in", "soon"],
        &["key", "create", "--meta", "[1]"],
        &["check", "x", "--now", "yesterday"],
        &["--db", "/no/such/dir/keys.db", "key", "list"],
    ] {
        let out = cli.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.starts_with("ms-auth: ") && err.ends_with('\n') && err.lines().count() == 1, "{args:?}: {err:?}");
        assert!(out.stdout.is_empty());
    }
    let env_db = cli.dir.path().join("from-env.db");
    let out = Command::new(env!("CARGO_BIN_EXE_ms-auth"))
        .env("MS_AUTH_DB", &env_db)
        .args(["key", "create"])
        .output()
        .unwrap();
    assert!(out.status.success() && env_db.exists(), "--db falls back to $MS_AUTH_DB");
}

#[test]
fn lifecycle_from_the_cli() {
    let cli = Cli::new();
    let plan =
        cli.ok_json(&["plan", "put", "pro", "--quota", "2/day", "--rate", "10/s", "--lifetime", "30d", "--json"]);
    assert_eq!((plan["quota"]["limit"].as_i64(), plan["rate_limit"]["limit"].as_i64()), (Some(2), Some(10)));
    let table = String::from_utf8(cli.run(&["plan", "list"]).stdout).unwrap();
    assert!(table.contains("pro") && table.contains("2/daily") && table.contains("30d"), "{table}");

    let created = cli.ok_json(&["--actor", "ops:bob", "key", "create", "--plan", "pro", "--json"]);
    let (key, id) = (created["key"].as_str().unwrap().to_string(), created["id"].as_str().unwrap().to_string());
    assert_eq!(cli.check(&key, &[]).1["quota_limit"], 2);

    let rotated = cli.ok_json(&["key", "rotate", &id, "--grace", "0s", "--json"]);
    let new_key = rotated["key"].as_str().unwrap();
    assert_eq!(cli.check(&key, &[]).1["code"], "api_key_revoked");
    assert_eq!(cli.check(new_key, &[]).1["code"], "ok");
    assert_eq!(cli.check(new_key, &[]).1["code"], "api_key_quota_exceeded", "the quota was not reset");

    let policy = cli.ok_json(&["policy", "set", "--idle", "90d", "--abuse", "100/10m", "--json"]);
    assert_eq!(policy["idle"]["days"], 90);
    assert_eq!(policy["abuse"], serde_json::json!({"limit": 100, "window_ms": 600000}));
    let shown = String::from_utf8(cli.run(&["policy", "show"]).stdout).unwrap();
    assert!(shown.contains("90 days"), "{shown}");

    let audit = cli.ok_json(&["audit", "--key", &id, "--json"]);
    let actions: Vec<&str> =
        audit["events"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    // The grace ended at once; the next process to write counts made the revocation lasting.
    assert_eq!(actions, ["key.create", "key.rotate", "key.revoke.policy"]);
    assert_eq!(audit["events"][2]["detail"]["reason"], "rotated");
    assert_eq!(audit["events"][0]["actor"], "ops:bob");
    let human = String::from_utf8(cli.run(&["audit", "--since", "1d"]).stdout).unwrap();
    assert!(human.contains("policy.set") && human.contains("cli:"), "{human}");

    let usage = String::from_utf8(cli.run(&["usage", &id, "--days", "3"]).stdout).unwrap();
    let today = usage.lines().nth(3).unwrap();
    assert!(usage.starts_with("DATE") && today.contains('#'), "{usage}");
    let csv = String::from_utf8(cli.run(&["usage", &id, "--days", "2", "--csv"]).stdout).unwrap();
    assert_eq!(csv.lines().count(), 3);
    assert!(
        csv.lines().last().unwrap().ends_with(",1,0"),
        "one admitted on the old key, the quota refusal on the new: {csv}"
    );
    let json = cli.ok_json(&["usage", &id, "--days", "1", "--json"]);
    assert_eq!(json["days"][0]["admitted"], 2);

    let expiring = cli.ok_json(&["key", "list", "--expiring", "31d", "--json"]);
    assert_eq!(
        expiring["keys"].as_array().unwrap().len(),
        1,
        "the new key (30 days, from the plan); the old one is revoked"
    );
    assert_eq!(cli.ok_json(&["key", "list", "--expiring", "29d", "--json"])["keys"].as_array().unwrap().len(), 0);

    let metrics = String::from_utf8(cli.run(&["metrics"]).stdout).unwrap();
    assert!(metrics.contains("ms_auth_checks_total{status=\"ok\"} 2"), "{metrics}");
}

#[test]
fn shell_completions_need_no_store() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_ms-auth"))
            .args(["--db", "/no/such/dir/keys.db", "completions", shell])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("ms-auth") && text.contains("rotate"), "{shell}: {text}");
    }
}

#[test]
fn output_formats_are_one_option_for_every_command() {
    let cli = Cli::new();
    let text = |args: &[&str]| {
        let out = cli.run(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    // A name with a comma and quotes: the cells must come back as they went in.
    let created = text(&["-o", "csv", "key", "create", "--name", "acme, \"eu\"", "--quota", "10/day"]);
    let lines: Vec<&str> = created.lines().collect();
    assert_eq!(lines.len(), 2, "{created}");
    assert!(lines[0].starts_with("key,id,prefix,env,name,plan,state,"), "{created}");
    assert!(lines[1].contains(",\"acme, \"\"eu\"\"\",,active,"), "RFC 4180 quoting: {created}");
    let key = lines[1].split(',').next().unwrap().to_string();
    assert!(key.starts_with("ms_live_"));

    let list = text(&["key", "list", "--output", "csv"]);
    assert_eq!(list.lines().count(), 2);
    assert!(list.lines().nth(1).unwrap().contains(",10,daily,60,60000,60,0,0,,{}"), "{list}");
    // --output json is the commands' --json.
    assert_eq!(cli.ok_json(&["key", "list", "-o", "json"]), cli.ok_json(&["key", "list", "--json"]));

    let check = text(&["check", &key, "-o", "csv"]);
    assert!(check.starts_with("code,http_status,retry_after_ms,quota_limit,quota_remaining,"), "{check}");
    assert!(check.lines().nth(1).unwrap().starts_with("ok,200,0,10,9,"), "{check}");
    assert_eq!(
        text(&["plan", "put", "pro", "--quota", "5/month", "-o", "csv"]).lines().nth(1),
        Some("pro,5,monthly,60,60000,60,,0")
    );
    assert_eq!(text(&["policy", "set", "--idle", "90d", "-o", "csv"]), "idle_days,abuse_limit,abuse_window_ms\n90,,\n");
    let audit = text(&["audit", "-o", "csv"]);
    assert!(audit.starts_with("seq,at,actor,action,key_id,detail\n1,"), "{audit}");
    assert_eq!(audit.lines().count(), 4, "create, plan put, policy set: {audit}");

    // Disagreeing spellings are an error, not a guess; metrics has one format.
    for args in
        [&["key", "list", "--json", "-o", "csv"][..], &["metrics", "-o", "json"], &["fleet", "status", "-o", "csv"]]
    {
        let out = cli.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1, "{args:?}");
    }
    assert_eq!(cli.run(&["key", "list", "-o", "yaml"]).status.code(), Some(2), "clap's usage error");
}

#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    let cli = Cli::new();
    let db = cli.dir.path().join("ms_auth.db");
    let store = ms_auth::Store::open(&db).unwrap();
    // More rows than a pipe holds (64 KiB), so the command is still writing when the reader goes away.
    for _ in 0..1000 {
        store.create_key(&ms_auth::KeySpec::default(), 1_700_000_000_000).unwrap();
    }
    store.close().unwrap();
    for format in ["table", "json", "csv"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ms-auth"))
            .args(["--db", db.to_str().unwrap(), "key", "list", "-o", format])
            .env("RUST_BACKTRACE", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // `ms-auth key list | head -1`: read a little, then close the pipe.
        let mut first = [0u8; 100];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "{format}: nothing on stderr, no panic: {stderr}");
        // As `cat` or `ls` do: killed by SIGPIPE, which shells report as status 141.
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{format}: {:?}", out.status);
    }
}

/// What `shell` completes for `line` (cursor at its end) with the script of `ms-auth completions`
/// installed as that shell's users install it; the shell must be there (scripts/test.sh installs them).
fn completions(shell: &str, line: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let generated = Command::new(env!("CARGO_BIN_EXE_ms-auth")).args(["completions", shell]).output().unwrap();
    assert!(generated.status.success());
    let script = dir.path().join(match shell {
        "zsh" => "_ms-auth", // compinit finds a completion function by its file's name in $fpath
        _ => "ms-auth",
    });
    std::fs::write(&script, &generated.stdout).unwrap();
    let harness = |name: &str| format!("{}/tests/completions/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut command = Command::new("timeout");
    command.arg("60");
    match shell {
        "bash" => command.args(["bash", &harness("complete.bash"), script.to_str().unwrap(), line]),
        "zsh" => command.args(["zsh", "-f", &harness("complete.zsh"), dir.path().to_str().unwrap(), line]),
        "fish" => command
            .args(["fish", "--no-config", "-c", "source $argv[1]; complete -C $argv[2]"])
            .args([script.to_str().unwrap(), line]),
        _ => unreachable!(),
    };
    let out = command.output().unwrap();
    assert!(out.status.success(), "{shell} {line:?}: {out:?}");
    // fish prints each candidate with its description after a tab.
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines().map(|l| l.split('\t').next().unwrap().to_string()).filter(|l| !l.is_empty()).collect()
}

#[test]
fn shell_completions_complete_every_level_of_a_command() {
    for shell in ["bash", "zsh", "fish"] {
        for (line, expected) in [
            ("ms-auth ke", "key"),
            ("ms-auth key cr", "create"),
            ("ms-auth key create --expires-", "--expires-in"),
            ("ms-auth fleet sync --when", "--when-redis-down"),
            ("ms-auth plan put --li", "--lifetime"),
        ] {
            let offered = completions(shell, line);
            assert!(offered.iter().any(|c| c == expected), "{shell}: {line:?} offers {offered:?}, not {expected}");
        }
    }
}

#[test]
fn only_a_command_that_creates_something_creates_the_store() {
    let cli = Cli::new();
    let files = || {
        let mut names: Vec<String> =
            std::fs::read_dir(cli.dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    };
    // A mistyped --db on a command that reads (or changes what must be there): refused, naming the path,
    // and nothing left behind.
    for args in [
        &["key", "list"][..],
        &["key", "show", "key_x"],
        &["key", "update", "key_x", "--name", "n"],
        &["key", "revoke", "key_x"],
        &["key", "rotate", "key_x"],
        &["usage", "key_x"],
        &["audit"],
        &["check", "ms_live_1a2b3c4d5e6f7g8h9i0j"],
        &["metrics"],
        &["plan", "list"],
        &["policy", "show"],
        &["fleet", "status"],
        &["console", "--read-only"],
    ] {
        let out = cli.run(&[&["--db", "typo.db"], args].concat());
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.starts_with("ms-auth: ") && err.lines().count() == 1, "{args:?}: {err}");
        assert!(err.contains("typo.db") && err.contains("no store"), "{args:?}: {err}");
        assert!(out.stdout.is_empty() && files().is_empty(), "{args:?}: {:?}", files());
    }

    // The commands that create something create the store, and say so once.
    for (db, args) in [
        ("keys.db", &["key", "create"][..]),
        ("plans.db", &["plan", "put", "pro"]),
        ("policies.db", &["policy", "set", "--idle", "90d"]),
    ] {
        let out = cli.run(&[&["--db", db], args].concat());
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8(out.stderr).unwrap(), format!("ms-auth: created a new store at {db}\n"));
        let again = cli.run(&[&["--db", db], args].concat());
        assert!(again.status.success() && again.stderr.is_empty(), "{args:?}: said once");
        let read = cli.run(&["--db", db, "audit"]);
        assert!(read.status.success() && read.stderr.is_empty(), "{args:?}: the store is there for readers");
    }
    // An empty file (`touch`) is no store either: reading refuses it, creating initialises it.
    std::fs::write(cli.dir.path().join("touched.db"), b"").unwrap();
    let out = cli.run(&["--db", "touched.db", "key", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));
    let out = cli.run(&["--db", "touched.db", "key", "create"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stderr).unwrap(), "ms-auth: created a new store at touched.db\n");
}

/// Issue 21, item 3: after a rotation's grace has passed, `key list` said `active` while `key show`
/// said `revoked (rotated)` (the first process after the grace made the revocation lasting as it
/// closed). Every view now reads the state worked out in one place.
#[test]
fn a_rotated_key_past_its_grace_reads_revoked_in_list_and_show() {
    let cli = Cli::new();
    let id = cli.ok_json(&["key", "create", "--json"])["id"].as_str().unwrap().to_string();
    let new_id = cli.ok_json(&["key", "rotate", &id, "--grace", "1s", "--json"])["id"].as_str().unwrap().to_string();
    assert_eq!(cli.ok_json(&["key", "show", &id, "--json"])["state"], "rotating");
    std::thread::sleep(std::time::Duration::from_millis(1300));
    // The list first, as in the report: no process has written the revocation yet.
    let table = String::from_utf8(cli.run(&["key", "list"]).stdout).unwrap();
    let row = table.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(row.contains("revoked (rotated)"), "{table}");
    let shown = String::from_utf8(cli.run(&["key", "show", &id]).stdout).unwrap();
    assert!(shown.lines().any(|l| l.starts_with("state") && l.ends_with("revoked (rotated)")), "{shown}");
    let listed = cli.ok_json(&["key", "list", "--json"]);
    let record = listed["keys"].as_array().unwrap().iter().find(|k| k["id"] == id.as_str()).unwrap().clone();
    let shown = cli.ok_json(&["key", "show", &id, "--json"]);
    for r in [&record, &shown] {
        assert_eq!((r["state"].as_str(), r["state_reason"].as_str()), (Some("revoked"), Some("rotated")), "{r}");
    }
    assert_eq!(cli.ok_json(&["key", "show", &new_id, "--json"])["state"], "active");
    let csv = String::from_utf8(cli.run(&["-o", "csv", "key", "show", &id]).stdout).unwrap();
    assert!(csv.lines().nth(1).unwrap().contains(",revoked,rotated,"), "{csv}");
}

/// Issue 21, item 2: `ms-auth doctor` names what is wrong in JSON with an exit code for scripts, and
/// `--repair` rebuilds the counters file.
#[test]
fn doctor_names_a_damaged_counters_file_and_repair_rebuilds_it() {
    let cli = Cli::new();
    let doctor = |args: &[&str]| -> (i32, Value) {
        let out = cli.run(args);
        let report = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code().unwrap(), report)
    };
    let check = |report: &Value, name: &str| -> Value {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name}: {report}"))
    };
    let db = cli.dir.path().join("ms_auth.db");
    let counters = cli.dir.path().join("ms_auth.db-counters");

    let missing = cli.run(&["doctor", "--json"]);
    assert_eq!(missing.status.code(), Some(1), "no store to check");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no store at ms_auth.db"));
    assert!(!db.exists(), "doctor never creates a store");

    let created = cli.ok_json(&["key", "create", "--quota", "5/day", "--json"]);
    let (key, id) = (created["key"].as_str().unwrap().to_string(), created["id"].as_str().unwrap().to_string());
    let (code, healthy) = doctor(&["doctor", "--json"]);
    assert_eq!((code, healthy["healthy"].as_bool()), (0, Some(true)), "{healthy}");
    let names: Vec<&str> = healthy["checks"].as_array().unwrap().iter().map(|c| c["check"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "database.integrity",
            "database.schema",
            "counters.file",
            "counters.keys",
            "counters.policies",
            "files.database",
            "files.wal",
            "files.shm",
            "files.counters"
        ]
    );
    assert!(healthy["checks"].as_array().unwrap().iter().all(|c| c["ok"] == true), "{healthy}");

    // Random bytes from the end of the header on: the header still says all is well.
    let mut bytes = std::fs::read(&counters).unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for b in &mut bytes[4096..] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&counters, &bytes).unwrap();
    let (code, damaged) = doctor(&["doctor", "--output", "json"]);
    assert_eq!((code, damaged["healthy"].as_bool()), (3, Some(false)), "{damaged}");
    let file = check(&damaged, "counters.file");
    assert_eq!((file["ok"].as_bool(), file["repairable"].as_bool()), (Some(false), Some(true)), "{file}");
    assert!(file["detail"].as_str().unwrap().contains("checksum"), "{file}");
    assert!(std::fs::read(&counters).unwrap() == bytes, "doctor alone changes nothing");

    let (code, repaired) = doctor(&["doctor", "--repair", "--json"]);
    assert_eq!((code, repaired["healthy"].as_bool()), (4, Some(true)), "{repaired}");
    assert_eq!(check(&repaired, "counters.file")["repaired"], true);
    assert_eq!(doctor(&["doctor", "--json"]).0, 0, "healthy since");
    assert_eq!(cli.check(&key, &[]).0, 0, "the key is admitted");

    // A record that says another quota, its checksum recomputed (as a writer of the file can): the
    // comparison with the database finds it.
    let mut bytes = std::fs::read(&counters).unwrap();
    let at = bytes.windows(id.len()).position(|w| w == id.as_bytes()).unwrap() - 112;
    bytes[at + 72..at + 80].copy_from_slice(&1_000_000i64.to_le_bytes());
    ms_auth::counters::reseal_image(&mut bytes);
    std::fs::write(&counters, &bytes).unwrap();
    let (code, differs) = doctor(&["doctor", "--json"]);
    assert_eq!(code, 3, "{differs}");
    assert_eq!(check(&differs, "counters.file")["ok"], true);
    let keys = check(&differs, "counters.keys");
    assert_eq!(keys["ok"], false);
    assert!(keys["detail"].as_str().unwrap().contains(&format!("1 of 1 keys missing or with another policy ({id})")));
    assert_eq!(doctor(&["doctor", "--repair", "--json"]).0, 4);
    for _ in 0..4 {
        assert_eq!(cli.check(&key, &[]).0, 0);
    }
    assert_eq!(cli.check(&key, &[]).1["code"], "api_key_quota_exceeded", "the database's quota of 5 again");

    // A mode the documentation rules out is named; --repair leaves the database's mode to its owner.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, report) = doctor(&["doctor", "--repair", "--json"]);
    assert_eq!(code, 3, "{report}");
    let mode = check(&report, "files.database");
    assert_eq!((mode["ok"].as_bool(), mode["repairable"].as_bool()), (Some(false), Some(false)), "{mode}");
    assert!(mode["detail"].as_str().unwrap().contains("0644"), "{mode}");
    let table = cli.run(&["doctor"]);
    assert_eq!(table.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&table.stdout).contains("PROBLEM  files.database"));
}

/// Issue 21, item 6: `--plan prp` when the plan is `pro` put the key on no plan at all, silently without
/// a quota. Once plans are defined, a plan name that is none of them is refused, naming them, unless
/// `--new-plan` says a new label is meant.
#[test]
fn a_mistyped_plan_is_refused_naming_the_plans() {
    let cli = Cli::new();
    // No plan defined yet: any label, as before (the README's first command).
    let early = cli.ok_json(&["key", "create", "--plan", "beta", "--json"]);
    cli.ok_json(&["plan", "put", "pro", "--quota", "10/day", "--json"]);
    cli.ok_json(&["plan", "put", "free", "--quota", "1/day", "--json"]);
    let refused = |args: &[&str]| {
        let out = cli.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains("\"prp\"") && err.contains("free, pro") && err.contains("--new-plan"), "{err}");
        assert!(out.stdout.is_empty());
    };
    refused(&["key", "create", "--plan", "prp"]);
    assert_eq!(cli.ok_json(&["key", "list", "--json"])["keys"].as_array().unwrap().len(), 1, "nothing created");
    let id = early["id"].as_str().unwrap();
    refused(&["key", "update", id, "--plan", "prp"]);
    assert_eq!(cli.ok_json(&["key", "show", id, "--json"])["plan"], "beta", "nothing changed");
    let pro = cli.ok_json(&["key", "create", "--plan", "pro", "--json"]);
    assert_eq!(pro["quota"]["limit"], 10);
    let new = cli.ok_json(&["key", "create", "--plan", "enterprise", "--new-plan", "--json"]);
    assert_eq!((new["plan"].as_str(), &new["quota"]), (Some("enterprise"), &Value::Null));
    assert_eq!(cli.ok_json(&["key", "update", id, "--plan", "free", "--json"])["quota"]["limit"], 1);
    assert_eq!(cli.ok_json(&["key", "update", id, "--plan", "gold", "--new-plan", "--json"])["plan"], "gold");
}

/// Issue 21, item 9: a bidirectional override (U+202E) in a name made `invoice` + RLO + `fdp.exe` read
/// "invoiceexe.pdf". Names, plans, reasons, actors and meta field names holding one are refused, naming
/// the field and the code point.
#[test]
fn bidi_controls_are_refused_naming_the_field() {
    let cli = Cli::new();
    let rlo = "invoice\u{202E}fdp.exe";
    let refused = |args: &[&str], field: &str| {
        let out = cli.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(&format!("{field} contains U+202E (RIGHT-TO-LEFT OVERRIDE")), "{args:?}: {err}");
        assert!(!err.contains('\u{202E}'), "the error itself shows it escaped: {err}");
    };
    refused(&["key", "create", "--name", rlo], "name");
    refused(&["key", "create", "--plan", rlo], "plan");
    refused(&["key", "create", "--meta", &format!(r#"{{"{rlo}": 1}}"#)], "a meta field name");
    refused(&["plan", "put", rlo], "plan.name");
    refused(&["--actor", rlo, "key", "list"], "--actor");
    let id = cli.ok_json(&["key", "create", "--name", "acme", "--json"])["id"].as_str().unwrap().to_string();
    refused(&["key", "update", &id, "--name", rlo], "name");
    refused(&["key", "revoke", &id, "--reason", rlo], "reason");
    assert_eq!(cli.ok_json(&["key", "show", &id, "--json"])["state"], "active", "nothing changed");
}

/// Issue 21, item 9: names, plans, reasons, actors and meta an older version stored with a bidirectional
/// override are shown escaped (`\u{202E}`) in tables and CSV, and as a JSON escape in JSON.
#[test]
fn stored_bidi_controls_are_shown_escaped() {
    let cli = Cli::new();
    let rlo = "invoice\u{202E}fdp.exe";
    let id = cli.ok_json(&["key", "create", "--name", "acme", "--json"])["id"].as_str().unwrap().to_string();
    // What an older version let in: written straight into the file.
    let conn = rusqlite::Connection::open(cli.dir.path().join("ms_auth.db")).unwrap();
    conn.execute(
        "UPDATE keys SET name = ?1, plan = ?1, meta = json_object(?1, ?1), revoked_at_ms = 1, revoked_reason = ?1",
        [rlo],
    )
    .unwrap();
    conn.execute("UPDATE audit SET actor = ?1", [rlo]).unwrap();
    drop(conn);
    let escaped = "invoice\\u{202E}fdp.exe";
    for args in [
        &["key", "list"][..],
        &["key", "show", &id],
        &["-o", "csv", "key", "list"],
        &["audit"],
        &["-o", "csv", "audit"],
        &["key", "list", "--json"],
        &["key", "show", &id, "--json"],
        &["audit", "--json"],
    ] {
        let out = cli.run(args);
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(!text.contains('\u{202E}'), "{args:?} printed the override as is: {text}");
        if args.contains(&"--json") {
            assert!(text.contains("invoice\\u202efdp.exe"), "{args:?}: {text}");
        } else {
            assert!(text.contains(escaped), "{args:?}: {text}");
        }
    }
    let shown = String::from_utf8(cli.run(&["key", "show", &id]).stdout).unwrap();
    for label in ["name", "plan", "state", "meta"] {
        let line = shown.lines().find(|l| l.starts_with(label)).unwrap();
        assert!(line.contains(escaped), "{line}");
    }
    // The JSON is the same to a parser: the name as stored.
    assert_eq!(cli.ok_json(&["key", "show", &id, "--json"])["name"], rlo);
}

/// Review of issue 21: `--db` naming a symbolic link to a file that does not exist. A creating command
/// failed with SQLite's "unable to open database file", which names neither the link nor what to do.
#[test]
fn a_creating_command_on_a_dangling_symbolic_link_says_so_and_creates_nothing() {
    let cli = Cli::new();
    std::os::unix::fs::symlink("elsewhere/keys.db", cli.dir.path().join("keys.db")).unwrap();
    std::fs::create_dir(cli.dir.path().join("elsewhere")).unwrap();
    let out = cli.run(&["--db", "keys.db", "key", "create"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("a symbolic link to elsewhere/keys.db, which does not exist"), "{stderr}");
    assert!(!cli.dir.path().join("elsewhere/keys.db").exists(), "nothing created through the link");
}

/// Issue 27, item 5: `key list --state ... --limit N --after CURSOR` pages through the keys in those
/// states; the next page's cursor is in the JSON (`next`) or, under a table or CSV, on standard error.
#[test]
fn key_list_filters_by_state_and_pages_with_a_cursor() {
    let cli = Cli::new();
    let mut revoked = Vec::new();
    for i in 0..5 {
        let id = cli.ok_json(&["key", "create", "--json"])["id"].as_str().unwrap().to_string();
        if i != 2 {
            assert!(cli.run(&["key", "revoke", &id]).status.success());
            revoked.push(id);
        }
    }
    let (mut seen, mut after) = (Vec::new(), None::<String>);
    loop {
        let mut args = vec!["key", "list", "--state", "revoked,expired", "--limit", "3", "--json"];
        if let Some(cursor) = &after {
            args.extend(["--after", cursor]);
        }
        let page = cli.ok_json(&args);
        seen.extend(page["keys"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap().to_string()));
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, revoked);
    let out = cli.run(&["key", "list", "--state", "revoked", "--limit", "3"]);
    let (table, stderr) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
    assert_eq!(table.lines().count(), 4, "a header and 3 keys: {table}");
    let cursor = stderr.trim().strip_prefix("more keys follow: --after ").unwrap_or_else(|| panic!("{stderr}"));
    let rest = text_lines(&cli, &["key", "list", "--state", "revoked", "--after", cursor, "-o", "csv"]);
    assert_eq!(rest.len(), 2, "a header and the last revoked key: {rest:?}");
    assert!(rest[1].starts_with(&revoked[3]), "{rest:?}");
    for (args, says) in [
        (&["key", "list", "--state", "gone"][..], "state must be one of"),
        (&["key", "list", "--limit", "0"], "limit must be an integer from 1 to 1000"),
        (&["key", "list", "--after", "k1.zz"], "after is not a cursor this list gave"),
    ] {
        let out = cli.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(says), "{args:?}");
    }
}

fn text_lines(cli: &Cli, args: &[&str]) -> Vec<String> {
    let out = cli.run(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}
