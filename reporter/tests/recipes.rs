//! Recipes as volunteers and maintainers use them: the real `tbox-report` binary, a real server
//! on 127.0.0.1 (in this process, on a fresh SQLite database), real git repositories on disk and
//! real bubblewrap. A taken-over server is played by a proxy that serves chosen recipe bytes.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser as _;
use serde_json::Value;
use tbox_protocol::PrivateKey;
use tbox_server::cli::{Cli, Command as ServerCommand};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const BIN: &str = env!("CARGO_BIN_EXE_tbox-report");

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Whether bubblewrap can be used here. Without it the sandbox tests say they were skipped,
/// except in CI, which installs it: there they must run.
fn have_bwrap() -> bool {
    let ok = Command::new("bwrap").args(["--ro-bind", "/", "/", "true"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "bubblewrap is required in CI (apt-get install bubblewrap)");
        let _ = writeln!(std::io::stderr(), "SKIPPED recipe test: bubblewrap (bwrap) is not installed or not usable");
    }
    ok
}

fn key() -> PrivateKey {
    PrivateKey::generate(&mut rand_core::OsRng, 2048).unwrap()
}

/// A world: a server with projects, a maintainer with the projects' keys and git repositories,
/// and one volunteer's home.
struct World {
    dir: PathBuf,
    db: String,
    base: String,
    agent: ureq::Agent,
}

impl World {
    fn new(projects: &[&str]) -> World {
        World::new_with(projects, &[])
    }

    /// A world whose server gets these extra `serve` options.
    fn new_with(projects: &[&str], serve: &[&str]) -> World {
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
        };
        for p in projects {
            w.admin(&["project", "add", p]);
        }
        w.base = start_server(&w.db, serve);
        w
    }

    fn admin(&self, args: &[&str]) {
        let mut argv = vec!["tbox-server"];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--database", &self.db]);
        tbox_server::cmd::run(Cli::try_parse_from(argv).unwrap()).unwrap();
    }

    /// Makes a project key (written 0600 for `recipe sign`), registers it, and a git repository
    /// with one commit on `main`. Returns the key's path.
    fn maintain(&self, project: &str) -> (PrivateKey, PathBuf) {
        let k = key();
        let path = self.dir.join("maint").join(format!("{project}.pem"));
        tbox_report::keyfile::write_new(&path, &k).unwrap();
        let public = self.dir.join("maint").join(format!("{project}.pub"));
        std::fs::write(&public, k.public_key().to_pem()).unwrap();
        self.admin(&["project", "key", "add", project, "--key", public.to_str().unwrap()]);
        let repo = self.repo(project);
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        std::fs::write(repo.join("hello.txt"), "hello\n").unwrap();
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-qm", "first"]);
        (k, path)
    }

    fn repo(&self, project: &str) -> PathBuf {
        self.dir.join("repos").join(project)
    }

    /// Writes a recipe file for `project` (source: its repo) and returns its path.
    fn recipe(&self, project: &str, name: &str, body: &str) -> PathBuf {
        let path = self.dir.join("maint").join(name);
        std::fs::write(&path, recipe_text(project, &format!("file://{}", self.repo(project).display()), body)).unwrap();
        path
    }

    /// `tbox-report` as the maintainer runs it.
    fn maintainer(&self, args: &[&str]) -> Output {
        Command::new(BIN).args(args).env("HOME", self.dir.join("maint")).output().unwrap()
    }

    /// Signs (with the binary) and publishes (with the binary) a recipe.
    fn publish(&self, recipe: &Path, key: &Path) {
        let out = self.maintainer(&["recipe", "sign", recipe.to_str().unwrap(), "--key", key.to_str().unwrap()]);
        assert!(out.status.success(), "sign: {}", stderr(&out));
        let out = self.maintainer(&["recipe", "publish", recipe.to_str().unwrap(), "--server", &self.base]);
        assert!(out.status.success(), "publish: {}", stderr(&out));
    }

    /// `tbox-report` the way the volunteer (or cron) runs it: a bare environment.
    fn volunteer(&self, args: &[&str]) -> Output {
        self.volunteer_at("home", args).output().unwrap()
    }

    /// `tbox-report` as the volunteer whose HOME is `home` (under this world) runs it.
    fn volunteer_at(&self, home: &str, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.join(home))
            .env("TBOX_RETRY_DELAYS", "0.05")
            .stdin(std::process::Stdio::null());
        c
    }

    fn config(&self) -> String {
        std::fs::read_to_string(self.dir.join("home/.config/tbox/report.toml")).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Value {
        let mut resp = self.agent.get(format!("{}{path}", self.base)).call().unwrap();
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
    }

    fn text(&self, path: &str) -> String {
        self.agent.get(format!("{}{path}", self.base)).call().unwrap().body_mut().read_to_string().unwrap()
    }

    fn builds(&self, project: &str) -> Vec<Value> {
        self.get(&format!("/api/v1/projects/{project}/builds?limit=100"))["builds"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The newest build of a project in full, with its steps' logs.
    fn newest(&self, project: &str) -> (Value, Vec<String>) {
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
    fn workdir(&self, project: &str) -> PathBuf {
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

fn recipe_text(project: &str, repo: &str, body: &str) -> String {
    format!("format = \"tbox-recipe/1\"\nproject = \"{project}\"\nrepo = \"{repo}\"\n{body}",)
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
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

fn start_server(db: &str, extra: &[&str]) -> String {
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

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const STEPS_OK: &str = "branches = [\"main\"]\nexpires = \"2099-01-01T00:00:00Z\"\n";

fn join_and_approve(w: &World, server: &str, project: &str, fp: &str) {
    let out = w.volunteer(&["join", &format!("{server}/projects/{project}"), "--key", fp, "--builder", "vol"]);
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    w.admin(&["builder", "approve", "vol"]);
}

#[test]
fn join_approve_run_builds_the_signed_recipe_in_a_sandbox() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]);
    let (k, key_path) = w.maintain("demo");
    let fp = k.public_key().fingerprint();
    w.admin(&["project", "capability", "add", "demo", "docker", "--description", "Docker Engine 24 or later"]);
    let recipe = w.recipe(
        "demo",
        "recipe.toml",
        &format!(
            "{STEPS_OK}version = 1\n[[step]]\nname = \"build\"\nrun = \"cat hello.txt && touch built\"\ntimeout = \"5m\"\n"
        ),
    );
    w.publish(&recipe, &key_path);
    // `recipe sign` writes what the openssl line of DESIGN.md writes.
    if let Ok(o) = Command::new("openssl").args(["dgst", "-sha256", "-sign"]).arg(&key_path).arg(&recipe).output()
        && o.status.success()
    {
        let ours = std::fs::read_to_string(recipe.with_extension("toml.sig"))?;
        let b64 = Command::new("base64")
            .arg("-w0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        b64.stdin.as_ref().unwrap().write_all(&o.stdout)?;
        let theirs = b64.wait_with_output()?;
        assert_eq!(ours, String::from_utf8(theirs.stdout)?, "recipe sign and openssl disagree");
    }
    let page = format!("{}/projects/demo", w.base);

    // Never trust on first use from cron: no --key and no terminal is a refusal, nothing written.
    let out = w.volunteer(&["join", &page]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--key"), "{}", stderr(&out));
    assert!(w.config().is_empty());
    // A fingerprint that is not the project's: refused, nothing written.
    let stranger = key().public_key().fingerprint();
    let out = w.volunteer(&["join", &page, "--key", &stranger]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(w.config().is_empty());

    // Step 1: join. Config and key made, project pinned, builder registered and pending.
    let out = w.volunteer(&["join", &page, "--key", &fp, "--builder", "vol"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(said.contains("PENDING") && said.contains("tbox-server builder approve vol"), "{said}");
    assert!(said.contains("*/15 * * * *"), "{said}");
    let config = w.config();
    assert!(config.contains(&format!("recipe  = \"{fp}\"")), "{config}");
    let key_file = w.dir.join("home/.config/tbox/builder.pem");
    assert_eq!(std::fs::metadata(&key_file)?.permissions().mode() & 0o777, 0o600);
    // Not approved yet: the server refuses the report (and says so).
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("pending"), "{}", stderr(&out));
    assert!(!w.workdir("demo").exists(), "nothing is built for a report the server would refuse");

    // The volunteer's own git config (here: one that would break every file:// URL) is not
    // applied to a project's source.
    std::fs::write(w.dir.join("home/.gitconfig"), "[url \"file:///nonexistent/\"]\n\tinsteadOf = file:///\n")?;
    // Step 2: an admin approves. Step 3: run.
    w.admin(&["builder", "approve", "vol"]);
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (b, logs) = w.newest("demo");
    assert_eq!(b["result"], "success", "{b}");
    assert_eq!(b["recipe_version"], 1);
    assert_eq!(b["recipe_key"].as_str(), Some(fp.as_str()));
    assert_eq!(b["sandbox"], "bubblewrap");
    assert!(logs[1].contains("hello"), "{logs:?}");
    assert!(w.workdir("demo").join("built").exists());
    let build_page = w.text(&format!("/builds/{}", b["id"]));
    assert!(build_page.contains("recipe version 1") && build_page.contains(&fp), "{build_page}");
    assert!(w.text("/projects/demo").contains("recipe v1"));
    // An unchanged revision and recipe: nothing to do. A new recipe version: built again.
    let out = w.volunteer(&["run"]);
    assert_eq!((out.status.code(), w.builds("demo").len()), (Some(0), 1), "{}", stderr(&out));
    let v2 = w.recipe(
        "demo",
        "recipe.toml",
        &format!("{STEPS_OK}version = 2\n[[step]]\nname = \"build\"\nrun = \"echo v2\"\n"),
    );
    w.publish(&v2, &key_path);
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(w.newest("demo").0["recipe_version"], 2);
    assert!(!w.workdir("demo").join("built").exists(), "what version 1 left in the tree was cleaned");
    assert!(w.config().contains(&format!("git     = \"file://{}\"", w.repo("demo").display())), "{}", w.config());

    // A recipe requiring a capability this machine does not declare: skipped with a reason.
    let v3 = w.recipe(
        "demo",
        "recipe.toml",
        &format!("{STEPS_OK}version = 3\nrequires = [\"docker\"]\n[[step]]\nname = \"build\"\nrun = \"echo v3\"\n"),
    );
    w.publish(&v3, &key_path);
    let before = w.builds("demo").len();
    let out = w.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("requires docker"), "{}", stderr(&out));
    assert_eq!(w.builds("demo").len(), before);
    // Declared: built, and the waterfall header shows the capability.
    let path = w.dir.join("home/.config/tbox/report.toml");
    std::fs::write(&path, w.config().replace("capabilities = []", "capabilities = [\"docker\"]"))?;
    let out = w.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(w.newest("demo").0["recipe_version"], 3);
    assert!(w.text("/projects/demo").contains("offers <span class=\"tag\">docker</span>"));
    Ok(())
}

#[test]
fn the_sandbox_hides_the_volunteers_files_blocks_writes_and_the_network() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]);
    let (k, key_path) = w.maintain("demo");
    // Something of the volunteer's that a build must not see.
    std::fs::create_dir_all(w.dir.join("home/.ssh"))?;
    std::fs::write(w.dir.join("home/.ssh/id_rsa"), "PRIVATE")?;
    let home = w.dir.join("home");
    let builder_key = home.join(".config/tbox/builder.pem");
    let port = w.base.rsplit(':').next().unwrap().to_owned();
    let private = std::env::temp_dir().join(format!("tbox-private-{}", std::process::id()));
    let connect = format!("python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3)\"");
    let steps = format!(
        "[[step]]\nname = \"hidden\"\ncontinue_on_failure = true\nrun = '''\ntest ! -e {key} && test ! -e {home}/.ssh/id_rsa \
         && test ! -e {home}/.config && test \"$HOME\" != {home} && touch \"$HOME/scratch\" && echo hidden'''\n\
         [[step]]\nname = \"writes\"\ncontinue_on_failure = true\nrun = '''\n! touch /etc/tbox-x && ! touch /usr/tbox-x \
         && touch {parent}/outside; ! touch .git/hooks/post-checkout && touch inside && touch {private} && echo contained'''\n\
         [[step]]\nname = \"network\"\ncontinue_on_failure = true\nrun = '''\n! {connect} && echo offline'''\n\
         [[step]]\nname = \"timeout\"\ntimeout = \"2s\"\nrun = \"sleep 987 & setsid sleep 987 & sleep 987\"\n",
        key = builder_key.display(),
        home = home.display(),
        // Where `join` will put the checkout: the parent holds other projects' checkouts.
        parent = w.dir.join("home/.local/share/tbox/work").join(tbox_report::config::server_id(&w.base)).display(),
        private = private.display(),
    );
    let recipe = w.recipe("demo", "recipe.toml", &format!("{STEPS_OK}version = 1\n{steps}"));
    w.publish(&recipe, &key_path);
    join_and_approve(&w, &w.base, "demo", &k.public_key().fingerprint());
    // The network really is there outside the sandbox.
    assert!(Command::new("sh").args(["-c", &connect]).status()?.success());
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (b, logs) = w.newest("demo");
    let result = |i: usize| b["steps"][i]["result"].as_str().unwrap().to_owned();
    assert_eq!(result(1), "success", "hidden: {}", logs[1]);
    assert!(logs[1].contains("hidden"));
    assert_eq!(result(2), "success", "writes: {}", logs[2]);
    assert!(w.workdir("demo").join("inside").exists());
    assert!(!w.workdir("demo").parent().unwrap().join("outside").exists());
    assert!(!private.exists(), "the sandbox's /tmp is the host's");
    assert_eq!(result(3), "success", "network: {}", logs[3]);
    assert_eq!(result(4), "failure", "timeout: {}", logs[4]);
    assert!(logs[4].contains("timed out"), "{}", logs[4]);
    // Every process of the timed-out step is gone, the one that left the process group too.
    std::thread::sleep(Duration::from_millis(500));
    let left = Command::new("pgrep").args(["-f", "sleep 987"]).output()?;
    assert!(left.stdout.is_empty(), "left behind: {}", stdout(&left));
    Ok(())
}

#[test]
fn hand_written_steps_run_sandboxed_too_and_opting_out_shows() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]);
    let home = w.dir.join("home");
    let k = key();
    tbox_report::keyfile::write_new(&home.join("builder.pem"), &k)?;
    std::fs::write(home.join("builder.pub"), k.public_key().to_pem())?;
    w.admin(&["builder", "add", "vol", "--project", "demo", "--key", home.join("builder.pub").to_str().unwrap()]);
    let work = w.dir.join("work");
    std::fs::create_dir_all(&work)?;
    let config = |sandbox: &str| {
        format!(
            "server = \"{}\"\nbuilder = \"vol\"\nkey = \"~/builder.pem\"\nsandbox = \"{sandbox}\"\n\n[[project]]\n\
             name = \"demo\"\nworkdir = \"{}\"\n[[project.step]]\nname = \"look\"\nrun = \"test ! -e {}/builder.pem\"\n",
            w.base,
            work.display(),
            home.display()
        )
    };
    let path = home.join(".config/tbox/report.toml");
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::write(&path, config("auto"))?;
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (b, _) = w.newest("demo");
    assert_eq!((b["result"].as_str(), b["sandbox"].as_str()), (Some("success"), Some("bubblewrap")), "{b}");
    assert!(b["recipe_version"].is_null());
    // The volunteer's opt-out: the key is in reach (the step fails), and everyone can see it.
    std::fs::write(&path, config("none"))?;
    let out = w.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (b, _) = w.newest("demo");
    assert_eq!((b["result"].as_str(), b["sandbox"].as_str()), (Some("failure"), Some("none")), "{b}");
    assert!(w.text("/projects/demo").contains("unsandboxed"));
    assert!(w.text(&format!("/builds/{}", b["id"])).contains("unsandboxed"));
    Ok(())
}

/// Recipe bytes and the signature to serve in their place.
type Served = Arc<Mutex<Option<(Vec<u8>, String)>>>;

/// A server in front of the real one that, when told to, serves chosen recipe bytes and
/// signature (a taken-over server), or answers 503 to everything (a server that is down).
struct Hostile {
    base: String,
    recipe: Served,
    down: Arc<AtomicBool>,
}

impl Hostile {
    fn new(upstream: &str) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let recipe: Served = Arc::default();
        let down = Arc::new(AtomicBool::new(false));
        let (r, d, up) = (recipe.clone(), down.clone(), upstream.to_owned());
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            for stream in listener.incoming().flatten() {
                let (r, d, up, agent) = (r.clone(), d.clone(), up.clone(), agent.clone());
                std::thread::spawn(move || {
                    let _ = serve_one(stream, &r, &d, &up, &agent);
                });
            }
        });
        Hostile { base, recipe, down }
    }

    fn serve(&self, bytes: &[u8], signature: &str) {
        *self.recipe.lock().unwrap() = Some((bytes.to_vec(), signature.to_owned()));
    }
}

fn serve_one(
    mut stream: TcpStream,
    recipe: &Mutex<Option<(Vec<u8>, String)>>,
    down: &AtomicBool,
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
    let answer = |stream: &mut TcpStream, status: u16, ctype: &str, extra: &str, body: &[u8]| {
        let _ = write!(
            stream,
            "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(body);
    };
    if down.load(Ordering::SeqCst) {
        answer(&mut stream, 503, "application/json", "", br#"{"error":"unavailable","message":"down"}"#);
        return Ok(());
    }
    if method == "GET"
        && path.ends_with("/recipe")
        && let Some((bytes, sig)) = recipe.lock().unwrap().clone()
    {
        answer(&mut stream, 200, "application/toml", &format!("Tbox-Signature: {sig}\r\n"), &bytes);
        return Ok(());
    }
    let url = format!("{upstream}{path}");
    let pass = ["content-type", "tbox-builder", "tbox-signature"];
    let resp = match method.as_str() {
        "POST" | "PUT" => {
            let mut req = if method == "POST" { agent.post(&url) } else { agent.put(&url) };
            for (k, v) in headers.iter().filter(|(k, _)| pass.contains(&k.as_str())) {
                req = req.header(k, v);
            }
            req.send(&body[..])
        }
        _ => {
            let mut req = agent.get(&url);
            for (k, v) in headers.iter().filter(|(k, _)| pass.contains(&k.as_str())) {
                req = req.header(k, v);
            }
            req.call()
        }
    };
    let Ok(mut resp) = resp else {
        answer(&mut stream, 502, "text/plain", "", b"upstream");
        return Ok(());
    };
    let status = resp.status().as_u16();
    let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let sig =
        resp.headers().get("tbox-signature").and_then(|v| v.to_str().ok()).map(|s| format!("Tbox-Signature: {s}\r\n"));
    let bytes = resp.body_mut().read_to_vec().unwrap_or_default();
    answer(&mut stream, status, &ctype, &sig.unwrap_or_default(), &bytes);
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

#[test]
fn a_taken_over_server_cannot_make_a_volunteer_run_anything_else() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]);
    let (k, key_path) = w.maintain("demo");
    let hostile = Hostile::new(&w.base);
    let repo = format!("file://{}", w.repo("demo").display());
    let good = |version: u64, marker: &str| {
        recipe_text(
            "demo",
            &repo,
            &format!("{STEPS_OK}version = {version}\n[[step]]\nname = \"b\"\nrun = \"touch {marker}\"\n"),
        )
    };
    // Version 2 published properly and run once: this machine has now seen version 2.
    let v2 = w.recipe("demo", "recipe.toml", "");
    std::fs::write(&v2, good(2, "ran-2"))?;
    w.publish(&v2, &key_path);
    join_and_approve(&w, &hostile.base, "demo", &k.public_key().fingerprint());
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(w.workdir("demo").join("ran-2").exists());

    let stranger = key();
    let bad = "ran-BAD";
    let secret = w.dir.join("home/private-repo");
    std::fs::create_dir_all(&secret)?;
    git(&secret, &["init", "-q", "-b", "main"]);
    let tampered = good(3, "ran-3").replace("touch ran-3", &format!("touch {bad} "));
    let cases: Vec<(&str, Vec<u8>, String, &str)> = vec![
        (
            "foreign key",
            good(3, bad).into_bytes(),
            stranger.sign(good(3, bad).as_bytes()),
            "not signed by a key you trust",
        ),
        (
            "tampered byte",
            tampered.clone().into_bytes(),
            k.sign(good(3, "ran-3").as_bytes()),
            "not signed by a key you trust",
        ),
        (
            "expired",
            good(3, bad).replace("2099", "2001").into_bytes(),
            k.sign(good(3, bad).replace("2099", "2001").as_bytes()),
            "expired",
        ),
        ("rollback", good(1, bad).into_bytes(), k.sign(good(1, bad).as_bytes()), "lower than version 2"),
        ("same version, other bytes", good(2, bad).into_bytes(), k.sign(good(2, bad).as_bytes()), "different contents"),
        (
            "another project",
            good(3, bad).replace("project = \"demo\"", "project = \"other\"").into_bytes(),
            k.sign(good(3, bad).replace("project = \"demo\"", "project = \"other\"").as_bytes()),
            "for project \"other\", not \"demo\"",
        ),
        (
            "disallowed branch",
            good(3, bad).replace("[\"main\"]", "[\"release-*\"]").into_bytes(),
            k.sign(good(3, bad).replace("[\"main\"]", "[\"release-*\"]").as_bytes()),
            "allows only the branches release-*",
        ),
        ("no signature at all", good(3, bad).into_bytes(), "AAAA".to_owned(), "not signed by a key you trust"),
        (
            // A stolen project key pointing the checkout (outside the sandbox) at another repository.
            "another repository",
            good(3, bad).replace(&repo, &format!("file://{}", secret.display())).into_bytes(),
            k.sign(good(3, bad).replace(&repo, &format!("file://{}", secret.display())).as_bytes()),
            "takes its source from",
        ),
    ];
    let exceptions_before = w.builds("demo").iter().filter(|b| b["result"] == "exception").count();
    for (what, bytes, sig, why) in &cases {
        hostile.serve(bytes, sig);
        let out = w.volunteer(&["run", "--force"]);
        assert_eq!(out.status.code(), Some(5), "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains("REFUSED") && stderr(&out).contains(why), "{what}: {}", stderr(&out));
        assert!(!w.workdir("demo").join(bad).exists(), "{what}: the step ran");
        // The project hears of it: an exception build whose log says why.
        let (b, logs) = w.newest("demo");
        assert_eq!(b["result"], "exception", "{what}: {b}");
        assert!(logs[0].contains(why), "{what}: {logs:?}");
    }
    // Said once per reason, not on every cron run.
    let out = w.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(5));
    let exceptions = w.builds("demo").iter().filter(|b| b["result"] == "exception").count();
    assert_eq!(
        exceptions - exceptions_before,
        cases.len() - 1,
        "foreign key and tampered byte share a reason; none repeated"
    );

    // The server is down: the cached version 2 keeps building.
    *hostile.recipe.lock().unwrap() = None;
    std::fs::remove_file(w.workdir("demo").join("ran-2"))?;
    hostile.down.store(true, Ordering::SeqCst);
    let out = w.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("using the cached recipe"), "{}", stderr(&out));
    assert!(w.workdir("demo").join("ran-2").exists(), "the cached recipe did not run");
    hostile.down.store(false, Ordering::SeqCst);
    let out = w.volunteer(&["flush"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(w.newest("demo").0["recipe_version"], 2);
    Ok(())
}

#[test]
fn a_rotation_is_followed_from_the_pin_and_a_revoked_pin_refused() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]);
    let (k, old) = w.maintain("demo");
    let v1 =
        w.recipe("demo", "recipe.toml", &format!("{STEPS_OK}version = 1\n[[step]]\nname = \"b\"\nrun = \"true\"\n"));
    w.publish(&v1, &old);
    join_and_approve(&w, &w.base, "demo", &k.public_key().fingerprint());
    assert_eq!(w.volunteer(&["run"]).status.code(), Some(0));

    // The maintainer rotates (the binary makes the new key) and signs the next version with it.
    let new = w.dir.join("maint/demo-2026.pem");
    let out = w.maintainer(&[
        "recipe",
        "rotate",
        "--project",
        "demo",
        "--key",
        old.to_str().unwrap(),
        "--new",
        new.to_str().unwrap(),
        "--server",
        &w.base,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let new_fp = tbox_report::keyfile::load(&new)?.public_key().fingerprint();
    let v2 =
        w.recipe("demo", "recipe.toml", &format!("{STEPS_OK}version = 2\n[[step]]\nname = \"b\"\nrun = \"true\"\n"));
    w.publish(&v2, &new);
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (b, _) = w.newest("demo");
    assert_eq!((b["recipe_version"].as_i64(), b["recipe_key"].as_str()), (Some(2), Some(new_fp.as_str())));

    // The project retires the old key: this machine reached the new one already and keeps it.
    w.admin(&["project", "key", "revoke", "demo", "--key", &k.public_key().fingerprint()]);
    let out = w.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The new key revoked too (compromised): nothing is trusted any more.
    w.admin(&["project", "key", "revoke", "demo", "--key", &new_fp]);
    let out = w.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("revoked") && stderr(&out).contains("leave demo"), "{}", stderr(&out));
    Ok(())
}

#[test]
fn one_volunteer_builds_two_projects_and_leaves_one() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo", "other"]);
    let (kd, pd) = w.maintain("demo");
    let (ko, po) = w.maintain("other");
    for (p, key) in [("demo", &pd), ("other", &po)] {
        let r = w.recipe(
            p,
            &format!("{p}.toml"),
            &format!("{STEPS_OK}version = 1\n[[step]]\nname = \"b\"\nrun = \"echo {p}\"\n"),
        );
        w.publish(&r, key);
    }
    join_and_approve(&w, &w.base, "demo", &kd.public_key().fingerprint());
    // The second join adds to the same config and waits for approval for that project.
    let out = w.volunteer(&["join", &format!("{}/projects/other", w.base), "--key", &ko.public_key().fingerprint()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("must be approved for other too"), "{}", stdout(&out));
    let config = w.config();
    assert_eq!(config.matches("[[project]]").count(), 2, "{config}");
    assert_eq!(config.matches("builder = ").count(), 1, "{config}");
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(4), "other is not approved yet: {}", stderr(&out));
    assert_eq!(w.builds("demo").len(), 1);
    w.admin(&["builder", "approve", "vol"]);
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(w.builds("other").len(), 1);
    assert_eq!(w.newest("other").0["result"], "success");

    let out = w.volunteer(&["leave", "other"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let config = w.config();
    assert!(!config.contains("\"other\"") && config.contains("\"demo\""), "{config}");
    let out = w.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!((w.builds("demo").len(), w.builds("other").len()), (2, 1));
    let out = w.volunteer(&["leave", "other"]);
    assert_eq!(out.status.code(), Some(1));
    Ok(())
}

/// A project with a recipe whose step takes `seconds`, and `n` volunteers (homes v0, v1, …)
/// joined and approved. Returns the project key's path.
fn volunteers_for_requests(w: &World, n: usize, seconds: u32) -> PathBuf {
    let (k, key_path) = w.maintain("demo");
    let recipe = w.recipe(
        "demo",
        "recipe.toml",
        &format!("{STEPS_OK}version = 1\n[[step]]\nname = \"build\"\nrun = \"echo building; sleep {seconds}\"\n"),
    );
    w.publish(&recipe, &key_path);
    for i in 0..n {
        let home = format!("v{i}");
        std::fs::create_dir_all(w.dir.join(&home)).unwrap();
        let out = w
            .volunteer_at(
                &home,
                &[
                    "join",
                    &format!("{}/projects/demo", w.base),
                    "--key",
                    &k.public_key().fingerprint(),
                    "--builder",
                    &home,
                ],
            )
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        w.admin(&["builder", "approve", &home]);
    }
    key_path
}

fn request(w: &World, key: &Path, builders: &str) {
    let out = w.maintainer(&[
        "request",
        "--project",
        "demo",
        "--key",
        key.to_str().unwrap(),
        "--server",
        &w.base,
        "--builders",
        builders,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("request "), "{}", stdout(&out));
}

fn requests(w: &World) -> Vec<Value> {
    w.get("/api/v1/projects/demo/requests")["requests"].as_array().cloned().unwrap_or_default()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(std::time::Instant::now() < until, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn volunteers_serving_build_a_request_end_to_end() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]);
    let key = volunteers_for_requests(&w, 3, 0);
    // Three volunteers serve; each stops after one build.
    let mut serving: Vec<std::process::Child> = (0..3)
        .map(|i| {
            w.volunteer_at(&format!("v{i}"), &["serve", "--every", "100000", "--max-builds", "1"]).spawn().unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    request(&w, &key, "2");
    wait_for("two builds", 60, || requests(&w).first().is_some_and(|r| r["state"] == "done"));
    let r = &requests(&w)[0];
    assert_eq!((r["done"].as_u64(), r["attempts"].as_array().map(Vec::len)), (Some(2), Some(2)), "{r}");
    let builders: std::collections::HashSet<&str> =
        r["attempts"].as_array().unwrap().iter().map(|a| a["builder"].as_str().unwrap()).collect();
    assert_eq!(builders.len(), 2, "two distinct volunteers: {r}");
    for a in r["attempts"].as_array().unwrap() {
        let b = w.get(&format!("/api/v1/builds/{}", a["build"]));
        assert_eq!((b["result"].as_str(), b["recipe_version"].as_i64()), (Some("success"), Some(1)), "{b}");
    }
    let page = w.text("/projects/demo/requests");
    assert!(page.contains("2 of 2 done"), "{page}");
    for c in &mut serving {
        let _ = c.kill();
        let _ = c.wait();
    }
    Ok(())
}

#[test]
fn sigterm_during_a_build_reports_it_cancelled_and_frees_the_slot() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]);
    let key = volunteers_for_requests(&w, 1, 120);
    let mut serving = w.volunteer_at("v0", &["serve", "--every", "100000"]).spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    request(&w, &key, "1");
    wait_for("the build to start", 60, || w.builds("demo").iter().any(|b| b["state"] == "started"));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(serving.id())?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(s) = serving.try_wait()? {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(0));
    let (b, logs) = w.newest("demo");
    assert_eq!(b["result"], "cancelled", "{b}");
    assert!(logs.iter().any(|l| l.contains("asked to stop")), "{logs:?}");
    let r = &requests(&w)[0];
    assert_eq!((r["state"].as_str(), r["attempts"][0]["state"].as_str()), (Some("open"), Some("cancelled")), "{r}");
    assert_eq!(r["leased"], 0, "the slot is free for another builder");
    let left = Command::new("pgrep").args(["-f", "sleep 120"]).output()?;
    assert!(left.stdout.is_empty(), "the step was left running");
    Ok(())
}

#[test]
fn a_volunteer_killed_mid_build_is_lost_and_another_builds_it() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new_with(&["demo"], &["--lease-ttl", "3s"]);
    let key = volunteers_for_requests(&w, 2, 4);
    let mut first = w.volunteer_at("v0", &["serve", "--every", "100000"]).spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    request(&w, &key, "1");
    wait_for("the build to start", 60, || w.builds("demo").iter().any(|b| b["state"] == "started"));
    // Gone without a word (its sandbox dies with it).
    first.kill()?;
    first.wait()?;
    wait_for("the attempt to be lost", 30, || requests(&w)[0]["attempts"][0]["state"] == "lost");
    let mut second = w.volunteer_at("v1", &["serve", "--every", "100000", "--max-builds", "1"]).spawn()?;
    wait_for("another volunteer to build it", 60, || requests(&w)[0]["state"] == "done");
    let r = &requests(&w)[0];
    let attempts: Vec<(&str, &str)> = r["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["builder"].as_str().unwrap(), a["state"].as_str().unwrap()))
        .collect();
    assert_eq!(attempts, [("v0", "lost"), ("v1", "done")], "{r}");
    let _ = second.wait();
    assert!(w.text("/projects/demo/requests").contains("lost (went silent)"));
    Ok(())
}

/// A revision is built only when a key the volunteer trusts asked for it: a request made on the
/// server (or forged by it) gets the branch's head.
#[test]
fn a_requested_revision_is_built_only_when_the_project_signed_it() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]);
    let key = volunteers_for_requests(&w, 1, 0);
    let repo = w.repo("demo");
    let rev = |dir: &Path| -> String {
        let out = Command::new("git").args(["rev-parse", "HEAD"]).current_dir(dir).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let old = rev(&repo);
    std::fs::write(repo.join("more.txt"), "more\n")?;
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "second"]);
    let head = rev(&repo);
    // Unsigned: an admin's request on the server, as a taken-over server could make.
    w.admin(&["request", "add", "demo", "--revision", &old]);
    let out = w.volunteer_at("v0", &["serve", "--every", "100000", "--max-builds", "1"]).output()?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("no key you trust signed a request for it"), "{}", stderr(&out));
    let (b, logs) = w.newest("demo");
    assert_eq!(b["revision"].as_str(), Some(head.as_str()), "the head, not the unsigned revision");
    assert!(logs[0].contains(&format!("asked for revision {old}")), "{logs:?}");
    // Signed by the project's key: that revision.
    let out = w.maintainer(&[
        "request",
        "--project",
        "demo",
        "--key",
        key.to_str().unwrap(),
        "--server",
        &w.base,
        "--revision",
        &old,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = w.volunteer_at("v0", &["serve", "--every", "100000", "--max-builds", "1"]).output()?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(w.newest("demo").0["revision"].as_str(), Some(old.as_str()));
    Ok(())
}
