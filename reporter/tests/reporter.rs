//! The real `tbox-report` binary against a real server on 127.0.0.1 (run in this process, on
//! a fresh SQLite database per test), as a volunteer would use them.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser as _;
use serde_json::Value;
use tbox_server::cli::{Cli, Command as ServerCommand};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const BIN: &str = env!("CARGO_BIN_EXE_tbox-report");
const SECRET: &str = "hunter2-do-not-leak-4f9a";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A volunteer's machine: its own HOME, config, key, workdir; and a server for it.
struct Volunteer {
    dir: PathBuf,
    db: String,
    base: String,
    agent: ureq::Agent,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap()
}

fn admin(db: &str, args: &[&str]) {
    let mut argv = vec!["tbox-server"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--database", db]);
    tbox_server::cmd::run(Cli::try_parse_from(argv).unwrap()).unwrap();
}

/// Starts a server in this process; returns its base URL.
fn start_server(db: &str, port: u16) -> String {
    let cli = Cli::try_parse_from([
        "tbox-server",
        "serve",
        "--bind",
        &format!("127.0.0.1:{port}"),
        "--database",
        db,
        "--workers",
        "1",
    ])
    .unwrap();
    let ServerCommand::Serve(args) = cli.command else { unreachable!() };
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    std::thread::spawn(move || {
        let _ = tbox_server::cmd::serve::run_with(args, |addrs| {
            let _ = tx.send(addrs[0]);
        });
    });
    let addr = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    format!("http://{addr}")
}

/// A build's steps as (name, result), as the API lists them.
fn step_results(b: &Value) -> Vec<(&str, &str)> {
    b["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["result"].as_str().unwrap()))
        .collect()
}

/// These tests are about running steps and reporting, not the sandbox (tests/recipes.rs is):
/// where bubblewrap is missing they run the steps unsandboxed and say so, except in CI, which
/// installs it.
fn sandbox_setting() -> &'static str {
    static SETTING: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    SETTING.get_or_init(|| {
        let ok = Command::new("bwrap").args(["--ro-bind", "/", "/", "true"]).output().is_ok_and(|o| o.status.success());
        if ok {
            return "";
        }
        assert!(std::env::var_os("CI").is_none(), "bubblewrap is required in CI (apt-get install bubblewrap)");
        let _ = writeln!(
            std::io::stderr(),
            "NOTE reporter tests: bubblewrap (bwrap) is not usable here, so their steps run with sandbox = \"none\""
        );
        "sandbox = \"none\"\n"
    })
}

impl Volunteer {
    /// A volunteer whose builder is registered and approved, with the given steps config.
    fn new(steps: &str) -> Volunteer {
        let v = Volunteer::unregistered(steps, Some(free_port()));
        v.keygen();
        admin(
            &v.db,
            &["builder", "add", "vol", "--project", "demo", "--key", v.dir.join("home/builder.pub").to_str().unwrap()],
        );
        v
    }

    /// A fresh machine and server (started unless `port` is None: then it is started later).
    fn unregistered(steps: &str, port: Option<u16>) -> Volunteer {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("tbox-reporter-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("home")).unwrap();
        std::fs::create_dir_all(dir.join("work")).unwrap();
        let db = format!("sqlite://{}", dir.join("server.db").display());
        admin(&db, &["project", "add", "demo"]);
        let port = port.unwrap_or_else(free_port);
        let base = format!("http://127.0.0.1:{port}");
        std::fs::write(
            dir.join("report.toml"),
            format!(
                "server = \"{base}\"\nbuilder = \"vol\"\nkey = \"~/builder.pem\"\nowner = \"vol@example.org\"\n\
                 max_log_bytes = 65536\nspool = \"~/spool\"\n{}\n[[project]]\nname = \"demo\"\nworkdir = \"{}\"\n{steps}",
                sandbox_setting(),
                dir.join("work").display()
            ),
        )
        .unwrap();
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        Volunteer { dir, db, base, agent }
    }

    fn serve(&self) {
        let port: u16 = self.base.rsplit(':').next().unwrap().parse().unwrap();
        assert_eq!(start_server(&self.db, port), self.base);
    }

    fn keygen(&self) {
        let out = self.cmd(&["keygen", "--out", self.dir.join("home/builder.pem").to_str().unwrap(), "--bits", "2048"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// tbox-report the way cron runs it: a bare environment, plus a secret in it.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.join("home"))
            .env("TBOX_CONFIG", self.dir.join("report.toml"))
            .env("TBOX_RETRY_DELAYS", "0.05")
            .env("SECRET_TOKEN", SECRET)
            .current_dir(self.dir.join("work"));
        c
    }

    fn cmd(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn builds(&self) -> Vec<Value> {
        let mut resp = self.agent.get(format!("{}/api/v1/projects/demo/builds?limit=100", self.base)).call().unwrap();
        let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        v["builds"].as_array().cloned().unwrap_or_default()
    }

    fn build(&self, id: &Value) -> Value {
        let mut resp = self.agent.get(format!("{}/api/v1/builds/{id}", self.base)).call().unwrap();
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
    }

    fn text(&self, url: &str) -> String {
        self.agent.get(url).call().unwrap().body_mut().read_to_string().unwrap()
    }

    /// Points the config's `server` at another URL (the volunteer's own server is `self.base`).
    fn set_server(&self, url: &str) {
        let path = self.dir.join("report.toml");
        let config = std::fs::read_to_string(&path).unwrap();
        let (first, rest) = config.split_once('\n').unwrap();
        assert!(first.starts_with("server = "), "{first}");
        std::fs::write(&path, format!("server = \"{url}\"\n{rest}")).unwrap();
    }

    /// The spool, set in the config: the tests move the config between servers (a captive
    /// portal), where the default spool would be another one per server.
    fn spool(&self) -> PathBuf {
        self.dir.join("home/spool")
    }

    fn git(&self, args: &[&str]) {
        let ok = Command::new("git")
            .args(args)
            .current_dir(self.dir.join("work"))
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.org")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.org")
            .output()
            .unwrap();
        assert!(ok.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&ok.stderr));
    }
}

impl Drop for Volunteer {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The files of `dir` whose name ends in `.ext`, sorted (for the spool: oldest first).
fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == ext)).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Something that is not a tbox server but answers every request with `200 OK`, this content
/// type and this body: a captive portal, a misconfigured proxy. Returns its URL and a count of
/// the requests it answered.
fn fake_server(content_type: &'static str, body: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            if read_request(&mut stream).is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        }
    });
    (base, hits)
}

/// Reads one request, headers and `Content-Length` body, so that the client sees an answer
/// rather than a reset.
fn read_request(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut wanted = None;
    loop {
        if wanted.is_none()
            && let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
        {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            wanted = Some(end + 4 + length);
        }
        if wanted.is_some_and(|w| buf.len() >= w) {
            return Ok(());
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const JUNIT: &str = r#"<testsuite name="unit"><testcase classname="unit" name="adds" time="0.01"/><testcase classname="unit" name="divides" time="0.02"><failure message="division by zero">at calc.c:7</failure></testcase></testsuite>"#;

/// tbox-report prints its shell completions and manual page, from the same definitions as
/// `--help` (what a package installs); a shell clap does not know is a usage error.
#[test]
fn completions_and_manual_page() -> TestResult {
    let out = Command::new(BIN).args(["completions", "bash"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("_tbox__report()") && text.contains("join"), "{text}");
    let out = Command::new(BIN).args(["completions", "zsh"]).output()?;
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("#compdef tbox-report"));
    let out = Command::new(BIN).arg("manpage").output()?;
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(man.contains(".TH tbox-report") && man.contains("serve"), "{man}");
    // A page per subcommand, as the main page's SEE ALSO promises (the package installs them).
    let dir = std::env::temp_dir().join(format!("tbox-report-man-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    assert!(Command::new(BIN).arg("manpage").arg("--dir").arg(&dir).status()?.success());
    for page in ["tbox-report.1", "tbox-report-join.1", "tbox-report-serve.1"] {
        assert!(std::fs::read_to_string(dir.join(page))?.contains(".TH"), "{page}");
    }
    std::fs::remove_dir_all(&dir)?;
    let out = Command::new(BIN).args(["completions", "cmd.exe"]).output()?;
    assert_eq!(out.status.code(), Some(2));
    Ok(())
}

#[test]
fn keygen_writes_a_private_key_only_its_owner_can_read() -> TestResult {
    use std::os::unix::fs::PermissionsExt as _;
    let v = Volunteer::unregistered("[[project.step]]\nname = \"b\"\nrun = \"true\"\n", None);
    let key = v.dir.join("home/builder.pem");
    let out = v.cmd(&["keygen", "--out", key.to_str().unwrap(), "--bits", "2048"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("SHA256:") && stdout.contains("BEGIN PUBLIC KEY"), "{stdout}");
    assert_eq!(std::fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
    let again = v.cmd(&["keygen", "--out", key.to_str().unwrap(), "--bits", "2048"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("refusing to overwrite"));
    let small = v.cmd(&["keygen", "--out", v.dir.join("small.pem").to_str().unwrap(), "--bits", "1024"]);
    assert_eq!(small.status.code(), Some(1));
    Ok(())
}

#[test]
fn register_then_approve_then_report() -> TestResult {
    let v = Volunteer::unregistered("[[project.step]]\nname = \"build\"\nrun = \"echo built\"\n", None);
    v.serve();
    v.keygen();
    let out = v.cmd(&["register", "--project", "demo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("pending"));

    // Pending: the report is refused, and the volunteer is told why.
    let out = v.cmd(&["run"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("pending approval"), "{}", stderr(&out));
    let out = v.cmd(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("is pending"));

    // Nobody can take the name over with another key.
    std::fs::rename(v.dir.join("home/builder.pem"), v.dir.join("home/first.pem"))?;
    v.keygen();
    let out = v.cmd(&["register", "--project", "demo"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("already registered"), "{}", stderr(&out));
    std::fs::rename(v.dir.join("home/first.pem"), v.dir.join("home/builder.pem"))?;

    admin(&v.db, &["builder", "approve", "vol"]);
    let out = v.cmd(&["check"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let out = v.cmd(&["run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(v.builds().len(), 1);
    Ok(())
}

#[test]
fn passing_and_failing_steps_with_junit_and_no_leaked_environment() -> TestResult {
    let v = Volunteer::new(&format!(
        "[[project.step]]\nname = \"build\"\nrun = \"echo building; env; echo token=$SECRET_TOKEN; echo to-stderr >&2\"\n\n\
         [[project.step]]\nname = \"test\"\nkind = \"test\"\nrun = '''mkdir -p out && printf '%s' '{JUNIT}' > out/junit.xml; exit 1'''\n\
         junit = [\"out/*.xml\"]\n\n[[project.step]]\nname = \"package\"\nrun = \"echo never\"\n"
    ));
    v.serve();
    let out = v.cmd(&["run", "-v"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let builds = v.builds();
    assert_eq!(builds.len(), 1);
    let b = v.build(&builds[0]["id"]);
    assert_eq!(b["result"], "failure");
    let steps = step_results(&b);
    assert_eq!(steps, [("build", "success"), ("test", "failure"), ("package", "skipped")]);
    assert_eq!(b["steps"][1]["kind"], "test");
    assert_eq!(b["steps"][1]["exit_code"], 1);
    let tests: Vec<(&str, &str)> = b["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["result"].as_str().unwrap()))
        .collect();
    assert_eq!(tests, [("adds", "passed"), ("divides", "failed")]);
    for p in ["os", "arch", "cpus", "reporter"] {
        assert!(b["properties"][p].is_string(), "property {p} detected: {}", b["properties"]);
    }

    let log = v.text(b["steps"][0]["log_url"].as_str().unwrap());
    assert!(log.contains("building") && log.contains("to-stderr"), "{log}");
    assert!(log.contains("token=\n"), "the step does not see the caller's variables: {log}");
    assert!(!log.contains("SECRET_TOKEN") && !log.contains("TBOX_CONFIG"), "{log}");
    assert!(!b.to_string().contains(SECRET), "the secret is nowhere in the report");
    Ok(())
}

/// Issue 21: the files `artifacts` names are in the report with their SHA-256, for agreement;
/// a symlink the build planted towards the volunteer's key is not followed (its digest would
/// leak too), and a FIFO does not hold the report up.
#[test]
fn artifacts_are_hashed_never_through_a_symlink() -> TestResult {
    let v = Volunteer::new(
        "artifacts = [\"out/*\"]\n[[project.step]]\nname = \"build\"\n\
         run = \"mkdir -p out && printf binary > out/demo.bin && ln -sf $HOME/../../home/builder.pem out/key.pem \
         && mkfifo out/pipe\"\n",
    );
    v.serve();
    let out = v.cmd(&["run", "-v"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let b = v.build(&v.builds()[0]["id"]);
    assert_eq!(b["result"], "success", "{b}");
    // sha256("binary")
    assert_eq!(
        b["artifacts"],
        serde_json::json!([{"path": "out/demo.bin", "size": 6,
            "sha256": "9a3a45d01531a20e89ac6ae10b0b0beb0492acd7216a368aa062d1a5fecaf9cd"}]),
        "{b}"
    );
    Ok(())
}

/// Issue 11: a JUnit file that cannot be read left the build green with 0 tests; a test step
/// whose globs matched nothing said nothing.
#[test]
fn unreadable_junit_fails_the_step_and_missing_junit_is_said() -> TestResult {
    let v = Volunteer::new(
        "[[project.step]]\nname = \"unit\"\nkind = \"test\"\n\
         run = '''mkdir -p out && printf '<testsuite name=\"s\"><testcase name=\"t\"' > out/cut.xml'''\n\
         junit = [\"out/*.xml\"]\ncontinue_on_failure = true\n\n\
         [[project.step]]\nname = \"integration\"\nkind = \"test\"\nrun = \"true\"\njunit = [\"it-results/*.xml\"]\n",
    );
    v.serve();
    let out = v.cmd(&["run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let b = v.build(&v.builds()[0]["id"]);
    let steps = step_results(&b);
    assert_eq!(steps, [("unit", "failure"), ("integration", "warnings")], "{b}");
    assert_ne!(b["result"], "success");
    let log = v.text(b["steps"][0]["log_url"].as_str().unwrap());
    assert!(log.contains("[tbox-report] error: JUnit file out/cut.xml is not valid JUnit XML"), "{log}");
    // The build page says which file and why, and that the other step found no results.
    let page = v.text(&format!("{}/builds/{}", v.base, b["id"]));
    // (Tera escapes `/` as `&#x2F;`.)
    assert!(page.contains("out&#x2F;cut.xml is not valid JUnit XML"), "{page}");
    assert!(page.contains("no JUnit file matched it-results&#x2F;*.xml"), "{page}");
    Ok(())
}

#[test]
fn a_timed_out_step_leaves_no_process_behind() -> TestResult {
    let v = Volunteer::new(
        "[[project.step]]\nname = \"hang\"\nrun = \"sleep 1001 & sleep 1002 & sleep 1003\"\ntimeout = \"2s\"\n",
    );
    v.serve();
    let t = Instant::now();
    let out = v.cmd(&["run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(t.elapsed() < Duration::from_secs(30));
    let left = Command::new("pgrep").args(["-f", "sleep 100[123]"]).output()?;
    assert!(left.stdout.is_empty(), "left behind: {}", String::from_utf8_lossy(&left.stdout));
    let b = v.build(&v.builds()[0]["id"]);
    assert_eq!(b["steps"][0]["result"], "failure");
    assert!(v.text(b["steps"][0]["log_url"].as_str().unwrap()).contains("timed out after 2s"));
    Ok(())
}

#[test]
fn a_second_concurrent_run_exits_without_building() -> TestResult {
    let v = Volunteer::new("[[project.step]]\nname = \"slow\"\nrun = \"sleep 3\"\n");
    v.serve();
    let first = v.command(&["run"]).spawn()?;
    std::thread::sleep(Duration::from_millis(1000));
    let second = v.cmd(&["run"]);
    assert_eq!(second.status.code(), Some(0));
    assert!(stderr(&second).contains("being built on this machine"), "{}", stderr(&second));
    let first = first.wait_with_output()?;
    assert!(first.status.success());
    assert_eq!(v.builds().len(), 1);
    Ok(())
}

#[test]
fn unchanged_revision_is_skipped_and_force_builds() -> TestResult {
    let v = Volunteer::new("[[project.step]]\nname = \"build\"\nrun = \"git log --oneline | head -1\"\n");
    v.serve();
    v.git(&["init", "-q", "-b", "main"]);
    std::fs::write(v.dir.join("work/a.txt"), "1")?;
    v.git(&["add", "."]);
    v.git(&["commit", "-qm", "one"]);
    assert!(v.cmd(&["run"]).status.success());
    assert!(v.cmd(&["run"]).status.success());
    assert_eq!(v.builds().len(), 1, "same revision: built once");
    assert!(v.cmd(&["run", "--force"]).status.success());
    assert_eq!(v.builds().len(), 2);
    std::fs::write(v.dir.join("work/a.txt"), "2")?;
    v.git(&["commit", "-qam", "two"]);
    assert!(v.cmd(&["run"]).status.success());
    let builds = v.builds();
    assert_eq!(builds.len(), 3, "new revision: built again");
    assert_ne!(builds[0]["revision"], builds[1]["revision"]);
    assert_eq!(builds[0]["revision"].as_str().map(str::len), Some(40));
    Ok(())
}

#[test]
fn server_down_spools_and_flush_delivers_exactly_once() -> TestResult {
    let v = Volunteer::new("[[project.step]]\nname = \"build\"\nrun = \"echo ok\"\n");
    // No server yet.
    let out = v.cmd(&["run"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("waits in"), "{}", stderr(&out));
    let out = v.cmd(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(3));
    let spool = v.spool();
    let spooled = || {
        std::fs::read_dir(&spool)
            .map(|d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "json")).count())
    };
    assert_eq!(spooled()?, 2);
    assert_eq!(v.cmd(&["flush"]).status.code(), Some(3), "still down: still spooled");
    let out = v.cmd(&["run"]);
    assert_eq!(out.status.code(), Some(3), "a backlog, and a third build spooled: {}", stderr(&out));
    assert!(stderr(&out).contains("2 earlier report(s) still wait"), "{}", stderr(&out));

    v.serve();
    let out = v.cmd(&["flush"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("delivered 3"));
    assert!(v.cmd(&["flush"]).status.success());
    assert_eq!(v.builds().len(), 3, "each spooled report arrives exactly once");
    assert_eq!(spooled()?, 0);
    Ok(())
}

#[test]
fn a_world_readable_key_is_refused() -> TestResult {
    use std::os::unix::fs::PermissionsExt as _;
    let v = Volunteer::new("[[project.step]]\nname = \"build\"\nrun = \"true\"\n");
    let key = v.dir.join("home/builder.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))?;
    for cmd in ["run", "check", "flush"] {
        let out = v.cmd(&[cmd]);
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        assert!(stderr(&out).contains("chmod 600"), "{cmd}: {}", stderr(&out));
    }
    Ok(())
}

#[test]
fn push_records_a_build_that_ran_elsewhere() -> TestResult {
    let v = Volunteer::new("[[project.step]]\nname = \"build\"\nrun = \"true\"\n");
    v.serve();
    let work = v.dir.join("work");
    std::fs::write(work.join("compile.log"), "gcc -c x.c\nx.c:1:1: error: expected identifier\n")?;
    std::fs::write(work.join("results.xml"), JUNIT)?;
    let out = v.cmd(&[
        "push",
        "--project",
        "demo",
        "--result",
        "failure",
        "--log",
        "compile.log",
        "--step",
        "compile",
        "--revision",
        "abc123",
        "--junit",
        "*.xml",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let b = v.build(&v.builds()[0]["id"]);
    assert_eq!((b["result"].as_str(), b["revision"].as_str()), (Some("failure"), Some("abc123")));
    assert_eq!(b["steps"][0]["name"], "compile");
    assert_eq!(b["tests"].as_array().map(Vec::len), Some(2));
    assert!(v.text(b["steps"][0]["log_url"].as_str().unwrap()).contains("expected identifier"));
    let bad = v.cmd(&["push", "--project", "demo", "--result", "meh", "--revision", "x"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("--result must be one of"));
    Ok(())
}

/// Issue 10, item 7: a captive portal answering `200 text/html` emptied a spool of 5 reports,
/// none stored. Only a tbox server's answer carrying the report's id is a delivery.
#[test]
fn a_captive_portal_answering_200_does_not_empty_the_spool() -> TestResult {
    let v = Volunteer::new("[[project.step]]\nname = \"build\"\nrun = \"echo ok\"\n");
    for _ in 0..5 {
        let out = v.cmd(&["run", "--force"]);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    }
    let spool = v.spool();
    assert_eq!((files(&spool, "json").len(), files(&spool, "sig").len()), (5, 5));

    let (portal, portal_hits) = fake_server("text/html; charset=utf-8", "<html>Log in to the Wi-Fi</html>".into());
    v.set_server(&portal);
    let out = v.cmd(&["flush"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "the server at {portal} answered 200 but not as a tbox server (text/html): 5 report(s) kept in the spool"
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(portal_hits.load(Ordering::SeqCst), 1, "the first answer stops the flush");
    assert_eq!(files(&spool, "json").len(), 5);
    // A build reported through the portal is spooled too, not believed delivered.
    let out = v.cmd(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("not as a tbox server (text/html): report kept in the spool"), "{}", stderr(&out));
    assert_eq!(files(&spool, "json").len(), 6);

    // JSON, even the right shape, is not enough: its id must be the report's.
    let wrong = format!(r#"{{"id":"{}","build":1,"url":"{portal}/builds/1"}}"#, "0".repeat(64));
    let (impostor, impostor_hits) = fake_server("application/json", wrong);
    v.set_server(&impostor);
    let out = v.cmd(&["flush"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("answered 200 but not as a tbox server (JSON whose id"), "{}", stderr(&out));
    assert_eq!(impostor_hits.load(Ordering::SeqCst), 1);
    assert_eq!(files(&spool, "json").len(), 6);

    v.set_server(&v.base);
    v.serve();
    let out = v.cmd(&["flush"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("delivered 6"), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(v.builds().len(), 6, "every report kept through the portal arrives");
    assert_eq!((files(&spool, "json").len(), files(&spool, "sig").len()), (0, 0));
    Ok(())
}

/// Issue 10, item 7: spooled reports were signed again at flush, so a bit flipped in a spooled
/// log was delivered as genuine. They are signed once and checked before they are sent.
#[test]
fn a_bit_flipped_in_a_spooled_report_is_set_aside_not_sent() -> TestResult {
    let v = Volunteer::new("[[project.step]]\nname = \"build\"\nrun = \"echo ok\"\n");
    for _ in 0..3 {
        assert_eq!(v.cmd(&["run", "--force"]).status.code(), Some(3));
    }
    let spool = v.spool();
    let [flipped, resigned, old] = <[PathBuf; 3]>::try_from(files(&spool, "json")).unwrap();
    // One bit of the first report's log: "ok" becomes "oj".
    let mut body = std::fs::read(&flipped)?;
    let at = body.windows(9).position(|w| w == br#""log":"ok"#).unwrap() + 8;
    body[at] ^= 0x01;
    std::fs::write(&flipped, body)?;
    // The second carries a genuine signature, of another report.
    std::fs::copy(old.with_extension("sig"), resigned.with_extension("sig"))?;
    // The third looks spooled by an older tbox-report, which kept no signature: still sent.
    std::fs::remove_file(old.with_extension("sig"))?;

    v.serve();
    let out = v.cmd(&["flush"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "damaged reports are an error here: {err}");
    assert!(
        err.contains(&format!("spooled report {} (build ", file_name(&flipped)))
            && err.contains("is damaged: its content changed after it was spooled"),
        "{err}"
    );
    assert!(
        err.contains(&format!("spooled report {} (build ", file_name(&resigned)))
            && err.contains("is damaged: its signature does not verify with this builder's key"),
        "{err}"
    );
    assert!(err.contains(&format!("it was not sent, and is kept in {}", spool.join("corrupt").display())), "{err}");
    assert_eq!(v.builds().len(), 1, "only the intact report is delivered");
    let corrupt = spool.join("corrupt");
    for report in [&flipped, &resigned] {
        for ext in ["json", "sig", "reason"] {
            let name = report.with_extension(ext);
            assert!(corrupt.join(name.file_name().unwrap()).is_file(), "{} in corrupt/", name.display());
        }
    }
    let reason = std::fs::read_to_string(corrupt.join(flipped.with_extension("reason").file_name().unwrap()))?;
    assert!(reason.contains("content changed"), "{reason}");
    assert_eq!((files(&spool, "json").len(), files(&spool, "sig").len()), (0, 0));
    let out = v.cmd(&["flush"]);
    assert!(out.status.success(), "set aside for good: {}", stderr(&out));
    assert_eq!(v.builds().len(), 1);
    Ok(())
}

/// Issue 10, item 7: on a full disk the report was neither sent nor spooled, and the message
/// did not say so. (A spool below a regular file fails the same way, without a full disk.)
#[test]
fn a_report_neither_sent_nor_spooled_is_said_lost_and_built_again() -> TestResult {
    let v = Volunteer::new("[[project.step]]\nname = \"build\"\nrun = \"echo ok\"\n");
    v.git(&["init", "-q", "-b", "main"]);
    std::fs::write(v.dir.join("work/a.txt"), "1")?;
    v.git(&["add", "."]);
    v.git(&["commit", "-qm", "one"]);
    let rev = Command::new("git").args(["rev-parse", "HEAD"]).current_dir(v.dir.join("work")).output()?;
    let rev = String::from_utf8(rev.stdout)?.trim().to_owned();
    std::fs::write(v.dir.join("afile"), "")?;
    let config = std::fs::read_to_string(v.dir.join("report.toml"))?;
    let spool = v.dir.join("afile/spool");
    std::fs::write(
        v.dir.join("report.toml"),
        config.replace("spool = \"~/spool\"", &format!("spool = \"{}\"", spool.display())),
    )?;

    let out = v.cmd(&["run"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("the server at {} could not be reached (", v.base)), "{err}");
    assert!(err.contains(&format!("AND the report could not be spooled in {} (", spool.display())), "{err}");
    assert!(err.contains("Not a directory"), "{err}");
    assert!(
        err.contains("the report of build ") && err.contains(&format!("(project demo, revision {rev}) is lost")),
        "{err}"
    );

    // Nothing reported it: the next run builds that revision again.
    v.serve();
    let out = v.cmd(&["run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(v.builds().len(), 1);
    assert_eq!(v.builds()[0]["revision"], rev.as_str());
    Ok(())
}
