//! Recipes as volunteers and maintainers use them: the real `tbox-report` binary, a real server
//! on 127.0.0.1 (in this process, on a fresh SQLite database), real git repositories on disk and
//! real bubblewrap. A taken-over server is played by a mirror that serves chosen recipe bytes
//! (`common::Mirror`).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

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

#[test]
fn a_taken_over_server_cannot_make_a_volunteer_run_anything_else() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]);
    let (k, key_path) = w.maintain("demo");
    let hostile = Mirror::new(&w.base);
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
            good(3, bad).replace(&in_days(30), "2001-01-01T00:00:00Z").into_bytes(),
            k.sign(good(3, bad).replace(&in_days(30), "2001-01-01T00:00:00Z").as_bytes()),
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
        hostile.clear();
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
    hostile.clear();
    std::fs::remove_file(w.workdir("demo").join("ran-2"))?;
    hostile.down();
    let out = w.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("using the cached recipe"), "{}", stderr(&out));
    assert!(w.workdir("demo").join("ran-2").exists(), "the cached recipe did not run");
    hostile.clear();
    let out = w.volunteer(&["flush"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(w.newest("demo").0["recipe_version"], 2);
    Ok(())
}

#[test]
fn a_key_list_rotation_is_followed_and_a_revoked_key_is_refused() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]);
    let (k, old) = w.maintain("demo");
    let old_fp = k.public_key().fingerprint();
    // The project's first key list, signed by the key volunteers pin, is published already.
    let keys = w.keys_file("demo");
    let keys_arg = keys.to_str().unwrap();
    assert!(w.text("/api/v1/projects/demo/keys").contains("version = 1"));
    let v1 =
        w.recipe("demo", "recipe.toml", &format!("{STEPS_OK}version = 1\n[[step]]\nname = \"b\"\nrun = \"true\"\n"));
    w.publish(&v1, &old);
    join_and_approve(&w, &w.base, "demo", &old_fp);
    assert_eq!(w.volunteer(&["run"]).status.code(), Some(0));

    // Rotation in one go would cut every volunteer off (the current recipe is the old key's):
    // refused, and said why.
    let new = w.dir.join("maint/demo-2026.pem");
    let new_key = key();
    tbox_report::keyfile::write_new(&new, &new_key)?;
    let new_pub = w.dir.join("maint/demo-2026.pub");
    std::fs::write(&new_pub, new_key.public_key().to_pem())?;
    let new_fp = new_key.public_key().fingerprint();
    let hasty = w.dir.join("maint/hasty.toml");
    std::fs::copy(&keys, &hasty)?;
    let (hasty_arg, old_arg, new_pub_arg) = (hasty.to_str().unwrap(), old.to_str().unwrap(), new_pub.to_str().unwrap());
    let out = w.maintainer(&["keys", "sign", hasty_arg, "--key", old_arg, "--add", new_pub_arg, "--revoke", &old_fp]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = w.maintainer(&["keys", "publish", hasty_arg, "--server", &w.base]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("every volunteer would refuse it") && stderr(&out).contains("--yes"),
        "{}",
        stderr(&out)
    );
    // The three steps: both keys, a recipe of the new key, the old key revoked (by the new one).
    let out = w.maintainer(&["keys", "sign", keys_arg, "--key", old_arg, "--add", new_pub_arg]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(w.maintainer(&["keys", "publish", keys_arg, "--server", &w.base]).status.success());
    let v2 =
        w.recipe("demo", "recipe.toml", &format!("{STEPS_OK}version = 2\n[[step]]\nname = \"b\"\nrun = \"true\"\n"));
    w.publish(&v2, &new);
    let out = w.maintainer(&["keys", "sign", keys_arg, "--key", new.to_str().unwrap(), "--revoke", &old_fp]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("version 3") && stdout(&out).contains(&format!("revoked {old_fp}")),
        "{}",
        stdout(&out)
    );
    let out = w.maintainer(&["keys", "publish", keys_arg, "--server", &w.base]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (b, _) = w.newest("demo");
    assert_eq!((b["recipe_version"].as_i64(), b["recipe_key"].as_str()), (Some(2), Some(new_fp.as_str())));
    // A new volunteer pins the new key and starts from the version it signed.
    std::fs::create_dir_all(w.dir.join("new-home"))?;
    let out = w
        .volunteer_at(
            "new-home",
            &["join", &format!("{}/projects/demo", w.base), "--key", &new_fp, "--builder", "newcomer"],
        )
        .output()?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // The old key is revoked for good: a recipe it signs is refused, whoever serves it.
    let mirror = Mirror::new(&w.base);
    let v3 = recipe_text(
        "demo",
        &format!("file://{}", w.repo("demo").display()),
        &format!("{STEPS_OK}version = 3\n[[step]]\nname = \"b\"\nrun = \"touch revoked-ran\"\n"),
    );
    mirror.serve(v3.as_bytes(), &k.sign(v3.as_bytes()));
    mirror.on(move |r| {
        (r.path.ends_with("/recipe")).then(|| {
            Reply::new(200, "application/toml", v3.clone())
                .with("Tbox-Signature", &k.sign(v3.as_bytes()))
                .with("Tbox-Key", &old_fp)
        })
    });
    let config = w.config().replace(&w.base, &mirror.base);
    std::fs::write(w.dir.join("home/.config/tbox/report.toml"), config)?;
    let out = w.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("has revoked that key"), "{}", stderr(&out));
    assert!(!w.workdir("demo").join("revoked-ran").exists());
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

/// The crontab line `join` prints, run as cron runs it (`sh -c`, a bare environment), from a
/// HOME with a space in it: it must work when pasted at once, before any approval.
fn cron_line(w: &World, home: &str, join_output: &str) -> std::process::Output {
    let line = join_output.lines().find(|l| l.trim_start().starts_with("*/15 * * * *")).expect("a crontab line");
    // cron: five time fields, then the command, given to sh with `\%` standing for `%`.
    let command = line.split_whitespace().skip(5).collect::<Vec<_>>().join(" ").replace("\\%", "%");
    w.command_as_volunteer(home, "sh").args(["-c", &command]).output().unwrap()
}

#[test]
fn the_cron_line_join_prints_runs_before_and_after_approval() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]);
    let (k, key_path) = w.maintain("demo");
    let recipe = w.recipe(
        "demo",
        "recipe.toml",
        &format!("{STEPS_OK}version = 1\n[[step]]\nname = \"build\"\nrun = \"true\"\n"),
    );
    w.publish(&recipe, &key_path);
    let home = "a volunteer";
    std::fs::create_dir_all(w.dir.join(home))?;
    let page = format!("{}/projects/demo", w.base);
    let out =
        w.volunteer_at(home, &["join", &page, "--key", &k.public_key().fingerprint(), "--builder", "vol"]).output()?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let cron_log = w.dir.join(home).join(".local/state/tbox/cron.log");

    // Pending: the line runs tbox-report, which says so in the log (the shell says nothing).
    let ran = cron_line(&w, home, &stdout(&out));
    assert_eq!(stderr(&ran), "", "the shell could not run the line");
    assert_eq!(ran.status.code(), Some(4), "tbox-report ran and was refused: pending");
    assert!(std::fs::read_to_string(&cron_log)?.contains("pending"), "{:?}", std::fs::read_to_string(&cron_log));

    // Approved: the same line builds.
    w.admin(&["builder", "approve", "vol"]);
    let ran = cron_line(&w, home, &stdout(&out));
    assert_eq!(ran.status.code(), Some(0), "{}", std::fs::read_to_string(&cron_log)?);
    assert_eq!(w.newest("demo").0["result"], "success");
    Ok(())
}

#[test]
fn a_key_the_server_does_not_know_builds_nothing_and_register_builder_recovers() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]);
    let (k, key_path) = w.maintain("demo");
    // A step that leaves a mark in the workdir (the volunteer's own folder) when it runs.
    let body = format!("{STEPS_OK}version = 1\n[[step]]\nname = \"build\"\nrun = \"touch built\"\n");
    w.publish(&w.recipe("demo", "recipe.toml", &body), &key_path);
    // The server is reached through a mirror that can hide the builder's standing.
    let mirror = Mirror::new(&w.base);
    join_and_approve(&w, &mirror.base, "demo", &k.public_key().fingerprint());
    // The volunteer makes a new key (or another machine took the name "vol").
    let pem = w.dir.join("home/.config/tbox/builder.pem");
    std::fs::remove_file(&pem)?;
    std::fs::remove_file(pem.with_extension("pub"))?;
    let out = w.volunteer(&["keygen"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Seen before building: not built, and told what to do.
    let out = w.volunteer(&["run", "--force"]);
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{said}");
    assert!(said.contains("does not have this machine's key") && said.contains("register --builder"), "{said}");
    assert!(w.builds("demo").is_empty() && !w.workdir("demo").exists(), "nothing built");

    // When the standing cannot be read, the started report's refusal stops the build at once.
    mirror.on(|r| r.path.starts_with("/api/v1/builders/").then(|| Reply::new(503, "text/plain", "busy")));
    let out = w.volunteer(&["run", "--force"]);
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{said}");
    assert!(said.contains("not built") && said.contains("register --builder"), "{said}");
    assert!(!w.workdir("demo").join("built").exists(), "the steps ran: {said}");
    assert!(w.builds("demo").is_empty(), "nothing recorded");
    mirror.clear();

    // register --builder: a name of its own, written to the config; approved, it builds.
    let out = w.volunteer(&["register", "--builder", "vol-2", "--project", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(w.config().contains("builder = \"vol-2\""), "{}", w.config());
    w.admin(&["builder", "approve", "vol-2"]);
    let out = w.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (b, _) = w.newest("demo");
    assert_eq!((b["builder"].as_str(), b["result"].as_str()), (Some("vol-2"), Some("success")), "{b}");
    assert!(w.workdir("demo").join("built").exists());
    Ok(())
}

#[test]
fn an_idle_serve_stops_at_once_on_sigterm_and_ctrl_c() -> TestResult {
    // It waits on a long poll of up to a minute: that must not delay stopping.
    let w = World::new(&["demo"]);
    volunteers_for_requests(&w, 1, 1);
    for signal in [nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGINT] {
        let mut serving = w.volunteer_at("v0", &["serve", "--every", "100000"]).spawn()?;
        // The first periodic build comes after the first long poll: by now it is waiting.
        std::thread::sleep(Duration::from_millis(1500));
        assert!(serving.try_wait()?.is_none(), "serve ended by itself");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(serving.id())?), signal)?;
        let t = std::time::Instant::now();
        let status = loop {
            if let Some(s) = serving.try_wait()? {
                break s;
            }
            if t.elapsed() > Duration::from_secs(5) {
                let _ = serving.kill();
                panic!("an idle serve took more than 5 s to stop on {signal}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(0), "{signal}");
    }
    assert!(w.builds("demo").is_empty(), "nothing was built");
    Ok(())
}

#[test]
fn a_volunteer_that_would_refuse_the_recipe_takes_no_lease() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]);
    let key = volunteers_for_requests(&w, 1, 0);
    // Version 2 needs a GPU, which v0 does not declare.
    w.admin(&["project", "capability", "add", "demo", "gpu", "--description", "a GPU"]);
    let gpu = w.recipe(
        "demo",
        "recipe.toml",
        &format!("{STEPS_OK}version = 2\nrequires = [\"gpu\"]\n[[step]]\nname = \"build\"\nrun = \"true\"\n"),
    );
    w.publish(&gpu, &key);
    request(&w, &key, "1");
    let serving = w.volunteer_at("v0", &["serve", "--every", "100000"]).stderr(std::process::Stdio::piped()).spawn()?;
    std::thread::sleep(Duration::from_secs(3));
    let r = &requests(&w)[0];
    assert_eq!((r["state"].as_str(), r["attempts"].as_array().map(Vec::len)), (Some("open"), Some(0)), "{r}");
    assert!(w.builds("demo").is_empty());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(serving.id())?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let out = serving.wait_with_output()?;
    let said = stderr(&out);
    assert_eq!(said.matches("not taking work for demo").count(), 1, "said once: {said}");
    assert!(said.contains("requires gpu"), "{said}");

    // Version 3 drops the requirement: the same volunteer takes the slot and answers it.
    let plain = w.recipe(
        "demo",
        "recipe.toml",
        &format!("{STEPS_OK}version = 3\n[[step]]\nname = \"build\"\nrun = \"true\"\n"),
    );
    w.publish(&plain, &key);
    let out = w.volunteer_at("v0", &["serve", "--every", "100000", "--max-builds", "1"]).output()?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = &requests(&w)[0];
    assert_eq!((r["state"].as_str(), r["attempts"][0]["state"].as_str()), (Some("done"), Some("done")), "{r}");
    Ok(())
}

#[test]
fn pause_and_resume_hold_for_run_and_serve() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]);
    let key = volunteers_for_requests(&w, 1, 0);
    // Nonsense durations: a message and exit 2 (a wrong command line), no pause (and no panic
    // on an overflow).
    for bad in ["banana", "99999999d", "-1h"] {
        let out = w.volunteer_at("v0", &["pause", &format!("--for={bad}")]).output()?;
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains("--for") || stderr(&out).contains("duration"), "{bad}: {}", stderr(&out));
    }
    assert!(!w.dir.join("v0/.local/state/tbox/paused").exists());
    let out = w.volunteer_at("v0", &["pause", "--for", "2h"]).output()?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("paused until"), "{}", stdout(&out));
    // run: nothing built, quietly (cron), exit 0; with -v it says why.
    let out = w.volunteer_at("v0", &["run", "-v"]).output()?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("paused until"), "{}", stderr(&out));
    assert!(w.builds("demo").is_empty());
    // serve: takes no lease while paused, and builds within seconds of `resume`.
    request(&w, &key, "1");
    let mut serving = w.volunteer_at("v0", &["serve", "--every", "100000", "--max-builds", "1"]).spawn()?;
    std::thread::sleep(Duration::from_secs(3));
    let r = &requests(&w)[0];
    assert_eq!(r["attempts"].as_array().map(Vec::len), Some(0), "paused, yet it took a lease: {r}");
    let out = w.volunteer_at("v0", &["resume"]).output()?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    wait_for("serve to build after resume", 30, || requests(&w)[0]["state"] == "done");
    assert_eq!(serving.wait()?.code(), Some(0));

    // A pause that comes while serve waits for work: nothing is built. (The poll already sent may
    // still be granted a lease; nobody builds it, and it expires as a no-show, which uses none of
    // the slot's attempts.)
    let built = w.builds("demo").len();
    let mut serving = w.volunteer_at("v0", &["serve", "--every", "100000", "--max-builds", "1"]).spawn()?;
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(w.volunteer_at("v0", &["pause"]).output()?.status.code(), Some(0));
    std::thread::sleep(Duration::from_secs(2));
    request(&w, &key, "1");
    std::thread::sleep(Duration::from_secs(2));
    let newest = &requests(&w)[0];
    assert_eq!((newest["state"].as_str(), newest["done"].as_u64()), (Some("open"), Some(0)), "{newest}");
    assert_eq!(w.builds("demo").len(), built, "built while paused");
    let _ = serving.kill();
    let _ = serving.wait();
    // An expired pause is no pause.
    let state = w.dir.join("v0/.local/state/tbox/paused");
    std::fs::write(&state, "until 2001-01-01T00:00:00Z\n")?;
    let out = w.volunteer_at("v0", &["run", "-v"]).output()?;
    assert!(!stderr(&out).contains("paused"), "{}", stderr(&out));
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
    // A cancelled build said nothing about the code: the revision is not marked as reported,
    // so the next periodic run builds it (a machine stopped every night mid-build would
    // otherwise leave it cancelled for good).
    let reported: Vec<_> = walkdir::WalkDir::new(w.dir.join("v0/.local/state/tbox/last-revision"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().display().to_string())
        .collect();
    assert!(reported.is_empty(), "a cancelled build marked its revision reported: {reported:?}");
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
    // Its build is lost too, at once (not after --lost-after, 12 hours by default), wherever
    // it shows: the API, its page, the builder's badge.
    let killed = w.builds("demo").into_iter().find(|b| b["builder"] == "v0").expect("v0's build");
    assert_eq!(killed["state"], "lost", "{killed}");
    let page = w.text(&format!("/builds/{}", killed["id"]));
    assert!(page.contains("lost") && !page.contains("building"), "{page}");
    let badge = w.text("/projects/demo/builders/v0/badge.svg");
    assert!(badge.contains("lost"), "{badge}");
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
    // What the killed build left in its scratch folder goes at the machine's next build.
    let work = w.dir.join("v0/.local/state/tbox/work");
    let left = || std::fs::read_dir(&work).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left(), 1, "the killed build's scratch folder is still there");
    let out = w.volunteer_at("v0", &["run", "--force"]).output()?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(left(), 0, "the killed build's scratch folder was not cleaned up");
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
    assert_ne!(head, old);
    // Unsigned: a request as a taken-over server could make (an admin's `request add` refuses
    // to). Only the project chooses a commit: nothing is built, and the request hears why.
    w.unsigned_request("demo", &old);
    let out = w.volunteer_at("v0", &["serve", "--every", "100000", "--max-builds", "1"]).output()?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("no key you trust signed a request for it"), "{}", stderr(&out));
    let (b, logs) = w.newest("demo");
    assert_eq!(b["result"].as_str(), Some("exception"), "{b}");
    assert!(logs[0].contains(&format!("asked for revision {old}")), "{logs:?}");
    assert!(w.builds("demo").iter().all(|b| b["result"] == "exception"), "nothing was built");
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

/// Debian 12's own git (2.39) takes no `--end-of-options` in a checkout: every build after the
/// first clone failed there. Clone, fetch and a requested revision, with the system's git first
/// in the volunteer's PATH (this machine has a newer one in /usr/local too).
#[test]
fn every_kind_of_checkout_works_with_the_systems_own_git() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    if !Path::new("/usr/bin/git").exists() {
        let _ = writeln!(std::io::stderr(), "SKIPPED system git test: no /usr/bin/git");
        return Ok(());
    }
    let mut w = World::new(&["demo"]);
    w.path = Some("/usr/bin:/bin".into());
    let key = volunteers_for_requests(&w, 1, 0);
    let repo = w.repo("demo");
    let rev = |dir: &Path| -> String {
        let out = Command::new("git").args(["rev-parse", "HEAD"]).current_dir(dir).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let first = rev(&repo);
    let run = |args: &[&str]| {
        let out = w.volunteer_at("v0", args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    };
    run(&["run"]);
    assert_eq!(w.newest("demo").0["revision"].as_str(), Some(first.as_str()));
    std::fs::write(repo.join("more.txt"), "more\n")?;
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "second"]);
    let second = rev(&repo);
    run(&["run"]);
    let (b, logs) = w.newest("demo");
    assert_eq!((b["result"].as_str(), b["revision"].as_str()), (Some("success"), Some(second.as_str())), "{logs:?}");
    let out = w.maintainer(&[
        "request",
        "--project",
        "demo",
        "--key",
        key.to_str().unwrap(),
        "--server",
        &w.base,
        "--revision",
        &first,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    run(&["serve", "--every", "100000", "--max-builds", "1"]);
    let (b, logs) = w.newest("demo");
    assert_eq!((b["result"].as_str(), b["revision"].as_str()), (Some("success"), Some(first.as_str())), "{logs:?}");
    Ok(())
}

/// A checkout that fails says why at once (it printed nothing and exited 0), tells the project
/// once, not on every cron run, and the next good checkout builds.
#[test]
fn a_failed_checkout_says_why_and_tells_the_project_once() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]);
    let (k, key_path) = w.maintain("demo");
    let recipe =
        w.recipe("demo", "recipe.toml", &format!("{STEPS_OK}version = 1\n[[step]]\nname = \"b\"\nrun = \"true\"\n"));
    w.publish(&recipe, &key_path);
    join_and_approve(&w, &w.base, "demo", &k.public_key().fingerprint());
    let repo = w.repo("demo");
    let away = repo.with_extension("away");
    std::fs::rename(&repo, &away)?;
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("demo: the checkout failed, nothing was built:"), "{}", stderr(&out));
    let exceptions = || w.builds("demo").iter().filter(|b| b["result"] == "exception").count();
    assert_eq!(exceptions(), 1);
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(exceptions(), 1, "told once");
    std::fs::rename(&away, &repo)?;
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(w.newest("demo").0["result"], "success");
    Ok(())
}
