//! The pages developers read, on fixed data, on both backends: what they say, snapshots of
//! what they render, HTML validity (tidy) and, in a real headless Chromium, that they render
//! and that script payloads sent by a builder stay inert.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{Backend, Server, TestResult, key};
use serde_json::{Value, json};

on_both_backends!(pages_show_what_is_red_since_when_and_why, pages_are_valid_html);

fn step(name: &str, result: &str, start: &str, end: &str, log: &str, kind: Option<&str>) -> Value {
    let mut s = json!({"name": name, "result": result, "started_at": start, "finished_at": end,
                       "exit_code": if result == "success" { 0 } else { 2 }, "log": log});
    if let Some(k) = kind {
        s["kind"] = json!(k);
    }
    s
}

/// One finished build at hour `h` of 2026-11-02.
fn build(builder: &str, uuid: &str, rev: &str, h: u32, result: &str, steps: Vec<Value>, tests: Value) -> Value {
    json!({
        "format": "tbox-report/1", "uuid": uuid, "project": "demo", "builder": builder,
        "state": "finished", "result": result, "branch": "main", "revision": rev,
        "started_at": format!("2026-11-02T{h:02}:00:00Z"), "finished_at": format!("2026-11-02T{h:02}:20:00Z"),
        "steps": steps, "tests": tests,
        "properties": {"os": format!("os-of-{builder}"), "arch": "x86_64"}, "reporter": "pages test"
    })
}

/// Three builders over three revisions: alice stays green; bob breaks at rev2 and stays red;
/// carol's tests start failing at rev3.
fn fixture(s: &Server) {
    s.setup(); // project demo, builder alice (key 0)
    s.admin_ok(&["builder", "add", "bob", "--project", "demo", "--key", &s.pubkey_file(key(1))]);
    s.admin_ok(&["builder", "add", "carol", "--project", "demo", "--key", &s.pubkey_file(key(2))]);
    let ok = |h: u32| {
        vec![
            step(
                "build",
                "success",
                &format!("2026-11-02T{h:02}:00:00Z"),
                &format!("2026-11-02T{h:02}:10:00Z"),
                "cc -c a.c\n",
                None,
            ),
            step(
                "test",
                "success",
                &format!("2026-11-02T{h:02}:10:00Z"),
                &format!("2026-11-02T{h:02}:20:00Z"),
                "ok\n",
                Some("test"),
            ),
        ]
    };
    let mut gcc_log: String = (1..=40).map(|i| format!("cc -c unit{i}.c\n")).collect();
    gcc_log.push_str(
        "src/parser.c:42:7: error: expected ';' before '}' token\nmake: *** [Makefile:9: parser.o] Error 1\n",
    );
    let broken = |h: u32| {
        vec![step(
            "build",
            "failure",
            &format!("2026-11-02T{h:02}:00:00Z"),
            &format!("2026-11-02T{h:02}:20:00Z"),
            &gcc_log,
            None,
        )]
    };
    let tests_fail = |h: u32| {
        vec![
            step(
                "build",
                "success",
                &format!("2026-11-02T{h:02}:00:00Z"),
                &format!("2026-11-02T{h:02}:10:00Z"),
                "cc -c a.c\n",
                None,
            ),
            step(
                "test",
                "failure",
                &format!("2026-11-02T{h:02}:10:00Z"),
                &format!("2026-11-02T{h:02}:20:00Z"),
                "--- FAIL: TestParse (0.01s)\nFAIL\n",
                Some("test"),
            ),
        ]
    };
    let failing_tests = json!([{"suite": "parser", "name": "TestParse", "result": "failed", "duration_ms": 10, "message": "want 1, got 2"},
                               {"suite": "parser", "name": "TestLex", "result": "passed", "duration_ms": 3}]);
    let sends: Vec<(&str, usize, Value)> = vec![
        ("alice", 0, build("alice", "a1", "rev1aaaaaaaa", 8, "success", ok(8), json!([]))),
        ("bob", 1, build("bob", "b1", "rev1aaaaaaaa", 8, "success", ok(8), json!([]))),
        ("carol", 2, build("carol", "c1", "rev1aaaaaaaa", 8, "success", ok(8), json!([]))),
        ("alice", 0, build("alice", "a2", "rev2bbbbbbbb", 10, "success", ok(10), json!([]))),
        ("bob", 1, build("bob", "b2", "rev2bbbbbbbb", 10, "failure", broken(10), json!([]))),
        ("carol", 2, build("carol", "c2", "rev2bbbbbbbb", 10, "success", ok(10), json!([]))),
        ("alice", 0, build("alice", "a3", "rev3cccccccc", 13, "success", ok(13), json!([]))),
        ("bob", 1, build("bob", "b3", "rev3cccccccc", 13, "failure", broken(13), json!([]))),
        ("carol", 2, build("carol", "c3", "rev3cccccccc", 13, "failure", tests_fail(13), failing_tests)),
    ];
    for (who, k, report) in sends {
        let (status, v) = s.send_as(who, key(k), report.to_string().as_bytes());
        assert_eq!(status, 201, "{v}");
    }
}

/// The build id of a builder's build with this uuid.
fn id_of(s: &Server, uuid: &str) -> i64 {
    s.builds("demo").iter().find(|b| b["uuid"] == uuid).and_then(|b| b["id"].as_i64()).unwrap()
}

/// Pages with what changes from run to run (ages, key fingerprints, today's date, asset
/// versions) replaced by placeholders, so snapshots compare what matters.
fn normalise(html: &str) -> String {
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let rules = [
        (r"(?:&lt;1m|\b\d+(?:s|m|h \d\dm|d \d+h)) ago\b", "<age> ago"),
        (r"SHA256:[0-9a-f]{64}", "SHA256:<fingerprint>"),
        (r"\?v=[0-9a-f]+", "?v=<version>"),
        (&format!(r"{today}T[0-9:.]+Z"), "<now>"),
        (&today, "<today>"),
    ];
    let mut out = html.to_owned();
    for (pattern, with) in rules {
        out = regex::Regex::new(pattern).unwrap().replace_all(&out, with).into_owned();
    }
    out
}

fn pages_show_what_is_red_since_when_and_why(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    fixture(&s);
    let (b2, b3, c3) = (id_of(&s, "b2"), id_of(&s, "b3"), id_of(&s, "c3"));

    // Waterfall: every builder a column, its latest result in words in the header.
    let (status, wf) = s.get("/projects/demo");
    assert_eq!(status, 200);
    for needle in ["alice", "bob", "carol", "✘ failed", "✘ tests failed", "✔ success", "os-of-bob"] {
        assert!(wf.contains(needle), "waterfall lacks {needle:?}");
    }
    assert!(wf.contains(&format!("href=\"/builds/{b3}#log-0\"")), "a red cell links to its failed step's log");
    // Filters: one builder, and a property.
    let (_, only_bob) = s.get("/projects/demo?builders=bob");
    assert!(only_bob.contains(">bob</a>") && !only_bob.contains(">alice</a>"));
    let (_, by_os) = s.get("/projects/demo?property=os:os-of-carol");
    assert!(by_os.contains(">carol</a>") && !by_os.contains(">bob</a>"));
    let (_, compact) = s.get("/projects/demo?compact=1");
    assert!(compact.contains("waterfall compact") && !compact.contains("<ol class=\"steps\">"));
    // Older pages are linkable and stable.
    let (_, page1) = s.get("/projects/demo?limit=4");
    let older = regex::Regex::new(r#"href="(/projects/demo\?[^"]*before=[^"]+)""#).unwrap();
    let link = older.captures(&page1).map(|c| c[1].replace("&amp;", "&")).expect("an older link");
    let (status, page2) = s.get(&link);
    assert_eq!(status, 200);
    assert!(page2.contains("rev1aaaaaa") && !page2.contains("rev3cccccc"), "older page holds the older builds");

    // Console: bob's rev2 broke it, rev3 was already failing; carol's rev3 is new.
    let (status, console) = s.get("/projects/demo/console");
    assert_eq!(status, 200);
    assert_eq!(console.matches("<span class=\"why\">new regression").count(), 2, "{console}");
    // alice is green at rev2 and rev3: bob's and carol's breaks are their platforms' (DESIGN's
    // flaky rule), and the console says so.
    assert_eq!(console.matches("new regression, fails only here").count(), 2, "{console}");
    assert_eq!(console.matches("<span class=\"why\">already failing</span>").count(), 1, "{console}");

    // Build page: failing since, the error line with context and anchors, tests failures first.
    let (status, page) = s.get(&format!("/builds/{b3}"));
    assert_eq!(status, 200);
    assert!(page.contains(&format!("Failing since <a href=\"/builds/{b2}\">build {b2}</a>")), "{page}");
    assert!(page.contains("id=\"s0-L41\" class=\"error\""), "the error line is marked and anchored");
    assert!(page.contains("href=\"#s0-L41\""), "a jump link leads to it");
    assert!(page.contains("cc -c unit11.c"), "30 lines of context before the error");
    assert!(!page.contains("cc -c unit10.c<"), "but not more");
    assert!(page.contains("rel=\"prev\""));
    let (_, first_red) = s.get(&format!("/builds/{b2}"));
    assert!(first_red.contains("This build broke bob"), "{first_red}");
    let (_, carol) = s.get(&format!("/builds/{c3}"));
    let (fail, pass) = (carol.find("TestParse").unwrap(), carol.find("TestLex").unwrap());
    assert!(fail < pass, "failed tests come first");
    assert!(!carol.contains("fails only on"), "nobody else ran TestParse at rev3 yet: {carol}");

    // Builder page: history, success rate, keys.
    let (status, bob) = s.get("/projects/demo/builders/bob");
    assert_eq!(status, 200);
    assert!(bob.contains("33%") && bob.contains("SHA256:"), "{bob}");

    // Front page: the project's builders by colour.
    let (_, index) = s.get("/");
    assert!(index.contains("1 failed") && index.contains("1 tests failed") && index.contains("1 green"), "{index}");

    // The same data renders the same pages on both backends.
    insta::assert_snapshot!("waterfall", normalise(&wf));
    insta::assert_snapshot!("console", normalise(&console));
    insta::assert_snapshot!("build", normalise(&page));
    insta::assert_snapshot!("builder", normalise(&bob));

    // TestParse fails on carol and, once alice runs it too, passes on alice at the same
    // revision: a platform failure, not a flaky test (DESIGN, "Results a project can trust
    // from strangers"), said on carol's build page.
    let passing = json!([{"suite": "parser", "name": "TestParse", "result": "passed", "duration_ms": 9}]);
    let steps = vec![step("test", "success", "2026-11-02T14:00:00Z", "2026-11-02T14:10:00Z", "PASS\n", Some("test"))];
    let report = build("alice", "a3-tests", "rev3cccccccc", 14, "success", steps, passing);
    assert_eq!(s.send_as("alice", key(0), report.to_string().as_bytes()).0, 201);
    let (_, carol) = s.get(&format!("/builds/{c3}"));
    assert!(
        carol.contains("fails only on carol</span> <span class=\"muted\">(passes on alice at this revision)"),
        "{carol}"
    );
    Ok(())
}

fn pages_are_valid_html(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    if Command::new("tidy").arg("-v").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI must have tidy (.ci/run installs it)");
        common::say("SKIPPED HTML validation: the `tidy` command is not installed (apt-get install tidy)");
        return Ok(());
    }
    fixture(&s);
    let b3 = id_of(&s, "b3");
    for path in [
        "/".to_owned(),
        "/projects/demo".into(),
        "/projects/demo?compact=1".into(),
        "/projects/demo/console".into(),
        "/projects/demo/tests".into(),
        "/projects/demo/tests/history?suite=parser&name=parses_empty".into(),
        "/projects/demo/requests".into(),
        "/projects/demo/builders/bob".into(),
        format!("/builds/{b3}"),
        "/projects/nope".into(),
    ] {
        let (_, html) = s.get(&path);
        let file = s.db.dir.join("page.html");
        std::fs::write(&file, &html)?;
        let out = Command::new("tidy").args(["-q", "-e"]).arg(&file).output()?;
        assert_eq!(out.status.code(), Some(0), "{path} is not clean HTML:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Under a sub-path (`--public-url http://host/ci`, a proxy taking `/ci` off on the way in),
/// every link, stylesheet, script, image and form of every page starts with `/ci/` or is a full
/// URL: none is root-relative. (scripts/a11y follows them all behind a real nginx.)
#[test]
fn pages_under_a_sub_path_link_under_it() -> TestResult {
    let Some(s) = Server::start_with(Backend::Sqlite, &["--public-url", "https://example.org/ci/"]) else {
        return Ok(());
    };
    fixture(&s);
    let b3 = id_of(&s, "b3");
    let attr = regex::Regex::new(r#"(?:href|src|action)="([^"]*)""#).unwrap();
    let mut seen = 0;
    for path in [
        "/".to_owned(),
        "/projects/demo".into(),
        "/projects/demo/console".into(),
        "/projects/demo/tests".into(),
        "/projects/demo/tests/history?suite=parser&name=parses_empty".into(),
        "/projects/demo/requests".into(),
        "/projects/demo/builders/bob".into(),
        format!("/builds/{b3}"),
        "/projects/nope".into(),
    ] {
        let (_, html) = s.get(&path);
        // As a browser reads the attribute (tera writes `/` in values as `&#x2F;`).
        for link in attr.captures_iter(&html).map(|c| c[1].replace("&#x2F;", "/").replace("&amp;", "&")) {
            seen += 1;
            let fine = link.starts_with("/ci/")
                || link.starts_with('#')
                || link.starts_with('?')
                || link.starts_with("https://")
                || link.starts_with("http://");
            assert!(fine, "{path}: the link {link:?} leaves the sub-path");
        }
    }
    assert!(seen > 100, "only {seen} links looked at");
    // JSON links and feeds name it too.
    let (_, v) = s.get_json("/api/v1/projects/demo");
    assert!(v.to_string().contains("https://example.org/ci/"), "{v}");
    // A client generated from the OpenAPI document calls under the sub-path.
    let (_, doc) = s.get_json("/api/v1/openapi.json");
    assert_eq!(doc["servers"][0]["url"], "https://example.org/ci", "{}", doc["servers"]);
    Ok(())
}

/// Headless Chromium loads the pages: the builders and results are in the DOM once scripts
/// have run, and payloads in logs, names, messages, properties, branches and revisions did
/// nothing.
#[test]
fn browser_renders_pages_and_payloads_stay_inert() -> TestResult {
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()));
    let Some(chromium) = chromium else {
        assert!(std::env::var_os("CI").is_none(), "CI must have chromium (.ci/run installs it)");
        common::say("SKIPPED browser test: no chromium here (apt-get install chromium)");
        return Ok(());
    };
    let Some(s) = Server::start(Backend::Sqlite) else { return Ok(()) };
    fixture(&s);
    let payload = |tag: &str| {
        format!(
            "<img src=x onerror=\"document.body.setAttribute('data-pwned','{tag}')\"><script>document.body.setAttribute('data-pwned','{tag}')</script>"
        )
    };
    let mut evil = build(
        "alice",
        "evil",
        "\"><svg/onload=document.body.setAttribute('data-pwned','rev')>",
        15,
        "failure",
        vec![step(
            &payload("step"),
            "failure",
            "2026-11-02T15:00:00Z",
            "2026-11-02T15:20:00Z",
            &format!("error: {}\n", payload("log")),
            None,
        )],
        json!([{"suite": payload("suite"), "name": payload("test"), "result": "failed", "message": payload("message")}]),
    );
    evil["branch"] = json!(format!("main{}", payload("branch")));
    evil["properties"]["os"] = json!(payload("os"));
    let (status, v) = s.send_as("alice", key(0), evil.to_string().as_bytes());
    assert_eq!(status, 201, "{v}");
    let evil_id = v["build"].as_i64().unwrap();

    let profile = s.db.dir.join("chromium-profile");
    for path in [
        "/projects/demo".to_owned(),
        format!("/builds/{evil_id}"),
        "/projects/demo/console".into(),
        "/projects/demo/builders/alice".into(),
    ] {
        let out = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--virtual-time-budget=3000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(s.url(&path))
            .output()?;
        let dom = String::from_utf8_lossy(&out.stdout);
        assert!(dom.contains("</html>"), "{path}: chromium gave no DOM: {}", String::from_utf8_lossy(&out.stderr));
        // The payloads are on the page as text (escaped); as markup they would have become
        // elements, and as script they would have marked <body>.
        let body = dom.find("<body").map(|i| &dom[i..]).unwrap_or_default();
        let body_tag = &body[..body.find('>').unwrap_or(0)];
        assert!(!body_tag.contains("data-pwned"), "{path}: a payload ran: {body_tag}");
        assert!(
            !dom.contains("<img src=\"x\"") && !dom.contains("<svg") && !dom.contains("<script>document"),
            "{path}: markup got through:\n{dom}"
        );
        assert!(dom.contains("&lt;img src=x"), "{path}: the payload text is shown, escaped");
        assert!(dom.contains("title=\""), "{path}: the page's own script ran (time tooltips)");
        if path == "/projects/demo" {
            for needle in ["alice", "bob", "carol", "tests failed", "failed", "success"] {
                assert!(dom.contains(needle), "waterfall DOM lacks {needle:?}");
            }
        }
    }
    Ok(())
}
