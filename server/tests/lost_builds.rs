//! Lost builds, on both backends: a `started` build with no `finished` report after
//! `serve --lost-after` reads "lost" in the API, on the pages and in the feeds, and a late
//! `finished` report still completes it.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, Server, TestResult};
use serde_json::{Value, json};

on_both_backends!(a_build_that_never_finishes_is_lost_until_it_does);

fn at(ago: chrono::TimeDelta) -> String {
    (chrono::Utc::now() - ago).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Waits (at most 40 s) for the server's sweep to mark build `id` lost; returns its JSON.
fn wait_until_lost(s: &Server, id: i64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    loop {
        let (status, b) = s.get_json(&format!("/api/v1/builds/{id}"));
        assert_eq!(status, 200, "{b}");
        if b["state"] == "lost" || std::time::Instant::now() > deadline {
            return b;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn a_build_that_never_finishes_is_lost_until_it_does(backend: Backend) -> TestResult {
    let Some(s) = Server::start_with(backend, &["--lost-after", "1s", "--lost-check-every", "1"]) else {
        return Ok(());
    };
    s.setup();
    let minutes = chrono::TimeDelta::minutes;
    // A green build first, so that going silent is a change of status.
    let mut green = common::report("green");
    green["result"] = json!("success");
    green["started_at"] = json!(at(minutes(30)));
    green["finished_at"] = json!(at(minutes(25)));
    for st in green["steps"].as_array_mut().unwrap() {
        st["result"] = json!("success");
        st["started_at"] = json!(at(minutes(30)));
        st["finished_at"] = json!(at(minutes(25)));
    }
    green["tests"] = json!([]);
    assert_eq!(s.send(&green).0, 201);
    let mut begun = common::started("silent");
    begun["started_at"] = json!(at(minutes(10)));
    let (status, v) = s.send(&begun);
    assert_eq!(status, 201, "{v}");
    let id = v["build"].as_i64().unwrap();

    // The API: state "lost", no result; the finished build before it is untouched.
    let b = wait_until_lost(&s, id);
    assert_eq!((b["state"].as_str(), &b["result"]), (Some("lost"), &Value::Null), "{b}");
    let listed = s.builds("demo");
    let state_of = |uuid: &str| {
        let b = listed.iter().find(|b| b["uuid"] == uuid).unwrap();
        (b["state"].as_str().map(str::to_owned), b["result"].as_str().map(str::to_owned))
    };
    assert_eq!(state_of("silent"), (Some("lost".into()), None));
    assert_eq!(state_of("green"), (Some("finished".into()), Some("success".into())));
    let (_, heads) = s.get_json("/api/v1/projects/demo/status");
    let head = &heads["status"][0];
    assert_eq!((head["state"].as_str(), head["status"].as_str()), (Some("lost"), Some("lost")), "{heads}");
    let (_, project) = s.get_json("/api/v1/projects/demo");
    assert_eq!((project["status"]["lost"].as_i64(), project["status"]["green"].as_i64()), (Some(1), Some(0)));

    // The pages: its own colour (class), glyph and word, in the cell, the header and the legend.
    let (status, page) = s.get("/projects/demo");
    assert_eq!(status, 200);
    assert!(
        page.contains(&format!(
            r#"class="cell lost"><a class="result" href="/builds/{id}"><span class="glyph" aria-hidden="true">∅</span> lost</a>"#
        )),
        "{page}"
    );
    assert!(page.contains(r#"<span class="lost">∅ lost</span>"#), "the legend explains it");
    assert!(page.contains(r#"class="builder lost""#), "the header shows the newest build is lost");
    let (_, console) = s.get("/projects/demo/console");
    assert!(console.contains(r#"<td class="lost"><a class="result""#), "{console}");
    let (_, build_page) = s.get(&format!("/builds/{id}"));
    assert!(build_page.contains("the builder went silent mid-build"), "{build_page}");
    let (_, index) = s.get("/");
    assert!(index.contains(r#"<span class="lost">∅ 1 lost</span>"#), "{index}");

    // The feeds: a status change in Atom, Exception in cctray, "lost" on the badge.
    let (_, text) = s.get("/projects/demo/feed.atom");
    let feed: atom_syndication::Feed = text.parse().map_err(|e| format!("not Atom: {e}\n{text}"))?;
    let entry = feed
        .entries()
        .iter()
        .find(|e| e.title().as_str() == "alice went silent mid-build on main: lost")
        .ok_or_else(|| format!("no lost entry:\n{text}"))?;
    assert_eq!(entry.links()[0].href(), s.url(&format!("/builds/{id}")));
    assert!(
        !feed.entries().iter().any(|e| e.title().contains(" broke ")),
        "going silent is not breaking the build: {text}"
    );
    let (_, xml) = s.get("/projects/demo/cctray.xml");
    assert!(xml.contains(r#"name="demo/alice (main)" activity="Sleeping" lastBuildStatus="Exception""#), "{xml}");
    let (_, badge) = s.get("/projects/demo/builders/alice/badge.svg");
    assert!(badge.contains("alice: lost"), "{badge}");
    let (_, shields) = s.get_json("/api/v1/projects/demo/shields.json");
    assert_eq!(shields["message"], "lost");

    // A late finished report still completes it, as if it had never been lost.
    let mut done = common::report("silent");
    done["started_at"] = begun["started_at"].clone();
    done["finished_at"] = json!(at(minutes(1)));
    for st in done["steps"].as_array_mut().unwrap() {
        st["started_at"] = begun["started_at"].clone();
        st["finished_at"] = json!(at(minutes(1)));
    }
    let (status, v) = s.send(&done);
    assert_eq!((status, v["build"].as_i64()), (201, Some(id)), "{v}");
    let (_, b) = s.get_json(&format!("/api/v1/builds/{id}"));
    assert_eq!((b["state"].as_str(), b["result"].as_str()), (Some("finished"), Some("failure")), "{b}");
    // The sweep never touches a finished build.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (_, b) = s.get_json(&format!("/api/v1/builds/{id}"));
    assert_eq!(b["state"], "finished");
    let (_, xml) = s.get("/projects/demo/cctray.xml");
    assert!(xml.contains(r#"lastBuildStatus="Failure""#), "{xml}");
    let (_, text) = s.get("/projects/demo/feed.atom");
    assert!(!text.contains("went silent"), "{text}");
    assert!(text.contains("alice broke on main: tests failed (was success)"), "{text}");
    Ok(())
}
