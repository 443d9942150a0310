//! Commit statuses on forges, against a receiver in this file that speaks each forge's
//! documented API (GitHub's and Gitea's `POST /repos/{owner}/{repo}/statuses/{sha}`, GitLab's
//! `POST /projects/{id}/statuses/{sha}`, their auth headers and states): pending from the
//! request on, a status per builder and a summary, in order, retried after a 500, a rate limit
//! waited out, a 422 given up at once, 1,000 per context at most, once across two servers on
//! one PostgreSQL, and the token in no output.
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

const TOKEN: &str = "tok_5ecret_never_shown_0123456789";
const SHA: &str = "4c6e8c0a1b2c3d4e5f60718293a4b5c6d7e8f901";

/// One status a forge accepted or refused.
#[derive(Debug, Clone)]
struct Got {
    path: String,
    headers: HashMap<String, String>,
    body: Value,
    /// The status code it was answered with.
    answer: u16,
    at: Instant,
}

impl Got {
    /// The context (GitHub, Gitea) or name (GitLab).
    fn context(&self) -> &str {
        self.body["context"].as_str().or_else(|| self.body["name"].as_str()).unwrap_or("")
    }
    fn state(&self) -> &str {
        self.body["state"].as_str().unwrap_or("")
    }
}

/// A forge: checks path, auth and body as its API documents them (404, 401, 422 otherwise),
/// and answers planned statuses first (with their headers), then 201.
struct Forge {
    kind: &'static str,
    port: u16,
    got: Arc<Mutex<Vec<Got>>>,
    plan: Arc<Mutex<VecDeque<(u16, &'static str)>>>,
    stop: Arc<AtomicBool>,
}

impl Forge {
    fn start(kind: &'static str) -> Forge {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (got, plan, stop) = (Arc::default(), Arc::default(), Arc::new(AtomicBool::new(false)));
        let (g, p, s): (Arc<Mutex<Vec<Got>>>, Arc<Mutex<VecDeque<_>>>, _) =
            (Arc::clone(&got), Arc::clone(&plan), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (g, p) = (g.clone(), p.clone());
                std::thread::spawn(move || serve(kind, conn, &g, &p));
            }
        });
        Forge { kind, port, got, plan, stop }
    }

    fn api(&self) -> String {
        match self.kind {
            "github" => format!("http://127.0.0.1:{}", self.port),
            "gitlab" => format!("http://127.0.0.1:{}/api/v4", self.port),
            _ => format!("http://127.0.0.1:{}/api/v1", self.port),
        }
    }

    fn answer_next(&self, answers: &[(u16, &'static str)]) {
        self.plan.lock().unwrap().extend(answers);
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until the statuses accepted in `context` end with `state` (at most `secs`).
    fn wait_for(&self, context: &str, state: &str, secs: u64) -> Vec<Got> {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.got();
            let last = got.iter().rev().find(|g| g.context() == context && g.answer < 300);
            if last.is_some_and(|g| g.state() == state) {
                return got;
            }
            assert!(Instant::now() < until, "no {state:?} in {context:?} within {secs}s: {:#?}", summary(&got));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the summary context's latest status says `description`.
    fn wait_for_summary(&self, description: &str, secs: u64) -> Vec<Got> {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.got();
            let last = got.iter().rev().find(|g| g.context() == "tbox" && g.answer < 300);
            if last.is_some_and(|g| g.body["description"] == description) {
                return got;
            }
            assert!(Instant::now() < until, "no summary {description:?} within {secs}s: {:#?}", summary(&got));
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Forge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// (context, state, description) of each accepted status, in order.
fn summary(got: &[Got]) -> Vec<(String, String, String)> {
    got.iter()
        .filter(|g| g.answer < 300)
        .map(|g| {
            (g.context().to_owned(), g.state().to_owned(), g.body["description"].as_str().unwrap_or("").to_owned())
        })
        .collect()
}

/// The states accepted in one context, in order.
fn states(got: &[Got], context: &str) -> Vec<String> {
    got.iter().filter(|g| g.answer < 300 && g.context() == context).map(|g| g.state().to_owned()).collect()
}

fn serve(kind: &str, conn: TcpStream, got: &Mutex<Vec<Got>>, plan: &Mutex<VecDeque<(u16, &'static str)>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
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
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (status, extra, text) = judge(kind, &method, &path, &headers, &body, plan);
    got.lock().unwrap().push(Got { path, headers, body, answer: status, at: Instant::now() });
    let mut conn = conn;
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
}

/// What the forge answers: its documented checks first, then the plan.
fn judge(
    kind: &str,
    method: &str,
    path: &str,
    headers: &HashMap<String, String>,
    body: &Value,
    plan: &Mutex<VecDeque<(u16, &'static str)>>,
) -> (u16, String, String) {
    let refuse = |status: u16, message: &str| (status, String::new(), json!({"message": message}).to_string());
    let (prefix, auth, states, name_field) = match kind {
        "github" => (
            "/repos/tbox-ci/demo/statuses/",
            ("authorization", format!("Bearer {TOKEN}")),
            &["error", "failure", "pending", "success"][..],
            "context",
        ),
        "gitea" => (
            "/api/v1/repos/tbox-ci/demo/statuses/",
            ("authorization", format!("token {TOKEN}")),
            &["pending", "success", "error", "failure", "warning"][..],
            "context",
        ),
        _ => (
            "/api/v4/projects/tbox-ci%2Fsub%2Fdemo/statuses/",
            ("private-token", TOKEN.to_owned()),
            &["pending", "running", "success", "failed", "canceled"][..],
            "name",
        ),
    };
    if method != "POST" || !path.starts_with(prefix) || path[prefix.len()..].len() != 40 {
        return refuse(404, "Not Found");
    }
    if headers.get(auth.0) != Some(&auth.1) {
        return refuse(401, "Bad credentials");
    }
    if headers.get("user-agent").is_none_or(|u| !u.starts_with("tbox-server/")) {
        return refuse(403, "a User-Agent is required");
    }
    let state_ok = body["state"].as_str().is_some_and(|s| states.contains(&s));
    let description_ok = body["description"].as_str().is_some_and(|d| d.chars().count() <= 140);
    let url_ok = body["target_url"].as_str().is_some_and(|u| u.starts_with("http"));
    if !state_ok || !description_ok || !url_ok || body[name_field].as_str().is_none_or(str::is_empty) {
        return refuse(422, "Validation Failed");
    }
    match plan.lock().unwrap().pop_front() {
        Some((status, extra)) => {
            (status, extra.to_owned(), json!({"message": format!("planned {status}")}).to_string())
        }
        None => (201, String::new(), json!({"id": 1, "state": body["state"]}).to_string()),
    }
}

fn setup(s: &Server, forge: &Forge) -> String {
    s.admin_ok(&["project", "add", "demo"]);
    for (i, b) in ["alice", "bob", "carol"].iter().enumerate() {
        s.admin_ok(&["builder", "add", b, "--project", "demo", "--key", &s.pubkey_file(key(i))]);
    }
    let token_file = s.db.dir.join("forge-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let repo = if forge.kind == "gitlab" { "tbox-ci/sub/demo" } else { "tbox-ci/demo" };
    s.admin_ok(&[
        "forge",
        "add",
        "demo",
        "--kind",
        forge.kind,
        "--api",
        &forge.api(),
        "--repo",
        repo,
        "--token-file",
        &token_file.display().to_string(),
        "--allow-private-target",
    ])
}

fn report(builder: &str, state: &str, result: &str, minute: u32) -> Value {
    let mut r = json!({
        "format": "tbox-report/1", "uuid": format!("{builder}-{SHA}-{minute}"), "project": "demo",
        "builder": builder, "state": state, "branch": "main", "revision": SHA,
        "started_at": format!("2026-11-01T10:{minute:02}:00Z"), "reporter": "tbox tests",
    });
    if state == "finished" {
        r["result"] = json!(result);
        r["finished_at"] = json!(format!("2026-11-01T10:{minute:02}:30Z"));
        r["steps"] = json!([{"name": "test", "kind": "test", "result": result,
            "started_at": format!("2026-11-01T10:{minute:02}:00Z"), "finished_at": format!("2026-11-01T10:{minute:02}:30Z"),
            "exit_code": if result == "success" { 0 } else { 1 }, "log": "ok\n"}]);
    }
    r
}

fn send(s: &Server, k: usize, r: &Value) -> i64 {
    let (status, v) = s.send_as(r["builder"].as_str().unwrap(), key(k), r.to_string().as_bytes());
    assert_eq!(status, 201, "{v}");
    v["build"].as_i64().unwrap()
}

/// A maintainer's pull request, from the request to its last status, on GitHub.
fn a_pull_request_is_pending_from_the_request_on_then_per_builder_and_summary(backend: Backend) -> TestResult {
    let Some(s) = Server::start_logging(backend, &["--notify-first-retry", "1"], "info") else { return Ok(()) };
    let forge = Forge::start("github");
    let out = setup(&s, &forge);
    assert!(out.contains("forge 1: github") && !out.contains(TOKEN), "{out}");

    // Requests are built from the project's signed recipe.
    s.admin_ok(&["project", "key", "add", "demo", "--key", &s.pubkey_file(key(1))]);
    assert_eq!(common::publish(&s, "demo", &common::recipe("demo", 1, ""), 1).0, 201);
    // An admin cannot ask for a revision (no volunteer would build it unsigned) ...
    let out = s.admin(&["request", "add", "demo", "--revision", SHA, "--builders", "2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tbox-report request"));
    // ... the project does, signed with its key.
    let body = json!({"project": "demo", "branch": "main", "revision": SHA, "builders": 2,
        "created_at": chrono::Utc::now().to_rfc3339()})
    .to_string();
    let mut resp = ureq::Agent::from(ureq::Agent::config_builder().http_status_as_error(false).build())
        .post(s.url("/api/v1/projects/demo/requests"))
        .header("Content-Type", "application/json")
        .header("Tbox-Signature", &key(1).sign(body.as_bytes()))
        .send(&body)?;
    assert_eq!(resp.status().as_u16(), 201, "{}", resp.body_mut().read_to_string()?);
    let got = forge.wait_for("tbox", "pending", 20);
    assert!(got[0].body["description"].as_str().unwrap().contains("waiting for builders"), "{:?}", got[0].body);
    assert!(got[0].body["target_url"].as_str().unwrap().ends_with("/projects/demo/requests"));
    assert_eq!(got[0].headers["accept"], "application/vnd.github+json");

    send(&s, 0, &report("alice", "started", "", 1));
    forge.wait_for("tbox/alice", "pending", 20);
    let green = send(&s, 0, &report("alice", "finished", "success", 1));
    forge.wait_for("tbox/alice", "success", 20);
    let red = send(&s, 1, &report("bob", "finished", "failure", 2));
    let got = forge.wait_for("tbox/bob", "failure", 20);
    // Still pending: the request waits for its builders (these reports answered no lease).
    let last_summary = got.iter().rev().find(|g| g.context() == "tbox").unwrap();
    assert_eq!(last_summary.state(), "pending", "{:#?}", summary(&got));
    let alice = got.iter().find(|g| g.context() == "tbox/alice" && g.state() == "success").unwrap();
    assert!(alice.body["target_url"].as_str().unwrap().ends_with(&format!("/builds/{green}")));

    s.admin_ok(&["request", "cancel", "1"]);
    let got = forge.wait_for("tbox", "failure", 20);
    let last = got.iter().rev().find(|g| g.context() == "tbox").unwrap();
    assert_eq!(last.body["description"], "failed on bob (1 of 2 builders)");
    assert!(last.body["target_url"].as_str().unwrap().ends_with(&format!("/builds/{red}")));
    assert_eq!(states(&got, "tbox/alice"), ["pending", "success"]);
    assert_eq!(states(&got, "tbox/bob"), ["failure"]);
    assert!(states(&got, "tbox").iter().all(|s| s == "pending" || s == "failure"));
    assert!(got.iter().all(|g| g.path == format!("/repos/tbox-ci/demo/statuses/{SHA}")));

    // The summary turns green when bob's next build is.
    send(&s, 1, &report("bob", "finished", "success", 3));
    let got = forge.wait_for("tbox", "success", 20);
    assert_eq!(got.iter().rev().find(|g| g.context() == "tbox").unwrap().body["description"], "success on 2 builders");

    // Nothing said twice in a row in one context; nothing sent but statuses.
    for context in ["tbox", "tbox/alice", "tbox/bob"] {
        let said: Vec<(String, String)> = got
            .iter()
            .filter(|g| g.context() == context)
            .map(|g| (g.state().to_owned(), g.body["description"].to_string()))
            .collect();
        assert!(said.windows(2).all(|w| w[0] != w[1]), "{context}: {said:?}");
    }
    // The token is in no output.
    for args in [&["forge", "list"][..], &["notify", "list"], &["notify", "log", "demo"]] {
        let out = s.admin_ok(args);
        assert!(!out.contains(TOKEN), "{args:?}: {out}");
    }
    let log = s.admin_ok(&["notify", "log", "demo"]);
    assert!(log.contains("summary at 4c6e8c0a1b2c: success (success on 2 builders)"), "{log}");
    assert!(log.contains("(forge)\tdelivered"), "{log}");
    let (_, page) = s.get("/projects/demo");
    assert!(!page.contains(TOKEN));
    assert!(!s.log_text().contains(TOKEN), "the server log holds the token");
    Ok(())
}

/// GitLab's and Gitea's shapes: path, auth header, states in their words.
fn gitlab_and_gitea_get_their_own_words(backend: Backend) -> TestResult {
    for kind in ["gitlab", "gitea"] {
        let Some(s) = Server::start(backend) else { return Ok(()) };
        let forge = Forge::start(kind);
        setup(&s, &forge);
        send(&s, 0, &report("alice", "started", "", 1));
        let running = if kind == "gitlab" { "running" } else { "pending" };
        forge.wait_for("tbox/alice", running, 20);
        send(&s, 0, &report("alice", "finished", "failure", 1));
        let failed = if kind == "gitlab" { "failed" } else { "failure" };
        let got = forge.wait_for("tbox", failed, 20);
        assert_eq!(states(&got, "tbox/alice"), [running, failed], "{kind}");
        assert!(got.iter().all(|g| g.answer == 201), "{kind}: {:#?}", summary(&got));
    }
    Ok(())
}

/// A 500 is retried before anything later is sent; a rate limit is waited out; a 422 is given up
/// at once and the statuses after it still go.
fn retries_rate_limits_and_refusals(backend: Backend) -> TestResult {
    let Some(s) = Server::start_with(backend, &["--notify-first-retry", "1"]) else { return Ok(()) };
    let forge = Forge::start("github");
    setup(&s, &forge);
    forge.answer_next(&[(500, ""), (429, "Retry-After: 3\r\n")]);
    send(&s, 0, &report("alice", "started", "", 1));
    send(&s, 0, &report("alice", "finished", "success", 1));
    let got = forge.wait_for("tbox", "success", 40);
    let answers: Vec<u16> = got.iter().map(|g| g.answer).collect();
    assert_eq!(&answers[..3], [500, 429, 201], "{answers:?}");
    assert_eq!(got[0].body, got[1].body, "the failed status is sent again before any later one");
    assert_eq!(got[1].body, got[2].body);
    let waited = got[2].at - got[1].at;
    assert!(waited >= Duration::from_millis(2900), "Retry-After: 3 was not waited out ({waited:?})");
    assert_eq!(states(&got, "tbox/alice"), ["pending", "success"]);

    // A refusal (422: e.g. GitHub's "This SHA and context has reached the maximum number of
    // statuses") is given up at once, and what follows is still sent.
    let before = forge.got().len();
    forge.answer_next(&[(422, "")]);
    send(&s, 1, &report("bob", "finished", "failure", 2));
    let got = forge.wait_for("tbox", "failure", 20);
    assert_eq!(got[before].answer, 422);
    assert_eq!(got.iter().filter(|g| g.answer == 422).count(), 1, "a 422 is not retried");
    let log = s.admin_ok(&["notify", "log", "demo"]);
    assert!(log.contains("HTTP 422") && log.contains("not retried") && log.contains("\tfailed\t1 attempt(s)"), "{log}");
    Ok(())
}

/// A cancelled build, or one that could not run, does not turn the summary red when another
/// builder answered; a dispute is `error` until the builders agree, then the verdict stands
/// and the outvoted builder is named, not counted.
fn only_answers_about_the_code_decide_the_summary(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    let forge = Forge::start("github");
    setup(&s, &forge);
    send(&s, 0, &report("alice", "finished", "success", 1));
    send(&s, 1, &report("bob", "finished", "cancelled", 2));
    forge.wait_for("tbox/bob", "error", 20);
    let got = forge.wait_for_summary("success on 1 builder; not counted: bob cancelled", 20);
    assert_eq!(got.iter().rev().find(|g| g.context() == "tbox").unwrap().state(), "success");

    // carol fails and her build is disputed by a request asking for agreement: error ...
    sql(
        &s,
        &format!(
            "INSERT INTO build_requests (project_id, branch, revision, builders, state, requested_by, created_at, \
             quorum, verdict) VALUES (1, 'main', '{SHA}', 2, 'open', 'test', '2026-11-01 10:00:00', 2, 'disputed')"
        ),
    );
    let carol = send(&s, 2, &report("carol", "finished", "failure", 3));
    sql(&s, &format!("UPDATE builds SET agreement = 'disputed' WHERE id = {carol}"));
    send(&s, 0, &report("alice", "finished", "success", 4));
    let got = forge.wait_for("tbox", "error", 20);
    let last = got.iter().rev().find(|g| g.context() == "tbox").unwrap();
    assert!(last.body["description"].as_str().unwrap().starts_with("disputed: builders disagree"), "{last:?}");
    // ... until alice and bob agree on success: carol is outvoted.
    sql(&s, "UPDATE build_requests SET verdict = 'agreed', state = 'done'");
    send(&s, 1, &report("bob", "finished", "success", 5));
    let got = forge.wait_for_summary("success on 2 builders; not counted: carol outvoted", 20);
    assert_eq!(got.iter().rev().find(|g| g.context() == "tbox").unwrap().state(), "success");
    Ok(())
}

/// `forge add --api`: the token never crosses the internet in clear, the URL holds no
/// credentials, query or fragment, and one forge is one forge however its URL is written.
fn forge_api_urls_that_would_leak_or_break_are_refused(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    s.admin_ok(&["project", "add", "demo"]);
    let token_file = s.db.dir.join("forge-token");
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    let token = token_file.display().to_string();
    let add = |api: &str, private: bool| {
        let mut args =
            vec!["forge", "add", "demo", "--kind", "github", "--api", api, "--repo", "o/r", "--token-file", &token];
        if private {
            args.push("--allow-private-target");
        }
        let out = s.admin(&args);
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = add("http://8.8.8.8", false);
    assert!(code == Some(2) && err.contains("unencrypted"), "{code:?} {err}");
    let (code, err) = add("http://user:s3cret@127.0.0.1:1", true);
    assert!(code == Some(2) && err.contains("no user or password"), "{code:?} {err}");
    for api in ["http://127.0.0.1:1/x?y=1", "http://127.0.0.1:1/x#frag"] {
        let (code, err) = add(api, true);
        assert!(code == Some(2) && err.contains("no query or fragment"), "{api}: {code:?} {err}");
    }
    let (code, err) = add("ftp://127.0.0.1/", true);
    assert!(code == Some(2) && err.contains("forge") && !err.contains("webhook"), "{code:?} {err}");
    assert_eq!(add("http://127.0.0.1:1/api/v1/", true).0, Some(0));
    let (code, err) = add("http://127.0.0.1:1/api/v1", true);
    assert!(code != Some(0) && err.contains("already"), "{code:?} {err}");
    let list = s.admin_ok(&["forge", "list"]);
    assert!(list.contains("http://127.0.0.1:1/api/v1") && !list.contains("/api/v1/"), "{list}");
    Ok(())
}

/// GitHub keeps 1,000 statuses per SHA and context: past that, only the summary changes.
fn a_context_takes_a_thousand_statuses_then_only_the_summary_changes(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    let forge = Forge::start("github");
    setup(&s, &forge);
    send(&s, 0, &report("alice", "finished", "success", 1));
    forge.wait_for("tbox", "success", 20);
    // 999 more statuses said in alice's context (as if she had built it 500 times).
    sql(
        &s,
        &format!(
            "INSERT INTO notifications (project_id, event_key, event, builder_id, facts, created_at, revision) \
             SELECT 1, 'status/filler/' || i, 'status', 1, '{{}}', '2026-11-01 10:00:00', '{SHA}' FROM \
             (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 999) SELECT i FROM n) AS n"
        ),
    );
    let before = forge.got().len();
    send(&s, 0, &report("alice", "finished", "failure", 2));
    let got = forge.wait_for("tbox", "failure", 20);
    assert!(
        got[before..].iter().all(|g| g.context() == "tbox"),
        "only the summary changed: {:#?}",
        summary(&got[before..])
    );
    Ok(())
}

fn sql(s: &Server, statement: &str) {
    use diesel::Connection as _;
    use diesel::connection::SimpleConnection as _;
    if let Some(path) = s.db.url.strip_prefix("sqlite://") {
        let mut c = diesel::SqliteConnection::establish(path).unwrap();
        c.batch_execute(&format!("PRAGMA busy_timeout = 10000; {statement}")).unwrap();
    } else {
        diesel::PgConnection::establish(&s.db.url).unwrap().batch_execute(statement).unwrap();
    }
}

on_both_backends!(
    a_pull_request_is_pending_from_the_request_on_then_per_builder_and_summary,
    gitlab_and_gitea_get_their_own_words,
    retries_rate_limits_and_refusals,
    a_context_takes_a_thousand_statuses_then_only_the_summary_changes,
    only_answers_about_the_code_decide_the_summary,
    forge_api_urls_that_would_leak_or_break_are_refused,
);

/// Two server processes on one PostgreSQL, reports of one revision to both at once: every
/// status arrives once, each context in order, and the summary ends as the builds do.
#[test]
fn two_servers_on_one_postgresql_post_each_status_once() -> TestResult {
    let Some(a) = Server::start(Backend::Postgres) else { return Ok(()) };
    let holder = common::TestDb::new(Backend::Sqlite).unwrap();
    let b = Server::start_on(holder, &a.db.url, &[]);
    let forge = Forge::start("github");
    setup(&a, &forge);
    let threads: Vec<_> = ["alice", "bob", "carol"]
        .into_iter()
        .enumerate()
        .map(|(k, builder)| {
            let (ua, ub) = (a.url("/api/v1/reports"), b.url("/api/v1/reports"));
            let result = if builder == "carol" { "failure" } else { "success" };
            let reports = [report(builder, "started", "", 1), report(builder, "finished", result, 1)];
            std::thread::spawn(move || {
                for (i, r) in reports.iter().enumerate() {
                    let url = if (k + i) % 2 == 0 { &ua } else { &ub };
                    let body = r.to_string();
                    let sig = key(k).sign(body.as_bytes());
                    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                    let resp = agent
                        .post(url)
                        .header("Content-Type", "application/json")
                        .header("Tbox-Builder", builder)
                        .header("Tbox-Signature", &sig)
                        .send(&body)
                        .unwrap();
                    assert_eq!(resp.status().as_u16(), 201);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let got = forge.wait_for("tbox", "failure", 60);
    std::thread::sleep(Duration::from_secs(3));
    let got_now = forge.got();
    assert_eq!(got_now.len(), got.len(), "nothing more came");
    let uids: HashSet<String> =
        got.iter().map(|g| format!("{}{}{}", g.context(), g.state(), g.body["description"])).collect();
    assert_eq!(uids.len(), got.len(), "no status twice: {:#?}", summary(&got));
    for builder in ["alice", "bob", "carol"] {
        let want = if builder == "carol" { "failure" } else { "success" };
        assert_eq!(states(&got, &format!("tbox/{builder}")), ["pending", want], "{builder}");
    }
    assert_eq!(
        got.iter().rev().find(|g| g.context() == "tbox").unwrap().body["description"],
        "failed on carol (1 of 3 builders)"
    );
    Ok(())
}
