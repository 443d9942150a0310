//! Feeds for projects and tools, on both backends: JSON shapes and filters checked against the
//! OpenAPI document, cursor paging while reports arrive, ETag/304, CORS and compression, a
//! real Atom parser on the feed, well-formed badges, the shields schema, cctray and metrics.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use common::{Backend, Server, TestResult, key};
use serde_json::{Value, json};

on_both_backends!(
    json_api_answers_match_the_openapi_document,
    builds_filters_and_paging_while_reports_arrive,
    http_manners_etag_cors_compression,
    atom_badges_shields_cctray_metrics,
    feed_ids_methods_and_unknown_projects,
    words_colours_and_numbers_agree,
    one_rule_for_broke_and_histories_per_branch,
    a_red_build_says_its_first_error,
    favicon_and_description,
    tests_pages_flaky_tests_and_counts,
);

/// Three builders: alice green throughout; bob green then red (at rev2, rev3); carol's test
/// `TestParse` fails from rev2 on.
fn fixture(s: &Server) {
    s.setup();
    s.admin_ok(&["builder", "add", "bob", "--project", "demo", "--key", &s.pubkey_file(key(1))]);
    s.admin_ok(&["builder", "add", "carol", "--project", "demo", "--key", &s.pubkey_file(key(2))]);
    for (i, rev) in ["rev1", "rev2", "rev3"].iter().enumerate() {
        for (k, who) in ["alice", "bob", "carol"].iter().enumerate() {
            let red = i > 0 && (*who == "bob" || *who == "carol");
            let h = 8 + 2 * i;
            let mut r = common::report(&format!("{who}-{rev}"));
            r["builder"] = json!(who);
            r["revision"] = json!(rev);
            r["started_at"] = json!(format!("2026-11-03T{h:02}:00:00Z"));
            r["finished_at"] = json!(format!("2026-11-03T{h:02}:30:00Z"));
            r["result"] = json!(if red { "failure" } else { "success" });
            for st in r["steps"].as_array_mut().unwrap() {
                st["started_at"] = json!(format!("2026-11-03T{h:02}:00:00Z"));
                st["finished_at"] = json!(format!("2026-11-03T{h:02}:30:00Z"));
                st["result"] = json!("success");
            }
            if red {
                r["steps"][1]["result"] = json!("failure");
            }
            r["tests"] = json!([
                {"suite": "parser", "name": "TestParse", "result": if *who == "carol" && i > 0 { "failed" } else { "passed" }, "duration_ms": 5},
                {"suite": "parser", "name": "TestLex", "result": "passed", "duration_ms": 3}
            ]);
            let (status, v) = s.send_as(who, key(k), r.to_string().as_bytes());
            assert_eq!(status, 201, "{v}");
        }
    }
}

/// Checks a value against a schema of the OpenAPI document (the subset it uses: type,
/// properties, required, items, enum, nullable, allOf and $ref).
fn check(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or_default();
        return check(doc, &doc["components"]["schemas"][name], v, at);
    }
    if v.is_null() {
        return if schema["nullable"] == true { Ok(()) } else { Err(format!("{at}: null where {schema} is expected")) };
    }
    if let Some(all) = schema["allOf"].as_array() {
        return all.iter().try_for_each(|s| check(doc, s, v, at));
    }
    if let Some(values) = schema["enum"].as_array()
        && !values.contains(v)
    {
        return Err(format!("{at}: {v} is not one of {values:?}"));
    }
    match schema["type"].as_str() {
        Some("object") => {
            let o = v.as_object().ok_or(format!("{at}: {v} is not an object"))?;
            for r in schema["required"].as_array().into_iter().flatten() {
                let r = r.as_str().unwrap_or_default();
                if !o.contains_key(r) {
                    return Err(format!("{at}: missing {r}"));
                }
            }
            if let Some(props) = schema["properties"].as_object() {
                for (k, s) in props {
                    if let Some(x) = o.get(k) {
                        check(doc, s, x, &format!("{at}.{k}"))?;
                    }
                }
                if schema["additionalProperties"] != true
                    && let Some(extra) = o.keys().find(|k| !props.contains_key(*k))
                {
                    return Err(format!("{at}: {extra} is not in the document"));
                }
            }
            Ok(())
        }
        Some("array") => {
            let a = v.as_array().ok_or(format!("{at}: {v} is not an array"))?;
            a.iter().enumerate().try_for_each(|(i, x)| check(doc, &schema["items"], x, &format!("{at}[{i}]")))
        }
        Some("string") => v.is_string().then_some(()).ok_or(format!("{at}: {v} is not a string")),
        Some("integer") => v.is_i64().then_some(()).ok_or(format!("{at}: {v} is not an integer")),
        Some("boolean") => v.is_boolean().then_some(()).ok_or(format!("{at}: {v} is not a boolean")),
        _ => Ok(()),
    }
}

/// GETs `path` and checks the answer against the document's schema for it.
fn get_checked(s: &Server, doc: &Value, template: &str, path: &str, status: u16) -> Value {
    let (got, v) = s.get_json(path);
    assert_eq!(got, status, "{path}: {v}");
    let schema =
        &doc["paths"][template]["get"]["responses"][status.to_string()]["content"]["application/json"]["schema"];
    assert!(!schema.is_null(), "{template} {status} is not in the OpenAPI document");
    check(doc, schema, &v, path).unwrap_or_else(|e| panic!("{e}\n{v}"));
    v
}

fn json_api_answers_match_the_openapi_document(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    fixture(&s);
    let (status, doc) = s.get_json("/api/v1/openapi.json");
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    // The paths are relative to this server (under a sub-path, its prefix: see pages.rs).
    assert_eq!(doc["servers"][0]["url"], s.base.as_str(), "{}", doc["servers"]);

    let v = get_checked(&s, &doc, "/api/v1/projects", "/api/v1/projects", 200);
    let counts = &v["projects"][0]["status"];
    assert_eq!(counts["green"], 1, "{counts}");
    assert_eq!(counts["red"], 2, "{counts}");
    // Which red, as the front page colours them: both have a failing step of the same kind.
    let split = [&counts["failed"], &counts["tests_failed"], &counts["exception"]].map(|c| c.as_u64().unwrap());
    assert!(split == [2, 0, 0] || split == [0, 2, 0], "{counts}");
    get_checked(&s, &doc, "/api/v1/projects/{project}", "/api/v1/projects/demo", 200);
    get_checked(&s, &doc, "/api/v1/projects/{project}", "/api/v1/projects/nope", 404);
    let v = get_checked(&s, &doc, "/api/v1/projects/{project}/builds", "/api/v1/projects/demo/builds?limit=4", 200);
    let id = v["builds"][0]["id"].as_i64().unwrap();
    get_checked(&s, &doc, "/api/v1/projects/{project}/builds", "/api/v1/projects/demo/builds?result=meh", 400);
    get_checked(&s, &doc, "/api/v1/builds/{id}", &format!("/api/v1/builds/{id}"), 200);
    get_checked(&s, &doc, "/api/v1/builds/{id}", "/api/v1/builds/999999", 404);

    let v = get_checked(&s, &doc, "/api/v1/projects/{project}/status", "/api/v1/projects/demo/status", 200);
    let status: Vec<(&str, &str)> = v["status"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["builder"].as_str().unwrap(), h["status"].as_str().unwrap()))
        .collect();
    assert_eq!(status, [("alice", "success"), ("bob", "tests failed"), ("carol", "tests failed")]);
    let v = get_checked(&s, &doc, "/api/v1/projects/{project}/status", "/api/v1/projects/demo/status?builder=bob", 200);
    assert_eq!(v["status"].as_array().map(Vec::len), Some(1));

    let v = get_checked(&s, &doc, "/api/v1/projects/{project}/builders", "/api/v1/projects/demo/builders", 200);
    assert_eq!(v["builders"][1]["branches"][0]["revision"], "rev3");
    assert_eq!(v["builders"][1]["properties"]["os"], "linux");

    let v = get_checked(
        &s,
        &doc,
        "/api/v1/projects/{project}/revisions/{revision}",
        "/api/v1/projects/demo/revisions/rev2",
        200,
    );
    assert_eq!(v["builds"].as_array().map(Vec::len), Some(3));

    let v =
        get_checked(&s, &doc, "/api/v1/projects/{project}/tests/failing", "/api/v1/projects/demo/tests/failing", 200);
    let failing = v["failing"].as_array().unwrap();
    assert_eq!(failing.len(), 1, "{v}");
    assert_eq!((failing[0]["name"].as_str(), failing[0]["builder"].as_str()), (Some("TestParse"), Some("carol")));
    assert_eq!(failing[0]["since"]["revision"], "rev2", "failing since the first red run after the last pass");

    let v = get_checked(
        &s,
        &doc,
        "/api/v1/projects/{project}/tests/history",
        "/api/v1/projects/demo/tests/history?name=TestParse",
        200,
    );
    assert_eq!(v["results"].as_array().map(Vec::len), Some(9));
    let v = get_checked(
        &s,
        &doc,
        "/api/v1/projects/{project}/tests/history",
        "/api/v1/projects/demo/tests/history?name=TestParse&builder=carol",
        200,
    );
    let results: Vec<&str> = v["results"].as_array().unwrap().iter().map(|r| r["result"].as_str().unwrap()).collect();
    assert_eq!(results, ["failed", "failed", "passed"]);
    get_checked(&s, &doc, "/api/v1/projects/{project}/tests/history", "/api/v1/projects/demo/tests/history", 400);

    get_checked(&s, &doc, "/api/v1/projects/{project}/keys", "/api/v1/projects/demo/keys", 404);
    let v = get_checked(&s, &doc, "/api/v1/projects/{project}/key-lists", "/api/v1/projects/demo/key-lists", 200);
    assert_eq!(v["key_lists"], json!([]));
    let v = get_checked(&s, &doc, "/api/v1/projects/{project}/signing-keys", "/api/v1/projects/demo/signing-keys", 200);
    assert_eq!(v["keys"], json!([]));
    get_checked(&s, &doc, "/api/v1/projects/{project}/key-lists/{version}", "/api/v1/projects/demo/key-lists/1", 404);
    get_checked(&s, &doc, "/api/v1/projects/{project}/capabilities", "/api/v1/projects/demo/capabilities", 200);
    get_checked(&s, &doc, "/api/v1/projects/{project}/recipes", "/api/v1/projects/demo/recipes", 200);
    get_checked(&s, &doc, "/api/v1/projects/{project}/recipes", "/api/v1/projects/nope/recipes", 404);
    get_checked(&s, &doc, "/api/v1/projects/{project}/recipe", "/api/v1/projects/demo/recipe", 404);
    get_checked(&s, &doc, "/api/v1/projects/{project}/requests", "/api/v1/projects/demo/requests", 200);
    get_checked(&s, &doc, "/api/v1/projects/{project}/requests", "/api/v1/projects/nope/requests", 404);

    let v = get_checked(&s, &doc, "/api/v1/projects/{project}/shields.json", "/api/v1/projects/demo/shields.json", 200);
    let keys: HashSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, HashSet::from(["schemaVersion", "label", "message", "color", "isError", "cacheSeconds"]));
    assert_eq!((v["message"].as_str(), v["color"].as_str()), (Some("failing on 2 of 3"), Some("red")));
    let v = get_checked(
        &s,
        &doc,
        "/api/v1/projects/{project}/shields.json",
        "/api/v1/projects/demo/shields.json?builder=alice",
        200,
    );
    assert_eq!((v["message"].as_str(), v["color"].as_str()), (Some("passing"), Some("brightgreen")));
    assert!(v["cacheSeconds"].as_i64() >= Some(300));
    // Unknown: still in shields' own schema, so a README's badge says "unknown", not garbage.
    let v = get_checked(&s, &doc, "/api/v1/projects/{project}/shields.json", "/api/v1/projects/nope/shields.json", 404);
    assert_eq!((v["message"].as_str(), v["isError"].as_bool()), (Some("unknown"), Some(true)), "{v}");
    // `cursor=` (empty) is the first page, as the document allows.
    let v = get_checked(&s, &doc, "/api/v1/projects/{project}/builds", "/api/v1/projects/demo/builds?cursor=", 200);
    assert!(!v["builds"].as_array().unwrap().is_empty());
    get_checked(&s, &doc, "/api/v1/projects/{project}/requests/{id}", "/api/v1/projects/demo/requests/1", 404);
    Ok(())
}

fn builds_filters_and_paging_while_reports_arrive(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    fixture(&s);
    let uuids = |q: &str| -> Vec<String> {
        let (status, v) = s.get_json(&format!("/api/v1/projects/demo/builds?{q}"));
        assert_eq!(status, 200, "{q}: {v}");
        v["builds"].as_array().unwrap().iter().map(|b| b["uuid"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(uuids("builder=bob"), ["bob-rev3", "bob-rev2", "bob-rev1"]);
    assert_eq!(uuids("result=failure&builder=carol"), ["carol-rev3", "carol-rev2"]);
    assert_eq!(uuids("revision=rev1").len(), 3);
    assert_eq!(uuids("since=2026-11-03T10:00:00Z&until=2026-11-03T12:00:00Z").len(), 3, "rev2 only");
    assert_eq!(uuids("branch=nope").len(), 0);
    assert_eq!(uuids("builder=nobody").len(), 0);
    let (status, v) = s.get_json("/api/v1/projects/demo/builds?since=yesterday");
    assert_eq!((status, v["error"].as_str()), (400, Some("bad_query")));

    // Page through, two at a time, while new reports arrive: each build seen once, none missed.
    let before: HashSet<String> = uuids("limit=500").into_iter().collect();
    let sender = {
        let base = s.base.clone();
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            for i in 0..12 {
                let mut r = common::report(&format!("late-{i}"));
                r["started_at"] = json!(format!("2026-11-04T{:02}:00:00Z", i));
                r["finished_at"] = json!(format!("2026-11-04T{:02}:30:00Z", i));
                let body = r.to_string();
                let resp = agent
                    .post(format!("{base}/api/v1/reports"))
                    .header("Content-Type", "application/json")
                    .header("Tbox-Builder", "alice")
                    .header("Tbox-Signature", &key(0).sign(body.as_bytes()))
                    .send(body.as_bytes())
                    .unwrap();
                assert_eq!(resp.status().as_u16(), 201);
            }
        })
    };
    let mut seen = Vec::new();
    let mut path = "/api/v1/projects/demo/builds?limit=2".to_owned();
    loop {
        let (status, page) = s.get_json(&path);
        assert_eq!(status, 200);
        seen.extend(page["builds"].as_array().unwrap().iter().map(|b| b["uuid"].as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(c) => path = format!("/api/v1/projects/demo/builds?limit=2&cursor={c}"),
            None => break,
        }
    }
    sender.join().map_err(|_| "sender panicked")?;
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no build twice: {seen:?}");
    assert!(before.iter().all(|u| unique.contains(u)), "no gap: {seen:?}");
    Ok(())
}

fn http_manners_etag_cors_compression(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    fixture(&s);
    for path in [
        "/projects/demo",
        "/api/v1/projects/demo/status",
        "/projects/demo/feed.atom",
        "/projects/demo/badge.svg",
        "/projects/demo/cctray.xml",
        "/api/v1/projects/demo/shields.json",
    ] {
        let resp = s.agent.get(s.url(path)).call()?;
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let h = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let etag = h("etag").unwrap_or_else(|| panic!("{path}: no ETag"));
        assert!(h("cache-control").is_some(), "{path}: no Cache-Control");
        if path != "/projects/demo" {
            assert_eq!(h("access-control-allow-origin").as_deref(), Some("*"), "{path}: feeds are for everyone");
        }
        let again = s.agent.get(s.url(path)).header("If-None-Match", &etag).call()?;
        assert_eq!(again.status().as_u16(), 304, "{path}: unchanged, so 304");
        // A new report changes what the status feeds say, and so their tags.
        let other = s.agent.get(s.url(path)).header("If-None-Match", "W/\"something-else\"").call()?;
        assert_eq!(other.status().as_u16(), 200, "{path}");
    }
    // HEAD answers like GET, without the body.
    let head = s.agent.head(s.url("/projects/demo/feed.atom")).call()?;
    assert_eq!(head.status().as_u16(), 200);
    assert!(head.headers().contains_key("etag"));
    let etag_of = |path: &str| {
        s.agent
            .get(s.url(path))
            .call()
            .ok()
            .and_then(|r| r.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned))
    };
    let before = etag_of("/api/v1/projects/demo/status");
    let mut r = common::report("newer");
    r["started_at"] = json!("2026-11-05T10:00:00Z");
    r["finished_at"] = json!("2026-11-05T10:30:00Z");
    assert_eq!(s.send(&r).0, 201);
    assert_ne!(before, etag_of("/api/v1/projects/demo/status"));

    // Raw HTTP here: the test client would inflate the body and drop the header.
    for encoding in ["gzip", "br"] {
        use std::io::{Read, Write};
        let addr = s.base.trim_start_matches("http://");
        let mut tcp = std::net::TcpStream::connect(addr)?;
        write!(
            tcp,
            "GET /projects/demo HTTP/1.1\r\nHost: {addr}\r\nAccept-Encoding: {encoding}\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer)?;
        let head = String::from_utf8_lossy(&answer[..answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0)])
            .to_lowercase();
        assert!(head.contains(&format!("content-encoding: {encoding}")), "{head}");
    }
    Ok(())
}

fn atom_badges_shields_cctray_metrics(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    fixture(&s);
    // Atom: a real parser reads it; bob's break and carol's are there, linked to the builds.
    let (status, text) = s.get("/projects/demo/feed.atom");
    assert_eq!(status, 200);
    let feed: atom_syndication::Feed = text.parse().map_err(|e| format!("not Atom: {e}\n{text}"))?;
    let titles: Vec<&str> = feed.entries().iter().map(|e| e.title().as_str()).collect();
    assert!(titles.iter().any(|t| t.starts_with("bob broke on main")), "{titles:?}");
    assert!(titles.iter().any(|t| t.starts_with("carol broke on main")), "{titles:?}");
    assert!(titles.iter().any(|t| t.contains("reported for the first time")), "new builders: {titles:?}");
    let bob_break = s.builds("demo").iter().find(|b| b["uuid"] == "bob-rev2").and_then(|b| b["id"].as_i64()).unwrap();
    assert!(
        feed.entries().iter().any(|e| e.links().iter().any(|l| l.href() == s.url(&format!("/builds/{bob_break}"))))
    );
    let (_, page) = s.get("/projects/demo");
    assert!(page.contains(r#"<link rel="alternate" type="application/atom+xml""#), "the waterfall announces its feed");
    // Bob is fixed: a red→green entry.
    let mut fixed = common::report("bob-fixed");
    fixed["builder"] = json!("bob");
    fixed["result"] = json!("success");
    fixed["started_at"] = json!("2026-11-05T10:00:00Z");
    fixed["finished_at"] = json!("2026-11-05T10:30:00Z");
    assert_eq!(s.send_as("bob", key(1), fixed.to_string().as_bytes()).0, 201);
    let (_, text) = s.get("/projects/demo/builders/bob/feed.atom");
    let feed: atom_syndication::Feed = text.parse().map_err(|e| format!("not Atom: {e}\n{text}"))?;
    assert!(feed.entries()[0].title().as_str().starts_with("bob is fixed on main"), "{text}");
    assert!(
        feed.entries().iter().all(|e| e.title().as_str().starts_with("bob")),
        "a builder's feed is about that builder"
    );

    // Badges: well-formed SVG with the words and a width that grows with the text.
    let svg = |path: &str| -> (String, f64) {
        let (status, text) = s.get(path);
        assert_eq!(status, 200, "{path}");
        let mut reader = quick_xml::Reader::from_str(&text);
        loop {
            match reader.read_event() {
                Ok(quick_xml::events::Event::Eof) => break,
                Ok(_) => {}
                Err(e) => panic!("{path} is not well-formed XML: {e}"),
            }
        }
        let width =
            text.split("width=\"").nth(1).and_then(|w| w.split('"').next()).and_then(|w| w.parse().ok()).unwrap();
        (text, width)
    };
    let (project_badge, wide) = svg("/projects/demo/badge.svg");
    // (bob is fixed by now: carol alone is red)
    assert!(project_badge.contains("failing on 1 of 3") && project_badge.contains("#cf222e"), "{project_badge}");
    let (alice, narrow) = svg("/projects/demo/builders/alice/badge.svg");
    assert!(alice.contains("passing") && alice.contains("#1a7f37"), "{alice}");
    assert!(wide > narrow - 20.0, "widths follow the text");
    let (main_badge, _) = svg("/projects/demo/badge.svg?branch=main");
    assert!(main_badge.contains("failing"));
    let (none, _) = svg("/projects/demo/badge.svg?branch=nope");
    assert!(none.contains("no data"));

    // cctray: one Project per builder and branch, with the attributes CCMenu reads.
    let (status, xml) = s.get("/projects/demo/cctray.xml");
    assert_eq!(status, 200);
    let mut projects = Vec::new();
    let mut reader = quick_xml::Reader::from_str(&xml);
    loop {
        match reader.read_event()? {
            quick_xml::events::Event::Empty(e) if e.name().as_ref() == "Project" => {
                let attr = |n: &str| {
                    e.attributes().flatten().find(|a| a.key.as_ref() == n).map(|a| {
                        a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .map(|v| v.into_owned())
                            .unwrap_or_default()
                    })
                };
                for required in ["name", "activity", "lastBuildStatus", "lastBuildLabel", "lastBuildTime", "webUrl"] {
                    assert!(attr(required).is_some(), "cctray Project without {required}");
                }
                projects.push((attr("name").unwrap_or_default(), attr("lastBuildStatus").unwrap_or_default()));
            }
            quick_xml::events::Event::Eof => break,
            _ => {}
        }
    }
    assert!(projects.contains(&("demo/bob (main)".to_owned(), "Success".to_owned())), "{projects:?}");
    assert!(projects.contains(&("demo/carol (main)".to_owned(), "Failure".to_owned())), "{projects:?}");
    assert_eq!(projects.len(), 3);

    // Metrics: what was accepted and what was refused, and why.
    let (_, unsigned) = s.post(b"{}", &[("Content-Type", "application/json"), ("Tbox-Builder", "alice")]);
    assert_eq!(unsigned["error"], "unsigned");
    let (status, metrics) = s.get("/metrics");
    assert_eq!(status, 200);
    for needle in [
        "tbox_reports_accepted_total 10",
        "tbox_reports_rejected_total{reason=\"unsigned\"} 1",
        // Series exist before their first event.
        "tbox_reports_rejected_total{reason=\"bad_signature\"} 0",
        "tbox_builds_recorded_total{result=\"cancelled\"} 0",
        "tbox_builds_recorded_total{result=\"failure\"} 4",
        "tbox_ingest_seconds_count 10",
        "tbox_db_connections{state=\"in_use\"}",
        "tbox_db_connections_max 4",
        "tbox_build_info{version=",
        "tbox_http_requests_total{method=\"POST\",route=\"/api/v1/reports\",status=\"201\"}",
        "tbox_http_request_duration_seconds_bucket{le=\"+Inf\",route=\"/projects/{project}/cctray.xml\"}",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_max_fds ",
        "process_start_time_seconds ",
    ] {
        assert!(metrics.contains(needle), "/metrics lacks {needle:?}:\n{metrics}");
    }
    assert!(!metrics.contains("state=\"max\""), "the pool's limit is not a usage state");
    assert!(metrics.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
    // Resident memory in this machine's pages: the process's own count times its page size.
    let rss: f64 = metrics.lines().find_map(|l| l.strip_prefix("process_resident_memory_bytes ")).unwrap().parse()?;
    assert!(rss > 1e6, "resident memory {rss}");
    // The exposition format, as promtool reads it: every family has HELP and TYPE before its
    // samples, no series twice, every value a number.
    let mut declared = HashSet::new();
    let mut seen = HashSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            declared.insert(rest.split_whitespace().next().unwrap().to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
        let name = series.split('{').next().unwrap();
        let family =
            ["_bucket", "_sum", "_count", "_total", "_info"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(declared.contains(name) || declared.contains(family), "no TYPE before {line}");
        assert!(seen.insert(series.to_owned()), "series twice: {series}");
    }
    // A build reported started and then finished is one build, counted once by result.
    let started_builds: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tbox_builds_started_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    let finished: u64 = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("tbox_builds_recorded_total{"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<u64>().ok()))
        .sum();
    assert_eq!(started_builds + finished, 10, "{metrics}");
    Ok(())
}

fn header(s: &Server, method: &str, path: &str, host: Option<&str>) -> (u16, Option<String>, String, String) {
    let url = s.url(path);
    let mut req = match method {
        "POST" => s.agent.post(&url).header("Content-Type", "application/json"),
        "DELETE" => s.agent.delete(&url).force_send_body(),
        _ => s.agent.get(&url).force_send_body(),
    };
    if let Some(h) = host {
        req = req.header("Host", h);
    }
    let mut resp = req.send(&b""[..]).unwrap();
    let get = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (allow, ctype) = (get("allow"), get("content-type").unwrap_or_default());
    let status = resp.status().as_u16();
    (status, allow, ctype, resp.body_mut().read_to_string().unwrap_or_default())
}

/// Issue 11, item 4: Atom ids that are valid `tag:` URIs and do not change with the Host
/// header, feed ids without the query and titles that say which feed; 405 with `Allow` and a
/// body; badges and cctray that stay an image and XML for an unknown project; cctray listing
/// builders that never reported, and pointing a running build at its builder's page.
fn feed_ids_methods_and_unknown_projects(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    fixture(&s);
    s.admin_ok(&["builder", "add", "dave", "--project", "demo", "--key", &s.pubkey_file(key(0))]);
    let ids = |text: &str| -> Vec<String> {
        text.split("<id>").skip(1).map(|t| t.split("</id>").next().unwrap_or("").to_owned()).collect()
    };
    let (_, _, _, a) = header(&s, "GET", "/projects/demo/feed.atom?branch=main", None);
    let (_, _, _, b) = header(&s, "GET", "/projects/demo/feed.atom?branch=main", Some("evil.example:81"));
    assert_eq!(ids(&a), ids(&b), "ids do not depend on the Host header");
    let all = ids(&a);
    assert!(all.len() > 1, "{a}");
    for id in &all {
        // RFC 4151: tag:authority,date:specific, the authority a DNS name (no port, no path).
        let rest = id.strip_prefix("tag:").unwrap_or_else(|| panic!("not a tag URI: {id}"));
        let (authority, _) = rest.split_once(',').unwrap();
        assert!(authority.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'), "{id}");
        assert!(!id.contains('?'), "{id}");
    }
    assert_eq!(all[0], "tag:tbox.invalid,2026:demo/feed/branch/main");
    assert!(a.contains("<title>Demo: build status changes on main</title>"), "{a}");
    let (_, _, _, bob) = header(&s, "GET", "/projects/demo/builders/bob/feed.atom", None);
    assert!(
        bob.contains("<title>Demo: bob&apos;s build status changes</title>")
            || bob.contains("<title>Demo: bob's build status changes</title>"),
        "{bob}"
    );
    assert_eq!(ids(&bob)[0], "tag:tbox.invalid,2026:demo/feed/builder/bob");

    // Methods a resource does not take: 405, Allow, and a body saying so.
    let (status, allow, ctype, body) = header(&s, "GET", "/api/v1/reports", None);
    assert_eq!((status, allow.as_deref()), (405, Some("POST")), "{body}");
    assert!(ctype.starts_with("application/json") && body.contains("method_not_allowed"), "{ctype} {body}");
    let (status, allow, _, body) = header(&s, "DELETE", "/api/v1/projects/demo", None);
    assert_eq!((status, allow.as_deref()), (405, Some("GET, HEAD")), "{body}");
    let (status, allow, _, _) = header(&s, "POST", "/api/v1/projects/demo/recipe", None);
    assert_eq!((status, allow.as_deref()), (405, Some("GET, HEAD, PUT")));
    let (status, allow, ctype, _) = header(&s, "POST", "/projects/demo", None);
    assert_eq!((status, allow.as_deref()), (405, Some("GET, HEAD")));
    assert!(ctype.starts_with("text/html"), "{ctype}");
    assert_eq!(header(&s, "GET", "/api/v1/nothing-here", None).0, 404);

    // An unknown project's badge is still an image, its cctray still XML.
    let (status, _, ctype, svg) = header(&s, "GET", "/projects/nope/badge.svg", None);
    assert_eq!(status, 404);
    assert!(ctype.starts_with("image/svg+xml") && svg.contains("unknown"), "{ctype} {svg}");
    let (status, _, ctype, _) = header(&s, "GET", "/projects/demo/builders/nobody/badge.svg", None);
    assert!(status == 404 && ctype.starts_with("image/svg+xml"), "{status} {ctype}");
    let (status, _, ctype, xml) = header(&s, "GET", "/projects/nope/cctray.xml", None);
    assert_eq!(status, 404);
    assert!(ctype.starts_with("application/xml") && xml.contains("<Projects/>"), "{ctype} {xml}");

    // cctray: dave never reported, so has no last build time to show and is left out (it once
    // showed its registration time as one); a running build points at its builder's page.
    let mut running = common::started("alice-running");
    running["revision"] = json!("rev4");
    running["started_at"] = json!("2026-11-03T20:00:00Z");
    assert_eq!(s.send(&running).0, 201);
    let (_, _, _, tray) = header(&s, "GET", "/projects/demo/cctray.xml", None);
    assert!(tray.contains("<Projects>") && !tray.contains("demo/dave"), "{tray}");
    let alice = tray.lines().find(|l| l.contains("demo/alice")).unwrap();
    assert!(alice.contains("activity=\"Building\"") && alice.contains("/projects/demo/builders/alice\""), "{alice}");
    Ok(())
}

/// Issue 11, item 2: a test failure is "tests failed" (orange) on the builder page and in the
/// feed as on the waterfall; a rate of 4 in 6 is 67%; steps are numbered from 1.
fn words_colours_and_numbers_agree(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    fixture(&s);
    let (_, waterfall) = s.get("/projects/demo");
    assert!(waterfall.contains("tests failed"), "the fixture's red builds are test failures");
    let (_, page) = s.get("/projects/demo/builders/bob");
    assert!(page.contains("class=\"tests-failed\"") || page.contains("tests-failed"), "{page}");
    assert!(page.contains("tests failed"), "{page}");
    let (_, feed) = s.get("/projects/demo/feed.atom");
    assert!(feed.contains("bob broke on main: tests failed (was success)"), "{feed}");
    // dave: 4 green of 6.
    s.admin_ok(&["builder", "add", "dave", "--project", "demo", "--key", &s.pubkey_file(key(0))]);
    for i in 0..6 {
        let mut r = common::report(&format!("dave-{i}"));
        r["builder"] = json!("dave");
        r["started_at"] = json!(format!("2026-11-04T0{i}:00:00Z"));
        r["finished_at"] = json!(format!("2026-11-04T0{i}:10:00Z"));
        r["result"] = json!(if i < 4 { "success" } else { "failure" });
        assert_eq!(s.send_as("dave", key(0), r.to_string().as_bytes()).0, 201);
    }
    let (_, page) = s.get("/projects/demo/builders/dave");
    assert!(page.contains(">67%<"), "4 of 6 rounds to 67%: {page}");
    let id = s.builds("demo")[0]["id"].clone();
    let (_, build) = s.get(&format!("/builds/{id}"));
    assert!(build.contains("id=\"step-0\"><td>1</td>"), "steps are numbered from 1: {build}");
    Ok(())
}

/// Issue 11, item 2: a first build that is red is not "broke … the build before it was
/// green"; cancelled builds in between do not count; a builder's history is per branch.
fn one_rule_for_broke_and_histories_per_branch(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    s.setup();
    let send = |uuid: &str, branch: &str, rev: &str, hour: u32, result: &str| -> i64 {
        let mut r = common::report(uuid);
        r["branch"] = json!(branch);
        r["revision"] = json!(rev);
        r["started_at"] = json!(format!("2026-11-05T{hour:02}:00:00Z"));
        r["finished_at"] = json!(format!("2026-11-05T{hour:02}:10:00Z"));
        let (from, to) = (r["started_at"].clone(), r["finished_at"].clone());
        for st in r["steps"].as_array_mut().unwrap() {
            st["started_at"] = from.clone();
            st["finished_at"] = to.clone();
            st["result"] = json!(if result == "failure" { "failure" } else { "success" });
            st["kind"] = Value::Null;
        }
        r["result"] = json!(result);
        let (status, v) = s.send(&r);
        assert_eq!(status, 201, "{v}");
        v["build"].as_i64().unwrap()
    };
    let first = send("a1", "main", "r1", 1, "failure");
    let (_, page) = s.get(&format!("/builds/{first}"));
    assert!(page.contains("This is the first build of alice on main, and it is red."), "{page}");
    assert!(!page.contains("the build before it was green") && !page.contains("broke"), "{page}");
    let green = send("a2", "main", "r2", 2, "success");
    send("a3", "main", "r3", 3, "cancelled");
    let red = send("a4", "main", "r4", 4, "failure");
    let (_, page) = s.get(&format!("/builds/{red}"));
    assert!(
        page.contains(&format!("the build before it (<a href=\"/builds/{green}\">build {green}</a>) was green")),
        "{page}"
    );
    let (_, console) = s.get("/projects/demo/console");
    assert!(console.contains("first build") && console.contains("new regression"), "{console}");
    // A release branch between them: neighbours and "since" stay on their branch.
    let release = send("b1", "release-1.x", "x1", 5, "success");
    let later = send("a5", "main", "r5", 6, "failure");
    let (_, page) = s.get(&format!("/builds/{later}"));
    assert!(page.contains(&format!("href=\"/builds/{red}\" rel=\"prev\"")), "previous on main is {red}: {page}");
    let (_, page) = s.get(&format!("/builds/{release}"));
    assert!(!page.contains("rel=\"prev\"") && !page.contains("rel=\"next\""), "alone on its branch: {page}");
    let (_, waterfall) = s.get("/projects/demo");
    assert!(waterfall.contains("<span class=\"tag branch\" title=\"branch\">release-1.x</span>"), "{waterfall}");
    assert!(
        !waterfall.contains("since <a href=\"https://example.org/c/x1"),
        "main is not compared with the release build"
    );
    Ok(())
}

/// Issue 11, item 7: the first error, in one line, at the top of a red build's page and in its
/// JSON; found in the log of a Rust panic among lines that are not errors.
fn a_red_build_says_its_first_error(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    s.setup();
    let mut r = common::report("panicky");
    r["steps"][1]["log"] = json!(
        "running 3 tests\ntest lexer::ok ... ok\n\nthread 'parser::tests::empty' panicked at src/parser.rs:41:9:\nassertion `left == right` failed\ntest parser::tests::empty ... FAILED\n"
    );
    let (status, v) = s.send(&r);
    assert_eq!(status, 201, "{v}");
    let (_, b) = s.get_json(&format!("/api/v1/builds/{}", v["build"]));
    let first = &b["first_error"];
    assert_eq!(
        (first["step"].as_i64(), first["step_name"].as_str(), first["line"].as_i64()),
        (Some(2), Some("test"), Some(4)),
        "{b}"
    );
    assert!(first["text"].as_str().unwrap().starts_with("thread 'parser::tests::empty' panicked at"), "{b}");
    let (_, page) = s.get(&format!("/builds/{}", v["build"]));
    assert!(page.contains("First error, in step 2 “test”"), "{page}");
    // A green build has none.
    let mut g = common::report("green");
    g["result"] = json!("success");
    g["steps"][1]["result"] = json!("success");
    let (_, v) = s.send(&g);
    let (_, b) = s.get_json(&format!("/api/v1/builds/{}", v["build"]));
    assert!(b["first_error"].is_null(), "{b}");
    Ok(())
}

/// Issue 11, item 6 (in part): `/favicon.ico` is an icon, and pages carry a description.
fn favicon_and_description(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    s.setup();
    let mut resp = s.agent.get(s.url("/favicon.ico")).call()?;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("image/x-icon"));
    let icon = resp.body_mut().read_to_vec()?;
    assert_eq!(&icon[..4], &[0, 0, 1, 0], "an ICO header");
    let (_, page) = s.get("/projects/demo");
    assert!(page.contains("<meta name=\"description\" content=\""), "{page}");
    Ok(())
}

/// Issue 11, item 3: the tests pages, flaky tests by DESIGN's rule, and test counts in lists
/// and cells.
fn tests_pages_flaky_tests_and_counts(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    fixture(&s);
    s.admin_ok(&["builder", "add", "dave", "--project", "demo", "--key", &s.pubkey_file(key(0))]);
    // dave: TestFlip passes, fails, passes, fails (3 flips) on four revisions; TestSolid fails
    // from its first run on, on a revision nobody else built.
    for (i, flip) in ["passed", "failed", "passed", "failed"].iter().enumerate() {
        let mut r = common::report(&format!("dave-{i}"));
        r["builder"] = json!("dave");
        r["revision"] = json!(format!("dave-rev{i}"));
        r["started_at"] = json!(format!("2026-11-04T0{i}:00:00Z"));
        r["finished_at"] = json!(format!("2026-11-04T0{i}:10:00Z"));
        r["tests"] = json!([
            {"suite": "flip", "name": "TestFlip", "result": flip},
            {"suite": "solid", "name": "TestSolid", "result": "failed", "message": "always"}
        ]);
        assert_eq!(s.send_as("dave", key(0), r.to_string().as_bytes()).0, 201);
    }
    let (_, v) = s.get_json("/api/v1/projects/demo/tests/failing");
    let find = |name: &str| {
        v["failing"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name}: {v}"))
    };
    // carol's TestParse failed where alice and bob passed it, on the same revision: not flaky
    // (flaky is a builder's own: it fails only on carol, a regression there).
    assert_eq!(find("TestParse")["flaky"], false);
    assert_eq!(find("TestFlip")["flaky"], true, "three flips in dave's last builds");
    assert_eq!(find("TestSolid")["flaky"], false);
    assert_eq!(find("TestSolid")["since"]["revision"], "dave-rev0");
    let (status, page) = s.get("/projects/demo/tests");
    assert_eq!(status, 200);
    assert!(page.contains("TestSolid") && page.contains("flaky") && page.contains("dave-rev0"), "{page}");
    let (status, history) = s.get("/projects/demo/tests/history?suite=flip&name=TestFlip");
    assert_eq!(status, 200);
    assert!(history.contains("2 passed, 2 failed"), "{history}");
    assert_eq!(s.get("/projects/demo/tests/history").0, 400);
    // Build pages link test names to their history; lists and cells carry counts.
    let newest = s.builds("demo")[0].clone();
    assert_eq!(newest["tests"], json!({"passed": 0, "failed": 2, "error": 0, "skipped": 0}), "{newest}");
    let (_, build) = s.get(&format!("/builds/{}", newest["id"]));
    // (Tera escapes `/` as `&#x2F;` in attributes; browsers read it back.)
    assert!(
        build.contains("&#x2F;projects&#x2F;demo&#x2F;tests&#x2F;history?suite=solid&amp;name=TestSolid"),
        "{build}"
    );
    let (status, _) = s.get("/projects/demo/tests/history?suite=solid&name=TestSolid");
    assert_eq!(status, 200);
    let (_, waterfall) = s.get("/projects/demo");
    assert!(waterfall.contains("2 tests failed"), "{waterfall}");
    let (_, console) = s.get("/projects/demo/console");
    assert!(console.contains("tests failed"), "{console}");
    // carol broke at rev2 by a test failing only on her machine: a new regression, as bob's.
    assert!(console.contains("new regression") && !console.contains("flaky tests"), "{console}");
    Ok(())
}
