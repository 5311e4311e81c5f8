//! The console's JSON admin API over real HTTP: authentication, CSRF, read-only, every operation and
//! its errors. The console runs as `ms-auth console` on 127.0.0.1 with an OS-chosen port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

const ALICE: &str = "alice-token-0123456789abcdef";

struct Console {
    child: Child,
    addr: String,
    output: std::sync::mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn start(extra: &[&str]) -> Console {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("# users\nalice:{ALICE}\nbob:bob-token-0123456789abcdef\n")).unwrap();
    let db = dir.path().join("store.db");
    if extra.contains(&"--read-only") {
        // A read-only console serves a store that is there; it creates none.
        ms_auth::Store::open(&db).unwrap().close().unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_ms-auth"))
        .arg("--db")
        .arg(&db)
        .args(["console", "--listen", "127.0.0.1:0", "--token-file"])
        .arg(&tokens)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("the console prints its address").unwrap();
    let addr = first.split("http://").nth(1).unwrap().trim_end_matches('/').to_string();
    // Everything else the console prints, to check that no plaintext key ever appears in it.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| drop(tx.send(l))));
    std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).for_each(|l| drop(tx2.send(l))));
    Console { child, addr, output: rx, _dir: dir, db }
}

impl Console {
    fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.addr);
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        s.write_all(req.as_bytes()).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut head = head.lines();
        let status = head.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers = head.filter_map(|l| l.split_once(": ")).map(|(n, v)| (n.to_string(), v.to_string())).collect();
        Reply { status, headers, body: body.to_string() }
    }

    /// Logs in with `token`; returns the session cookie and the CSRF token.
    fn login(&self, token: &str) -> Session {
        let r = self.raw(
            "POST",
            "/login",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            &format!("token={token}"),
        );
        assert_eq!(r.status, 303);
        assert_eq!(r.header("Location"), Some("/"));
        let set = r.header("Set-Cookie").expect("a session cookie").to_string();
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
        let cookie = set.split(';').next().unwrap().to_string();
        let s = self.raw("GET", "/api/v1/session", &[("Cookie", &cookie)], "");
        assert_eq!(s.status, 200);
        let csrf = s.json()["csrf"].as_str().unwrap().to_string();
        Session { cookie, csrf }
    }
}

struct Session {
    cookie: String,
    csrf: String,
}

impl Console {
    fn get(&self, s: &Session, path: &str) -> Reply {
        self.raw("GET", path, &[("Cookie", &s.cookie)], "")
    }
    fn send(&self, s: &Session, method: &str, path: &str, body: &Value) -> Reply {
        self.raw(method, path, &[("Cookie", &s.cookie), ("X-CSRF-Token", &s.csrf)], &body.to_string())
    }
}

fn assert_error(r: &Reply, status: u16) {
    assert_eq!(r.status, status, "{}", r.body);
    assert!(r.json()["error"]["message"].is_string(), "{}", r.body);
}

#[test]
fn nothing_without_a_session_and_a_token() {
    let c = start(&[]);
    assert_error(&c.raw("GET", "/api/v1/keys", &[], ""), 401);
    let r = c.raw("GET", "/", &[], "");
    assert_eq!((r.status, r.header("Location")), (303, Some("/login")));
    let r = c.raw("POST", "/login", &[], "token=wrong-token-0123456789");
    assert_eq!((r.status, r.header("Location")), (303, Some("/login?failed=1")));
    assert!(r.header("Set-Cookie").is_none());
    assert_error(&c.raw("GET", "/api/v1/keys", &[("Cookie", "ms_console=forged")], ""), 401);
    // The login page and the assets are public; they carry the strict CSP.
    let r = c.raw("GET", "/login", &[], "");
    assert_eq!(r.status, 200);
    let csp = r.header("Content-Security-Policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert!(!r.body.contains("<script>"), "no inline script");
    assert_eq!(c.raw("GET", "/assets/app.js", &[], "").status, 200);
    // Logged in: the pages; logged out: refused again.
    let s = c.login(ALICE);
    assert_eq!(c.get(&s, "/").status, 200);
    assert_eq!(c.send(&s, "POST", "/logout", &json!({})).status, 200);
    assert_error(&c.get(&s, "/api/v1/keys"), 401);
}

#[test]
fn every_change_needs_the_csrf_token() {
    let c = start(&[]);
    let s = c.login(ALICE);
    let spec = json!({"name": "acme"}).to_string();
    assert_error(&c.raw("POST", "/api/v1/keys", &[("Cookie", &s.cookie)], &spec), 403);
    assert_error(&c.raw("POST", "/api/v1/keys", &[("Cookie", &s.cookie), ("X-CSRF-Token", "00")], &spec), 403);
    let other = c.login("bob-token-0123456789abcdef");
    assert_error(&c.raw("POST", "/api/v1/keys", &[("Cookie", &s.cookie), ("X-CSRF-Token", &other.csrf)], &spec), 403);
    assert_eq!(c.get(&s, "/api/v1/keys").json()["keys"], json!([]), "nothing was created");
    assert_eq!(c.send(&s, "POST", "/api/v1/keys", &json!({"name": "acme"})).status, 201);
}

#[test]
fn read_only_refuses_every_change() {
    let c = start(&["--read-only"]);
    let s = c.login(ALICE);
    assert_eq!(c.get(&s, "/api/v1/session").json()["read_only"], true);
    for (method, path, body) in [
        ("POST", "/api/v1/keys", json!({})),
        ("PATCH", "/api/v1/keys/x", json!({})),
        ("POST", "/api/v1/keys/x/rotate", json!({})),
        ("POST", "/api/v1/keys/x/revoke", json!({})),
        ("PUT", "/api/v1/plans/pro", json!({})),
        ("PUT", "/api/v1/policies", json!({})),
    ] {
        let r = c.send(&s, method, path, &body);
        assert_error(&r, 403);
        assert_eq!(r.json()["error"]["code"], "read_only", "{method} {path}");
    }
    assert_eq!(c.get(&s, "/api/v1/keys").status, 200);
    assert_eq!(c.get(&s, "/api/v1/overview").status, 200);
}

#[test]
fn a_non_loopback_address_needs_a_proxy() {
    let out = Command::new(env!("CARGO_BIN_EXE_ms-auth"))
        .args(["--db", "/nonexistent-dir/x.db", "console", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn every_operation_and_its_errors() {
    let c = start(&[]);
    let s = c.login(ALICE);
    // Plans and policies.
    let plan = c.send(
        &s,
        "PUT",
        "/api/v1/plans/pro",
        &json!({"quota": {"limit": 5, "period": "daily"}, "lifetime_ms": 86_400_000_i64 * 90}),
    );
    assert_eq!(plan.status, 200, "{}", plan.body);
    assert_eq!(plan.json()["quota"]["limit"], 5);
    assert_error(&c.send(&s, "PUT", "/api/v1/plans/pro", &json!({"quota": {"limit": -1}})), 400);
    assert_error(&c.send(&s, "PUT", "/api/v1/plans/pro", &json!({"name": "other"})), 400);
    let p = c.send(&s, "PUT", "/api/v1/policies", &json!({"idle": {"days": 90}}));
    assert_eq!(p.json()["idle"]["days"], 90);
    assert_error(&c.send(&s, "PUT", "/api/v1/policies", &json!({"idle": {"days": 0}})), 400);
    assert_eq!(c.get(&s, "/api/v1/policies").json()["idle"]["days"], 90);

    // Create: the plaintext once.
    let created = c.send(&s, "POST", "/api/v1/keys", &json!({"name": "acme", "plan": "pro"}));
    assert_eq!(created.status, 201, "{}", created.body);
    let k = created.json();
    let (id, plaintext) = (k["id"].as_str().unwrap().to_string(), k["key"].as_str().unwrap().to_string());
    assert!(plaintext.starts_with("ms_live_"));
    assert_eq!((k["state"].as_str(), k["quota"]["limit"].as_i64()), (Some("active"), Some(5)));
    assert_error(&c.send(&s, "POST", "/api/v1/keys", &json!({"nme": "typo"})), 400);
    assert_error(&c.raw("POST", "/api/v1/keys", &[("Cookie", &s.cookie), ("X-CSRF-Token", &s.csrf)], "{not json"), 400);

    // Checks through the library count in the key's usage.
    {
        let store = ms_auth::Store::open(&c.db).unwrap();
        let now = ms_auth::store::clock_ms();
        for _ in 0..7 {
            store.check(Some(plaintext.as_bytes()), now).unwrap();
        }
        store.close().unwrap();
    }
    let got = c.get(&s, &format!("/api/v1/keys/{id}")).json();
    assert_eq!(
        (got["quota_used"].as_i64(), got["usage"]["total"].as_i64()),
        (Some(5), Some(5)),
        "total counts admitted requests"
    );
    let usage = c.get(&s, &format!("/api/v1/keys/{id}/usage?days=7")).json();
    let days = usage["days"].as_array().unwrap();
    assert_eq!(days.len(), 7);
    assert_eq!(days[6]["admitted"], 5);
    assert_eq!(days[6]["rejected"]["api_key_quota_exceeded"], 2);
    assert_eq!(c.get(&s, &format!("/api/v1/keys/{id}/usage?days=90")).json()["days"].as_array().unwrap().len(), 90);
    assert_error(&c.get(&s, &format!("/api/v1/keys/{id}/usage?days=0")), 400);
    assert_error(&c.get(&s, "/api/v1/keys/nope/usage"), 404);

    // List, search, filters.
    let list = |q: &str| c.get(&s, &format!("/api/v1/keys{q}")).json()["keys"].as_array().unwrap().len();
    assert_eq!(list(""), 1);
    assert_eq!(list("?q=ACM"), 1);
    assert_eq!(list("?q=zzz"), 0);
    assert_eq!(list("?plan=pro&state=active"), 1);
    assert_eq!(list("?state=revoked"), 0);
    assert_eq!(list("?expiring_days=30"), 0);
    assert_eq!(list("?expiring_days=91"), 1);
    assert_error(&c.get(&s, "/api/v1/keys?state=weird"), 400);
    assert_error(&c.get(&s, "/api/v1/keys?expiring_days=x"), 400);

    // Update, rotate, revoke.
    let u =
        c.send(&s, "PATCH", &format!("/api/v1/keys/{id}"), &json!({"rate_limit": {"limit": 10, "window_ms": 1000}}));
    assert_eq!(u.json()["rate_limit"]["limit"], 10, "{}", u.body);
    assert_error(&c.send(&s, "PATCH", "/api/v1/keys/nope", &json!({"name": "x"})), 404);
    assert_error(&c.send(&s, "PATCH", &format!("/api/v1/keys/{id}"), &json!({"revoked": true})), 400);
    let r = c.send(&s, "POST", &format!("/api/v1/keys/{id}/rotate"), &json!({"grace_ms": 3_600_000}));
    assert_eq!(r.status, 200, "{}", r.body);
    let next = r.json();
    assert!(next["key"].as_str().unwrap().starts_with("ms_live_"));
    assert_eq!(c.get(&s, &format!("/api/v1/keys/{id}")).json()["state"], "rotating");
    assert_error(&c.send(&s, "POST", &format!("/api/v1/keys/{id}/rotate"), &json!({})), 400);
    assert_error(&c.send(&s, "POST", &format!("/api/v1/keys/{id}/rotate"), &json!({"grace_ms": "1h"})), 400);
    let next_id = next["id"].as_str().unwrap();
    assert_error(&c.send(&s, "POST", &format!("/api/v1/keys/{next_id}/revoke"), &json!({"reason": 5})), 400);
    let rv = c.send(&s, "POST", &format!("/api/v1/keys/{next_id}/revoke"), &json!({"reason": "customer asked"}));
    assert_eq!(
        (rv.json()["state"].as_str(), rv.json()["revoked_reason"].as_str()),
        (Some("revoked"), Some("customer asked"))
    );
    assert_error(&c.send(&s, "POST", "/api/v1/keys/nope/revoke", &json!({})), 404);

    // The audit log names the console user; filters and CSV.
    let trail = c.get(&s, &format!("/api/v1/keys/{id}/audit")).json();
    let actions: Vec<&str> =
        trail["events"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["key.create", "key.update", "key.rotate"]);
    assert!(trail["events"].as_array().unwrap().iter().all(|e| e["actor"] == "console:alice"));
    assert_error(&c.get(&s, "/api/v1/keys/nope/audit"), 404);
    let audit = |q: &str| c.get(&s, &format!("/api/v1/audit{q}")).json()["events"].as_array().unwrap().len();
    assert_eq!(audit(""), 6);
    assert_eq!(audit("?action=key.revoke"), 1);
    assert_eq!(audit("?actor=console:bob"), 0);
    assert_eq!(audit(&format!("?key={id}")), 3);
    assert_eq!(audit("?limit=2"), 2);
    assert_eq!(audit("?until=1000"), 0);
    assert_error(&c.get(&s, "/api/v1/audit?limit=0"), 400);
    let csv = c.get(&s, "/api/v1/audit.csv?action=key.");
    assert_eq!(csv.status, 200);
    assert!(csv.header("Content-Type").unwrap().starts_with("text/csv"));
    assert_eq!(csv.body.lines().count(), 1 + 4, "{}", csv.body);
    assert!(csv.body.starts_with("seq,time,actor,action,key_id,detail"));

    // Overview and metrics.
    let o = c.get(&s, "/api/v1/overview?days=7").json();
    assert_eq!(o["keys_by_state"], json!({"active": 0, "expiring": 0, "rotating": 1, "revoked": 1, "expired": 0}));
    assert_eq!(o["days"].as_array().unwrap().len(), 7);
    assert_eq!(o["days"][6]["admitted"], 5);
    assert_eq!(o["top_keys"][0]["id"], id.as_str());
    assert_eq!(o["near_quota"][0]["id"], id.as_str());
    assert!(c.get(&s, "/api/v1/metrics").body.contains("ms_auth_checks_total{status=\"ok\"} 5"));

    // Unknown routes and methods.
    assert_error(&c.get(&s, "/api/v1/nothing"), 404);
    assert_error(&c.send(&s, "DELETE", "/api/v1/keys", &json!({})), 405);
    assert_error(&c.get(&s, "/elsewhere"), 404);

    // The plaintext keys were in their create and rotate answers only: not in any other answer, not in
    // the console's output.
    let everything = [
        c.get(&s, "/api/v1/keys").body,
        c.get(&s, "/api/v1/audit").body,
        c.get(&s, &format!("/api/v1/keys/{id}")).body,
        c.get(&s, "/api/v1/audit.csv").body,
    ]
    .concat();
    let next_plain = next["key"].as_str().unwrap();
    assert!(!everything.contains(&plaintext) && !everything.contains(next_plain));
    let printed: Vec<String> = c.output.try_iter().collect();
    assert!(printed.iter().all(|l| !l.contains(&plaintext) && !l.contains(next_plain)), "{printed:?}");
}

/// Issue 21, item 3: the console shows the state every other view shows, with its reason and grace end;
/// a rotated key past its grace reads revoked (rotated) before any flush records it.
#[test]
fn a_rotated_key_past_its_grace_reads_revoked_with_its_reason() {
    let c = start(&[]);
    let s = c.login(ALICE);
    let id = c.send(&s, "POST", "/api/v1/keys", &json!({"name": "acme"})).json()["id"].as_str().unwrap().to_string();
    let r = c.send(&s, "POST", &format!("/api/v1/keys/{id}/rotate"), &json!({"grace_ms": 1000}));
    assert_eq!(r.status, 200, "{}", r.body);
    let rotating = c.get(&s, &format!("/api/v1/keys/{id}")).json();
    assert_eq!(rotating["state"], "rotating");
    assert!(rotating["grace_ends_at_ms"].is_i64(), "{rotating}");
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let got = c.get(&s, &format!("/api/v1/keys/{id}")).json();
    assert_eq!((got["state"].as_str(), got["state_reason"].as_str()), (Some("revoked"), Some("rotated")), "{got}");
    let revoked = c.get(&s, "/api/v1/keys?state=revoked").json();
    let listed = &revoked["keys"].as_array().unwrap()[0];
    assert_eq!((listed["id"].as_str(), listed["state_reason"].as_str()), (Some(id.as_str()), Some("rotated")));
    let o = c.get(&s, "/api/v1/overview").json();
    assert_eq!(o["keys_by_state"]["revoked"], 1, "{o}");
    let metrics = c.get(&s, "/api/v1/metrics").body;
    assert!(metrics.lines().any(|l| l == "ms_auth_keys{state=\"revoked\"} 1"), "{metrics}");
    assert!(metrics.lines().any(|l| l == "ms_auth_keys{state=\"active\"} 1"), "{metrics}");
}

/// Issue 21, item 6: the console refuses a plan that is not defined, naming those that are, unless the
/// body says `"new_plan": true`.
#[test]
fn an_unknown_plan_is_refused_naming_the_plans() {
    let c = start(&[]);
    let s = c.login(ALICE);
    assert_eq!(c.send(&s, "PUT", "/api/v1/plans/pro", &json!({"quota": {"limit": 5, "period": "daily"}})).status, 200);
    let r = c.send(&s, "POST", "/api/v1/keys", &json!({"plan": "prp"}));
    assert_error(&r, 400);
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("\"prp\"") && message.contains("pro") && message.contains("new_plan"), "{message}");
    let k = c.send(&s, "POST", "/api/v1/keys", &json!({"plan": "pro"})).json();
    assert_eq!(k["quota"]["limit"], 5);
    let id = k["id"].as_str().unwrap();
    assert_error(&c.send(&s, "PATCH", &format!("/api/v1/keys/{id}"), &json!({"plan": "prp"})), 400);
    let r = c.send(&s, "PATCH", &format!("/api/v1/keys/{id}"), &json!({"plan": "trial", "new_plan": true}));
    assert_eq!((r.status, r.json()["plan"].as_str()), (200, Some("trial")), "{}", r.body);
    let r = c.send(&s, "POST", "/api/v1/keys", &json!({"plan": "beta", "new_plan": true}));
    assert_eq!(r.status, 201, "{}", r.body);
}

/// Issue 21, item 9: the console refuses bidirectional controls in names and reasons.
#[test]
fn bidi_controls_are_refused_naming_the_field() {
    let c = start(&[]);
    let s = c.login(ALICE);
    let rlo = "invoice\u{202E}fdp.exe";
    let r = c.send(&s, "POST", "/api/v1/keys", &json!({"name": rlo}));
    assert_error(&r, 400);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("name contains U+202E"), "{}", r.body);
    let id = c.send(&s, "POST", "/api/v1/keys", &json!({"name": "acme"})).json()["id"].as_str().unwrap().to_string();
    assert_error(&c.send(&s, "PATCH", &format!("/api/v1/keys/{id}"), &json!({"plan": rlo})), 400);
    let r = c.send(&s, "POST", &format!("/api/v1/keys/{id}/revoke"), &json!({"reason": rlo}));
    assert_error(&r, 400);
    assert!(r.body.contains("reason contains U+202E"), "{}", r.body);
    assert_eq!(c.get(&s, &format!("/api/v1/keys/{id}")).json()["state"], "active", "nothing changed");
}

/// Issue 21, item 9: names, reasons, actors and meta an older version stored with a bidirectional override
/// are shown escaped (`\u{202E}`) in the console's answers and its audit CSV.
#[test]
fn stored_bidi_controls_are_shown_escaped() {
    let c = start(&[]);
    let s = c.login(ALICE);
    let rlo = "invoice\u{202E}fdp.exe";
    let id = c.send(&s, "POST", "/api/v1/keys", &json!({"name": "acme"})).json()["id"].as_str().unwrap().to_string();
    // What an older version let in: written straight into the file.
    let conn = rusqlite::Connection::open(&c.db).unwrap();
    conn.execute(
        "UPDATE keys SET name = ?1, meta = json_object(?1, ?1), revoked_at_ms = 1, revoked_reason = ?1",
        [rlo],
    )
    .unwrap();
    conn.execute("UPDATE audit SET actor = ?1", [rlo]).unwrap();
    drop(conn);
    let escaped = "invoice\\u{202E}fdp.exe";
    let k = c.get(&s, &format!("/api/v1/keys/{id}")).json();
    assert_eq!((k["name"].as_str(), k["state_reason"].as_str()), (Some(escaped), Some(escaped)));
    assert_eq!(k["meta"][escaped], escaped);
    for path in ["/api/v1/keys", "/api/v1/audit", "/api/v1/audit.csv", &format!("/api/v1/keys/{id}/audit")] {
        let body = c.get(&s, path).body;
        assert!(!body.contains('\u{202E}') && !body.contains("\\u202e"), "{path}: {body}");
        assert!(body.contains("invoice\\\\u{202E}fdp.exe") || body.contains(escaped), "{path}: {body}");
    }
}

/// Issue 27, item 5: the key list in pages (`limit`, `after` = the page before's `next`), by one state or
/// several, with the text search counted into each page so that a page is full while keys follow.
#[test]
fn the_key_list_pages_by_state_and_text() {
    let c = start(&[]);
    let s = c.login(ALICE);
    let mut acme_revoked = Vec::new();
    {
        let store = ms_auth::Store::open(&c.db).unwrap();
        let now = ms_auth::store::clock_ms();
        for i in 0..9 {
            let name = if i % 3 == 0 { "other" } else { "acme" };
            let spec = ms_auth::KeySpec::from_json(&json!({"name": format!("{name}-{i}")}).to_string()).unwrap();
            let id = store.create_key(&spec, now).unwrap().record.id;
            if i != 4 {
                store.revoke_key(&id, now, None).unwrap();
                if name == "acme" {
                    acme_revoked.push(id);
                }
            }
        }
        store.close().unwrap();
    }
    let (mut seen, mut sizes, mut after) = (Vec::new(), Vec::new(), String::new());
    loop {
        let page = c.get(&s, &format!("/api/v1/keys?q=acme&state=revoked,expired&limit=2{after}"));
        assert_eq!(page.status, 200, "{}", page.body);
        let page = page.json();
        let keys = page["keys"].as_array().unwrap();
        sizes.push(keys.len());
        seen.extend(keys.iter().map(|k| k["id"].as_str().unwrap().to_string()));
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!((seen, sizes), (acme_revoked, vec![2, 2, 1]), "5 revoked acme keys, 2 a page");
    let all = c.get(&s, "/api/v1/keys").json();
    assert_eq!((all["keys"].as_array().unwrap().len(), &all["next"]), (9, &Value::Null), "no limit: every key");
    for bad in ["?limit=0", "?limit=1001", "?limit=x", "?after=nope", "?after=k1.ZZ", "?state=revoked,gone"] {
        assert_error(&c.get(&s, &format!("/api/v1/keys{bad}")), 400);
    }
}
