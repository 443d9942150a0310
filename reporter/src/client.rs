//! Talking to the server: sign, send, retry what is worth retrying, and make sure that what
//! answered is a tbox server that now holds the report.

use std::time::Duration;

use serde_json::Value;
use tbox_protocol::{PrivateKey, PublicKey};

/// What became of one submission.
#[derive(Debug)]
pub enum Sent {
    /// 2xx with a tbox server's answer: the server has it (201 new, 200 already had it). For a
    /// report, the answer's `id` is the report's id (the hex SHA-256 of the body sent).
    Delivered(Value),
    /// 4xx: the server refuses it; sending it again will not help.
    Rejected { status: u16, message: String },
    /// No answer, or 5xx: try again later.
    Unreachable(String),
    /// A 2xx that is not a tbox server's answer: a captive portal's login page, a proxy, a wrong
    /// `server` URL. Nothing says the report arrived, so it is kept, as if unreachable. The text
    /// says who answered what.
    NotTbox(String),
}

/// The server, as this builder.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    builder: String,
    key: PrivateKey,
    /// Pauses between attempts; its length is the number of retries.
    backoff: Vec<Duration>,
}

impl Client {
    pub fn new(server: &str, builder: &str, key: PrivateKey) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .timeout_connect(Some(Duration::from_secs(15)))
            // Never: a redirect would carry the builder's signed headers (and the report) to
            // whatever host the answer names. A 3xx is an answer like any other.
            .max_redirects(0)
            .build()
            .into();
        // TBOX_RETRY_DELAYS (seconds, comma-separated) lets tests and impatient people shorten it.
        let backoff = std::env::var("TBOX_RETRY_DELAYS")
            .ok()
            .map(|s| s.split(',').filter_map(|d| d.trim().parse().ok()).map(Duration::from_secs_f64).collect())
            .unwrap_or_else(|| vec![Duration::from_secs(2), Duration::from_secs(10), Duration::from_secs(30)]);
        Client { agent, base: base_url(server), builder: builder.to_owned(), key, backoff }
    }

    /// The same, trying each submission once: for sending the spool, where a server that
    /// does not answer now is tried again at the next run anyway (the retries' 42 s would be
    /// spent on every cron run while a server is down).
    pub fn once(&self) -> Client {
        Client { backoff: Vec::new(), ..self.clone() }
    }

    /// The same server and key, as another builder name.
    pub fn as_builder(&self, builder: &str) -> Client {
        Client { builder: builder.to_owned(), ..self.clone() }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The signature of `body` for the `Tbox-Signature` header. A report is signed once, when
    /// it is made; the spool keeps that signature with it.
    pub fn sign(&self, body: &[u8]) -> String {
        self.key.sign(body)
    }

    /// This builder's public key, to check the signatures kept in the spool.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// Sends a signed report body, retrying connection failures and 5xx with backoff.
    pub fn submit(&self, body: &[u8], signature: &str) -> Sent {
        self.post_with_retries("/api/v1/reports", body, signature, Some(&tbox_protocol::report_id(body)), true)
    }

    /// Signs and sends once, without retries (for the best-effort `started` report).
    pub fn submit_once(&self, body: &[u8]) -> Sent {
        self.post_with_retries("/api/v1/reports", body, &self.sign(body), Some(&tbox_protocol::report_id(body)), false)
    }

    /// Self-registration: the body is signed with the key it registers.
    pub fn register(&self, body: &[u8]) -> Sent {
        self.post_with_retries("/api/v1/builders", body, &self.sign(body), None, false)
    }

    fn post_with_retries(&self, path: &str, body: &[u8], signature: &str, id: Option<&str>, retry: bool) -> Sent {
        let mut attempt = 0;
        loop {
            let sent = self.post(path, body, signature, id);
            match sent {
                // Not `NotTbox`: whatever answered in the server's place would answer the same.
                Sent::Unreachable(_) if retry && attempt < self.backoff.len() => {
                    std::thread::sleep(self.backoff[attempt]);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn post(&self, path: &str, body: &[u8], signature: &str, id: Option<&str>) -> Sent {
        let resp = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .header("Tbox-Builder", &self.builder)
            .header("Tbox-Signature", signature)
            .send(body);
        self.answer(resp, id)
    }

    /// GET a JSON document.
    /// A signed POST or PUT whose answer is read as it is: (status, JSON or null). For leases,
    /// where 204 (no work) is an answer, not a failure.
    pub fn send_signed(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Value), String> {
        let url = format!("{}{path}", self.base);
        let req = if method == "PUT" { self.agent.put(&url) } else { self.agent.post(&url) };
        let resp = req
            .header("Content-Type", "application/json")
            .header("Tbox-Builder", &self.builder)
            .header("Tbox-Signature", &self.key.sign(body))
            .send(body);
        let mut resp = resp.map_err(|e| unreachable(&self.base, &e))?;
        let status = resp.status().as_u16();
        if (300..400).contains(&status) {
            return Err(redirected(&self.base, status, resp.headers()));
        }
        let text = resp.body_mut().with_config().limit(1 << 20).read_to_string().unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// The fingerprint of this builder's key (`SHA256:…`), as the server lists it.
    pub fn fingerprint(&self) -> String {
        self.key.public_key().fingerprint()
    }

    pub fn get(&self, path: &str) -> Sent {
        self.answer(self.agent.get(format!("{}{path}", self.base)).call(), None)
    }

    /// GET, signed: `Tbox-Signature` over the path's bytes proves the key, so the server tells
    /// this builder things it tells nobody else (its status while pending or revoked).
    pub fn get_as_builder(&self, path: &str) -> Sent {
        let req = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Tbox-Builder", &self.builder)
            .header("Tbox-Signature", &self.key.sign(path.as_bytes()));
        self.answer(req.call(), None)
    }

    fn answer(&self, resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>, id: Option<&str>) -> Sent {
        let mut resp = match resp {
            Ok(r) => r,
            Err(e) => return Sent::Unreachable(unreachable(&self.base, &e)),
        };
        let status = resp.status().as_u16();
        if (300..400).contains(&status) {
            // Not followed, and not a delivery: kept in the spool until `server` is fixed.
            return Sent::NotTbox(redirected(&self.base, status, resp.headers()));
        }
        let content_type = content_type(resp.headers());
        let text = resp.body_mut().with_config().limit(1 << 20).read_to_string().unwrap_or_default();
        judge(&self.base, status, content_type.as_deref(), &text, id)
    }
}

/// A server's base URL from what a person gave: the base itself, or the address of any of its
/// pages (`https://host/ci/projects/demo`, as `join` takes, or `…/api/v1/…`), without the
/// trailing `/`. Every `--server` and `server =` goes through it, so that both work everywhere.
pub fn base_url(given: &str) -> String {
    let t = given.trim().trim_end_matches('/');
    let t = t.rsplit_once("/projects/").map_or(t, |(base, _)| base);
    let t = t.split_once("/api/v1").map_or(t, |(base, _)| base);
    t.trim_end_matches('/').to_owned()
}

/// What to say when a server could not be reached: the error, and in words the usual cause
/// where it shows (`https://` to a server that speaks plain HTTP).
pub fn unreachable(base: &str, e: &ureq::Error) -> String {
    let text = e.to_string();
    let tls = matches!(e, ureq::Error::Tls(_))
        || ["InvalidContentType", "corrupt message", "tls", "TLS", "certificate"].iter().any(|w| text.contains(w));
    let hint = if tls && base.starts_with("https://") && text.contains("InvalidContentType") {
        format!(" — {base} answers in plain HTTP, not HTTPS: write http:// (or set up TLS on the server)")
    } else if tls {
        " — the TLS connection failed (a certificate this machine does not trust, or a server without TLS)".to_owned()
    } else {
        String::new()
    };
    printable(&format!("{text}{hint}"))
}

/// An answer's media type, without parameters (`application/json; charset=utf-8` →
/// `application/json`).
pub fn content_type(headers: &ureq::http::HeaderMap) -> Option<String> {
    let value = headers.get("content-type")?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or_default().trim().to_owned())
}

/// What to say of an answer that is not a tbox server's (an HTML page, a proxy's text): never
/// the page itself, but who answered what, and the likely cause.
pub fn not_tbox(base: &str, status: u16, content_type: Option<&str>) -> String {
    printable(&format!(
        "the server at {base} answered {status} with {}, not a tbox server's answer: is {base} the address of a \
         tbox server's front page?",
        content_type.map_or_else(|| "no content type".to_owned(), |c| format!("{c:?}"))
    ))
}

/// What to say of a redirect: where it pointed, and that it was not followed.
fn redirected(base: &str, status: u16, headers: &ureq::http::HeaderMap) -> String {
    let to = headers.get("location").and_then(|v| v.to_str().ok()).unwrap_or("nowhere");
    printable(&format!(
        "the server at {base} answered {status}, a redirect to {to}; tbox-report follows no redirect (it would \
         send signed requests elsewhere): if the server moved, set `server` to its new address"
    ))
}

/// What an answer means. `id` is the report id a 2xx must carry when a report was sent.
fn judge(base: &str, status: u16, content_type: Option<&str>, text: &str, id: Option<&str>) -> Sent {
    let json: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    match status {
        // Only a tbox server's own answer means "stored": a captive portal answers 200 too.
        200..=299 => {
            let not_tbox = |why: String| {
                Sent::NotTbox(printable(&format!(
                    "the server at {base} answered {status} but not as a tbox server ({why})"
                )))
            };
            let Value::Object(fields) = &json else {
                return not_tbox(content_type.unwrap_or("no content type").to_owned());
            };
            match (id, fields.get("id")) {
                (None, _) => Sent::Delivered(json),
                (Some(want), Some(got)) if got.as_str() == Some(want) => Sent::Delivered(json),
                (Some(_), Some(got)) => not_tbox(format!("JSON whose id {got} is not the report's id")),
                (Some(_), None) => not_tbox("JSON without the report's id".to_owned()),
            }
        }
        // A proxy's "timeout" or "slow down" says nothing about the report: try again later.
        408 | 429 => Sent::Unreachable(format!("the server answered {status}")),
        400..=499 => match json["message"].as_str() {
            Some(message) => Sent::Rejected { status, message: printable(message) },
            // A tbox server refuses with JSON: anything else is someone else's page (a wrong
            // `server`, a proxy), never printed as it is.
            None => Sent::NotTbox(not_tbox(base, status, content_type)),
        },
        _ => Sent::Unreachable(format!("the server answered {status}")),
    }
}

/// Longest server text shown at once.
const MAX_SHOWN: usize = 1000;

/// What a server said, safe to print on the volunteer's terminal and to put in a log: control
/// characters (escape sequences rewrite what is on screen: a window title, a cleared screen, a
/// fake "recipe verified" line after a newline) and the invisible ones that reorder or hide text
/// (bidirectional overrides, zero-width characters) are shown escaped, as `\u{1b}`; and it is cut
/// to a length a person reads.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_SHOWN));
    for (n, c) in s.chars().enumerate() {
        if n == MAX_SHOWN {
            out.push('…');
            break;
        }
        if c.is_control() || is_invisible(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Format characters that change how text around them reads without showing themselves.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// The `message` of a server's JSON error, printable.
pub fn message(v: &Value) -> String {
    printable(v["message"].as_str().unwrap_or("no message"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

    fn judged(status: u16, content_type: Option<&str>, text: &str, id: Option<&str>) -> String {
        format!("{:?}", judge("http://tbox.test", status, content_type, text, id))
    }

    #[test]
    fn a_page_address_works_as_the_servers_address() {
        for given in [
            "https://t.example",
            "https://t.example/",
            "https://t.example/projects/demo",
            "https://t.example/projects/demo/requests/",
            "https://t.example/api/v1/projects/demo",
        ] {
            assert_eq!(base_url(given), "https://t.example", "{given}");
        }
        assert_eq!(base_url("http://h:8080/ci/projects/demo"), "http://h:8080/ci");
    }

    #[test]
    fn an_html_refusal_is_never_printed_as_it_is() {
        let html = "<!DOCTYPE html><html><title>404 Not Found</title></html>";
        let sent = judged(404, Some("text/html"), html, Some(ID));
        assert!(sent.starts_with("NotTbox") && !sent.contains("DOCTYPE"), "{sent}");
        assert!(sent.contains("answered 404 with \\\"text/html\\\""), "{sent}");
        let sent = judged(404, Some("application/json"), r#"{"error":"not_found","message":"no project"}"#, None);
        assert!(sent.starts_with("Rejected") && sent.contains("no project"), "{sent}");
    }

    #[test]
    fn a_captive_portal_answering_200_html_is_not_a_delivery() {
        let html = "<html><body>Please log in to the hotel Wi-Fi</body></html>";
        let sent = judged(200, Some("text/html"), html, Some(ID));
        assert!(sent.starts_with("NotTbox"), "{sent}");
        assert!(
            sent.contains("the server at http://tbox.test answered 200 but not as a tbox server (text/html)"),
            "{sent}"
        );
        // Not for a GET or a registration either: they expect JSON.
        assert!(judged(200, Some("text/html"), html, None).starts_with("NotTbox"));
        assert!(judged(204, None, "", None).contains("(no content type)"));
    }

    #[test]
    fn a_json_answer_without_the_reports_id_is_not_a_delivery() {
        let sent = judged(201, Some("application/json"), r#"{"id":"0000","build":1}"#, Some(ID));
        assert!(sent.starts_with("NotTbox") && sent.contains("is not the report's id"), "{sent}");
        let sent = judged(200, Some("application/json"), r#"{"ok":true}"#, Some(ID));
        assert!(sent.starts_with("NotTbox") && sent.contains("without the report's id"), "{sent}");
        let sent = judged(200, Some("application/json"), &format!(r#"{{"id":"{ID}","build":7,"url":"u"}}"#), Some(ID));
        assert!(sent.starts_with("Delivered"), "{sent}");
        // A GET answer carries no report id.
        assert!(judged(200, Some("application/json"), r#"{"status":"active"}"#, None).starts_with("Delivered"));
    }

    #[test]
    fn server_text_cannot_drive_the_terminal() {
        let hostile = "denied\u{1b}]0;owned\u{7}\u{1b}[2J\n[tbox-report] recipe verified \u{202e}gnp.exe";
        let shown = printable(hostile);
        assert!(!shown.chars().any(|c| c.is_control() || is_invisible(c)), "{shown:?}");
        assert!(shown.starts_with("denied\\u{1b}]0;owned\\u{7}") && shown.contains("\\u{a}[tbox-report]"), "{shown}");
        assert_eq!(printable(&"x".repeat(5000)).chars().count(), MAX_SHOWN + 1);
        assert_eq!(printable("plain text, unchanged: é ✔"), "plain text, unchanged: é ✔");
    }

    #[test]
    fn errors_keep_their_meaning() {
        assert!(judged(422, Some("application/json"), r#"{"message":"bad"}"#, Some(ID)).starts_with("Rejected"));
        assert!(judged(429, None, "", Some(ID)).starts_with("Unreachable"));
        assert!(judged(503, None, "", Some(ID)).starts_with("Unreachable"));
    }
}
