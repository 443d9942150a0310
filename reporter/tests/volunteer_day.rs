//! A volunteer's machine, day to day: one config for projects on two real servers, one build at
//! a time across them, `status`, `log`, `[schedule]` and low priority, all with the real
//! `tbox-report` binary and real servers on 127.0.0.1.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A project on `w` whose recipe's one step runs `run`, published; its key's fingerprint and
/// private key path.
fn project_with(w: &World, project: &str, run: &str) -> (String, std::path::PathBuf) {
    let (k, key_path) = w.maintain(project);
    let body = format!("{STEPS_OK}version = 1\n[[step]]\nname = \"build\"\nrun = {run:?}\n");
    let recipe = w.recipe(project, &format!("{project}.toml"), &body);
    w.publish(&recipe, &key_path);
    (k.public_key().fingerprint(), key_path)
}

fn request_on(w: &World, project: &str, key: &Path) {
    let out = w.maintainer(&[
        "request",
        "--project",
        project,
        "--key",
        key.to_str().unwrap(),
        "--server",
        &w.base,
        "--builders",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn time(v: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap()
}

#[test]
fn one_config_builds_for_two_servers_one_build_at_a_time() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let (one, two) = (World::new(&["alpha"]), World::new(&["beta"]));
    let (fa, ka) = project_with(&one, "alpha", "sleep 2; echo alpha");
    let (fb, kb) = project_with(&two, "beta", "sleep 2; echo beta");
    // The volunteer lives in the first world's home and joins a project on each server.
    join_and_approve(&one, &one.base, "alpha", &fa);
    let out = one.volunteer(&["join", &format!("{}/projects/beta", two.base), "--key", &fb]);
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("PENDING"), "registered on the second server: {}", stdout(&out));
    two.admin(&["builder", "approve", "vol"]);
    let config = one.config();
    assert_eq!(config.matches("[[project]]").count(), 2, "{config}");
    assert_eq!(config.matches(&format!("server  = \"{}\"", two.base)).count(), 1, "{config}");
    // A key of its own there: what it signs for one server means nothing to the other.
    let fingerprints = |w: &World| -> Vec<Value> {
        w.get("/api/v1/builders/vol")["keys"].as_array().unwrap().iter().map(|k| k["fingerprint"].clone()).collect()
    };
    let (on_one, on_two) = (fingerprints(&one), fingerprints(&two));
    assert!(
        !on_one.is_empty() && !on_two.is_empty() && on_one.iter().all(|f| !on_two.contains(f)),
        "{on_one:?} {on_two:?}"
    );
    assert!(config.contains("builder-127.0.0.1_"), "{config}");

    // status: both servers, approved, nothing built yet.
    let out = one.volunteer(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s: Value = serde_json::from_str(&stdout(&out))?;
    let servers = s["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2, "{s}");
    for (server, project) in [(&one.base, "alpha"), (&two.base, "beta")] {
        let entry = servers.iter().find(|e| e["server"] == server.as_str()).unwrap();
        assert_eq!(entry["state"], "active", "{entry}");
        assert_eq!(entry["projects"][0]["name"], project, "{entry}");
        assert!(entry["projects"][0]["last_build"].is_null(), "{entry}");
    }

    // One serve takes requests from both servers and builds them one after the other.
    request_on(&one, "alpha", &ka);
    request_on(&two, "beta", &kb);
    let out = one.volunteer_at("home", &["serve", "--every", "100000", "--max-builds", "2"]).output()?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (a, b) = (one.newest("alpha").0, two.newest("beta").0);
    assert_eq!((a["result"].as_str(), b["result"].as_str()), (Some("success"), Some("success")), "{a}\n{b}");
    assert!(one.get("/api/v1/projects").to_string().contains("alpha"));
    assert!(two.builds("alpha").is_empty() && one.get("/api/v1/projects/beta").get("error").is_some());
    let overlap = time(&a["started_at"]) < time(&b["finished_at"]) && time(&b["started_at"]) < time(&a["finished_at"]);
    assert!(!overlap, "two builds at once: {a}\n{b}");

    // While a build runs for one server, a run for the other waits its turn. (serve's first
    // periodic round may have built beta too: counted from here.)
    let before = (one.builds("alpha").len(), two.builds("beta").len());
    let mut first = one.volunteer_at("home", &["run", "--force", "--project", "alpha"]).spawn()?;
    std::thread::sleep(Duration::from_millis(1000));
    let second = one.volunteer(&["run", "--force", "--project", "beta"]);
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    assert!(stderr(&second).contains("being built on this machine"), "{}", stderr(&second));
    assert!(first.wait()?.success());
    assert_eq!((one.builds("alpha").len(), two.builds("beta").len()), (before.0 + 1, before.1));

    // log: what this machine built, for whom, with the request and the link.
    let out = one.volunteer(&["log"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = stdout(&out);
    assert_eq!(log.lines().count(), 1 + before.0 + 1 + before.1, "a header and every build: {log}");
    assert!(log.contains(&format!("{}/builds/{}", two.base, b["id"])), "{log}");
    assert!(log.contains("#"), "the requests: {log}");
    let out = one.volunteer(&["log", "--project", "beta", "--json"]);
    let lines: Vec<Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), before.1, "{}", stdout(&out));
    assert!(lines.iter().all(|l| l["server"] == two.base.as_str() && l["result"] == "success"), "{lines:?}");
    assert!(lines.iter().any(|l| l["request"].is_u64()), "{lines:?}");

    // status: the last build of each, from this machine's own record.
    let s: Value = serde_json::from_str(&stdout(&one.volunteer(&["status", "--json"])))?;
    let beta = s["servers"].as_array().unwrap().iter().find(|e| e["server"] == two.base.as_str()).unwrap();
    assert_eq!(beta["projects"][0]["last_build"]["report"], "sent", "{beta}");
    let words = stdout(&one.volunteer(&["status"]));
    assert!(words.contains(&format!("{} as builder vol: approved", two.base)), "{words}");

    // A server down (here: moved to a port where nothing listens): the other's builds go on,
    // and its report waits in its own spool.
    let config = one.dir.join("home/.config/tbox/report.toml");
    std::fs::write(&config, one.config().replace(&two.base, "http://127.0.0.1:9"))?;
    let out = one.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(3), "beta's report is spooled: {}", stderr(&out));
    assert_eq!(one.builds("alpha").len(), before.0 + 2);
    let words = stdout(&one.volunteer(&["status"]));
    assert!(words.contains("cannot be reached now") && words.contains("1 report(s) wait in the spool"), "{words}");
    // Back: the spooled report goes, and the record says so.
    let moved = one.config();
    std::fs::write(&config, moved.replace("http://127.0.0.1:9", &two.base))?;
    std::fs::rename(
        one.dir.join("home/.local/state/tbox/spool/127.0.0.1_9"),
        one.dir
            .join(format!("home/.local/state/tbox/spool/{}", two.base.trim_start_matches("http://").replace(':', "_"))),
    )?;
    let out = one.volunteer(&["flush"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let last: Value =
        serde_json::from_str(stdout(&one.volunteer(&["log", "--project", "beta", "--json", "-n", "1"])).trim())?;
    assert_eq!(last["report"], "sent", "{last}");
    assert!(last["url"].as_str().is_some_and(|u| u.starts_with(&two.base)), "{last}");

    let out = one.volunteer(&["leave", "beta"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!one.config().contains("beta"), "{}", one.config());
    Ok(())
}

#[test]
fn the_schedule_and_low_priority_hold() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]);
    // Its niceness, its scheduling group's (after the watcher's first look), its I/O priority
    // after trying to raise it.
    let (fp, _) =
        project_with(&w, "demo", "nice; sleep 1; cat /proc/self/autogroup; ionice -c2 -n0 -p $$; ionice -p $$");
    join_and_approve(&w, &w.base, "demo", &fp);
    // Any day but today.
    let today = chrono::Local::now().format("%a").to_string().to_lowercase();
    let other: Vec<String> = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .iter()
        .filter(|d| **d != today)
        .map(|d| format!("{d:?}"))
        .collect();
    let config = w.dir.join("home/.config/tbox/report.toml");
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(&config, format!("{text}\n[schedule]\ndays = [{}]\n", other.join(", ")))?;
    let out = w.volunteer(&["run", "-v"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("not a day of schedule.days"), "{}", stderr(&out));
    assert!(w.builds("demo").is_empty());
    let words = stdout(&w.volunteer(&["status"]));
    assert!(words.contains("no build starts now (not a day of schedule.days); next from"), "{words}");
    // --force builds anyway, with the volunteer's work first.
    let out = w.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = w.newest("demo").1.join("");
    assert!(log.contains("19\n") && log.contains("best-effort: prio 7"), "{log}");
    assert!(!log.contains("prio 0"), "the step raised its I/O priority: {log}");
    let group = log.lines().find(|l| l.starts_with("/autogroup-"));
    assert!(group.is_none_or(|g| g.ends_with("nice 19")), "its own scheduling group outweighs the volunteer's: {log}");

    // A typo is said when the config loads, not at night.
    std::fs::write(&config, format!("{text}\n[schedule]\nhours = \"22:00-7\"\n"))?;
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("schedule.hours"), "{}", stderr(&out));

    // priority = "normal": the volunteer's own niceness.
    std::fs::write(&config, text.replacen("sandbox = ", "priority = \"normal\"\nsandbox = ", 1))?;
    let out = w.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = w.newest("demo").1.join("");
    assert!(log.starts_with("0\n") || log.contains("\n0\n"), "{log}");
    Ok(())
}

#[test]
fn a_page_address_works_everywhere_and_a_wrong_one_is_said_in_words() -> TestResult {
    let w = World::new(&["demo"]);
    let (fp, key) = project_with(&w, "demo", "true");
    let page = format!("{}/projects/demo", w.base);
    // A maintainer gives the project's page where the server's address is expected.
    let out = w.maintainer(&["request", "--project", "demo", "--key", key.to_str().unwrap(), "--server", &page]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    join_and_approve(&w, &w.base, "demo", &fp);
    let config = w.dir.join("home/.config/tbox/report.toml");
    let text = w.config();
    let server_line = format!("server  = \"{}\"", w.base);
    assert!(text.contains(&server_line), "{text}");
    // So does a volunteer, in the config.
    std::fs::write(&config, text.replace(&server_line, &format!("server = \"{page}/\"")))?;
    let out = w.volunteer(&["check"]);
    assert!(stdout(&out).contains("builder vol is active"), "{}", stdout(&out));

    // A wrong address: said in words, no HTML page printed, and no advice to register.
    std::fs::write(&config, text.replace(&server_line, &format!("server = \"{}/nope\"", w.base)))?;
    let out = w.volunteer(&["check"]);
    let said = stdout(&out) + &stderr(&out);
    assert!(said.contains("answered 404 with \"text/html\", not a tbox server's answer"), "{said}");
    assert!(!said.contains("register") && !said.contains("<html") && !said.contains("DOCTYPE"), "{said}");
    let out = w.volunteer(&["push", "--project", "demo", "--result", "success", "--revision", "abc"]);
    assert_eq!(out.status.code(), Some(3), "kept in the spool: {}", stderr(&out));
    assert!(!stderr(&out).contains("DOCTYPE"), "{}", stderr(&out));
    let out = w.maintainer(&[
        "request",
        "--project",
        "demo",
        "--key",
        key.to_str().unwrap(),
        "--server",
        &format!("{}/nope", w.base),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a tbox server's answer") && !stderr(&out).contains("DOCTYPE"),
        "{}",
        stderr(&out)
    );

    // https:// to a server that speaks plain HTTP.
    let https = w.base.replace("http://", "https://");
    std::fs::write(&config, text.replace(&server_line, &format!("server = \"{https}\"")))?;
    let out = w.volunteer(&["check"]);
    assert!(stdout(&out).contains("answers in plain HTTP, not HTTPS: write http://"), "{}", stdout(&out));
    Ok(())
}

#[test]
fn a_publication_that_cuts_volunteers_off_needs_yes() -> TestResult {
    let w = World::new(&["demo"]);
    let (_, key) = project_with(&w, "demo", "true");
    w.admin(&["project", "capability", "add", "demo", "gpu", "--description", "a GPU with CUDA 12"]);
    let moved = w.dir.join("maint/moved.toml");
    let text = recipe_text("demo", "https://elsewhere.example/demo.git", &format!("{STEPS_OK}version = 2\n"))
        + "requires = [\"gpu\"]\n[[step]]\nname = \"b\"\nrun = \"true\"\n";
    std::fs::write(&moved, text)?;
    let out = w.maintainer(&["recipe", "sign", moved.to_str().unwrap(), "--key", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let publish = |yes: bool| {
        let mut args = vec!["recipe", "publish", moved.to_str().unwrap(), "--server", &w.base];
        if yes {
            args.push("--yes");
        }
        w.maintainer(&args)
    };
    let out = publish(false);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("would cut volunteers off") && said.contains("nothing was sent"), "{said}");
    assert!(said.contains("https://elsewhere.example/demo.git") && said.contains("newly requires \"gpu\""), "{said}");
    assert_eq!(w.get("/api/v1/projects/demo/recipes")["recipes"].as_array().map(Vec::len), Some(1), "sent anyway");
    let out = publish(true);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(w.get("/api/v1/projects/demo/recipes")["recipes"].as_array().map(Vec::len), Some(2));
    Ok(())
}

#[test]
fn the_cpu_time_of_a_day_is_counted_and_holds() -> TestResult {
    if !have_bwrap() {
        return Ok(());
    }
    let w = World::new(&["demo"]);
    // Three seconds of CPU, busy in the shell.
    let burn = "end=$(($(date +%s) + 3)); while [ $(date +%s) -lt $end ]; do :; done";
    let (fp, _) = project_with(&w, "demo", burn);
    join_and_approve(&w, &w.base, "demo", &fp);
    let config = w.dir.join("home/.config/tbox/report.toml");
    std::fs::write(&config, w.config() + "\n[schedule]\ncpu_per_day = \"1s\"\n")?;
    let out = w.volunteer(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(w.builds("demo").len(), 1);
    let s: Value = serde_json::from_str(&stdout(&w.volunteer(&["status", "--json"])))?;
    assert!(s["schedule"]["cpu_today_seconds"].as_f64().unwrap() >= 1.0, "{s}");
    assert!(s["schedule"]["why_not"].as_str().unwrap().contains("today's CPU time is spent"), "{s}");
    // A new revision waits for tomorrow; --force builds anyway.
    let repo = w.repo("demo");
    std::fs::write(repo.join("more.txt"), "more\n")?;
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "more"]);
    let out = w.volunteer(&["run", "-v"]);
    assert!(stderr(&out).contains("today's CPU time is spent"), "{}", stderr(&out));
    assert_eq!(w.builds("demo").len(), 1);
    let out = w.volunteer(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(w.builds("demo").len(), 2);
    Ok(())
}
