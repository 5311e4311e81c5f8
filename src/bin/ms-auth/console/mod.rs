//! `ms-auth console`: the support console, a small web server on the store. Pages are static files
//! beside this code (`pages/`: HTML, JS, CSS), built into the binary, that draw themselves from the JSON
//! admin API (`/api/v1/…`, [`api`]); the API calls the store's Rust API like any other host.
//!
//! Security: loopback unless asked otherwise (and then only behind a TLS proxy), a token for each user
//! exchanged for a session cookie, a CSRF token on every change, `--read-only` refusing every change,
//! changes audited as `console:NAME`, a strict content security policy.

mod api;
mod auth;
mod http;
mod views;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use clap::Args;
use parking_lot::Mutex;
use tiny_http::{Method, Request, Server};

use ms_auth::{Error, Store};

use auth::{Sessions, Tokens};
use http::Answer;

#[derive(Args)]
pub struct ConsoleArgs {
    /// Address to serve on. Anything but loopback also needs --behind-proxy.
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// Show everything, change nothing: every change is hidden in the pages and refused by the API.
    #[arg(long)]
    pub read_only: bool,
    /// Users and their tokens, one NAME:TOKEN a line [default: one token for --user, printed once].
    #[arg(long, value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    /// The name the audit log gives the printed token's user (console:NAME) [default: $USER].
    #[arg(long, conflicts_with = "token_file")]
    user: Option<String>,
    /// Serve on a non-loopback address for a reverse proxy that terminates TLS in front of the console
    /// (see docs/console.md); the session cookie is then marked Secure.
    #[arg(long)]
    behind_proxy: bool,
    /// Requests served at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
}

pub struct Console {
    store: Store,
    tokens: Tokens,
    sessions: Sessions,
    read_only: bool,
    secure_cookie: bool,
    /// The store names one actor per handle: changes take turns so that each is audited under the
    /// name of the user who made it.
    writing: Mutex<()>,
}

/// The actor of the store's own changes while no user's change runs (revocations by policy at a flush).
const IDLE_ACTOR: &str = "console";

impl Console {
    /// Runs a change as `console:USER`.
    fn write<T>(&self, user: &str, change: impl FnOnce(&Store) -> Result<T, Error>) -> Result<T, Error> {
        let _turn = self.writing.lock();
        self.store.set_actor(&format!("console:{user}"))?;
        let result = change(&self.store);
        self.store.set_actor(IDLE_ACTOR)?;
        result
    }
}

pub fn run(store: Store, args: ConsoleArgs) -> Result<(), Error> {
    if !args.listen.ip().is_loopback() && !args.behind_proxy {
        return Err(Error::invalid(format!(
            "{} is not a loopback address: serving there needs --behind-proxy and a reverse proxy that \
             terminates TLS in front of the console (see docs/console.md)",
            args.listen
        )));
    }
    let (tokens, printed) = match &args.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::invalid(format!("cannot read {}: {e}", path.display())))?;
            (Tokens::from_file_text(&text)?, None)
        }
        None => {
            let user = args.user.clone().unwrap_or_else(|| std::env::var("USER").unwrap_or_else(|_| "admin".into()));
            let token = auth::random_hex()?;
            (Tokens::single(&user, &token)?, Some((user, token)))
        }
    };
    let server =
        Server::http(args.listen).map_err(|e| Error::invalid(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = server.server_addr().to_ip().map_or_else(|| args.listen.to_string(), |a| a.to_string());
    store.set_actor(IDLE_ACTOR)?;
    let console = Arc::new(Console {
        store,
        tokens,
        sessions: Sessions::default(),
        read_only: args.read_only,
        secure_cookie: args.behind_proxy,
        writing: Mutex::new(()),
    });
    let mut out = std::io::stdout().lock();
    let mode = if args.read_only { " (read-only)" } else { "" };
    let _ = writeln!(out, "ms-auth console{mode} listening on http://{addr}/");
    if let Some((user, token)) = printed {
        // The only place the token ever appears: it is kept as a digest.
        let _ = writeln!(out, "access token for {user} (shown once): {token}");
    }
    let _ = out.flush();
    drop(out);
    let server = Arc::new(server);
    let workers: Vec<_> = (0..args.threads)
        .map(|_| {
            let (server, console) = (server.clone(), console.clone());
            std::thread::spawn(move || {
                for request in server.incoming_requests() {
                    console.serve(request);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

const INDEX_HTML: &str = include_str!("pages/index.html");
const LOGIN_HTML: &str = include_str!("pages/login.html");
const APP_JS: &str = include_str!("pages/app.js");
const KEYS_JS: &str = include_str!("pages/keys.js");
const PAGES_JS: &str = include_str!("pages/pages.js");
const LOGIN_JS: &str = include_str!("pages/login.js");
const CHART_JS: &str = include_str!("pages/chart.js");
const APP_CSS: &str = include_str!("pages/app.css");

impl Console {
    fn serve(&self, mut req: Request) {
        let answer = self.answer(&mut req);
        let _ = http::send_closing(req, answer);
    }

    fn answer(&self, req: &mut Request) -> Answer {
        let url = req.url().to_string();
        let path = url.split('?').next().unwrap_or("").to_string();
        let method = req.method().clone();
        let session_id = http::cookie(req, auth::COOKIE).map(str::to_string);
        let session = session_id.as_deref().and_then(|id| self.sessions.get(id));
        match (&method, path.as_str()) {
            (Method::Get, "/assets/app.js") => return asset("text/javascript", APP_JS),
            (Method::Get, "/assets/chart.js") => return asset("text/javascript", CHART_JS),
            (Method::Get, "/assets/keys.js") => return asset("text/javascript", KEYS_JS),
            (Method::Get, "/assets/pages.js") => return asset("text/javascript", PAGES_JS),
            (Method::Get, "/assets/login.js") => return asset("text/javascript", LOGIN_JS),
            (Method::Get, "/assets/app.css") => return asset("text/css", APP_CSS),
            (Method::Get, "/login") => return asset("text/html; charset=utf-8", LOGIN_HTML),
            (Method::Post, "/login") => return self.login(req),
            (Method::Get, "/") if session.is_none() => return http::redirect("/login", None),
            (Method::Get, "/") => return asset("text/html; charset=utf-8", INDEX_HTML),
            _ => {}
        }
        let Some(session) = session else {
            return http::error(401, "unauthenticated", "log in first: no valid session cookie");
        };
        let changes = !matches!(method, Method::Get | Method::Head);
        if changes && !auth::csrf_ok(&session, http::header_value(req, "X-CSRF-Token")) {
            return http::error(403, "csrf", "a change must carry the session's X-CSRF-Token header");
        }
        if method == Method::Post && path == "/logout" {
            self.sessions.close(session_id.as_deref().unwrap_or(""));
            return http::with_cookie(
                http::json(200, &serde_json::json!({})),
                &auth::expired_cookie(self.secure_cookie),
            );
        }
        if !path.starts_with("/api/v1/") {
            return http::error(404, "not_found", format!("nothing at {path}"));
        }
        if changes && self.read_only {
            return http::error(403, "read_only", "the console runs with --read-only: changes are refused");
        }
        let body = if changes {
            match http::body(req) {
                Ok(b) => b,
                Err(a) => return a,
            }
        } else {
            String::new()
        };
        if path == "/api/v1/session" && method == Method::Get {
            // The pages read the CSRF token here: it is in no cookie, so another site cannot read it.
            return http::json(
                200,
                &serde_json::json!({"user": session.user, "read_only": self.read_only, "csrf": session.csrf}),
            );
        }
        api::route(self, &session.user, method.as_str(), &url, &body)
    }

    /// The login form's POST: a valid token opens a session (the cookie) and leads to the pages.
    fn login(&self, req: &mut Request) -> Answer {
        let body = match http::body(req) {
            Ok(b) => b,
            Err(a) => return a,
        };
        let form = http::parse_form(&body);
        let token = form.iter().find(|(k, _)| k == "token").map(|(_, v)| v.trim()).unwrap_or("");
        let Some(user) = self.tokens.user_of(token) else {
            // Slows guessing; tokens are 256 bits, so this is courtesy to the logs rather than defence.
            std::thread::sleep(std::time::Duration::from_millis(300));
            return http::redirect("/login?failed=1", None);
        };
        match self.sessions.open(user) {
            Ok(id) => http::redirect("/", Some(&auth::cookie(&id, self.secure_cookie))),
            Err(e) => http::from_error(&e),
        }
    }
}

fn asset(content_type: &str, text: &str) -> Answer {
    http::respond(200, content_type, text.as_bytes().to_vec())
}
