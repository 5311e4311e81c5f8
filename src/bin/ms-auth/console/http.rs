//! The console's HTTP plumbing: answers with the security headers every response carries, JSON errors,
//! query strings and cookies. No routing and no store here.

use std::io::Cursor;

use serde_json::{json, Value};
use tiny_http::{Header, Request, Response, StatusCode};

use ms_auth::{Error, Status};

pub type Answer = Response<Cursor<Vec<u8>>>;

/// No inline script or style and no other origin: every asset is served by the console itself, so an
/// injected `<script>` or a stray link to a CDN does nothing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Request bodies are small JSON objects or a login form; anything bigger is a mistake or an attack.
pub const MAX_BODY: usize = 64 * 1024;

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("header names and values are ASCII")
}

pub fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Answer {
    let mut r = Response::from_data(body).with_status_code(StatusCode(status));
    for (n, v) in [
        ("Content-Type", content_type),
        ("Content-Security-Policy", CSP),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "no-referrer"),
        // A created key's plaintext travels in one answer: no cache may keep any answer.
        ("Cache-Control", "no-store"),
    ] {
        r.add_header(header(n, v));
    }
    r
}

/// Writes the answer and ends the connection (`Connection: close`). tiny_http serves a connection in one
/// pooled thread for as long as the client keeps it open, and its pool can queue a new connection behind
/// busy ones: a browser's idle keep-alive connections then stall the next request for minutes
/// (tiny-http issue 244). tiny_http drops a `Connection` header set on a response, so the answer is
/// written here, raw; one request a connection costs microseconds on loopback.
pub fn send_closing(req: Request, answer: Answer) -> std::io::Result<()> {
    use std::io::Write;
    let status = answer.status_code();
    let mut head = format!("HTTP/1.1 {} {}\r\n", status.0, status.default_reason_phrase());
    for h in answer.headers() {
        head.push_str(&format!("{}: {}\r\n", h.field, h.value));
    }
    let body = answer.into_reader().into_inner();
    head.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
    let mut w = req.into_writer();
    w.write_all(head.as_bytes())?;
    w.write_all(&body)?;
    w.flush()
}

pub fn json(status: u16, body: &Value) -> Answer {
    respond(status, "application/json", body.to_string().into_bytes())
}

pub fn error(status: u16, code: &str, message: impl Into<String>) -> Answer {
    json(status, &json!({"error": {"code": code, "message": message.into()}}))
}

/// A library error as an HTTP answer: bad input is 400, an unknown key 404, the rest 500.
pub fn from_error(e: &Error) -> Answer {
    let status = match e.status {
        Status::ErrInvalidArgument => 400,
        Status::ErrNotFound => 404,
        _ => 500,
    };
    error(status, e.status.code(), e.message.clone())
}

pub fn redirect(to: &str, cookie: Option<&str>) -> Answer {
    let mut r = respond(303, "text/plain", Vec::new()).with_header(header("Location", to));
    if let Some(c) = cookie {
        r.add_header(header("Set-Cookie", c));
    }
    r
}

pub fn with_cookie(r: Answer, cookie: &str) -> Answer {
    r.with_header(header("Set-Cookie", cookie))
}

pub fn header_value<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().iter().find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
}

pub fn cookie<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    let all = header_value(req, "Cookie")?;
    all.split(';').filter_map(|c| c.trim().split_once('=')).find(|(n, _)| *n == name).map(|(_, v)| v)
}

/// Reads the body, refusing one larger than [`MAX_BODY`].
pub fn body(req: &mut Request) -> Result<String, Answer> {
    use std::io::Read;
    let mut buf = Vec::new();
    let read = req.as_reader().take(MAX_BODY as u64 + 1).read_to_end(&mut buf);
    if read.is_err() {
        return Err(error(400, "bad_request", "cannot read the request body"));
    }
    if buf.len() > MAX_BODY {
        return Err(error(413, "too_large", format!("the body is larger than {MAX_BODY} bytes")));
    }
    String::from_utf8(buf).map_err(|_| error(400, "bad_request", "the body is not UTF-8"))
}

/// `a=1&b=x%20y` → pairs, percent- and plus-decoded (query strings and login forms).
pub fn parse_form(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query string's pairs.
pub struct Query(pub Vec<(String, String)>);

impl Query {
    pub fn of(url: &str) -> Query {
        Query(url.split_once('?').map(|(_, q)| parse_form(q)).unwrap_or_default())
    }

    /// A non-empty value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, v)| k == name && !v.is_empty()).map(|(_, v)| v.as_str())
    }

    pub fn int(&self, name: &str) -> Result<Option<i64>, Answer> {
        self.get(name)
            .map(|v| v.parse().map_err(|_| error(400, "bad_request", format!("{name} must be an integer"))))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_percent_and_plus() {
        assert_eq!(
            parse_form("token=a%2Bb+c&name=&x"),
            vec![("token".into(), "a+b c".into()), ("name".into(), "".into()), ("x".into(), "".into())]
        );
        assert_eq!(parse_form("a=%zz%4"), vec![("a".into(), "%zz%4".into())]);
    }
}
