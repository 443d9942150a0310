//! Test helpers: a real `tbox-server` process on 127.0.0.1 with a fresh database of its own,
//! the admin subcommands run through the real binary, and signed HTTP requests.
//!
//! PostgreSQL tests use `TBOX_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) to create one database per test. When
//! PostgreSQL cannot be reached they are skipped with a message on stderr, unless
//! `TBOX_TEST_POSTGRES_URL` or `CI` is set: then they fail, so CI never skips them silently.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};
use serde_json::{Value, json};
use tbox_protocol::PrivateKey;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub const BIN: &str = env!("CARGO_BIN_EXE_tbox-server");

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Writes past the test harness's output capture, so a skip is seen in `cargo test` output.
pub fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique(tag: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{tag}_{}_{}_{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst))
}

/// A fresh, empty database, removed again on drop.
pub struct TestDb {
    pub url: String,
    pub dir: PathBuf,
    pg: Option<(String, String)>, // (admin url, database name)
}

impl TestDb {
    /// `None` when the backend is PostgreSQL and it is not available here (and may be skipped).
    pub fn new(backend: Backend) -> Option<TestDb> {
        let dir = std::env::temp_dir().join(unique("tbox-test"));
        std::fs::create_dir_all(&dir).unwrap();
        match backend {
            Backend::Sqlite => {
                Some(TestDb { url: format!("sqlite://{}", dir.join("tbox.db").display()), dir, pg: None })
            }
            Backend::Postgres => {
                let explicit = std::env::var("TBOX_TEST_POSTGRES_URL").ok();
                let must_run = explicit.is_some() || std::env::var_os("CI").is_some();
                let admin = explicit.unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
                let mut conn = match PgConnection::establish(&admin) {
                    Ok(c) => c,
                    Err(e) if !must_run => {
                        say(&format!(
                            "SKIPPED PostgreSQL test: cannot connect to {admin} ({e}). \
                             Set TBOX_TEST_POSTGRES_URL to run it."
                        ));
                        return None;
                    }
                    Err(e) => panic!("PostgreSQL at {admin} is required here (CI or TBOX_TEST_POSTGRES_URL set): {e}"),
                };
                let name = unique("tbox_test");
                conn.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                Some(TestDb { url: format!("{base}/{name}"), dir, pg: Some((admin, name)) })
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = &self.pg
            && let Ok(mut c) = PgConnection::establish(admin)
        {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running server.
pub struct Server {
    child: Child,
    pub base: String,
    pub db: TestDb,
    pub agent: ureq::Agent,
    log: PathBuf,
}

impl Server {
    /// Starts a server on a fresh database; `None` if the backend is unavailable here.
    pub fn start(backend: Backend) -> Option<Server> {
        Self::start_with(backend, &[])
    }

    pub fn start_with(backend: Backend, extra: &[&str]) -> Option<Server> {
        let db = TestDb::new(backend)?;
        let url = db.url.clone();
        Some(Self::start_on(db, &url, extra))
    }

    /// Starts a server logging at `level` (`RUST_LOG`; the others log warnings and errors).
    pub fn start_logging(backend: Backend, extra: &[&str], level: &str) -> Option<Server> {
        let db = TestDb::new(backend)?;
        let log = db.dir.join("server.log");
        let (child, base) = spawn(&db.url.clone(), &log, extra, level);
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        Some(Server { child, base, db, agent, log })
    }

    /// Starts a server on `db`, reached through `url` (e.g. through a proxy).
    pub fn start_on(db: TestDb, url: &str, extra: &[&str]) -> Server {
        let log = db.dir.join("server.log");
        let (child, base) = spawn(url, &log, extra, "warn");
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        Server { child, base, db, agent, log }
    }

    /// Stops the server (SIGKILL: nothing is flushed) and starts another on the same database.
    pub fn restart(&mut self, extra: &[&str]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, base) = spawn(&self.db.url, &self.log, extra, "warn");
        self.child = child;
        self.base = base;
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A line of `/proc/PID/status` or `/proc/PID/limits`, e.g. `VmHWM` (peak memory, kB).
    pub fn proc_field(&self, file: &str, field: &str) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{}/{file}", self.pid())).ok()?;
        text.lines().find(|l| l.starts_with(field)).map(|l| l[field.len()..].trim_start_matches(':').trim().to_owned())
    }

    /// What the server has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `tbox-server ARGS --database <this server's db>`.
    pub fn admin(&self, args: &[&str]) -> Output {
        Command::new(BIN).args(args).args(["--database", &self.db.url]).env("RUST_LOG", "warn").output().unwrap()
    }

    /// Like [`Server::admin`], failing the test if the command fails.
    pub fn admin_ok(&self, args: &[&str]) -> String {
        let out = self.admin(args);
        assert!(out.status.success(), "tbox-server {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes a key's public half where `builder add` can read it.
    pub fn pubkey_file(&self, key: &PrivateKey) -> String {
        let path = self.db.dir.join(format!("{}.pub", unique("key")));
        std::fs::write(&path, key.public_key().to_pem()).unwrap();
        path.display().to_string()
    }

    /// The usual fixture: projects `demo` and `other`, builder `alice` (key 0) allowed for demo.
    pub fn setup(&self) {
        self.admin_ok(&["project", "add", "demo", "--title", "Demo", "--revision-url", "https://example.org/c/{rev}"]);
        self.admin_ok(&["project", "add", "other"]);
        self.admin_ok(&["builder", "add", "alice", "--project", "demo", "--key", &self.pubkey_file(key(0))]);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs a body with the given headers.
    pub fn post(&self, body: &[u8], headers: &[(&str, &str)]) -> (u16, Value) {
        let mut req = self.agent.post(self.url("/api/v1/reports"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut resp = req.send(body).unwrap();
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")))
    }

    /// Signs `body` with `key` as `builder` and POSTs it.
    pub fn send_as(&self, builder: &str, key: &PrivateKey, body: &[u8]) -> (u16, Value) {
        let sig = key.sign(body);
        self.post(body, &[("Content-Type", "application/json"), ("Tbox-Builder", builder), ("Tbox-Signature", &sig)])
    }

    /// Sends a report as alice with key 0.
    pub fn send(&self, report: &Value) -> (u16, Value) {
        self.send_as("alice", key(0), report.to_string().as_bytes())
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let mut resp = self.agent.get(self.url(path)).call().unwrap();
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_to_string().unwrap())
    }

    pub fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, text) = self.get(path);
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")))
    }

    /// The project's builds as the API lists them.
    pub fn builds(&self, project: &str) -> Vec<Value> {
        let (status, v) = self.get_json(&format!("/api/v1/projects/{project}/builds?limit=500"));
        assert_eq!(status, 200, "{v}");
        v["builds"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            say(&format!("--- server log ---\n{}", std::fs::read_to_string(&self.log).unwrap_or_default()));
        }
    }
}

/// Starts `tbox-server serve` on 127.0.0.1:0 and reads the address it listens on. The log
/// file is appended to, so a restarted server's log follows the first one's.
fn spawn(url: &str, log: &std::path::Path, extra: &[&str], level: &str) -> (Child, String) {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--bind", "127.0.0.1:0", "--database", url, "--pool-size", "4", "--workers", "2"])
        .args(extra)
        .env("RUST_LOG", level)
        .stdout(Stdio::piped())
        .stderr(file)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| {
            panic!("server did not start: {line:?}\n{}", std::fs::read_to_string(log).unwrap_or_default())
        })
        .to_owned();
    (child, base)
}

/// Test keys, made once per test binary (key generation is the slow part).
pub fn key(i: usize) -> &'static PrivateKey {
    static KEYS: OnceLock<Vec<PrivateKey>> = OnceLock::new();
    &KEYS.get_or_init(|| (0..3).map(|_| PrivateKey::generate(&mut rand_core::OsRng, 2048).unwrap()).collect())[i]
}

/// A finished report of alice for demo, with two steps, logs and tests.
pub fn report(uuid: &str) -> Value {
    json!({
        "format": "tbox-report/1", "uuid": uuid, "project": "demo", "builder": "alice",
        "state": "finished", "result": "failure", "branch": "main", "revision": "0123456789abcdef0123",
        "started_at": "2026-11-01T10:00:00Z", "finished_at": "2026-11-01T10:05:00Z",
        "steps": [
            {"name": "build", "result": "success", "started_at": "2026-11-01T10:00:00Z",
             "finished_at": "2026-11-01T10:03:00Z", "exit_code": 0, "log": "cc -c main.c\nok\n"},
            {"name": "test", "kind": "test", "result": "failure", "started_at": "2026-11-01T10:03:00Z",
             "finished_at": "2026-11-01T10:05:00Z", "exit_code": 2, "log": "FAIL: parses_empty\n1 of 2 failed\n"}
        ],
        "tests": [
            {"suite": "parser", "name": "parses_empty", "result": "failed", "duration_ms": 4, "message": "expected [] got None"},
            {"suite": "parser", "name": "parses_one", "result": "passed", "duration_ms": 2}
        ],
        "properties": {"os": "linux", "arch": "x86_64"},
        "reporter": "tbox tests"
    })
}

/// A `started` report for the same build as [`report`].
pub fn started(uuid: &str) -> Value {
    json!({
        "format": "tbox-report/1", "uuid": uuid, "project": "demo", "builder": "alice",
        "state": "started", "branch": "main", "revision": "0123456789abcdef0123",
        "started_at": "2026-11-01T10:00:00Z", "reporter": "tbox tests"
    })
}

/// Declares each scenario `fn name(backend: Backend) -> TestResult` as two tests,
/// `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() -> $crate::common::TestResult { super::$name($crate::common::Backend::Sqlite) })*
        }
        mod postgres {
            $(#[test] fn $name() -> $crate::common::TestResult { super::$name($crate::common::Backend::Postgres) })*
        }
    };
}

/// An expiry `days` from now, as recipes and key lists write it.
pub fn in_days(days: i64) -> String {
    (chrono::Utc::now() + chrono::TimeDelta::days(days)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A recipe of `project` at `version`, expiring in 30 days, with `extra` lines before its step.
pub fn recipe(project: &str, version: u64, extra: &str) -> String {
    format!(
        "# a comment the server must keep\nformat = \"tbox-recipe/1\"\nproject = \"{project}\"\n\
         repo = \"https://example.org/demo.git\"\nbranches = [\"main\"]\nversion = {version}\n\
         expires = \"{}\"\n{extra}\n[[step]]\nname = \"build\"\nrun = \"make\"\n",
        in_days(30)
    )
}

/// PUTs a recipe's bytes, with its signature if given.
pub fn put(s: &Server, project: &str, body: &[u8], sig: Option<&str>, content_type: &str) -> (u16, Value) {
    let mut req =
        s.agent.put(s.url(&format!("/api/v1/projects/{project}/recipe"))).header("Content-Type", content_type);
    if let Some(sig) = sig {
        req = req.header("Tbox-Signature", sig);
    }
    let mut resp = req.send(body).unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")))
}

/// Publishes a recipe signed with test key `signer`.
pub fn publish(s: &Server, project: &str, body: &str, signer: usize) -> (u16, Value) {
    put(s, project, body.as_bytes(), Some(&key(signer).sign(body.as_bytes())), "application/toml")
}
