//! Notifications against real receivers on 127.0.0.1: a webhook receiver (a small HTTP server
//! in this file) and a real SMTP server (aiosmtpd). Broke and fixed are delivered signed,
//! an unchanged status says nothing, a 500 is retried, a restart loses nothing, two servers on
//! one PostgreSQL deliver once, lost and stale builders are told, and a subscription that
//! keeps failing shows on the project page.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Backend, Server, TestResult, key};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    /// Header names lower-cased.
    headers: HashMap<String, String>,
    body: String,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// A webhook receiver: records each POST and answers with the next planned status (200 once
/// the plan is used up).
struct Hook {
    port: u16,
    got: Arc<Mutex<Vec<Got>>>,
    plan: Arc<Mutex<VecDeque<u16>>>,
    delay: Arc<Mutex<Duration>>,
    stop: Arc<AtomicBool>,
}

impl Hook {
    fn start() -> Hook {
        Self::start_on(0)
    }

    fn start_on(port: u16) -> Hook {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let plan = Arc::new(Mutex::new(VecDeque::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let (g, p, s, d) = (got.clone(), plan.clone(), stop.clone(), delay.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (g, p, wait) = (g.clone(), p.clone(), *d.lock().unwrap());
                std::thread::spawn(move || serve(conn, &g, &p, wait));
            }
        });
        Hook { port, got, plan, delay, stop }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/tbox", self.port)
    }

    /// Answers only after this long (the request is recorded when it comes).
    fn answer_after(&self, wait: Duration) {
        *self.delay.lock().unwrap() = wait;
    }

    fn answer_next(&self, statuses: &[u16]) {
        self.plan.lock().unwrap().extend(statuses);
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` requests came in (at most `secs`), and returns all of them.
    fn wait_for(&self, n: usize, secs: u64) -> Vec<Got> {
        let until = Instant::now() + Duration::from_secs(secs);
        while self.got.lock().unwrap().len() < n && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        let got = self.got();
        assert!(got.len() >= n, "expected {n} webhook requests within {secs}s, got {}: {got:#?}", got.len());
        got
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(conn: TcpStream, got: &Mutex<Vec<Got>>, plan: &Mutex<VecDeque<u16>>, wait: Duration) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    let status = plan.lock().unwrap().pop_front().unwrap_or(200);
    got.lock().unwrap().push(Got { headers, body: String::from_utf8(body).unwrap() });
    std::thread::sleep(wait);
    let answer = if status == 200 { "thanks" } else { "receiver is down for maintenance" };
    let mut conn = conn;
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
}

/// HMAC-SHA256 written out from RFC 2104 on plain SHA-256, so the check does not share code
/// with the server's (OpenSSL's) implementation.
fn hmac_sha256_hex(secret: &[u8], body: &[u8]) -> String {
    let mut k = [0u8; 64];
    if secret.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(secret));
    } else {
        k[..secret.len()].copy_from_slice(secret);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(body).finalize();
    let outer = Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_test_hmac_agrees_with_githubs_documented_example() {
    assert_eq!(
        hmac_sha256_hex(b"It's a Secret to Everybody", b"Hello, World!"),
        "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    );
}

/// A finished build of `builder` on `branch`: `result` is success, failure (a test fails,
/// with an error in the log) or cancelled.
fn build(builder: &str, branch: &str, rev: &str, minute: u32, result: &str) -> Value {
    let test_result = if result == "failure" { "failure" } else { "success" };
    let log = if result == "failure" {
        "running 2 tests\ntest parser::parses_empty ... FAILED\nerror: test failed, to rerun pass `--lib`\n"
    } else {
        "running 2 tests\ntest result: ok. 2 passed\n"
    };
    json!({
        "format": "tbox-report/1", "uuid": format!("{builder}-{}-{rev}-{minute}", branch.replace('/', "_")), "project": "demo",
        "builder": builder, "state": "finished", "result": result, "branch": branch, "revision": rev,
        "started_at": format!("2026-11-01T10:{minute:02}:00Z"), "finished_at": format!("2026-11-01T10:{minute:02}:30Z"),
        "steps": [
            {"name": "build", "result": "success", "started_at": format!("2026-11-01T10:{minute:02}:00Z"),
             "finished_at": format!("2026-11-01T10:{minute:02}:10Z"), "exit_code": 0, "log": "cc -c main.c\n"},
            {"name": "test", "kind": "test", "result": test_result, "started_at": format!("2026-11-01T10:{minute:02}:10Z"),
             "finished_at": format!("2026-11-01T10:{minute:02}:30Z"), "exit_code": if result == "failure" { 101 } else { 0 },
             "log": log}
        ],
        "tests": [
            {"suite": "parser", "name": "parses_empty", "result": if result == "failure" { "failed" } else { "passed" }},
            {"suite": "parser", "name": "parses_one", "result": "passed"}
        ],
        "properties": {"os": "linux"},
        "reporter": "tbox tests"
    })
}

fn setup(s: &Server) {
    s.admin_ok(&["project", "add", "demo", "--compare-url", "https://example.org/compare/{from}...{to}"]);
    s.admin_ok(&["builder", "add", "alice", "--project", "demo", "--key", &s.pubkey_file(key(0))]);
}

fn send(s: &Server, builder: &str, k: usize, report: &Value) -> i64 {
    let (status, v) = s.send_as(builder, key(k), report.to_string().as_bytes());
    assert_eq!(status, 201, "{v}");
    v["build"].as_i64().unwrap()
}

fn wait_until(secs: u64, what: &str, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < until, "waited {secs}s for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn broke_and_fixed_are_told_once_with_a_signature(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    setup(&s);
    let hook = Hook::start();
    let out = s.admin_ok(&[
        "notify",
        "add",
        "demo",
        "--webhook",
        &hook.url(),
        "--allow-private-target",
        "--secret",
        "s3cret",
    ]);
    assert!(out.contains("subscription 1: webhook"), "{out}");

    send(&s, "alice", 0, &build("alice", "main", "aaaa000000000000", 1, "success"));
    let first = hook.wait_for(1, 20);
    assert_eq!(first[0].json()["event"], "new", "{}", first[0].body);
    assert_eq!(first[0].json()["new_status"], "success");

    let red = send(&s, "alice", 0, &build("alice", "main", "bbbb000000000000", 2, "failure"));
    let got = hook.wait_for(2, 20);
    let broke = &got[1];
    let v = broke.json();
    assert_eq!(v["event"], "broke", "{v}");
    assert_eq!(
        (v["project"].as_str(), v["builder"].as_str(), v["branch"].as_str()),
        (Some("demo"), Some("alice"), Some("main"))
    );
    assert_eq!((v["old_status"].as_str(), v["new_status"].as_str()), (Some("success"), Some("tests failed")));
    assert_eq!(v["build"]["url"], format!("{}/builds/{red}", s.base), "{v}");
    assert_eq!(v["build"]["revision"], "bbbb000000000000");
    assert_eq!(v["previous"]["revision"], "aaaa000000000000");
    assert_eq!(v["compare_url"], "https://example.org/compare/aaaa000000000000...bbbb000000000000");
    assert_eq!(v["first_error"]["text"], "test parser::parses_empty ... FAILED", "{v}");
    assert_eq!((v["first_error"]["step"].as_i64(), v["first_error"]["line"].as_i64()), (Some(2), Some(2)));
    assert_eq!(v["new_failures"], json!([{"suite": "parser", "name": "parses_empty", "flaky": false}]));
    let text = v["text"].as_str().unwrap();
    assert!(text.starts_with("demo: alice broke on main"), "{text}");
    assert!(text.contains(&format!("{}/builds/{red}", s.base)), "{text}");
    // The headers a receiver checks.
    assert_eq!(broke.header("content-type"), "application/json");
    assert_eq!(broke.header("tbox-event"), "broke");
    assert_eq!(broke.header("tbox-delivery").len(), 36, "{:?}", broke.headers);
    assert_ne!(broke.header("tbox-delivery"), got[0].header("tbox-delivery"));
    assert_eq!(
        broke.header("tbox-signature-256"),
        format!("sha256={}", hmac_sha256_hex(b"s3cret", broke.body.as_bytes()))
    );

    // Still red, a cancelled build, and the same report again: nothing to tell.
    send(&s, "alice", 0, &build("alice", "main", "cccc000000000000", 3, "failure"));
    send(&s, "alice", 0, &build("alice", "main", "dddd000000000000", 4, "cancelled"));
    let (status, _) =
        s.send_as("alice", key(0), build("alice", "main", "cccc000000000000", 3, "failure").to_string().as_bytes());
    assert_eq!(status, 200, "a repeated report is a duplicate");
    let green = send(&s, "alice", 0, &build("alice", "main", "eeee000000000000", 5, "success"));
    let got = hook.wait_for(3, 20);
    let fixed = got[2].json();
    assert_eq!(fixed["event"], "fixed", "{fixed}");
    assert_eq!((fixed["old_status"].as_str(), fixed["new_status"].as_str()), (Some("tests failed"), Some("success")));
    assert_eq!(fixed["build"]["id"], green);
    assert_eq!(
        fixed["previous"]["revision"], "cccc000000000000",
        "compared with the last red build, not the cancelled one"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(hook.got().len(), 3, "only new, broke and fixed: {:#?}", hook.got());

    let log = s.admin_ok(&["notify", "log", "demo"]);
    assert_eq!(log.matches("\tdelivered\t1 attempt(s)").count(), 3, "{log}");
    assert!(log.contains("demo: alice broke on main") && log.contains("HTTP 200: thanks"), "{log}");
    Ok(())
}

fn a_failed_delivery_is_retried_with_the_same_id(backend: Backend) -> TestResult {
    let Some(s) = Server::start_with(backend, &["--notify-first-retry", "1"]) else { return Ok(()) };
    setup(&s);
    let hook = Hook::start();
    hook.answer_next(&[500]);
    s.admin_ok(&["notify", "add", "demo", "--webhook", &hook.url(), "--allow-private-target", "--secret", "k"]);
    send(&s, "alice", 0, &build("alice", "main", "aaaa000000000000", 1, "success"));
    hook.wait_for(1, 20);
    // A change after one whose delivery failed waits for it: the receiver hears them in order.
    send(&s, "alice", 0, &build("alice", "main", "bbbb000000000000", 2, "failure"));
    let got = hook.wait_for(3, 30);
    let events: Vec<String> = got.iter().map(|g| g.json()["event"].as_str().unwrap_or("").to_owned()).collect();
    assert_eq!(events, ["new", "new", "broke"], "in order, the failed one first");
    assert_eq!(got[0].header("tbox-delivery"), got[1].header("tbox-delivery"), "a retry is the same delivery");
    assert_eq!(got[0].body, got[1].body, "and the same body");
    wait_until(10, "the log to say delivered", || {
        s.admin_ok(&["notify", "log", "demo"]).contains("\tdelivered\t2 attempt(s)")
    });
    let log = s.admin_ok(&["notify", "log", "demo"]);
    assert!(log.contains("HTTP 200"), "{log}");
    assert!(s.log_text().contains("HTTP 500"), "the failed attempt is in the server log: {}", s.log_text());
    let (_, metrics) = s.get("/metrics");
    for needle in [
        "tbox_notifications_total{kind=\"webhook\",outcome=\"delivered\"} 2",
        "tbox_notifications_total{kind=\"webhook\",outcome=\"failed\"} 1",
        "tbox_notifications_total{kind=\"email\",outcome=\"given_up\"} 0",
    ] {
        assert!(metrics.contains(needle), "/metrics lacks {needle:?}:\n{metrics}");
    }
    Ok(())
}

fn a_pending_delivery_survives_a_restart(backend: Backend) -> TestResult {
    let Some(mut s) = Server::start_with(backend, &["--notify-first-retry", "1"]) else { return Ok(()) };
    setup(&s);
    // A port nobody listens on yet: every attempt is refused.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}/hooks/tbox");
    s.admin_ok(&["notify", "add", "demo", "--webhook", &url, "--allow-private-target", "--secret", "k"]);
    send(&s, "alice", 0, &build("alice", "main", "aaaa000000000000", 1, "success"));
    wait_until(20, "a refused attempt", || {
        let log = s.admin_ok(&["notify", "log", "demo"]);
        log.contains("\tpending\t") && !log.contains("\t0 attempt(s)")
    });
    let log = s.admin_ok(&["notify", "log", "demo"]);
    assert!(log.to_lowercase().contains("refused") || log.contains("onnect"), "the answer says why: {log}");
    assert!(s.admin_ok(&["notify", "list", "demo"]).contains("last attempt failed"));

    s.restart(&["--notify-first-retry", "1"]);
    let hook = Hook::start_on(port);
    let got = hook.wait_for(1, 30);
    assert_eq!(got[0].json()["event"], "new");
    wait_until(10, "delivered", || s.admin_ok(&["notify", "log", "demo"]).contains("\tdelivered\t"));
    assert!(s.admin_ok(&["notify", "list", "demo"]).contains("\tok"), "a success clears the failing mark");
    Ok(())
}

fn a_receiver_that_never_answers_holds_up_nobody_else(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    setup(&s);
    let (slow, quick) = (Hook::start(), Hook::start());
    slow.answer_after(Duration::from_secs(30));
    s.admin_ok(&["notify", "add", "demo", "--webhook", &slow.url(), "--allow-private-target", "--secret", "k"]);
    s.admin_ok(&["notify", "add", "demo", "--webhook", &quick.url(), "--allow-private-target", "--secret", "k"]);
    send(&s, "alice", 0, &build("alice", "main", "aaaa000000000000", 1, "success"));
    send(&s, "alice", 0, &build("alice", "main", "bbbb000000000000", 2, "failure"));
    let began = Instant::now();
    let got = quick.wait_for(2, 8);
    assert_eq!(
        got.iter().map(|g| g.json()["event"].as_str().unwrap_or("").to_owned()).collect::<Vec<_>>(),
        ["new", "broke"],
        "in the order the changes happened"
    );
    slow.wait_for(1, 5);
    // Recorded as soon as answered, while the slow receiver still holds its first request: a
    // crash now would repeat nothing already delivered.
    wait_until(5, "the quick deliveries recorded", || {
        s.admin_ok(&["notify", "log", "demo", "--subscription", "2"]).matches("\tdelivered\t").count() == 2
    });
    assert!(began.elapsed() < Duration::from_secs(10), "{:?}", began.elapsed());
    let log = s.admin_ok(&["notify", "log", "demo", "--subscription", "1"]);
    assert!(log.contains("\tpending\t1 attempt(s)") && log.contains("being sent"), "{log}");
    assert_eq!(slow.got().len(), 1, "the slow one's next delivery waits for its first: {:#?}", slow.got());
    wait_until(20, "the slow receiver's attempt to time out", || {
        s.admin_ok(&["notify", "log", "demo", "--subscription", "1"]).contains("no answer within 10 s")
    });
    Ok(())
}

fn lost_builds_and_stale_builders_are_told(backend: Backend) -> TestResult {
    let Some(s) =
        Server::start_with(backend, &["--lost-after", "2s", "--stale-after", "4s", "--lost-check-every", "1"])
    else {
        return Ok(());
    };
    setup(&s);
    let hook = Hook::start();
    s.admin_ok(&[
        "notify",
        "add",
        "demo",
        "--webhook",
        &hook.url(),
        "--allow-private-target",
        "--secret",
        "k",
        "--branch",
        "main",
    ]);
    let mut started = common::started("silent-1");
    started["started_at"] = json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let id = send(&s, "alice", 0, &started);
    let got = hook.wait_for(2, 30);
    let by_event: HashMap<String, Value> =
        got.iter().map(|g| (g.json()["event"].as_str().unwrap_or("").to_owned(), g.json())).collect();
    let lost = &by_event["lost"];
    assert_eq!(lost["build"]["url"], format!("{}/builds/{id}", s.base), "{lost}");
    assert!(lost["text"].as_str().unwrap().starts_with("demo: alice went silent mid-build on main"), "{lost}");
    let stale = &by_event["stale"];
    assert_eq!(stale["branch"], Value::Null, "a whole builder goes stale: {stale}");
    assert_eq!((stale["old_status"].as_str(), stale["new_status"].as_str()), (Some("reporting"), Some("stale")));
    assert!(stale["last_report_at"].is_string());
    assert!(stale["text"].as_str().unwrap().starts_with("demo: alice has gone stale"), "{stale}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(hook.got().len(), 2, "each once: {:#?}", hook.got());
    Ok(())
}

fn a_subscription_failing_for_a_day_is_shown(backend: Backend) -> TestResult {
    let Some(s) = Server::start_with(backend, &["--notify-first-retry", "1"]) else { return Ok(()) };
    setup(&s);
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    s.admin_ok(&[
        "notify",
        "add",
        "demo",
        "--webhook",
        &format!("http://127.0.0.1:{port}/secret-path"),
        "--allow-private-target",
        "--secret",
        "k",
    ]);
    send(&s, "alice", 0, &build("alice", "main", "aaaa000000000000", 1, "success"));
    wait_until(20, "a refused attempt", || !s.admin_ok(&["notify", "log", "demo"]).contains("\t0 attempt(s)"));
    // A day passes (the clock is the database's rows): the next failed attempt is the last.
    sql(&s, "UPDATE deliveries SET created_at = created_at - INTERVAL_DAYS(2)");
    sql(&s, "UPDATE subscriptions SET failing_since = failing_since - INTERVAL_DAYS(2)");
    wait_until(20, "the delivery to be given up", || s.admin_ok(&["notify", "log", "demo"]).contains("\tfailed\t"));
    let log = s.admin_ok(&["notify", "log", "demo"]);
    assert!(log.contains("has failed every attempt since"), "{log}");
    assert!(s.admin_ok(&["notify", "list"]).contains("FAILING since"));
    assert!(s.log_text().contains("given up"), "the server log says so: {}", s.log_text());
    let (status, page) = s.get("/projects/demo");
    assert_eq!(status, 200);
    assert!(page.contains("Notifications are not getting through"), "{page}");
    assert!(page.contains("webhook #1 to 127.0.0.1"), "{page}");
    assert!(!page.contains("secret-path"), "a webhook's path is its secret: not on a public page");
    Ok(())
}

/// Runs SQL on the test's database, with `INTERVAL_DAYS(n)` standing for n days on either
/// backend.
fn sql(s: &Server, statement: &str) {
    use diesel::Connection as _;
    use diesel::connection::SimpleConnection as _;
    if let Some(path) = s.db.url.strip_prefix("sqlite://") {
        let sql = statement
            .replace("created_at - INTERVAL_DAYS(2)", "datetime(created_at, '-2 days')")
            .replace("failing_since - INTERVAL_DAYS(2)", "datetime(failing_since, '-2 days')");
        let mut c = diesel::SqliteConnection::establish(path).unwrap();
        c.batch_execute(&format!("PRAGMA busy_timeout = 10000; {sql}")).unwrap();
    } else {
        let sql = statement.replace("INTERVAL_DAYS(2)", "INTERVAL '2 days'");
        diesel::PgConnection::establish(&s.db.url).unwrap().batch_execute(&sql).unwrap();
    }
}

on_both_backends!(
    broke_and_fixed_are_told_once_with_a_signature,
    a_failed_delivery_is_retried_with_the_same_id,
    a_pending_delivery_survives_a_restart,
    a_receiver_that_never_answers_holds_up_nobody_else,
    lost_builds_and_stale_builders_are_told,
    a_subscription_failing_for_a_day_is_shown,
    a_webhook_reaches_inside_only_when_the_operator_allows_it,
);

/// A webhook may not probe the server's own network (the red team had it POST to
/// 169.254.169.254, 127.0.0.1:5432, [::1]:22 and 2130706433, and read the answers in
/// `notify log`): refused when added, and at each delivery, on the addresses it resolves to.
fn a_webhook_reaches_inside_only_when_the_operator_allows_it(backend: Backend) -> TestResult {
    let Some(s) = Server::start_with(backend, &["--notify-first-retry", "1"]) else { return Ok(()) };
    setup(&s);
    let hook = Hook::start();
    let port = hook.port;
    for target in [
        format!("http://127.0.0.1:{port}/h"),
        format!("http://2130706433:{port}/h"),
        format!("http://[::1]:{port}/h"),
        format!("http://localhost:{port}/h"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://metadata.google.internal/computeMetadata/v1/".to_owned(),
        "http://10.1.2.3/h".to_owned(),
    ] {
        let out = s.admin(&["notify", "add", "demo", "--webhook", &target, "--secret", "k"]);
        assert_eq!(out.status.code(), Some(2), "{target}: {}", String::from_utf8_lossy(&out.stderr));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("public addresses only") && err.contains("--allow-private-target"), "{target}: {err}");
    }
    assert!(!s.admin_ok(&["notify", "list", "demo"]).contains("webhook"), "nothing was subscribed");
    // Allowed by the operator, it goes there…
    s.admin_ok(&["notify", "add", "demo", "--webhook", &hook.url(), "--allow-private-target", "--secret", "k"]);
    send(&s, "alice", 0, &build("alice", "main", "aaaa000000000000", 1, "success"));
    assert_eq!(hook.wait_for(1, 20).len(), 1);
    // …but a target that led outside when it was added and leads inside now (DNS changes) is
    // refused at delivery, before anything is sent.
    sql(&s, "UPDATE subscriptions SET allow_private = FALSE");
    send(&s, "alice", 0, &build("alice", "main", "bbbb000000000000", 2, "failure"));
    wait_until(20, "a refused attempt", || s.admin_ok(&["notify", "log", "demo"]).contains("refused: 127.0.0.1"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hook.got().len(), 1, "nothing more reached the receiver");
    let log = s.admin_ok(&["notify", "log", "demo"]);
    assert!(log.contains("127.0.0.1, a loopback address"), "{log}");
    Ok(())
}

/// Two server processes on one PostgreSQL database, both sending: every delivery arrives once.
#[test]
fn two_servers_on_one_postgresql_deliver_each_notification_once() -> TestResult {
    let Some(a) = Server::start(Backend::Postgres) else { return Ok(()) };
    let holder = common::TestDb::new(Backend::Sqlite).unwrap();
    let b = Server::start_on(holder, &a.db.url, &[]);
    setup(&a);
    a.admin_ok(&["builder", "add", "bob", "--project", "demo", "--key", &a.pubkey_file(key(1))]);
    a.admin_ok(&["builder", "add", "carol", "--project", "demo", "--key", &a.pubkey_file(key(2))]);
    let hook = Hook::start();
    a.admin_ok(&["notify", "add", "demo", "--webhook", &hook.url(), "--allow-private-target", "--secret", "k"]);
    // Each builder and branch: a first build (new), then a red one (broke); sent to both servers.
    let mut n = 0;
    for (k, builder) in ["alice", "bob", "carol"].iter().enumerate() {
        for branch in ["main", "dev", "release/1.x", "release/2.x"] {
            let server = if n % 2 == 0 { &a } else { &b };
            send(server, builder, k, &build(builder, branch, "aaaa000000000000", 1, "success"));
            send(server, builder, k, &build(builder, branch, "bbbb000000000000", 2, "failure"));
            n += 2;
        }
    }
    let got = hook.wait_for(n, 60);
    std::thread::sleep(Duration::from_secs(4));
    let got_now = hook.got();
    assert_eq!(got_now.len(), n, "{} requests for {n} notifications", got_now.len());
    let ids: HashSet<&str> = got.iter().map(|g| g.header("tbox-delivery")).collect();
    assert_eq!(ids.len(), n, "every delivery id once");
    let what: HashSet<(String, String, String)> = got
        .iter()
        .map(|g| {
            let v = g.json();
            (
                v["event"].as_str().unwrap().to_owned(),
                v["builder"].as_str().unwrap().to_owned(),
                v["branch"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(what.len(), n, "each change once");
    let log = a.admin_ok(&["notify", "log", "demo", "--limit", "100"]);
    assert_eq!(log.matches("\tdelivered\t1 attempt(s)").count(), n, "{log}");
    Ok(())
}

/// aiosmtpd, a real SMTP server, printing each message it receives.
struct Smtp {
    child: std::process::Child,
    port: u16,
    out: std::path::PathBuf,
}

impl Smtp {
    fn start(dir: &std::path::Path) -> Option<Smtp> {
        let available =
            std::process::Command::new("python3").args(["-c", "import aiosmtpd"]).status().is_ok_and(|s| s.success());
        if !available {
            assert!(std::env::var_os("CI").is_none(), "aiosmtpd is required in CI (.ci/run installs it)");
            common::say("SKIPPED e-mail test: python3 -m aiosmtpd is not installed (pip install aiosmtpd)");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let out = dir.join("smtp.out");
        let child = std::process::Command::new("python3")
            .args(["-u", "-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .stdout(std::fs::File::create(&out).ok()?)
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        wait_until(20, "aiosmtpd to listen", || TcpStream::connect(("127.0.0.1", port)).is_ok());
        Some(Smtp { child, port, out })
    }

    fn received(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_break_is_mailed_through_a_real_smtp_server() -> TestResult {
    let dir = std::env::temp_dir().join(format!("tbox-smtp-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let Some(smtp) = Smtp::start(&dir) else { return Ok(()) };
    let relay = format!("smtp://127.0.0.1:{}", smtp.port);
    let Some(s) = Server::start_with(Backend::Sqlite, &["--smtp", &relay, "--mail-from", "tbox <tbox@example.org>"])
    else {
        return Ok(());
    };
    setup(&s);
    let out = s.admin_ok(&["notify", "add", "demo", "--email", "dev@example.org"]);
    assert!(out.contains("email dev@example.org"), "{out}");
    send(&s, "alice", 0, &build("alice", "main", "aaaa000000000000", 1, "success"));
    let red = send(&s, "alice", 0, &build("alice", "main", "bbbb000000000000", 2, "failure"));
    wait_until(30, "two messages", || smtp.received().matches("Subject: ").count() >= 2);
    let mail = smtp.received();
    assert!(mail.contains("Subject: demo: alice reported for the first time on main"), "{mail}");
    assert!(mail.contains("Subject: demo: alice broke on main"), "{mail}");
    assert!(mail.contains("To: dev@example.org") && mail.contains("From: tbox <tbox@example.org>"), "{mail}");
    assert!(mail.contains("Auto-Submitted: auto-generated"), "{mail}");
    assert!(mail.contains(&format!("Build: {}/builds/{red}", s.base)), "{mail}");
    assert!(mail.contains("Status: tests failed (was success)"), "{mail}");
    assert!(mail.contains("First error (step 2 \"test\", line 2): test parser::parses_empty ... FAILED"), "{mail}");
    assert!(mail.contains("Newly failing tests: parser::parses_empty"), "{mail}");
    assert!(mail.contains("Changes: https://example.org/compare/aaaa000000000000...bbbb000000000000"), "{mail}");
    wait_until(10, "the log to say delivered", || {
        s.admin_ok(&["notify", "log", "demo"]).matches("\tdelivered\t").count() == 2
    });
    assert!(s.admin_ok(&["notify", "log", "demo"]).contains("SMTP 250"));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `--smtp-starttls` against a relay that offers no STARTTLS: nothing goes out in the clear,
/// and the log says why.
#[test]
fn required_starttls_never_falls_back_to_plain_text() -> TestResult {
    let dir = std::env::temp_dir().join(format!("tbox-smtp-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let Some(smtp) = Smtp::start(&dir) else { return Ok(()) };
    let relay = format!("smtp://127.0.0.1:{}", smtp.port);
    let Some(s) = Server::start_with(
        Backend::Sqlite,
        &["--smtp", &relay, "--smtp-starttls", "--mail-from", "tbox@example.org", "--notify-first-retry", "1"],
    ) else {
        return Ok(());
    };
    setup(&s);
    s.admin_ok(&["notify", "add", "demo", "--email", "dev@example.org"]);
    send(&s, "alice", 0, &build("alice", "main", "aaaa000000000000", 1, "success"));
    wait_until(20, "a failed attempt", || {
        let log = s.admin_ok(&["notify", "log", "demo"]);
        log.contains("\tpending\t") && !log.contains("\t0 attempt(s)") && !log.contains("being sent")
    });
    let log = s.admin_ok(&["notify", "log", "demo"]);
    assert!(log.contains("SMTP") && log.to_lowercase().contains("tls"), "the answer says it is about TLS: {log}");
    assert!(!smtp.received().contains("Subject:"), "nothing was sent in the clear: {}", smtp.received());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn notify_commands_refuse_what_cannot_work() -> TestResult {
    let Some(s) = Server::start(Backend::Sqlite) else { return Ok(()) };
    setup(&s);
    let fails = |args: &[&str], code: i32, says: &str| {
        let out = s.admin(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?} should say {says:?}: {err}");
    };
    fails(&["notify", "add", "nope", "--webhook", "https://example.org/h"], 1, "no project named \"nope\"");
    fails(&["notify", "add", "demo", "--webhook", "ftp://example.org/h"], 2, "http:// or https://");
    fails(&["notify", "add", "demo", "--webhook", "not a url"], 2, "not a URL");
    fails(&["notify", "add", "demo", "--webhook", "http://localhost:99999/h"], 2, "not a port number");
    fails(&["notify", "add", "demo", "--email", "not an address"], 2, "not an e-mail address");
    fails(&["notify", "add", "demo", "--email", "dev@"], 2, "name@example.org");
    fails(&["notify", "log", "demo", "--limit", "0"], 2, "--limit");
    fails(&["notify", "log", "demo", "--subscription", "7"], 1, "no subscription 7");
    fails(&["notify", "add", "demo", "--email", "a@example.org", "--builder", "zed"], 1, "no builder named \"zed\"");
    fails(&["notify", "add", "demo"], 2, "--webhook");
    fails(
        &["notify", "add", "demo", "--webhook", "https://e.org/h", "--email", "a@example.org"],
        2,
        "cannot be used with",
    );
    fails(&["notify", "remove", "99"], 1, "no subscription 99");
    fails(&["notify", "log", "nope"], 1, "no project named");
    fails(&["serve", "--smtp", "smtp://127.0.0.1:25"], 2, "--mail-from");
    fails(&["serve", "--smtp", "http://127.0.0.1:25", "--mail-from", "a@example.org"], 2, "smtp:// or smtps://");

    // Without --secret, one is made and shown once.
    let out = s.admin_ok(&[
        "notify",
        "add",
        "demo",
        "--webhook",
        "https://chat.example.org/hooks/x",
        "--builder",
        "alice",
        "--branch",
        "main",
    ]);
    let secret = out.lines().find_map(|l| l.strip_prefix("secret: ")).unwrap_or("");
    assert_eq!(secret.len(), 48, "{out}");
    let list = s.admin_ok(&["notify", "list"]);
    assert!(
        list.contains("1\tdemo\twebhook https://chat.example.org/hooks/x\tbuilder alice, branch main\tok"),
        "{list}"
    );
    assert!(!list.contains(secret), "secrets are not listed");
    assert!(s.admin_ok(&["notify", "remove", "1"]).contains("subscription 1 removed"));
    assert!(!s.admin_ok(&["notify", "list"]).contains("chat.example.org"));
    assert!(s.admin_ok(&["notify", "list", "demo"]).contains("no subscriptions"));
    Ok(())
}
