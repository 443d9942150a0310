//! The admin subcommands, migrations, the read API and the pages, on both backends.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, Server, TestDb, TestResult, key, report, started};
use serde_json::json;

on_both_backends!(
    builder_add_refuses_small_keys_and_unknown_projects,
    prune_deletes_old_builds_and_unused_logs,
    migrations_redo_cleanly,
    builds_list_pages_with_a_cursor,
    read_api_errors_are_json,
    pages_escape_everything_a_builder_sends,
    test_names_keep_their_spaces,
);

fn builder_add_refuses_small_keys_and_unknown_projects(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else {
        return Ok(());
    };
    s.setup();
    let small = s.db.dir.join("small.pub");
    let out = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"])
        .output();
    let Ok(out) = out else {
        common::say("SKIPPED small-key check: openssl is not installed");
        return Ok(());
    };
    let private = s.db.dir.join("small.pem");
    std::fs::write(&private, &out.stdout)?;
    let pubout = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in", private.to_str().unwrap(), "-out", small.to_str().unwrap()])
        .status()?;
    assert!(pubout.success());
    let out = s.admin(&["builder", "add", "weak", "--project", "demo", "--key", small.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1024 bits") && err.contains("2048"), "{err}");

    let out = s.admin(&["builder", "add", "carol", "--project", "nope", "--key", &s.pubkey_file(key(1))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no project named \"nope\""));
    let out = s.admin(&["builder", "approve", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
    // Several at once, and all or none.
    for (name, k) in [("bob", 1), ("dave", 2)] {
        s.admin_ok(&["builder", "add", name, "--project", "demo", "--key", &s.pubkey_file(key(k))]);
        s.admin_ok(&["builder", "revoke", name]);
    }
    let out = s.admin(&["builder", "approve", "bob", "nobody", "dave"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("none was approved"));
    let status_of = |name: &str| {
        let listed = s.admin_ok(&["builder", "list"]);
        listed.lines().find(|l| l.starts_with(&format!("{name}\t"))).unwrap_or_default().to_owned()
    };
    assert!(status_of("bob").contains("revoked"), "{}", status_of("bob"));
    let out = s.admin_ok(&["builder", "approve", "bob", "dave"]);
    assert_eq!(out.matches("approved").count(), 2, "{out}");
    assert!(status_of("bob").contains("active") && status_of("dave").contains("active"));
    let out = s.admin(&["project", "add", "demo"]);
    assert_eq!(out.status.code(), Some(1), "a project name is taken once");
    let out = s.admin(&["project", "add", "bad name"]);
    assert_eq!(out.status.code(), Some(1));
    let out = s.admin(&["prune", "--older-than", "soon"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");

    let listed = s.admin_ok(&["builder", "list"]);
    assert!(!listed.contains("weak") && !listed.contains("carol"), "nothing half-made stays behind: {listed}");
    Ok(())
}

fn prune_deletes_old_builds_and_unused_logs(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else {
        return Ok(());
    };
    s.setup();
    let mut old = report("old");
    old["started_at"] = json!("2020-01-01T00:00:00Z");
    old["finished_at"] = json!("2020-01-01T01:00:00Z");
    old["steps"][0]["log"] = json!("only the old build has this log\n");
    assert_eq!(s.send(&old).0, 201);
    let mut recent = report("recent");
    let now = chrono::Utc::now();
    let (start, end) = (json!((now - chrono::TimeDelta::hours(1)).to_rfc3339()), json!(now.to_rfc3339()));
    recent["started_at"] = start.clone();
    recent["finished_at"] = end.clone();
    for step in recent["steps"].as_array_mut().unwrap() {
        step["started_at"] = start.clone();
        step["finished_at"] = end.clone();
    }
    assert_eq!(s.send(&recent).0, 201);

    let out = s.admin_ok(&["prune", "--older-than", "90d"]);
    assert!(out.contains("pruned 1 builds") && out.contains("1 unused logs"), "{out}");
    let builds = s.builds("demo");
    assert_eq!(builds.len(), 1);
    assert_eq!(builds[0]["uuid"], "recent");
    // The shared log of the recent build survives and still reads.
    let (status, full) = s.get_json(&format!("/api/v1/builds/{}", builds[0]["id"]));
    assert_eq!(status, 200);
    let (status, text) = s.get(full["steps"][1]["log_url"].as_str().unwrap().trim_start_matches(&s.base));
    assert_eq!((status, text.as_str()), (200, "FAIL: parses_empty\n1 of 2 failed\n"));
    Ok(())
}

fn migrations_redo_cleanly(backend: Backend) -> TestResult {
    use tbox_server::db::{self, DatabaseUrl, Manager};
    let Some(test_db) = TestDb::new(backend) else {
        return Ok(());
    };
    let mut conn = diesel::r2d2::ManageConnection::connect(&Manager::new(DatabaseUrl::parse(&test_db.url)?))?;
    assert_eq!(db::migrate(&mut conn)?.len(), 18);
    assert!(db::migrate(&mut conn)?.is_empty(), "a second migrate does nothing");
    // Every down.sql runs, and up again gives a working schema.
    db::redo_all(&mut conn)?;
    drop(conn);
    let out = std::process::Command::new(common::BIN).args(["migrate", "--database", &test_db.url]).output()?;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"));
    Ok(())
}

fn builds_list_pages_with_a_cursor(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else {
        return Ok(());
    };
    s.setup();
    for i in 0..7 {
        let mut r = started(&format!("b{i}"));
        // Two builds share each start time, so the cursor must break ties by id.
        r["started_at"] = json!(format!("2026-11-01T10:0{}:00Z", i / 2));
        assert_eq!(s.send(&r).0, 201);
    }
    let mut seen = Vec::new();
    let mut path = "/api/v1/projects/demo/builds?limit=3".to_owned();
    loop {
        let (status, page) = s.get_json(&path);
        assert_eq!(status, 200, "{page}");
        seen.extend(page["builds"].as_array().unwrap().iter().map(|b| b["uuid"].as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(c) => path = format!("/api/v1/projects/demo/builds?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ["b6", "b5", "b4", "b3", "b2", "b1", "b0"], "newest first, each build once");
    Ok(())
}

fn read_api_errors_are_json(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else {
        return Ok(());
    };
    s.setup();
    for (path, status) in [
        ("/api/v1/projects/nope/builds", 404),
        ("/api/v1/builds/999", 404),
        ("/api/v1/builds/abc", 404),
        ("/api/v1/projects/demo/builds?limit=0", 400),
        ("/api/v1/projects/demo/builds?limit=x", 400),
        ("/api/v1/projects/demo/builds?cursor=garbage", 400),
        ("/api/v1/projects/demo/builds?cursor=-9000000000000000000.1", 400),
        ("/api/v1/nothing-here", 404),
        ("/builds/1/steps/0/log", 404),
    ] {
        let (got, body) = s.get_json(path);
        assert_eq!(got, status, "{path}: {body}");
        assert!(body["error"].is_string() && body["message"].is_string(), "{path}: {body}");
    }
    let (status, html) = s.get("/projects/nope");
    assert_eq!(status, 404);
    assert!(html.contains("<!DOCTYPE html>") && html.contains("no project named"), "{html}");
    let (status, v) = s.get_json("/api/v1/projects");
    assert_eq!(status, 200);
    assert_eq!(v["projects"][0]["name"], "demo");
    Ok(())
}

fn pages_escape_everything_a_builder_sends(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else {
        return Ok(());
    };
    s.setup();
    let evil = "<script>alert(1)</script>";
    let mut r = report("x1");
    r["branch"] = json!(format!("main{evil}"));
    r["revision"] = json!("\"><img/src=x/onerror=alert(1)>");
    r["properties"]["compiler"] = json!(evil);
    r["steps"][0]["name"] = json!(evil);
    r["steps"][1]["log"] = json!(format!("error: {evil}\n"));
    r["tests"][0]["name"] = json!(evil);
    r["tests"][0]["message"] = json!(evil);
    let (status, v) = s.send(&r);
    assert_eq!(status, 201, "{v}");
    let build = v["build"].as_i64().unwrap();
    for path in ["/projects/demo".to_owned(), format!("/builds/{build}")] {
        let (status, html) = s.get(&path);
        assert_eq!(status, 200);
        assert!(!html.contains("<script>") && !html.contains("<img/src"), "{path} lets markup through:\n{html}");
        assert!(html.contains("&lt;script&gt;"), "{path} should show the text, escaped");
    }
    let resp = s.agent.get(s.url(&format!("/builds/{build}"))).call()?;
    let csp = resp.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(resp.headers().get("x-content-type-options").and_then(|v| v.to_str().ok()), Some("nosniff"));
    Ok(())
}

/// Issue 11: test names lost their leading and trailing spaces, and a lookup by the exact name
/// found nothing.
fn test_names_keep_their_spaces(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    s.setup();
    let mut r = report("spaces");
    r["tests"] = json!([{"suite": " lead", "name": "  padded name ", "result": "failed"}]);
    assert_eq!(s.send(&r).0, 201);
    let (status, v) = s.get_json("/api/v1/projects/demo/tests/history?suite=%20lead&name=%20%20padded%20name%20");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"].as_array().map(Vec::len), Some(1), "{v}");
    let (_, v) = s.get_json("/api/v1/projects/demo/tests/history?name=padded%20name");
    assert_eq!(v["results"].as_array().map(Vec::len), Some(0), "only the exact name: {v}");
    let (_, b) = s.get_json(&format!("/api/v1/builds/{}", s.builds("demo")[0]["id"]));
    assert_eq!(b["tests"][0]["name"], "  padded name ");
    Ok(())
}

/// tbox-server prints its shell completions and manual page (what a package installs).
#[test]
fn completions_and_manual_page() -> TestResult {
    let run = |args: &[&str]| std::process::Command::new(common::BIN).args(args).output();
    let out = run(&["completions", "bash"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("_tbox__server()") && text.contains("builder"), "{text}");
    let out = run(&["manpage"])?;
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(man.contains(".TH tbox-server") && man.contains("serve"), "{man}");
    // A page per subcommand, as the main page's SEE ALSO promises (the package installs them).
    let dir = std::env::temp_dir().join(format!("tbox-man-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    assert!(run(&["manpage", "--dir", dir.to_str().unwrap()])?.status.success());
    for page in ["tbox-server.1", "tbox-server-serve.1", "tbox-server-forge-add.1"] {
        assert!(std::fs::read_to_string(dir.join(page))?.contains(".TH"), "{page}");
    }
    std::fs::remove_dir_all(&dir)?;
    assert_eq!(run(&["completions", "cmd.exe"])?.status.code(), Some(2));
    Ok(())
}
