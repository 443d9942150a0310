//! A taken-over server and a hostile recipe against a volunteer's machine, each attack as a red
//! team ran it: the real `tbox-report` binary (run as an ordinary user where the tests run as
//! root), a real server, real git and bubblewrap, and a hostile mirror in front of the server
//! (`common::Mirror`) that serves leases, keys, recipes, redirects and escape sequences of the
//! test's choosing. Each test asserts the effect: that nothing ran outside the sandbox, that no
//! secret reached the server, that a limit held.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tbox_protocol::PrivateKey;

/// A project `demo` with a repository, a key and this recipe published; returns the key and
/// its file.
fn project(w: &World, recipe_body: &str) -> (PrivateKey, PathBuf) {
    let (k, key_path) = w.maintain("demo");
    let recipe = w.recipe("demo", "recipe.toml", recipe_body);
    w.publish(&recipe, &key_path);
    (k, key_path)
}

fn rev(dir: &Path, what: &str) -> String {
    let out =
        Command::new("git").args(["-c", "safe.directory=*", "rev-parse", what]).current_dir(dir).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Every log of every build of demo, joined: what reached the server.
fn everything_reported(w: &World) -> String {
    let mut all = String::new();
    for b in w.builds("demo") {
        let full = w.get(&format!("/api/v1/builds/{}", b["id"]));
        for s in full["steps"].as_array().cloned().unwrap_or_default() {
            if let Some(u) = s["log_url"].as_str() {
                all.push_str(&w.agent.get(u).call().unwrap().body_mut().read_to_string().unwrap());
            }
        }
        all.push_str(&full.to_string());
    }
    all
}

/// `tbox-report serve` for one lease.
fn serve_once(w: &World) -> std::process::Output {
    w.volunteer_at("home", &["serve", "--every", "100000", "--max-builds", "1"]).output().unwrap()
}

/// The lease the server granted, with `field` set to `value` by the mirror.
fn tamper_lease(mirror: &Mirror, changes: Value) {
    mirror.rewrite(move |r, mut reply| {
        if r.path == "/api/v1/leases" && reply.status == 200 {
            let mut lease: Value = serde_json::from_slice(&reply.body).unwrap();
            for (k, v) in changes.as_object().unwrap() {
                lease[k] = v.clone();
            }
            reply.body = lease.to_string().into_bytes();
        }
        reply
    });
}

const ANY_BRANCH: &str =
    "branches = [\"*\"]\nexpires = \"EXPIRES\"\nversion = 1\n[[step]]\nname = \"b\"\nrun = \"true\"\n";

/// Attack 1: a lease's branch (or revision) was passed to `git fetch` as it came, so
/// `--upload-pack=CMD` ran CMD as the volunteer, outside the sandbox.
#[test]
fn a_branch_or_revision_in_a_lease_never_reaches_git_as_an_option() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]).unprivileged();
    // A recipe that allows every branch: the pattern alone cannot keep an option out.
    let (k, _) = project(&w, ANY_BRANCH);
    let mirror = Mirror::new(&w.base);
    join_and_approve(&w, &mirror.base, "demo", &k.public_key().fingerprint());
    // The first build clones; from now on an update is a `git fetch` in the checkout.
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let marker = w.dir.join("PWNED");
    let cmd = format!("touch {};false", marker.display());
    for (changes, said) in [
        (json!({"branch": format!("--upload-pack={cmd}")}), "names branch"),
        (json!({"branch": "main --upload-pack=x"}), "names branch"),
        (json!({"branch": "../../etc"}), "names branch"),
        (json!({"revision": format!("--upload-pack={cmd}")}), "names revision"),
        (json!({"revision": "--output=/tmp/tbox-pwned"}), "names revision"),
    ] {
        mirror.clear();
        tamper_lease(&mirror, changes.clone());
        w.admin(&["request", "add", "demo", "--branch", "main"]);
        let out = serve_once(&w);
        assert!(!marker.exists(), "{changes}: git ran the server's command\n{}", stderr(&out));
        assert!(!Path::new("/tmp/tbox-pwned").exists(), "{changes}");
        assert!(stderr(&out).contains("refused") && stderr(&out).contains(said), "{changes}: {}", stderr(&out));
        // The project hears why, on its request.
        let (b, logs) = w.newest("demo");
        assert_eq!(b["result"], "exception", "{changes}: {b}");
        assert!(logs[0].contains(said), "{changes}: {logs:?}");
    }
    // The check can fail: a lease as the server made it builds.
    mirror.clear();
    w.admin(&["request", "add", "demo", "--branch", "main"]);
    let out = serve_once(&w);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(w.newest("demo").0["result"], "success");
    Ok(())
}

/// Attack 2: a request the project once signed was obeyed whatever its age or project: an
/// expired request made a volunteer build the repository's first commit.
#[test]
fn old_foreign_or_late_signed_requests_are_not_obeyed() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]).unprivileged();
    let (k, _) = project(&w, &format!("{STEPS_OK}version = 1\n[[step]]\nname = \"b\"\nrun = \"true\"\n"));
    let repo = w.repo("demo");
    let first = rev(&repo, "HEAD");
    std::fs::write(repo.join("more.txt"), "more\n")?;
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "second"]);
    let mirror = Mirror::new(&w.base);
    join_and_approve(&w, &mirror.base, "demo", &k.public_key().fingerprint());
    let ago = |days: i64| (chrono::Utc::now() - chrono::TimeDelta::days(days)).to_rfc3339();
    let signed = |body: Value| {
        let text = body.to_string();
        let sig = k.sign(text.as_bytes());
        json!({"revision": first, "signed_request": text, "request_signature": sig})
    };
    for (body, said) in [
        (
            json!({"project": "demo", "created_at": ago(40), "branch": "main", "revision": first}),
            "more than 30 days ago",
        ),
        (
            json!({"project": "other", "created_at": ago(0), "branch": "main", "revision": first}),
            "for project \"other\"",
        ),
        (
            json!({"project": "demo", "created_at": ago(3), "deadline": ago(1), "branch": "main", "revision": first}),
            "deadline",
        ),
        (
            json!({"project": "demo", "created_at": ago(0), "branch": "release-1", "revision": first}),
            "asks for release-1",
        ),
        // The format before `project` and `created_at` were signed: nothing says where or when.
        (json!({"branch": "main", "revision": first}), "project"),
    ] {
        mirror.clear();
        tamper_lease(&mirror, signed(body.clone()));
        w.admin(&["request", "add", "demo", "--branch", "main"]);
        let out = serve_once(&w);
        assert!(stderr(&out).contains(said), "{body}: {}", stderr(&out));
        // Refusals name the revision asked for (the request sees why); nothing else does.
        assert!(
            w.builds("demo")
                .iter()
                .all(|b| b["revision"].as_str() != Some(first.as_str()) || b["result"] == "exception"),
            "{body}: the old revision was built"
        );
        let (b, logs) = w.newest("demo");
        assert_eq!(b["result"], "exception", "{body}: {b}");
        assert!(logs[0].contains(said), "{body}: {logs:?}");
    }
    // The check can fail: a fresh request for this project builds the revision it names.
    mirror.clear();
    tamper_lease(
        &mirror,
        signed(json!({"project": "demo", "created_at": ago(0), "branch": "main", "revision": first})),
    );
    w.admin(&["request", "add", "demo", "--branch", "main"]);
    let out = serve_once(&w);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(w.newest("demo").0["revision"].as_str(), Some(first.as_str()));
    Ok(())
}

/// Signs and publishes a key list with the binary, as a maintainer does.
fn keys(w: &World, signer: &Path, args: &[&str]) {
    let file = w.keys_file("demo");
    let mut argv = vec!["keys", "sign", file.to_str().unwrap(), "--key", signer.to_str().unwrap()];
    argv.extend_from_slice(args);
    let out = w.maintainer(&argv);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = w.maintainer(&["keys", "publish", file.to_str().unwrap(), "--server", &w.base]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Attack 3: revocation lived in the server's unsigned key list; a mirror that left key 2 out
/// got a recipe signed by key 2 run and recorded.
#[test]
fn a_mirror_cannot_drop_a_revocation() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]).unprivileged();
    let (k1, k1_path) = w.maintain("demo");
    let k2 = key();
    let k2_pub = w.dir.join("maint/k2.pub");
    std::fs::write(&k2_pub, k2.public_key().to_pem())?;
    keys(&w, &k1_path, &["--project", "demo", "--add", k2_pub.to_str().unwrap()]);
    let v1 =
        w.recipe("demo", "recipe.toml", &format!("{STEPS_OK}version = 1\n[[step]]\nname = \"b\"\nrun = \"true\"\n"));
    w.publish(&v1, &k1_path);
    let mirror = Mirror::new(&w.base);
    join_and_approve(&w, &mirror.base, "demo", &k1.public_key().fingerprint());
    assert_eq!(w.volunteer(&["run"]).status.code(), Some(0));
    let first_list = w.text("/api/v1/projects/demo/keys");
    let first_sig = k1.sign(first_list.as_bytes());
    // Key 2 is stolen; the project revokes it. The volunteer runs once and sees that.
    keys(&w, &k1_path, &["--revoke", &k2.public_key().fingerprint()]);
    let out = w.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let marker = "stolen-key-ran";
    let evil = recipe_text(
        "demo",
        &format!("file://{}", w.repo("demo").display()),
        &format!("{STEPS_OK}version = 9\n[[step]]\nname = \"b\"\nrun = \"touch {marker}\"\n"),
    );
    let evil_sig = k2.sign(evil.as_bytes());
    let builds_before = w.builds("demo").len();
    let old = (first_list.clone(), first_sig.clone());
    for (what, keys_answer) in [
        ("the key list left out", Reply::json(404, &json!({"error": "not_found", "message": "no key list"}))),
        (
            "the first key list served again",
            Reply::new(200, "application/toml", old.0.clone()).with("Tbox-Signature", &old.1),
        ),
        ("the server's keys down", Reply::json(503, &json!({"error": "down", "message": "down"}))),
    ] {
        mirror.clear();
        let answer = keys_answer.clone();
        mirror.on(move |r| r.path.ends_with("/keys").then(|| answer.clone()));
        mirror.serve(evil.as_bytes(), &evil_sig);
        let out = w.volunteer(&["run", "--force"]);
        assert_eq!(out.status.code(), Some(5), "{what}: {}", stderr(&out));
        assert!(!w.workdir("demo").join(marker).exists(), "{what}: the stolen key's recipe ran");
        assert!(stderr(&out).contains("REFUSED"), "{what}: {}", stderr(&out));
    }
    // A mirror at another address knows nothing of it, but the volunteer does.
    let other = Mirror::new(&w.base);
    other
        .on(|r| r.path.ends_with("/keys").then(|| Reply::json(404, &json!({"error": "not_found", "message": "none"}))));
    other.serve(evil.as_bytes(), &evil_sig);
    let config = w.config().replace(&mirror.base, &other.base);
    std::fs::write(w.dir.join("home/.config/tbox/report.toml"), config)?;
    let out = w.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(!w.workdir("demo").join(marker).exists());
    assert!(w.builds("demo").len() > builds_before, "the project was told of the refusals");
    assert!(
        w.builds("demo").iter().all(|b| b["recipe_version"] != 9),
        "a build of the stolen key's recipe was recorded"
    );
    Ok(())
}

/// Attack 4: the version last run was kept per server URL, so a mirror at another address had a
/// project-signed version 3 run after version 4.
#[test]
fn rollback_protection_follows_the_project_and_key_not_the_url() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]).unprivileged();
    let (k, key_path) = w.maintain("demo");
    let text = |v: u64, marker: &str| {
        recipe_text(
            "demo",
            &format!("file://{}", w.repo("demo").display()),
            &format!("{STEPS_OK}version = {v}\n[[step]]\nname = \"b\"\nrun = \"touch {marker}\"\n"),
        )
    };
    let v3 = text(3, "v3-ran");
    let v3_sig = k.sign(v3.as_bytes());
    let path = w.dir.join("maint/recipe.toml");
    std::fs::write(&path, text(4, "v4-ran"))?;
    w.publish(&path, &key_path);
    join_and_approve(&w, &w.base, "demo", &k.public_key().fingerprint());
    assert_eq!(w.volunteer(&["run"]).status.code(), Some(0));
    assert!(w.workdir("demo").join("v4-ran").exists());
    // A mirror at another address (or the project's new server) serving the genuine, older v3.
    let mirror = Mirror::new(&w.base);
    mirror.serve(v3.as_bytes(), &v3_sig);
    let config = w.config().replace(&w.base, &mirror.base);
    std::fs::write(w.dir.join("home/.config/tbox/report.toml"), config)?;
    let out = w.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("lower than version 4"), "{}", stderr(&out));
    assert!(!w.workdir("demo").join("v3-ran").exists(), "the rolled-back recipe ran");
    Ok(())
}

/// Attack 5: no limits at all; one step started 1,400 processes, held 3 GB of memory and wrote
/// 2 GB into the workdir and 1 GB into a /tmp held in memory.
#[test]
fn a_runaway_step_is_ended_at_the_volunteers_limits() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let _serial = small_limits();
    let w = World::new(&["demo"]).unprivileged();
    let marker = format!("sleep 96{}", std::process::id());
    let steps = format!(
        "[[step]]\nname = \"fork\"\nrun = \"for i in $(seq 2000); do {marker} & done; wait\"\ncontinue_on_failure = true\n\
         [[step]]\nname = \"memory\"\nrun = \"python3 -c 'import time; b = bytearray(1 << 30); time.sleep(60)'\"\ncontinue_on_failure = true\n\
         [[step]]\nname = \"disk\"\nrun = \"dd if=/dev/zero of=big bs=1M count=600 2>&1; sleep 60\"\ncontinue_on_failure = true\n\
         [[step]]\nname = \"tmp\"\nrun = \"dd if=/dev/zero of=/tmp/big bs=1M count=400 2>&1; sleep 60\"\ncontinue_on_failure = true\n"
    );
    let (k, key_path) = project(&w, &format!("{STEPS_OK}version = 1\n{steps}"));
    join_and_approve(&w, &w.base, "demo", &k.public_key().fingerprint());
    let config = w.config() + "\n[limits]\nprocesses = 64\nmemory = \"128MiB\"\ndisk = \"256MiB\"\n";
    std::fs::write(w.dir.join("home/.config/tbox/report.toml"), config)?;
    let started = Instant::now();
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(120), "took {:?}", started.elapsed());
    let (b, logs) = w.newest("demo");
    assert_eq!(b["result"], "failure", "{b}");
    let names: Vec<&str> = b["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    let log_of = |name: &str| logs[names.iter().position(|n| *n == name).unwrap()].clone();
    assert!(log_of("fork").contains("[tbox-report] step ended: processes limit 64"), "{}", log_of("fork"));
    assert!(log_of("memory").contains("[tbox-report] step ended: memory limit 128 MiB"), "{}", log_of("memory"));
    assert!(log_of("disk").contains("[tbox-report] step ended: disk limit 256 MiB"), "{}", log_of("disk"));
    assert!(log_of("tmp").contains("[tbox-report] step ended: disk limit 256 MiB"), "{}", log_of("tmp"));
    // Nothing of it is left running, and the step's /tmp was not the host's.
    let left: Vec<String> = std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&marker))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!Path::new("/tmp/big").exists());

    // A recipe may ask for less, never more.
    let v2 = w.recipe(
        "demo",
        "recipe.toml",
        &format!(
            "{STEPS_OK}version = 2\n[limits]\nprocesses = 32\nmemory = \"64GiB\"\n\
             [[step]]\nname = \"fork\"\nrun = \"for i in $(seq 2000); do {marker} & done; wait\"\n"
        ),
    );
    w.publish(&v2, &key_path);
    let out = w.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (_, logs) = w.newest("demo");
    assert!(logs.iter().any(|l| l.contains("step ended: processes limit 32")), "{logs:?}");
    Ok(())
}

/// Attacks 6, 7 and 12: private files outside /etc and $HOME, the session keyring, and what a
/// step learns of who and where the volunteer is.
#[test]
fn nothing_private_of_the_volunteers_reaches_the_server() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]).unprivileged();
    // Private files of the volunteer's, outside their HOME (where the tests may write there).
    let tag = format!("tbox-attack-{}", std::process::id());
    let mut planted = Vec::new();
    for dir in [
        Path::new("/opt").join(&tag),
        Path::new("/usr/local/share").join(&tag),
        Path::new("/srv").join(&tag),
        Path::new("/var/lib").join(&tag),
    ] {
        if std::fs::create_dir_all(&dir).is_ok() {
            let f = dir.join("secret");
            std::fs::write(&f, "PRIVATE-FILE-CONTENT")?;
            std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            if let Some(uid) = w.as_user {
                std::os::unix::fs::chown(&f, Some(uid), Some(uid))?;
            }
            planted.push(f);
        }
    }
    // The step looks for the volunteer's keys as an attacker would: by name in every keyring it
    // can name, and by every serial /proc/keys shows it.
    let cats: String = planted.iter().map(|f| format!("cat {} 2>&1; ", f.display())).collect();
    let steps = format!(
        "[[step]]\nname = \"look\"\nrun = '''\n{cats}\npython3 probe.py 2>&1\ntr '\\0' ' ' < /proc/1/cmdline; echo\n\
         id -un; hostname; echo \"$HOME $PWD\"; env; ls -la /home /root /srv /mnt /media /var 2>&1\n'''\n"
    );
    let (k, key_path) = w.maintain("demo");
    std::fs::write(w.repo("demo").join("probe.py"), KEYRING_PROBE)?;
    git(&w.repo("demo"), &["add", "."]);
    git(&w.repo("demo"), &["commit", "-qm", "probe"]);
    let recipe = w.recipe("demo", "recipe.toml", &format!("{STEPS_OK}version = 1\n{steps}"));
    w.publish(&recipe, &key_path);
    join_and_approve(&w, &w.base, "demo", &k.public_key().fingerprint());
    // The volunteer's own session holds a secret in its keyring when it runs tbox-report.
    let mut run = w.command_as_volunteer("home", "python3");
    run.args(["-c", WITH_A_KEY, &reporter(), "run"]);
    let out = run.output()?;
    for f in &planted {
        let _ = std::fs::remove_dir_all(f.parent().unwrap());
    }
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let reported = everything_reported(&w);
    assert!(reported.contains("search"), "the probe did not run:\n{reported}");
    assert!(!reported.contains("PRIVATE-FILE-CONTENT"), "a private file reached the server:\n{reported}");
    assert!(!reported.contains("PRIVATE-KEYRING-SECRET"), "the session keyring reached the server:\n{reported}");
    let home = w.dir.join("home").display().to_string();
    assert!(!reported.contains(&home), "the volunteer's paths reached the server:\n{reported}");
    assert!(reported.contains("/home/build /work"), "{reported}");
    Ok(())
}

/// Joins a new session keyring, puts a secret `user` key in it and another in the user's own
/// keyring, both readable by every process of the uid (as tools that share a token between a
/// user's programs make them; they expire in five minutes), and runs the program named by its
/// arguments in that session: a volunteer whose keyrings hold tokens.
const WITH_A_KEY: &str = "\
import ctypes, os, platform, sys
add, ctl = {'x86_64': (248, 250), 'aarch64': (217, 219)}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
assert libc.syscall(ctl, 1, None) > 0
for name in (b'tbox-attack', b'tbox-attack-u'):
    k = libc.syscall(add, b'user', name, b'PRIVATE-KEYRING-SECRET', 22, -3)
    assert k > 0
    assert libc.syscall(ctl, 5, k, 0x3f3f0000) == 0
    libc.syscall(ctl, 15, k, 300)
assert libc.syscall(ctl, 8, k, -4) == 0
os.execv(sys.argv[1], sys.argv[1:])
";

/// What a hostile step tries: find the keys by name in every keyring it can name, and take
/// every key /proc/keys shows by its serial: link it into a keyring of its own, then read it.
const KEYRING_PROBE: &str = "\
import ctypes, platform
ctl = {'x86_64': 250, 'aarch64': 219}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(200)
for ring in (-3, -4, -5):
    for name in (b'tbox-attack', b'tbox-attack-u'):
        print('search', ring, name, libc.syscall(ctl, 10, ring, b'user', name, 0))
try:
    serials = [int(l.split()[0], 16) for l in open('/proc/keys')]
except OSError as e:
    serials = []
    print('no /proc/keys:', e)
for k in serials:
    linked = libc.syscall(ctl, 8, k, -3)
    n = libc.syscall(ctl, 11, k, buf, 200)
    print('read', k, linked, n, buf.raw[:n] if n > 0 else b'')
";

/// Attack 8: a server's error message put escape sequences on the volunteer's terminal (window
/// title, clear screen, a fake "recipe verified" line).
#[test]
fn server_text_cannot_drive_the_volunteers_terminal() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]);
    let (k, _) = project(&w, &format!("{STEPS_OK}version = 1\n[[step]]\nname = \"b\"\nrun = \"true\"\n"));
    let mirror = Mirror::new(&w.base);
    join_and_approve(&w, &mirror.base, "demo", &k.public_key().fingerprint());
    let hostile = "no\u{1b}]0;owned\u{7}\u{1b}[2J\u{1b}[1;1H\n[tbox-report] recipe verified: building\u{202e}";
    let error = json!({"error": "x", "message": hostile});
    let e = error.clone();
    mirror.on(move |r| (r.method == "POST" && r.path == "/api/v1/leases").then(|| Reply::json(403, &e)));
    let e = error.clone();
    mirror.on(move |r| r.path.starts_with("/api/v1/builders/").then(|| Reply::json(403, &e)));
    let e = error.clone();
    mirror.on(move |r| r.path.ends_with("/recipe").then(|| Reply::json(418, &e)));
    let e = error;
    mirror.on(move |r| (r.method == "POST" && r.path == "/api/v1/reports").then(|| Reply::json(422, &e)));
    let mut said = String::new();
    for args in [&["serve", "--every", "100000", "--max-builds", "1"][..], &["run", "--force"], &["check"], &["flush"]]
    {
        let mut c = w.volunteer_at("home", args);
        let child = c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn()?;
        // serve would wait for work for ever: the first error is enough.
        let pid = child.id();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(5));
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        });
        let out = child.wait_with_output()?;
        let _ = stopper.join();
        said.push_str(&stdout(&out));
        said.push_str(&stderr(&out));
    }
    assert!(said.contains("owned"), "the hostile message was never shown:\n{said}");
    assert!(!said.contains('\u{1b}') && !said.contains('\u{7}') && !said.contains('\u{202e}'), "{said:?}");
    assert!(!said.lines().any(|l| l.starts_with("[tbox-report] recipe verified")), "{said}");
    Ok(())
}

/// Attack 9: signed calls followed redirects, carrying the builder's signed headers (and its
/// report) to whatever host the answer named.
#[test]
fn signed_calls_follow_no_redirect() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]);
    let (k, _) = project(&w, &format!("{STEPS_OK}version = 1\n[[step]]\nname = \"b\"\nrun = \"true\"\n"));
    let mirror = Mirror::new(&w.base);
    join_and_approve(&w, &mirror.base, "demo", &k.public_key().fingerprint());
    // Somewhere else, recording what reaches it.
    let elsewhere = Mirror::new("http://127.0.0.1:9");
    elsewhere.on(|_| Some(Reply::json(200, &json!({}))));
    let to = elsewhere.base.clone();
    mirror.on(move |r| {
        let signed = r.path.starts_with("/api/v1/builders/")
            || r.path == "/api/v1/reports"
            || r.path.starts_with("/api/v1/leases");
        signed.then(|| Reply::new(307, "text/plain", "moved").with("Location", &format!("{to}{}", r.path)))
    });
    let out = w.volunteer(&["run", "--force"]);
    // Kept for later, not delivered elsewhere, not lost; and said why.
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("redirect"), "{}", stderr(&out));
    let out = serve_once_with_timeout(&w, Duration::from_secs(5));
    assert!(stderr(&out).contains("redirect"), "{}", stderr(&out));
    let leaked = elsewhere.seen.lock().unwrap().clone();
    assert!(leaked.is_empty(), "signed requests went elsewhere: {leaked:?}");
    // The server comes back where it was: the spooled report goes there.
    mirror.clear();
    let out = w.volunteer(&["flush"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(w.newest("demo").0["result"], "success");
    Ok(())
}

fn serve_once_with_timeout(w: &World, after: Duration) -> std::process::Output {
    let child = w
        .volunteer_at("home", &["serve", "--every", "100000", "--max-builds", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    std::thread::spawn(move || {
        std::thread::sleep(after);
        if !d.load(Ordering::SeqCst) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        }
    });
    let out = child.wait_with_output().unwrap();
    done.store(true, Ordering::SeqCst);
    out
}

/// Attack 10: a recipe could live until 2099, so a frozen mirror could serve it (and its key)
/// for decades.
#[test]
fn a_recipe_living_more_than_400_days_is_refused_on_both_sides() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]);
    let (k, key_path) = project(&w, &format!("{STEPS_OK}version = 1\n[[step]]\nname = \"b\"\nrun = \"true\"\n"));
    let long = recipe_text(
        "demo",
        &format!("file://{}", w.repo("demo").display()),
        "branches = [\"main\"]\nexpires = \"2099-01-01T00:00:00Z\"\nversion = 2\n[[step]]\nname = \"b\"\nrun = \"touch long-ran\"\n",
    );
    // The server refuses to publish it…
    let path = w.dir.join("maint/long.toml");
    std::fs::write(&path, &long)?;
    std::fs::write(w.dir.join("maint/long.toml.sig"), k.sign(long.as_bytes()))?;
    let out = w.maintainer(&["recipe", "publish", path.to_str().unwrap(), "--server", &w.base]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("expires") && stderr(&out).contains("400 days"), "{}", stderr(&out));
    let _ = key_path;
    // …and a volunteer refuses it from a mirror that serves it anyway.
    let mirror = Mirror::new(&w.base);
    join_and_approve(&w, &mirror.base, "demo", &k.public_key().fingerprint());
    mirror.serve(long.as_bytes(), &k.sign(long.as_bytes()));
    let out = w.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("more than 400 days ahead"), "{}", stderr(&out));
    assert!(!w.workdir("demo").join("long-ran").exists());
    Ok(())
}

/// Attack 11 (the volunteer's loss): with `allow_network = true` every report was refused (the
/// `sandbox` field said `bubblewrap+network`), so networked builds never arrived.
#[test]
fn a_build_allowed_the_network_arrives() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]).unprivileged();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (k, _) = project(
        &w,
        &format!(
            "{STEPS_OK}version = 1\nnetwork = true\n[[step]]\nname = \"fetch\"\n\
             run = \"bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}' && echo reached the network\"\n"
        ),
    );
    join_and_approve(&w, &w.base, "demo", &k.public_key().fingerprint());
    let config = w.config().replace("allow_network = false", "allow_network = true");
    std::fs::write(w.dir.join("home/.config/tbox/report.toml"), config)?;
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (b, logs) = w.newest("demo");
    assert_eq!((b["result"].as_str(), b["sandbox"].as_str()), (Some("success"), Some("bubblewrap+network")), "{b}");
    assert!(logs.iter().any(|l| l.contains("reached the network")), "{logs:?}");
    drop(listener);
    Ok(())
}

/// Red team, round two: a step wrote a repository into a submodule's directory of the checkout
/// (only the checkout's own `.git` is read-only to it) with an `uploadpack` of its choosing; the
/// next update's `git fetch`, run outside the sandbox, recursed into it and ran that program.
#[test]
fn a_repository_planted_in_a_submodule_never_runs_outside_the_sandbox() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]).unprivileged();
    let (k, key_path) = w.maintain("demo");
    let repo = w.repo("demo");
    let marker = w.dir.join("PWNED-SUBMODULE");
    // A submodule `sub` (a gitlink and its .gitmodules), and a step that plants a repository in
    // its directory whose fetch runs the attacker's program.
    let head = rev(&repo, "HEAD");
    std::fs::write(
        repo.join(".gitmodules"),
        format!("[submodule \"sub\"]\n\tpath = sub\n\turl = {}\n", repo.display()),
    )?;
    git(&repo, &["update-index", "--add", "--cacheinfo", &format!("160000,{head},sub")]);
    git(&repo, &["add", ".gitmodules"]);
    git(&repo, &["commit", "-qm", "submodule"]);
    let plant = format!(
        "[[step]]\nname = \"plant\"\nrun = '''\nrm -rf sub && git init -q sub && git -C sub config remote.origin.url {repo} && \
         git -C sub config remote.origin.uploadpack 'touch {marker}; git-upload-pack' && \
         git -C sub config fetch.recurseSubmodules true && echo planted\n'''\n",
        repo = repo.display(),
        marker = marker.display(),
    );
    w.publish(&w.recipe("demo", "recipe.toml", &format!("{STEPS_OK}version = 1\n{plant}")), &key_path);
    join_and_approve(&w, &w.base, "demo", &k.public_key().fingerprint());
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(w.newest("demo").1.iter().any(|l| l.contains("planted")), "the step did not plant its repository");
    // The project moves the submodule on: the next fetch brings a change of the gitlink.
    git(&repo, &["update-index", "--cacheinfo", &format!("160000,{},sub", rev(&repo, "HEAD"))]);
    git(&repo, &["commit", "-qm", "move the submodule"]);
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!marker.exists(), "the planted repository's program ran outside the sandbox");
    assert_eq!(rev(&w.workdir("demo"), "HEAD"), rev(&repo, "HEAD"), "the update did not happen");
    Ok(())
}

/// Red team, round two: trust rested on the pinned key alone until a key list was seen, so a
/// mirror that hid the project's key lists (and the revocation in them) kept a key trusted for
/// ever. Now nothing runs without a signed key list, which expires.
#[test]
fn nothing_runs_without_a_signed_key_list() -> TestResult {
    let w = World::new(&["demo"]).unprivileged();
    let (k, _) = project(&w, ANY_BRANCH);
    let fp = k.public_key().fingerprint();
    let mirror = Mirror::new(&w.base);
    mirror
        .on(|r| r.path.ends_with("/keys").then(|| Reply::json(404, &json!({"error": "not_found", "message": "none"}))));
    let out = w.volunteer(&["join", &format!("{}/projects/demo", mirror.base), "--key", &fp, "--builder", "vol"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("has not published its signed key list") && stderr(&out).contains("keys publish"),
        "{}",
        stderr(&out)
    );
    assert!(!w.dir.join("home/.config/tbox/report.toml").exists(), "join changed something");
    // Once the volunteer holds the project's list, a mirror hiding it changes nothing: the list
    // held is used (until it expires).
    mirror.clear();
    if have_bwrap() {
        join_and_approve(&w, &mirror.base, "demo", &fp);
        mirror.on(|r| {
            r.path.ends_with("/keys").then(|| Reply::json(404, &json!({"error": "not_found", "message": "none"})))
        });
        let out = w.volunteer(&["run"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    Ok(())
}

/// Red team, round two: a stolen key signed version 1000 of the recipe, which volunteers ran;
/// once the project revoked that key, its real recipes (version 3) were refused as rollbacks
/// for ever. A version signed by a key revoked since no longer binds.
#[test]
fn a_version_signed_by_a_revoked_key_does_not_lock_the_project_out() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]).unprivileged();
    let (k1, k1_path) = w.maintain("demo");
    let k2 = key();
    let k2_pub = w.dir.join("maint/k2.pub");
    std::fs::write(&k2_pub, k2.public_key().to_pem())?;
    keys(&w, &k1_path, &["--add", k2_pub.to_str().unwrap()]);
    let text = |v: u64, marker: &str| {
        recipe_text(
            "demo",
            &format!("file://{}", w.repo("demo").display()),
            &format!("{STEPS_OK}version = {v}\n[[step]]\nname = \"b\"\nrun = \"touch {marker}\"\n"),
        )
    };
    let mirror = Mirror::new(&w.base);
    let stolen = text(1000, "v1000-ran");
    mirror.serve(stolen.as_bytes(), &k2.sign(stolen.as_bytes()));
    join_and_approve(&w, &mirror.base, "demo", &k1.public_key().fingerprint());
    assert_eq!(w.volunteer(&["run"]).status.code(), Some(0));
    assert!(w.workdir("demo").join("v1000-ran").exists(), "the stolen key's recipe did not run");
    // The project revokes key 2 and publishes version 3 with key 1.
    mirror.clear();
    keys(&w, &k1_path, &["--revoke", &k2.public_key().fingerprint()]);
    let path = w.dir.join("maint/recipe.toml");
    std::fs::write(&path, text(3, "v3-ran"))?;
    w.publish(&path, &k1_path);
    let out = w.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(w.workdir("demo").join("v3-ran").exists(), "the project's recipe was refused");
    // And version 3 binds from now on: the check can fail.
    let v2 = text(2, "v2-ran");
    let other = Mirror::new(&w.base);
    other.serve(v2.as_bytes(), &k1.sign(v2.as_bytes()));
    std::fs::write(w.dir.join("home/.config/tbox/report.toml"), w.config().replace(&mirror.base, &other.base))?;
    let out = w.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("lower than version 3"), "{}", stderr(&out));
    Ok(())
}

/// Red team, round two: with no `git` in the config (a hand-written one), the first recipe's
/// `repo` was taken on its word: a stolen project key pointed the checkout, which runs outside
/// the sandbox, at a repository of the volunteer's.
#[test]
fn no_source_is_taken_on_a_recipes_word() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]).unprivileged();
    let (k, _) = project(&w, ANY_BRANCH);
    join_and_approve(&w, &w.base, "demo", &k.public_key().fingerprint());
    let config = w.config();
    let without: String =
        config.lines().filter(|l| !l.trim_start().starts_with("git ")).map(|l| format!("{l}\n")).collect();
    assert_ne!(config, without, "join wrote no `git`:\n{config}");
    std::fs::write(w.dir.join("home/.config/tbox/report.toml"), &without)?;
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no source repository is pinned") && stderr(&out).contains("git = "),
        "{}",
        stderr(&out)
    );
    assert!(!w.workdir("demo").exists(), "something was checked out");
    Ok(())
}

/// Red team, round two: the disk limit was measured by a plain walk, which a step blinded with
/// a directory nobody may read, a tree deeper than a path may be long, a file deleted but kept
/// open, or millions of empty files; and the checkout itself was not under the limit.
#[test]
fn disk_used_out_of_a_walks_sight_still_counts() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let _serial = small_limits();
    let w = World::new(&["demo"]).unprivileged();
    let (k, key_path) = w.maintain("demo");
    let step = |name: &str, run: &str| {
        format!("[[step]]\nname = \"{name}\"\nrun = '''\n{run}\n'''\ncontinue_on_failure = true\n")
    };
    let steps = [
        step("hidden", "mkdir -p h/in && dd if=/dev/zero of=h/in/big bs=1M count=300 2>&1 && chmod 000 h && sleep 60"),
        step(
            "deep",
            "python3 -c \"import os\nfor i in range(200):\n    os.mkdir('d' * 40); os.chdir('d' * 40)\nopen('big', 'wb').write(bytes(300 << 20))\" && sleep 60",
        ),
        step("deleted", "exec 3>/tmp/gone && rm /tmp/gone && dd if=/dev/zero bs=1M count=300 >&3 2>/dev/null && sleep 60"),
        step("inodes", "mkdir -p many && cd many && for i in $(seq 100000); do : > f$i; done; sleep 60"),
    ]
    .concat();
    w.publish(&w.recipe("demo", "recipe.toml", &format!("{STEPS_OK}version = 1\n{steps}")), &key_path);
    join_and_approve(&w, &w.base, "demo", &k.public_key().fingerprint());
    let config = w.config() + "\n[limits]\ndisk = \"256MiB\"\n";
    std::fs::write(w.dir.join("home/.config/tbox/report.toml"), config)?;
    let started = Instant::now();
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(200), "took {:?}", started.elapsed());
    let (b, logs) = w.newest("demo");
    for (i, name) in ["hidden", "deep", "deleted", "inodes"].iter().enumerate() {
        assert!(logs[i + 1].contains("[tbox-report] step ended: disk limit 256 MiB"), "{name}: {}\n{b}", logs[i + 1]);
    }
    // What the build left, unreadable and deep, is gone with its scratch; the next update cleans
    // the checkout.
    let leftovers: Vec<_> =
        std::fs::read_dir(w.dir.join("home/.local/state/tbox/work")).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let check =
        "[[step]]\nname = \"clean\"\nrun = \"test ! -e h && test ! -e many && test ! -e dddd* && echo CLEAN-TREE\"\n";
    w.publish(&w.recipe("demo", "recipe.toml", &format!("{STEPS_OK}version = 2\n{check}")), &key_path);
    let out = w.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (b, logs) = w.newest("demo");
    assert!(logs[1].contains("CLEAN-TREE"), "{b}\n{logs:?}");

    // A repository larger than the limit stops during the checkout, not after.
    let repo = w.repo("demo");
    std::fs::write(repo.join("big.bin"), (0..300u32 << 18).flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>())?;
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "big"]);
    let _ = std::fs::remove_dir_all(w.workdir("demo"));
    let out = w.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("disk limit"), "{}", stderr(&out));
    Ok(())
}

/// Red team, round three: a NUL in a step's `env` value ended one of bwrap's NUL-separated
/// options and started others (`--bind / /host`): the step read the volunteer's keys and wrote
/// into their home. The recipe is signed (a hostile project), so only the volunteer's checks and
/// the sandbox can stop it.
#[test]
fn a_nul_in_a_recipes_environment_opens_nothing() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]).unprivileged();
    let (k, _) = project(&w, ANY_BRANCH);
    let mirror = Mirror::new(&w.base);
    join_and_approve(&w, &mirror.base, "demo", &k.public_key().fingerprint());
    let marker = w.dir.join("home/ESCAPED");
    let evil = recipe_text(
        "demo",
        &format!("file://{}", w.repo("demo").display()),
        &format!(
            "{STEPS_OK}version = 2\n[[step]]\nname = \"b\"\nrun = \"touch /host{}\"\nenv = {{ X = \"a\\u0000--bind\\u0000/\\u0000/host\" }}\n",
            marker.display()
        ),
    );
    mirror.serve(evil.as_bytes(), &k.sign(evil.as_bytes()));
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("NUL"), "{}", stderr(&out));
    assert!(!marker.exists(), "the step wrote outside the sandbox");
    // The server refuses to store such a recipe at all.
    let put = w
        .agent
        .put(format!("{}/api/v1/projects/demo/recipe", w.base))
        .header("Content-Type", "application/toml")
        .header("Tbox-Signature", &k.sign(evil.as_bytes()))
        .send(evil.as_bytes())?;
    assert_eq!(put.status().as_u16(), 422);
    Ok(())
}

/// The red team's programs for hiding disk and memory from the watcher (round three).
const HIDING: &[(&str, &str)] = &[
    // Files deleted whose only descriptors are in flight on a unix socket (SCM_RIGHTS).
    (
        "inflight.py",
        "import array, os, socket, time
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
for i in range(3):
    p = f'/tmp/fly{i}'
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
    os.posix_fallocate(fd, 0, 300 << 20)
    a.sendmsg([b'x'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [fd]))])
    os.close(fd); os.unlink(p)
time.sleep(30)
print('STILL ALIVE')
",
    ),
    // Files deleted whose only reference is a shared mapping (no descriptor at all).
    (
        "mapped.py",
        "import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
for i in range(3):
    p = f'/tmp/hold{i}'
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
    os.posix_fallocate(fd, 0, 300 << 20)
    libc.mmap(None, 300 << 20, 3, 1, fd, 0)
    os.close(fd); os.unlink(p)
time.sleep(30)
print('STILL ALIVE')
",
    ),
    // A process that makes itself non-dumpable (its descriptors unreadable to others).
    (
        "nodump.py",
        "import ctypes, os, time
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)
fds = []
for i in range(3):
    fd = os.open(f'/tmp/nd{i}', os.O_RDWR | os.O_CREAT, 0o600)
    os.posix_fallocate(fd, 0, 300 << 20)
    os.unlink(f'/tmp/nd{i}'); fds.append(fd)
time.sleep(30)
print('STILL ALIVE')
",
    ),
    // System V shared memory that no process attaches.
    (
        "sysv.py",
        "import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
for i in range(6):
    sid = libc.shmget(0, 128 << 20, 0o1600)
    addr = libc.shmat(sid, None, 0)
    ctypes.memset(addr, 1, 128 << 20)
    libc.shmdt(ctypes.c_void_p(addr))
time.sleep(30)
print('STILL ALIVE')
",
    ),
];

/// Red team, round three: disk held in files no walk and no descriptor scan finds (in flight
/// on a socket, only mapped, behind a non-dumpable process), memory held in System V segments
/// nobody attaches, and a step that lowered its own OOM priority. Each is ended at the limit
/// (or set back), and nothing of it outlives the step.
#[test]
fn use_hidden_from_the_watcher_still_counts() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let _serial = small_limits();
    let w = World::new(&["demo"]).unprivileged();
    let (k, key_path) = w.maintain("demo");
    let repo = w.repo("demo");
    for (name, text) in HIDING {
        std::fs::write(repo.join(name), text)?;
    }
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "hiding"]);
    let step =
        |name: &str, run: &str| format!("[[step]]\nname = \"{name}\"\nrun = \"{run}\"\ncontinue_on_failure = true\n");
    let steps = [
        step("inflight", "python3 inflight.py"),
        step("mapped", "python3 mapped.py"),
        step("nodump", "python3 nodump.py"),
        step("sysv", "python3 sysv.py"),
        step("oom", "echo 0 > /proc/self/oom_score_adj; sleep 2; echo OOM $(cat /proc/self/oom_score_adj)"),
    ]
    .concat();
    w.publish(&w.recipe("demo", "recipe.toml", &format!("{STEPS_OK}version = 1\n{steps}")), &key_path);
    join_and_approve(&w, &w.base, "demo", &k.public_key().fingerprint());
    let config = w.config() + "\n[limits]\nmemory = \"256MiB\"\ndisk = \"512MiB\"\n";
    std::fs::write(w.dir.join("home/.config/tbox/report.toml"), config)?;
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (b, logs) = w.newest("demo");
    for (i, (name, limit)) in [
        ("inflight", "disk limit 512 MiB"),
        ("mapped", "disk limit 512 MiB"),
        ("nodump", "disk limit 512 MiB"),
        ("sysv", "memory limit 256 MiB"),
    ]
    .iter()
    .enumerate()
    {
        let log = &logs[i + 1];
        assert!(log.contains(&format!("[tbox-report] step ended: {limit}")), "{name}: {log}\n{b}");
        assert!(!log.contains("STILL ALIVE"), "{name}: {log}");
    }
    // Setting it back is enough when the process can be reached.
    assert!(logs[5].contains("OOM 1000"), "{}", logs[5]);
    Ok(())
}

/// Round four: a server that hands out a lease to refuse on every poll (and answers reports
/// with a web page) held serve in a loop: 272 leases in 20 s, the spool filling by one report
/// each, other servers never asked; one that answered "no work" at once made serve spin.
#[test]
fn a_server_handing_out_leases_to_refuse_gets_little_of_the_machine() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]);
    let (k, _) = project(&w, ANY_BRANCH);
    let mirror = Mirror::new(&w.base);
    join_and_approve(&w, &mirror.base, "demo", &k.public_key().fingerprint());
    tamper_lease(&mirror, json!({"branch": "-x"}));
    mirror.on(|r| (r.path == "/api/v1/reports").then(|| Reply::new(200, "text/html", "<html>portal</html>")));
    for _ in 0..50 {
        w.admin(&["request", "add", "demo", "--branch", "main"]);
    }
    let out = serve_for(&w, Duration::from_secs(6));
    let leases = mirror.requests_to("/api/v1/leases").len();
    assert!(leases <= 2, "{leases} leases taken in 6 s: {}", stderr(&out));
    assert!(stderr(&out).contains("names branch"), "{}", stderr(&out));
    let spooled = std::fs::read_dir(w.dir.join("home/.local/state/tbox/spool"))
        .map_or(0, |d| d.flatten().flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten()).count());
    assert_eq!(spooled, 0, "declines were spooled");

    // "No work", at once, every time: asked again only after the wait.
    mirror.clear();
    mirror.on(|r| (r.path == "/api/v1/leases").then(|| Reply::new(204, "application/json", "")));
    let before = mirror.requests_to("/api/v1/leases").len();
    let out = serve_for(&w, Duration::from_secs(5));
    let asked = mirror.requests_to("/api/v1/leases").len() - before;
    assert!(asked <= 2, "{asked} polls in 5 s: {}", stderr(&out));
    Ok(())
}

/// `serve` for a while, then SIGTERM.
fn serve_for(w: &World, how_long: Duration) -> std::process::Output {
    let child = w
        .volunteer_at("home", &["serve", "--every", "100000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(how_long);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    child.wait_with_output().unwrap()
}
