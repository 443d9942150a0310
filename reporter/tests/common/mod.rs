//! What the reporter's integration tests share: a world with a real server on 127.0.0.1 (in
//! this process, on a fresh SQLite database), a maintainer with the projects' keys and git
//! repositories, volunteers' homes running the real `tbox-report` binary, and a hostile mirror
//! (`Mirror`) in front of the server that answers what a test tells it to.
#![allow(clippy::unwrap_used, missing_docs, dead_code)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser as _;
use serde_json::Value;
use tbox_protocol::PrivateKey;
use tbox_server::cli::{Cli, Command as ServerCommand};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub const BIN: &str = env!("CARGO_BIN_EXE_tbox-report");

/// The reporter the volunteers and maintainers run: this build's, or `TBOX_REPORT_BIN` (to run
/// the attacks against an older build and see them get through).
pub fn reporter() -> String {
    std::env::var("TBOX_REPORT_BIN").unwrap_or_else(|_| BIN.to_owned())
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Whether bubblewrap can be used here. Without it the sandbox tests say they were skipped,
/// except in CI, which installs it: there they must run.
pub fn have_bwrap() -> bool {
    let ok = Command::new("bwrap").args(["--ro-bind", "/", "/", "true"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "bubblewrap is required in CI (apt-get install bubblewrap)");
        let _ = writeln!(std::io::stderr(), "SKIPPED recipe test: bubblewrap (bwrap) is not installed or not usable");
    }
    ok
}

/// Held by tests that set small disk limits: the watcher also counts what the filesystem
/// holding the build gains while a step runs (it sees files no walk finds), so another test
/// writing hundreds of MiB at the same moment would count against them too.
pub fn small_limits() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn key() -> PrivateKey {
    PrivateKey::generate(&mut rand_core::OsRng, 2048).unwrap()
}

/// A world: a server with projects, a maintainer with the projects' keys and git repositories,
/// and one volunteer's home.
pub struct World {
    pub dir: PathBuf,
    pub db: String,
    pub base: String,
    pub agent: ureq::Agent,
    /// Run the volunteer as this uid (nobody) when the tests run as root: the limits and the
    /// sandbox are tried as an ordinary volunteer has them.
    pub as_user: Option<u32>,
    /// The volunteer's PATH, when not the tests' own.
    pub path: Option<String>,
}

impl World {
    pub fn new(projects: &[&str]) -> World {
        World::new_with(projects, &[])
    }

    /// A world whose server gets these extra `serve` options.
    pub fn new_with(projects: &[&str], serve: &[&str]) -> World {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("tbox-recipes-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["home", "maint"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let db = format!("sqlite://{}", dir.join("server.db").display());
        let mut w = World {
            base: String::new(),
            db,
            dir,
            agent: ureq::Agent::config_builder().http_status_as_error(false).build().into(),
            as_user: None,
            path: None,
        };
        for p in projects {
            w.admin(&["project", "add", p]);
        }
        w.base = start_server(&w.db, serve);
        w
    }

    /// Records a request no key signed, naming a revision: what a taken-over server could do
    /// (`tbox-server request add` refuses to).
    pub fn unsigned_request(&self, project: &str, revision: &str) {
        use tbox_server::db;
        let pool = db::pool(&db::DatabaseUrl::parse(&self.db).unwrap(), 1).unwrap();
        let mut conn = pool.get().unwrap();
        let p = db::projects::by_name(&mut conn, project).unwrap().unwrap();
        let ask = tbox_server::api::requests::Ask {
            branch: tbox_protocol::BranchName::parse("main").unwrap(),
            revision: Some(tbox_protocol::Revision::parse(revision).unwrap()),
            builders: 1,
            requires: Vec::new(),
            deadline: None,
            quorum: None,
            distinct: tbox_protocol::Distinct::default(),
        };
        tbox_server::api::requests::record(&mut conn, p.id, &ask, None, "admin", chrono::Utc::now()).unwrap();
    }

    pub fn admin(&self, args: &[&str]) {
        let mut argv = vec!["tbox-server"];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--database", &self.db]);
        tbox_server::cmd::run(Cli::try_parse_from(argv).unwrap()).unwrap();
    }

    /// Makes a project key (written 0600 for `recipe sign`), registers it, publishes the
    /// project's first key list (with the binary, as a maintainer does: volunteers run nothing
    /// of a project without one), and makes a git repository with one commit on `main`.
    /// Returns the key's path.
    pub fn maintain(&self, project: &str) -> (PrivateKey, PathBuf) {
        let k = key();
        let path = self.dir.join("maint").join(format!("{project}.pem"));
        tbox_report::keyfile::write_new(&path, &k).unwrap();
        let public = self.dir.join("maint").join(format!("{project}.pub"));
        std::fs::write(&public, k.public_key().to_pem()).unwrap();
        self.admin(&["project", "key", "add", project, "--key", public.to_str().unwrap()]);
        let list = self.keys_file(project);
        let (list, key_path) = (list.to_str().unwrap(), path.to_str().unwrap());
        let out = self.maintainer(&["keys", "sign", list, "--key", key_path, "--project", project]);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = self.maintainer(&["keys", "publish", list, "--server", &self.base]);
        assert!(out.status.success(), "{}", stderr(&out));
        let repo = self.repo(project);
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        std::fs::write(repo.join("hello.txt"), "hello\n").unwrap();
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-qm", "first"]);
        (k, path)
    }

    /// The maintainer's copy of the project's key list.
    pub fn keys_file(&self, project: &str) -> PathBuf {
        self.dir.join("maint").join(format!("{project}-keys.toml"))
    }

    pub fn repo(&self, project: &str) -> PathBuf {
        self.dir.join("repos").join(project)
    }

    /// Writes a recipe file for `project` (source: its repo) and returns its path.
    pub fn recipe(&self, project: &str, name: &str, body: &str) -> PathBuf {
        let path = self.dir.join("maint").join(name);
        std::fs::write(&path, recipe_text(project, &format!("file://{}", self.repo(project).display()), body)).unwrap();
        path
    }

    /// `tbox-report` as the maintainer runs it.
    pub fn maintainer(&self, args: &[&str]) -> Output {
        Command::new(reporter()).args(args).env("HOME", self.dir.join("maint")).output().unwrap()
    }

    /// Signs (with the binary) and publishes (with the binary) a recipe.
    pub fn publish(&self, recipe: &Path, key: &Path) {
        let out = self.maintainer(&["recipe", "sign", recipe.to_str().unwrap(), "--key", key.to_str().unwrap()]);
        assert!(out.status.success(), "sign: {}", stderr(&out));
        // --yes: tests publish recipes that cut volunteers off on purpose (a new repo, a short
        // expiry); the warning itself is tried in volunteer_day.rs.
        let out = self.maintainer(&["recipe", "publish", recipe.to_str().unwrap(), "--server", &self.base, "--yes"]);
        assert!(out.status.success(), "publish: {}", stderr(&out));
    }

    /// `tbox-report` the way the volunteer (or cron) runs it: a bare environment.
    pub fn volunteer(&self, args: &[&str]) -> Output {
        self.volunteer_at("home", args).output().unwrap()
    }

    /// `tbox-report` as the volunteer whose HOME is `home` (under this world) runs it.
    /// The same world, its volunteer an ordinary user (nobody) when the tests run as root.
    pub fn unprivileged(mut self) -> World {
        if nix::unistd::geteuid().is_root() {
            self.as_user = Some(65534);
        }
        self
    }

    pub fn volunteer_at(&self, home: &str, args: &[&str]) -> Command {
        let mut c = self.command_as_volunteer(home, &reporter());
        c.args(args);
        c
    }

    /// `program` as the volunteer whose HOME is `home` runs it (or cron): a bare environment.
    pub fn command_as_volunteer(&self, home: &str, program: &str) -> Command {
        let mut c = Command::new(program);
        if let Some(uid) = self.as_user {
            // Everything the volunteer touches is theirs, as on a real machine.
            for e in walkdir::WalkDir::new(&self.dir).into_iter().flatten() {
                let _ = std::os::unix::fs::lchown(e.path(), Some(uid), Some(uid));
            }
            std::os::unix::process::CommandExt::uid(&mut c, uid);
            std::os::unix::process::CommandExt::gid(&mut c, uid);
        }
        let path = self.path.clone().map(std::ffi::OsString::from).or_else(|| std::env::var_os("PATH"));
        c.env_clear()
            .env("PATH", path.unwrap_or_default())
            .env("HOME", self.dir.join(home))
            .env("TBOX_RETRY_DELAYS", "0.05")
            .stdin(std::process::Stdio::null());
        c
    }

    pub fn config(&self) -> String {
        std::fs::read_to_string(self.dir.join("home/.config/tbox/report.toml")).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Value {
        let mut resp = self.agent.get(format!("{}{path}", self.base)).call().unwrap();
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
    }

    pub fn text(&self, path: &str) -> String {
        self.agent.get(format!("{}{path}", self.base)).call().unwrap().body_mut().read_to_string().unwrap()
    }

    pub fn builds(&self, project: &str) -> Vec<Value> {
        self.get(&format!("/api/v1/projects/{project}/builds?limit=100"))["builds"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The newest build of a project in full, with its steps' logs.
    pub fn newest(&self, project: &str) -> (Value, Vec<String>) {
        let id = self.builds(project)[0]["id"].clone();
        let b = self.get(&format!("/api/v1/builds/{id}"));
        let logs = b["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                s["log_url"]
                    .as_str()
                    .map(|u| self.agent.get(u).call().unwrap().body_mut().read_to_string().unwrap())
                    .unwrap_or_default()
            })
            .collect();
        (b, logs)
    }

    /// The project's checkout, as `join` wrote it into the config.
    pub fn workdir(&self, project: &str) -> PathBuf {
        let config: toml::Table = toml::from_str(&self.config()).unwrap();
        let p = config["project"].as_array().unwrap().iter().find(|p| p["name"].as_str() == Some(project)).unwrap();
        PathBuf::from(p["workdir"].as_str().unwrap())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn recipe_text(project: &str, repo: &str, body: &str) -> String {
    format!("format = \"tbox-recipe/1\"\nproject = \"{project}\"\nrepo = \"{repo}\"\n{body}",)
        .replace("EXPIRES", &in_days(30))
}

pub fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        // The world may belong to the volunteer's user by now (`unprivileged`).
        .args(["-c", "safe.directory=*"])
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.org")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.org")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
}

pub fn start_server(db: &str, extra: &[&str]) -> String {
    let mut argv = vec!["tbox-server", "serve", "--bind", "127.0.0.1:0", "--database", db, "--workers", "2"];
    argv.extend_from_slice(extra);
    let cli = Cli::try_parse_from(argv).unwrap();
    let ServerCommand::Serve(args) = cli.command else { unreachable!() };
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    std::thread::spawn(move || {
        let _ = tbox_server::cmd::serve::run_with(args, |addrs| {
            let _ = tx.send(addrs[0]);
        });
    });
    format!("http://{}", rx.recv_timeout(Duration::from_secs(20)).unwrap())
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The start of a recipe that builds `main`; `EXPIRES` becomes a date 30 days ahead.
pub const STEPS_OK: &str = "branches = [\"main\"]\nexpires = \"EXPIRES\"\n";

/// A time `days` from now, as recipes, key lists and requests write it.
pub fn in_days(days: i64) -> String {
    (chrono::Utc::now() + chrono::TimeDelta::days(days)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn join_and_approve(w: &World, server: &str, project: &str, fp: &str) {
    let out = w.volunteer(&["join", &format!("{server}/projects/{project}"), "--key", fp, "--builder", "vol"]);
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    w.admin(&["builder", "approve", "vol"]);
}

/// One request as the mirror received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// What the mirror answers instead of the server.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Reply {
        Reply { status, headers: vec![("Content-Type".into(), content_type.into())], body: body.into() }
    }

    pub fn json(status: u16, v: &Value) -> Reply {
        Reply::new(status, "application/json", v.to_string())
    }

    pub fn with(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Rule = Box<dyn Fn(&Request) -> Option<Reply> + Send + Sync>;
type Rewrite = Box<dyn Fn(&Request, Reply) -> Reply + Send + Sync>;

/// A taken-over server: it forwards everything to the real one, except what a rule answers
/// (recipes, keys, leases, redirects, escape sequences: whatever the test says), and keeps
/// every request it received.
pub struct Mirror {
    pub base: String,
    rules: Arc<Mutex<Vec<Rule>>>,
    rewrites: Arc<Mutex<Vec<Rewrite>>>,
    pub seen: Arc<Mutex<Vec<Request>>>,
}

impl Mirror {
    pub fn new(upstream: &str) -> Mirror {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let rules: Arc<Mutex<Vec<Rule>>> = Arc::default();
        let rewrites: Arc<Mutex<Vec<Rewrite>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
        let (r, w, s, up) = (rules.clone(), rewrites.clone(), seen.clone(), upstream.to_owned());
        std::thread::spawn(move || {
            let agent: ureq::Agent =
                ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
            for stream in listener.incoming().flatten() {
                let (r, w, s, up, agent) = (r.clone(), w.clone(), s.clone(), up.clone(), agent.clone());
                std::thread::spawn(move || {
                    let _ = serve_one(stream, &r, &w, &s, &up, &agent);
                });
            }
        });
        Mirror { base, rules, rewrites, seen }
    }

    /// Changes what the server answered before passing it on (a lease with another branch…).
    pub fn rewrite(&self, f: impl Fn(&Request, Reply) -> Reply + Send + Sync + 'static) {
        self.rewrites.lock().unwrap().push(Box::new(f));
    }

    /// Answers what `rule` answers (the newest rule that answers wins).
    pub fn on(&self, rule: impl Fn(&Request) -> Option<Reply> + Send + Sync + 'static) {
        self.rules.lock().unwrap().push(Box::new(rule));
    }

    /// Back to forwarding everything as it is.
    pub fn clear(&self) {
        self.rules.lock().unwrap().clear();
        self.rewrites.lock().unwrap().clear();
    }

    /// Serves these recipe bytes and signature in place of the project's.
    pub fn serve(&self, bytes: &[u8], signature: &str) {
        let (bytes, signature) = (bytes.to_vec(), signature.to_owned());
        self.on(move |r| {
            (r.method == "GET" && r.path.ends_with("/recipe"))
                .then(|| Reply::new(200, "application/toml", bytes.clone()).with("Tbox-Signature", &signature))
        });
    }

    /// Answers 503 to everything: a server that is down.
    pub fn down(&self) {
        self.on(|_| Some(Reply::json(503, &serde_json::json!({"error": "unavailable", "message": "down"}))));
    }

    /// The requests received so far whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Request> {
        self.seen.lock().unwrap().iter().filter(|r| r.path.starts_with(prefix)).cloned().collect()
    }
}

fn serve_one(
    mut stream: TcpStream,
    rules: &Mutex<Vec<Rule>>,
    rewrites: &Mutex<Vec<Rewrite>>,
    seen: &Mutex<Vec<Request>>,
    upstream: &str,
    agent: &ureq::Agent,
) -> std::io::Result<()> {
    let (head, body) = read_request(&mut stream)?;
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (method, path) = (first.next().unwrap_or_default().to_owned(), first.next().unwrap_or_default().to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())))
        .collect();
    let request = Request { method, path, headers, body };
    seen.lock().unwrap().push(request.clone());
    let answer = |stream: &mut TcpStream, reply: &Reply| {
        let mut head =
            format!("HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n", reply.status, reply.body.len());
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&reply.body);
    };
    let ruled = rules.lock().unwrap().iter().rev().find_map(|rule| rule(&request));
    if let Some(reply) = ruled {
        answer(&mut stream, &reply);
        return Ok(());
    }
    let url = format!("{upstream}{}", request.path);
    let pass = ["content-type", "tbox-builder", "tbox-signature"];
    let resp = match request.method.as_str() {
        "POST" | "PUT" => {
            let mut req = if request.method == "POST" { agent.post(&url) } else { agent.put(&url) };
            for (k, v) in request.headers.iter().filter(|(k, _)| pass.contains(&k.as_str())) {
                req = req.header(k, v);
            }
            req.send(&request.body[..])
        }
        _ => {
            let mut req = agent.get(&url);
            for (k, v) in request.headers.iter().filter(|(k, _)| pass.contains(&k.as_str())) {
                req = req.header(k, v);
            }
            req.call()
        }
    };
    let Ok(mut resp) = resp else {
        answer(&mut stream, &Reply::new(502, "text/plain", "upstream"));
        return Ok(());
    };
    let mut reply = Reply::new(resp.status().as_u16(), "", Vec::new());
    reply.headers.clear();
    for name in
        ["content-type", "tbox-signature", "tbox-key", "tbox-recipe-version", "tbox-key-list-version", "location"]
    {
        if let Some(v) = resp.headers().get(name).and_then(|v| v.to_str().ok()) {
            reply.headers.push((name.to_owned(), v.to_owned()));
        }
    }
    reply.body = resp.body_mut().read_to_vec().unwrap_or_default();
    for f in rewrites.lock().unwrap().iter() {
        reply = f(&request, reply);
    }
    answer(&mut stream, &reply);
    Ok(())
}

/// One request: its head as text, and its body (by Content-Length).
fn read_request(stream: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok((head, buf[end + 4..].to_vec()));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
