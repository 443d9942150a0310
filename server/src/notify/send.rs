//! The sender: one thread per server process takes due deliveries from the database, sends
//! them (webhooks over HTTP, e-mail over SMTP), and records each answer. A failed attempt is
//! tried again after 10 s, then three times longer each time (at most two hours apart) until a
//! day has passed; then the delivery is given up and the server log says so. Nothing is held
//! only in memory: a restart picks up where the last process stopped.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{NaiveDateTime, TimeDelta};
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::extension::ClientId;
use lettre::{SmtpTransport, Transport as _};

use super::Facts;
use super::forge::Failure;
use super::message;
use crate::db::notify::{self as queue, Claimed};
use crate::db::{self, Pool};

/// How the sender reaches people.
#[derive(Clone)]
pub struct Config {
    /// The server's public base URL, for links in messages.
    pub base: String,
    /// SMTP, if this process sends e-mail (`serve --smtp`).
    pub mail: Option<Mail>,
    /// A builder not heard from for this long has gone stale.
    pub stale_after: TimeDelta,
    /// The wait before the first retry (10 s; tests shorten it).
    pub first_retry: Duration,
    /// How often builders gone stale are looked for (`serve --lost-check-every`).
    pub scan_every: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config").field("base", &self.base).field("mail", &self.mail.is_some()).finish_non_exhaustive()
    }
}

/// An SMTP relay and the sender address.
#[derive(Clone)]
pub struct Mail {
    pub transport: SmtpTransport,
    pub from: Mailbox,
}

impl Mail {
    /// From `serve --smtp URL [--smtp-starttls] --mail-from ADDR`. `smtp://host:port` is plain
    /// SMTP (a relay on the same machine or network), `smtps://` is SMTP over TLS, and
    /// `--smtp-starttls` requires STARTTLS on an `smtp://` URL. `user:password@` logs in.
    pub fn new(url: &str, starttls: bool, from: &str) -> anyhow::Result<Self> {
        let from: Mailbox = from.parse().map_err(|e| anyhow::anyhow!("--mail-from {from:?}: {e}"))?;
        let url = relay_url(url, starttls)?;
        // Greet the relay with the sender's domain: some refuse the bare "localhost".
        let hello = ClientId::Domain(from.email.domain().to_owned());
        let transport = SmtpTransport::from_url(&url)
            .map_err(|e| anyhow::anyhow!("--smtp: {e}"))?
            .hello_name(hello)
            .timeout(Some(Duration::from_secs(30)))
            .build();
        Ok(Mail { transport, from })
    }
}

/// The URL lettre is given: `tls=required` with `--smtp-starttls` (replacing any `tls=` the URL
/// had, since lettre reads the first), and no password over plain SMTP to another machine.
fn relay_url(url: &str, starttls: bool) -> anyhow::Result<String> {
    let bad = || anyhow::anyhow!("--smtp must be an smtp:// or smtps:// URL, e.g. smtp://127.0.0.1:25");
    let mut u = url::Url::parse(url).map_err(|_| bad())?;
    let scheme = u.scheme().to_owned();
    anyhow::ensure!(matches!(scheme.as_str(), "smtp" | "smtps") && u.host().is_some(), bad());
    anyhow::ensure!(
        !(starttls && scheme == "smtps"),
        "--smtp-starttls needs an smtp:// URL (smtps:// is TLS from the start)"
    );
    let loopback = match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if scheme == "smtp" && !starttls && !loopback && u.password().is_some() {
        anyhow::bail!(
            "--smtp: a password on smtp:// would cross the network unencrypted; use smtps:// or add --smtp-starttls"
        );
    }
    let query = u.query().unwrap_or_default().to_owned();
    let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty() && !p.starts_with("tls=")).collect();
    if starttls {
        params.push("tls=required");
    } else if let Some(tls) = query.split('&').find(|p| p.starts_with("tls=")) {
        params.push(tls);
    }
    u.set_query((!params.is_empty()).then(|| params.join("&")).as_deref());
    Ok(u.to_string())
}

/// Subscribers served at once, each by a thread of its own.
const SENDERS: usize = 16;
/// How long a claimed delivery is left to its sender before another may try it (longer than
/// any attempt takes: the webhook timeout, SMTP's).
const HOLD: TimeDelta = TimeDelta::minutes(2);
/// A webhook that has not answered within this long has failed this attempt.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the queue is looked at when it was empty.
const TICK: Duration = Duration::from_secs(1);
/// Retries go on for this long after the change, then the delivery is given up.
pub const RETRY_FOR: TimeDelta = TimeDelta::days(1);
/// The longest wait between two attempts.
const LONGEST_WAIT: Duration = Duration::from_secs(2 * 3600);

/// The wait after the `attempt`-th failed attempt (counted from 1): `first`, then three times
/// longer each time, at most two hours.
pub fn retry_delay(first: Duration, attempt: i32) -> Duration {
    let exponent = u32::try_from(attempt.saturating_sub(1)).unwrap_or(0).min(20);
    first.saturating_mul(3u32.saturating_pow(exponent)).min(LONGEST_WAIT)
}

/// When to try again after a failed attempt, or `None` to give up: retries end a day after
/// the change, with one last attempt at that point.
pub fn next_attempt(
    first: Duration,
    attempt: i32,
    created: NaiveDateTime,
    now: NaiveDateTime,
) -> Option<NaiveDateTime> {
    let deadline = created + RETRY_FOR;
    if now >= deadline {
        return None;
    }
    let wait = TimeDelta::from_std(retry_delay(first, attempt)).unwrap_or(TimeDelta::hours(2));
    Some((now + wait).min(deadline))
}

/// Starts the sending thread; it runs until `stop` is set.
///
/// It claims due deliveries and hands each subscriber's to a thread of their own, which sends
/// them in order and records each answer the moment it comes: a receiver that never answers
/// holds up only its own deliveries (for the timeout), and a crash can repeat only the one
/// attempt that was under way. While a subscriber's thread runs, nothing more of its is
/// claimed, so a chat sees "broke" before "fixed".
pub fn start(pool: Pool, config: Config, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new().name("tbox-notify".into()).spawn(move || {
        let config_of_agents = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(WEBHOOK_TIMEOUT))
            // A redirect is an answer to look at, not to follow: a POST followed as a GET
            // would be reported as delivered.
            .max_redirects(0)
            .user_agent(concat!("tbox-server/", env!("CARGO_PKG_VERSION")))
            .build();
        // Webhooks reach public addresses only, checked on the addresses the connection uses;
        // the other agent is for subscriptions an operator allowed to reach inside.
        let agent =
            Agents { public: super::target::public_agent(config_of_agents.clone()), inside: config_of_agents.into() };
        let busy: Arc<Mutex<HashSet<i64>>> = Arc::default();
        let mut scanned: Option<Instant> = None;
        // Until the server stops (other programs' tests run servers inside their process).
        while !stop.load(Ordering::Relaxed) {
            if scanned.is_none_or(|t| t.elapsed() >= config.scan_every) {
                scanned = Some(Instant::now());
                if let Err(e) = housekeeping(&pool, &config) {
                    log::warn!("notifications: {e:#}");
                }
            }
            match round(&pool, &config, &agent, &busy) {
                // It took all it could: there may be more waiting.
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => log::warn!("notifications: {e:#}"),
            }
            // While deliveries are being sent, look again soon: a subscriber's next one may be
            // taken as soon as its thread is done.
            let sending = busy.lock().map(|b| !b.is_empty()).unwrap_or(false);
            std::thread::sleep(if sending { Duration::from_millis(100) } else { TICK });
        }
    })?;
    Ok(())
}

/// Records builders gone stale, and gives up on deliveries nobody could send for a day.
fn housekeeping(pool: &Pool, config: &Config) -> anyhow::Result<()> {
    let mut conn = pool.get()?;
    let now = db::now();
    let stale = db::write_transaction(&mut conn, |c| super::stale_builders(c, config.stale_after, now))?;
    if stale > 0 {
        log::info!("notifications: {stale} queued for builders gone stale");
    }
    let expired = db::write_transaction(&mut conn, |c| queue::expire(c, now - RETRY_FOR - HOLD, now))?;
    if expired > 0 {
        log::warn!("notifications: gave up on {expired} delivery(ies) not sent within a day (see `notify log`)");
    }
    Ok(())
}

/// Claims due deliveries of subscribers not being served now and starts sending them; true
/// when it took as many as it could.
fn round(pool: &Pool, config: &Config, agent: &Agents, busy: &Arc<Mutex<HashSet<i64>>>) -> anyhow::Result<bool> {
    let serving: Vec<i64> = busy.lock().map(|b| b.iter().copied().collect()).unwrap_or_default();
    let room = SENDERS.saturating_sub(serving.len());
    if room == 0 {
        return Ok(false);
    }
    let kinds: &[&str] = if config.mail.is_some() { &["webhook", "email", "forge"] } else { &["webhook", "forge"] };
    let limit = i64::try_from(room).unwrap_or(1);
    let mut conn = pool.get()?;
    let now = db::now();
    if !queue::any_due(&mut conn, kinds, &serving, now)? {
        return Ok(false);
    }
    let claimed = queue::claim(&mut conn, kinds, &serving, now, HOLD, limit)?;
    drop(conn);
    let full = claimed.len() == room;
    let mut by_subscriber: BTreeMap<i64, Vec<Claimed>> = BTreeMap::new();
    for c in claimed {
        by_subscriber.entry(c.subscription.id).or_default().push(c);
    }
    for (id, mut group) in by_subscriber {
        group.sort_by_key(|c| (c.notification.created_at, c.notification.id));
        if let Ok(mut b) = busy.lock() {
            b.insert(id);
        }
        // Frees the subscriber however the thread ends (a panic included), or if it never starts.
        let serving = Serving(Arc::clone(busy), id);
        let (pool, config, agent) = (pool.clone(), config.clone(), agent.clone());
        let spawned = std::thread::Builder::new().name("tbox-notify-send".into()).spawn(move || {
            let _serving = serving;
            for c in &group {
                if let Err(e) = attempt(&pool, &config, &agent, c) {
                    log::warn!("notifications: recording an attempt: {e:#}");
                }
            }
        });
        if let Err(e) = spawned {
            // Its deliveries stay claimed and are tried again after HOLD.
            log::warn!("notifications: cannot start a sending thread: {e}");
        }
    }
    Ok(full)
}

/// A subscriber being served by a sending thread, until this is dropped.
struct Serving(Arc<Mutex<HashSet<i64>>>, i64);

impl Drop for Serving {
    fn drop(&mut self) {
        if let Ok(mut b) = self.0.lock() {
            b.remove(&self.1);
        }
    }
}

/// Sends one delivery and records the answer at once.
fn attempt(pool: &Pool, config: &Config, agent: &Agents, c: &Claimed) -> anyhow::Result<()> {
    let facts: Result<Facts, _> = serde_json::from_str(&c.notification.facts);
    let answer = match &facts {
        Ok(facts) => send(config, agent, c, facts),
        Err(e) => Err(Failure::transient(format!("stored notification is unreadable: {e}"))),
    };
    let facts = facts.unwrap_or_default();
    let now = db::now();
    let (d, s) = (&c.delivery, &c.subscription);
    // When to try again, if this attempt failed; `None` gives up: at once after an error
    // retrying cannot mend, never before a rate limit's wait is over.
    let next = match &answer {
        Err(f) if f.permanent => None,
        // A rate limit says when to come back: then, not later (our own back-off would keep
        // growing over a burst of rate-limited statuses), but never sooner than the first
        // retry, so that `Retry-After: 0` cannot make a busy loop.
        Err(f) => next_attempt(config.first_retry, d.attempts, d.created_at, now).map(|at| match f.retry_after {
            Some(wait) => (now + TimeDelta::from_std(wait.max(config.first_retry)).unwrap_or(TimeDelta::hours(1)))
                .min(d.created_at + RETRY_FOR),
            None => at,
        }),
        Ok(_) => None,
    };
    let answer = answer.map_err(|f| f.answer);
    let what =
        format!("\"{}\" to subscription #{} ({})", message::summary(&c.notification.event, &facts), s.id, s.kind);
    // The answer came: record it, trying a few times (a busy pool, a database restarting), or
    // a delivered message would be sent again after HOLD.
    let mut tries = 0;
    loop {
        tries += 1;
        match record(pool, d, &answer, now, next) {
            Ok(()) => break,
            Err(e) if tries < 4 => {
                log::warn!("notifications: recording {what}: {e:#}; trying again");
                std::thread::sleep(Duration::from_secs(2 * tries));
            }
            Err(e) => return Err(e),
        }
    }
    match &answer {
        Ok(answer) => {
            log::info!("notification {what} delivered: {answer}");
            crate::metrics::notification(&s.kind, "delivered");
        }
        Err(answer) => {
            crate::metrics::notification(&s.kind, if next.is_some() { "failed" } else { "given_up" });
            match next {
                Some(at) => log::warn!(
                    "notification {what} failed (attempt {}): {answer}; trying again in {}s",
                    d.attempts,
                    (at - now).num_seconds()
                ),
                None if now >= d.created_at + RETRY_FOR => log::warn!(
                    "notification {what} given up after {} attempts over a day: {answer} \
                     (the project page shows the subscription as failing)",
                    d.attempts
                ),
                None => log::warn!("notification {what} given up: {answer}"),
            }
        }
    }
    Ok(())
}

fn record(
    pool: &Pool,
    d: &crate::db::models::Delivery,
    answer: &Result<String, String>,
    now: NaiveDateTime,
    next: Option<NaiveDateTime>,
) -> anyhow::Result<()> {
    let mut conn = pool.get()?;
    match answer {
        Ok(answer) => queue::delivered(&mut conn, d, answer, now)?,
        Err(answer) => queue::failed(&mut conn, d, answer, now, next)?,
    }
    Ok(())
}

/// The agents webhooks go out through.
#[derive(Clone)]
struct Agents {
    /// Connects to public addresses only.
    public: ureq::Agent,
    /// Anywhere: for subscriptions an operator allowed inside (`--allow-private-target`).
    inside: ureq::Agent,
}

/// One attempt: the answer on success, what went wrong otherwise.
fn send(config: &Config, agent: &Agents, c: &Claimed, facts: &Facts) -> Result<String, Failure> {
    let agent_for = |s: &crate::db::models::Subscription| if s.allow_private { &agent.inside } else { &agent.public };
    match c.subscription.kind.as_str() {
        "forge" => {
            let Some(status) = &facts.status else {
                return Err(Failure { answer: "not a commit status".to_owned(), retry_after: None, permanent: true });
            };
            super::forge::post(agent_for(&c.subscription), &c.subscription, &config.base, &c.project, status)
        }
        "webhook" => {
            let body = message::webhook_body(&c.notification, facts, &config.base);
            post(
                agent_for(&c.subscription),
                &c.subscription.target,
                c.subscription.secret.as_deref(),
                &body,
                &c.notification.event,
                &c.delivery.uid,
            )
            .map_err(Failure::transient)
        }
        "email" => {
            let Some(mail) = &config.mail else {
                return Err(Failure::transient("this server process has no --smtp".to_owned()));
            };
            let (subject, body) = message::email(&c.notification, facts, &config.base, c.subscription.id);
            send_mail(mail, &c.subscription.target, subject, body, &c.delivery.uid).map_err(Failure::transient)
        }
        other => Err(Failure::transient(format!("unknown subscription kind {other:?}"))),
    }
}

/// Longest part of an answer's body kept in the log.
pub(super) const ANSWER_BYTES: u64 = 300;

fn post(
    agent: &ureq::Agent,
    url: &str,
    secret: Option<&str>,
    body: &str,
    event: &str,
    uid: &str,
) -> Result<String, String> {
    let mut req = agent
        .post(url)
        .header("Content-Type", "application/json")
        .header("Tbox-Event", event)
        .header("Tbox-Delivery", uid);
    if let Some(secret) = secret {
        let sig = message::signature(secret, body.as_bytes()).map_err(|e| format!("cannot sign: {e}"))?;
        req = req.header("Tbox-Signature-256", sig);
    }
    let mut resp = req.send(body).map_err(|e| match e {
        ureq::Error::Timeout(_) => format!("no answer within {} s", WEBHOOK_TIMEOUT.as_secs()),
        e => e.to_string(),
    })?;
    let status = resp.status();
    let text = resp.body_mut().with_config().limit(ANSWER_BYTES).read_to_string().unwrap_or_default();
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let answer =
        format!("HTTP {}{}", status.as_u16(), if text.is_empty() { String::new() } else { format!(": {text}") });
    if status.is_success() { Ok(answer) } else { Err(answer) }
}

fn send_mail(mail: &Mail, to: &str, subject: String, body: String, uid: &str) -> Result<String, String> {
    let to: Mailbox = to.parse().map_err(|e| format!("address {to:?}: {e}"))?;
    let message = Message::builder()
        .from(mail.from.clone())
        .to(to)
        .subject(subject)
        // The same id on every attempt: a mail client shows a repeat once.
        .message_id(Some(format!("<{uid}@tbox>")))
        // RFC 3834: machine-sent, so vacation responders do not answer it.
        .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("Auto-Submitted"), "auto-generated".to_owned()))
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| format!("cannot build the message: {e}"))?;
    let reply = mail.transport.send(&message).map_err(|e| format!("SMTP: {e}"))?;
    Ok(format!("SMTP {} {}", reply.code(), reply.message().collect::<Vec<_>>().join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls() {
        let ok = |u: &str, tls: bool| relay_url(u, tls).unwrap_or_else(|e| panic!("{u}: {e}"));
        assert_eq!(ok("smtp://127.0.0.1:25", false), "smtp://127.0.0.1:25");
        assert_eq!(ok("smtp://relay.example.org:587", true), "smtp://relay.example.org:587?tls=required");
        assert_eq!(
            ok("smtp://u:p@relay.example.org:587?tls=opportunistic", true),
            "smtp://u:p@relay.example.org:587?tls=required"
        );
        assert_eq!(ok("smtps://u:p@relay.example.org", false), "smtps://u:p@relay.example.org");
        assert_eq!(ok("smtp://u:p@localhost:25", false), "smtp://u:p@localhost:25");
        assert!(relay_url("smtp://u:p@relay.example.org:587", false).is_err(), "a password in the clear");
        assert!(relay_url("smtps://relay.example.org", true).is_err());
        assert!(relay_url("http://relay.example.org", false).is_err());
    }

    #[test]
    fn retries_start_within_15_seconds_grow_and_end_after_a_day() {
        let first = Duration::from_secs(10);
        assert!(retry_delay(first, 1) <= Duration::from_secs(15));
        assert!(retry_delay(first, 2) > retry_delay(first, 1));
        assert_eq!(retry_delay(first, 50), LONGEST_WAIT);
        let created = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("time").naive_utc();
        let (mut now, mut attempt) = (created, 1);
        while let Some(next) = next_attempt(first, attempt, created, now) {
            assert!(next > now);
            now = next;
            attempt += 1;
        }
        assert_eq!(now, created + RETRY_FOR, "the last attempt is made a day after the change");
        assert!((10..40).contains(&attempt), "{attempt} attempts in a day");
    }
}
