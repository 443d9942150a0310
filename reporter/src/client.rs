//! Talking to the server: sign, send, retry what is worth retrying.

use std::time::Duration;

use serde_json::Value;
use tbox_protocol::PrivateKey;

/// What became of one submission.
#[derive(Debug)]
pub enum Sent {
    /// 2xx: the server has it (201 new, 200 already had it).
    Delivered(Value),
    /// 4xx: the server refuses it; sending it again will not help.
    Rejected { status: u16, message: String },
    /// No answer, or 5xx: try again later.
    Unreachable(String),
}

/// The server, as this builder.
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
            .build()
            .into();
        // TBOX_RETRY_DELAYS (seconds, comma-separated) lets tests and impatient people shorten it.
        let backoff = std::env::var("TBOX_RETRY_DELAYS")
            .ok()
            .map(|s| s.split(',').filter_map(|d| d.trim().parse().ok()).map(Duration::from_secs_f64).collect())
            .unwrap_or_else(|| vec![Duration::from_secs(2), Duration::from_secs(10), Duration::from_secs(30)]);
        Client { agent, base: server.trim_end_matches('/').to_owned(), builder: builder.to_owned(), key, backoff }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a report body, retrying connection failures and 5xx with backoff.
    pub fn submit(&self, body: &[u8]) -> Sent {
        self.post_with_retries("/api/v1/reports", body, true)
    }

    /// Sends once, without retries (for the best-effort `started` report).
    pub fn submit_once(&self, body: &[u8]) -> Sent {
        self.post_with_retries("/api/v1/reports", body, false)
    }

    /// Self-registration: the body is signed with the key it registers.
    pub fn register(&self, body: &[u8]) -> Sent {
        self.post_with_retries("/api/v1/builders", body, false)
    }

    fn post_with_retries(&self, path: &str, body: &[u8], retry: bool) -> Sent {
        let signature = self.key.sign(body);
        let mut attempt = 0;
        loop {
            let sent = self.post(path, body, &signature);
            match sent {
                Sent::Unreachable(_) if retry && attempt < self.backoff.len() => {
                    std::thread::sleep(self.backoff[attempt]);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn post(&self, path: &str, body: &[u8], signature: &str) -> Sent {
        let resp = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .header("Tbox-Builder", &self.builder)
            .header("Tbox-Signature", signature)
            .send(body);
        answer(resp)
    }

    /// GET a JSON document.
    pub fn get(&self, path: &str) -> Sent {
        answer(self.agent.get(format!("{}{path}", self.base)).call())
    }
}

fn answer(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Sent {
    let mut resp = match resp {
        Ok(r) => r,
        Err(e) => return Sent::Unreachable(e.to_string()),
    };
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    match status {
        200..=299 => Sent::Delivered(json),
        // A proxy's "timeout" or "slow down" says nothing about the report: try again later.
        408 | 429 => Sent::Unreachable(format!("the server answered {status}")),
        400..=499 => Sent::Rejected {
            status,
            message: json["message"].as_str().map(str::to_owned).unwrap_or_else(|| text.chars().take(300).collect()),
        },
        _ => Sent::Unreachable(format!("the server answered {status}")),
    }
}
