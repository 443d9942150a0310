//! Build requests and leases against real servers, on both backends: signed requests, exactly
//! as many grants as slots under a race, renewal and expiry, re-queueing to another builder,
//! long polls that wake early, deadlines, reports closing leases, and two server processes on
//! one PostgreSQL database granting each slot once.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Server, TestDb, TestResult, key, publish, recipe};
use serde_json::{Value, json};
use tbox_protocol::PrivateKey;

on_both_backends!(
    requests_are_signed_checked_and_listed,
    racing_builders_get_exactly_the_slots,
    an_expired_lease_is_lost_and_its_slot_goes_to_another_builder,
    a_long_poll_answers_as_soon_as_work_appears,
    a_deadline_expires_the_request,
    a_report_closes_its_lease,
    a_copied_lease_body_takes_nothing,
    oldest_first_and_fair_across_projects,
    a_request_needs_a_current_recipe,
    a_liar_is_disputed_then_outvoted,
    one_owners_machines_are_no_quorum,
    artifacts_that_differ_are_a_dispute,
    agreement_asked_wrongly_is_refused_with_the_field_named,
    spot_checks_give_quorumless_requests_a_second_builder,
    a_no_show_keeps_its_place_a_lost_build_does_not,
    asking_again_takes_back_a_lease_never_started,
    a_long_clean_record_broken_is_news,
    one_lease_at_a_time_per_builder,
);

/// demo with key 1 as its project key and a recipe it signed, and builders b0..bN (all with
/// key 2, active, for demo).
fn setup(s: &Server, builders: usize) {
    s.setup();
    s.admin_ok(&["project", "key", "add", "demo", "--key", &s.pubkey_file(key(1))]);
    assert_eq!(publish(s, "demo", &recipe("demo", 1, ""), 1).0, 201);
    let public = s.pubkey_file(key(2));
    for i in 0..builders {
        s.admin_ok(&["builder", "add", &format!("b{i}"), "--project", "demo", "--key", &public]);
    }
}

fn send(s: &Server, method: &str, path: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, Value) {
    let url = s.url(path);
    let mut req = match method {
        "PUT" => s.agent.put(&url),
        _ => s.agent.post(&url),
    };
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send(body).unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A request signed with project key `signer`.
/// Posts a request signed by `signer`; `project` and `created_at` (now) are filled in when the
/// body does not say them, as `tbox-report request` does.
fn ask(s: &Server, body: &Value, signer: &PrivateKey) -> (u16, Value) {
    let mut body = body.clone();
    if body.get("project").is_none() {
        body["project"] = json!("demo");
    }
    if body.get("created_at").is_none() {
        body["created_at"] = json!(chrono::Utc::now().to_rfc3339());
    }
    let bytes = body.to_string().into_bytes();
    let sig = signer.sign(&bytes);
    send(
        s,
        "POST",
        "/api/v1/projects/demo/requests",
        &bytes,
        &[("Content-Type", "application/json"), ("Tbox-Signature", &sig)],
    )
}

/// A signed lease or renew body as a builder sends it: its clock and a fresh nonce.
fn stamped(mut body: Value) -> Vec<u8> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    body["at"] = json!(chrono::Utc::now().to_rfc3339());
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    body["nonce"] = json!(format!("test-nonce-{}-{n:08}", std::process::id()));
    body.to_string().into_bytes()
}

/// Sends a signed lease body as builder `name`.
fn post_lease(s: &Server, name: &str, body: &[u8]) -> (u16, Value) {
    let sig = key(2).sign(body);
    send(
        s,
        "POST",
        "/api/v1/leases",
        body,
        &[("Content-Type", "application/json"), ("Tbox-Builder", name), ("Tbox-Signature", &sig)],
    )
}

/// Builder `name` asks for a lease.
fn lease(s: &Server, name: &str, wait: u64) -> (u16, Value) {
    post_lease(s, name, &stamped(json!({"projects": ["demo"], "capabilities": [], "wait": wait})))
}

fn renew(s: &Server, name: &str, id: &Value) -> (u16, Value) {
    let body = stamped(json!({}));
    let sig = key(2).sign(&body);
    send(
        s,
        "PUT",
        &format!("/api/v1/leases/{id}"),
        &body,
        &[("Content-Type", "application/json"), ("Tbox-Builder", name), ("Tbox-Signature", &sig)],
    )
}

fn requests(s: &Server) -> Vec<Value> {
    let (status, v) = s.get_json("/api/v1/projects/demo/requests");
    assert_eq!(status, 200, "{v}");
    v["requests"].as_array().cloned().unwrap()
}

/// Waits (at most 20 s) until `f` holds; the lease sweeper runs every second.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < until, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn requests_are_signed_checked_and_listed(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    setup(&s, 1);
    s.admin_ok(&["project", "capability", "add", "demo", "gpu", "--description", "a CUDA GPU"]);
    let body = json!({"branch": "main", "builders": 2, "requires": ["gpu"], "nonce": "1",
        "project": "demo", "created_at": chrono::Utc::now().to_rfc3339()});
    // Unsigned, or signed by a key that is not the project's: 401. Not JSON: 415 / 400.
    let bytes = body.to_string();
    let (status, _) =
        send(&s, "POST", "/api/v1/projects/demo/requests", bytes.as_bytes(), &[("Content-Type", "application/json")]);
    assert_eq!(status, 401);
    assert_eq!(ask(&s, &body, key(0)).0, 401);
    let sig = key(1).sign(bytes.as_bytes());
    assert_eq!(
        send(&s, "POST", "/api/v1/projects/demo/requests", bytes.as_bytes(), &[("Tbox-Signature", &sig)]).0,
        415
    );
    let junk = b"{nope";
    let sig = key(1).sign(junk);
    let (status, _) = send(
        &s,
        "POST",
        "/api/v1/projects/demo/requests",
        junk,
        &[("Content-Type", "application/json"), ("Tbox-Signature", &sig)],
    );
    assert_eq!(status, 400);
    // Invalid fields: 422 naming the field.
    let old = (chrono::Utc::now() - chrono::TimeDelta::days(31)).to_rfc3339();
    let ahead = (chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339();
    for (bad, field) in [
        (json!({"branch": "-x"}), "branch"),
        (json!({"branch": "../../etc"}), "branch"),
        (json!({"branch": "a b"}), "branch"),
        (json!({"branch": "main", "revision": "--output=/tmp/x"}), "revision"),
        (json!({"branch": "main", "revision": "9fceb02"}), "revision"),
        // Signed for another project (sharing the key), made long ago or in the future.
        (json!({"branch": "main", "project": "other"}), "project"),
        (json!({"branch": "main", "project": null}), "project"),
        (json!({"branch": "main", "created_at": old}), "created_at"),
        (json!({"branch": "main", "created_at": ahead}), "created_at"),
        (json!({"branch": "main", "created_at": "yesterday"}), "created_at"),
        (json!({"branch": "main", "builders": 0}), "builders"),
        (json!({"branch": "main", "builders": 101}), "builders"),
        (json!({"branch": "main", "revision": "not a sha!"}), "revision"),
        (json!({"branch": "main", "requires": ["docker"]}), "requires[0]"),
        (json!({"branch": "main", "deadline": "2001-01-01T00:00:00Z"}), "deadline"),
    ] {
        let (status, v) = ask(&s, &bad, key(1));
        assert_eq!(status, 422, "{field}: {v}");
        assert!(v["message"].as_str().unwrap().starts_with(field), "{field}: {v}");
    }
    let (status, v) = ask(&s, &body, key(1));
    assert_eq!(status, 201, "{v}");
    let id = v["id"].clone();
    // The same signed body again (a retry, a replay) is the same request.
    let (status, again) = ask(&s, &body, key(1));
    assert_eq!((status, &again["id"]), (200, &id));
    let listed = requests(&s);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["state"], "open");
    assert_eq!(listed[0]["builders"], 2);
    assert_eq!(listed[0]["requires"], json!(["gpu"]));
    assert_eq!(listed[0]["requested_by"].as_str(), Some(key(1).public_key().fingerprint().as_str()));
    // A builder without the capability gets nothing.
    assert_eq!(lease(&s, "b0", 0).0, 204);
    let (status, page) = s.get("/projects/demo/requests");
    assert_eq!(status, 200);
    assert!(page.contains(&format!("id=\"request-{id}\"")) && page.contains("no builder has taken it yet"), "{page}");
    // The admin's way, and cancelling.
    let out = s.admin_ok(&["request", "add", "demo", "--branch", "release-1", "--builders", "3", "--deadline", "2d"]);
    assert!(out.contains("3 builder(s) on release-1"), "{out}");
    let newest = requests(&s)[0]["id"].as_i64().unwrap().to_string();
    s.admin_ok(&["request", "cancel", &newest]);
    assert_eq!(requests(&s)[0]["state"], "cancelled");
    assert_eq!(s.admin(&["request", "cancel", &newest]).status.code(), Some(1));
    assert!(s.admin_ok(&["request", "list", "demo"]).contains("release-1"));
    Ok(())
}

fn racing_builders_get_exactly_the_slots(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    setup(&s, 12);
    assert_eq!(ask(&s, &json!({"branch": "main", "builders": 3}), key(1)).0, 201);
    let server = &s;
    let granted: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..12).map(|i| scope.spawn(move || lease(server, &format!("b{i}"), 0))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: Vec<&Value> = granted.iter().filter(|(status, _)| *status == 200).map(|(_, v)| v).collect();
    assert_eq!(ok.len(), 3, "{granted:?}");
    assert!(granted.iter().all(|(status, _)| *status == 200 || *status == 204), "{granted:?}");
    let r = &requests(&s)[0];
    assert_eq!((r["leased"].as_u64(), r["state"].as_str()), (Some(3), Some("open")));
    let builders: std::collections::HashSet<&str> =
        r["attempts"].as_array().unwrap().iter().map(|a| a["builder"].as_str().unwrap()).collect();
    assert_eq!(builders.len(), 3, "three distinct builders");
    Ok(())
}

fn an_expired_lease_is_lost_and_its_slot_goes_to_another_builder(backend: Backend) -> TestResult {
    let Some(s) = Server::start_with(backend, &["--lease-ttl", "2s"]) else { return Ok(()) };
    setup(&s, 2);
    assert_eq!(ask(&s, &json!({"branch": "main"}), key(1)).0, 201);
    let (status, first) = lease(&s, "b0", 0);
    assert_eq!(status, 200, "{first}");
    assert_eq!((first["project"].as_str(), first["branch"].as_str()), (Some("demo"), Some("main")));
    // The slot is taken.
    assert_eq!(lease(&s, "b1", 0).0, 204);
    // Renewed while building: still ours after more than a lease time.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(renew(&s, "b0", &first["lease"]).0, 200);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(renew(&s, "b0", &first["lease"]).0, 200);
    // Someone else's lease: 404.
    assert_eq!(renew(&s, "b1", &first["lease"]).0, 404);
    // b0 goes silent: its lease runs out, the attempt is lost, b1 gets the slot.
    eventually("the lease is lost", || requests(&s)[0]["attempts"][0]["state"] == "lost");
    let (status, v) = renew(&s, "b0", &first["lease"]);
    assert_eq!(status, 410, "{v}");
    let (status, second) = lease(&s, "b1", 0);
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["request"], first["request"]);
    assert_ne!(second["lease"], first["lease"]);
    // One request never gets two attempts from the same builder.
    assert_eq!(lease(&s, "b0", 0).0, 204);
    Ok(())
}

/// A lease granted to a poll its builder had given up (killed, paused) and never started is a
/// no-show: the builder may take the request again, with the same lease (a dispute's last slot
/// must not lose its only builder that way). A builder that started and went silent may not.
fn a_no_show_keeps_its_place_a_lost_build_does_not(backend: Backend) -> TestResult {
    let Some(s) = Server::start_with(backend, &["--lease-ttl", "2s"]) else { return Ok(()) };
    setup(&s, 2);
    assert_eq!(ask(&s, &json!({"branch": "main", "builders": 2}), key(1)).0, 201);
    let (_, gone) = lease(&s, "b0", 0);
    let (_, started) = lease(&s, "b1", 0);
    let mut report = common::started("b1-build");
    report["builder"] = "b1".into();
    report["lease"] = started["lease"].clone();
    assert_eq!(s.send_as("b1", key(2), report.to_string().as_bytes()).0, 201);
    eventually("both leases are lost", || {
        requests(&s)[0]["attempts"].as_array().unwrap().iter().all(|a| a["state"] == "lost")
    });
    let (status, again) = lease(&s, "b0", 0);
    assert_eq!(status, 200, "{again}");
    assert_eq!((&again["request"], &again["lease"]), (&gone["request"], &gone["lease"]));
    assert_eq!(lease(&s, "b1", 0).0, 204, "it started a build and went silent");
    // Once: a builder that takes and drops the slot again does not get it a third time.
    eventually("the lease is lost again", || requests(&s)[0]["attempts"][0]["state"] == "lost");
    assert_eq!(lease(&s, "b0", 0).0, 204);
    Ok(())
}

/// A volunteer whose poll was answered while it no longer listened (paused, `serve`
/// restarted) asks again: it gets the slot back at once, not after the lease time.
fn asking_again_takes_back_a_lease_never_started(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    setup(&s, 1);
    assert_eq!(ask(&s, &json!({"branch": "main", "builders": 1}), key(1)).0, 201);
    let (status, first) = lease(&s, "b0", 0);
    assert_eq!(status, 200, "{first}");
    let (status, again) = lease(&s, "b0", 0);
    assert_eq!(status, 200, "the slot it never started is its own again: {again}");
    assert_eq!(again["request"], first["request"]);
    let attempts = &request(&s, &first["request"])["attempts"];
    assert_eq!(attempts.as_array().map(Vec::len), Some(1), "{attempts}");
    assert_eq!(attempts[0]["state"], "leased", "{attempts}");
    Ok(())
}

fn a_long_poll_answers_as_soon_as_work_appears(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    setup(&s, 2);
    // Nothing to do: the poll ends after its wait with 204.
    let t = Instant::now();
    assert_eq!(lease(&s, "b0", 1).0, 204);
    assert!(t.elapsed() >= Duration::from_millis(900));
    let (answer, waited) = std::thread::scope(|scope| {
        let poll = scope.spawn(|| {
            let t = Instant::now();
            (lease(&s, "b0", 60), t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(ask(&s, &json!({"branch": "main"}), key(1)).0, 201);
        poll.join().unwrap()
    });
    assert_eq!(answer.0, 200, "{answer:?}");
    // Far sooner than its 60 s wait.
    assert!(waited < Duration::from_secs(30), "{waited:?}");
    // A request made from the command line (another process) wakes it too.
    let (answer, waited) = std::thread::scope(|scope| {
        let poll = scope.spawn(|| {
            let t = Instant::now();
            (lease(&s, "b0", 60), t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(700));
        s.admin_ok(&["request", "add", "demo"]);
        poll.join().unwrap()
    });
    assert_eq!(answer.0, 200, "{answer:?}");
    assert!(waited < Duration::from_secs(30), "{waited:?}");
    // A poll given up (the volunteer paused, or serve was killed and started again) and a newer
    // one of the same builder: the newer gets the work, the older ends at once with nothing,
    // instead of taking a lease nobody would build. (b1, with the requests above cancelled: b0
    // holds a lease, which a new ask of b0's would give up and take again.)
    for r in requests(&s) {
        s.admin_ok(&["request", "cancel", &r["id"].to_string()]);
    }
    let (older, newer) = std::thread::scope(|scope| {
        let older = scope.spawn(|| lease(&s, "b1", 60));
        std::thread::sleep(Duration::from_millis(500));
        let newer = scope.spawn(|| lease(&s, "b1", 60));
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(ask(&s, &json!({"branch": "main"}), key(1)).0, 201);
        (older.join().unwrap(), newer.join().unwrap())
    });
    assert_eq!((older.0, newer.0), (204, 200), "{older:?} {newer:?}");
    Ok(())
}

fn a_deadline_expires_the_request(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    setup(&s, 1);
    let deadline = (chrono::Utc::now() + chrono::TimeDelta::seconds(2)).to_rfc3339();
    assert_eq!(ask(&s, &json!({"branch": "main", "deadline": deadline}), key(1)).0, 201);
    eventually("the request expires", || requests(&s)[0]["state"] == "expired");
    assert_eq!(requests(&s)[0]["reason"], "its deadline passed");
    assert_eq!(lease(&s, "b0", 0).0, 204);
    Ok(())
}

fn a_report_closes_its_lease(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    setup(&s, 2);
    s.admin_ok(&["builder", "add", "alice", "--project", "demo", "--key", &s.pubkey_file(key(0))]);
    let mut report = common::report("r1");
    let asked = "9fceb02d0ae598e95dc970b74767f19372d61af8".to_owned();
    report["revision"] = asked.clone().into();
    assert_eq!(ask(&s, &json!({"branch": "main", "revision": asked, "builders": 1}), key(1)).0, 201);
    let (_, granted) = lease(&s, "b0", 0);
    report["builder"] = "b0".into();
    report["lease"] = granted["lease"].clone();
    // A report of another branch, or another revision, is no answer to the request.
    for (field, value) in [("branch", "release-1"), ("revision", "0000000000000000000000000000000000000000")] {
        let mut other = report.clone();
        other[field] = value.into();
        other["uuid"] = format!("other-{field}").into();
        let (status, v) = s.send_as("b0", key(2), other.to_string().as_bytes());
        assert_eq!((status, v["error"].as_str()), (422, Some("lease_mismatch")), "{field}: {v}");
        assert!(v["message"].as_str().unwrap().contains(&format!("asks for branch main at revision {asked}")), "{v}");
        assert_eq!(requests(&s)[0]["state"], "open", "{field}");
    }
    // Another builder cannot close it.
    let mut theirs = report.clone();
    theirs["builder"] = "b1".into();
    let (status, v) = s.send_as("b1", key(2), theirs.to_string().as_bytes());
    assert_eq!((status, v["error"].as_str()), (422, Some("unknown_lease")), "{v}");
    let mut started = common::started("r1");
    started["builder"] = "b0".into();
    started["revision"] = asked.clone().into();
    started["lease"] = granted["lease"].clone();
    assert_eq!(s.send_as("b0", key(2), started.to_string().as_bytes()).0, 201);
    assert!(requests(&s)[0]["attempts"][0]["build"].as_i64().is_some(), "started links the build");
    let (status, v) = s.send_as("b0", key(2), report.to_string().as_bytes());
    assert_eq!(status, 201, "{v}");
    let r = &requests(&s)[0];
    assert_eq!((r["state"].as_str(), r["done"].as_u64()), (Some("done"), Some(1)), "{r}");
    assert_eq!(r["attempts"][0]["build"], v["build"]);
    assert_eq!(lease(&s, "b1", 0).0, 204, "nothing left to do");

    // An exception (here: the volunteer refused the recipe) answers nothing: the attempt is
    // declined with the reason, the slot stays open, and another builder's red build fills it.
    assert_eq!(ask(&s, &json!({"branch": "main", "builders": 1}), key(1)).0, 201);
    let (_, granted) = lease(&s, "b0", 0);
    let mut refused = common::report("declined");
    refused["builder"] = "b0".into();
    refused["result"] = "exception".into();
    refused["tests"] = json!([]);
    refused["steps"] = json!([{"name": "recipe refused", "result": "exception",
        "started_at": "2026-11-01T10:00:00Z", "finished_at": "2026-11-01T10:00:00Z",
        "log": "[tbox-report] this volunteer refused to build, and ran nothing:\nthe recipe expired\n"}]);
    refused["lease"] = granted["lease"].clone();
    let (status, v) = s.send_as("b0", key(2), refused.to_string().as_bytes());
    assert_eq!(status, 201, "{v} {}", s.log_text());
    let r = &requests(&s)[0];
    assert_eq!(
        (r["state"].as_str(), r["done"].as_u64(), r["declined"].as_u64()),
        (Some("open"), Some(0), Some(1)),
        "{r}"
    );
    assert_eq!(r["attempts"][0]["state"], "declined", "{r}");
    assert_eq!(r["attempts"][0]["reason"], "recipe refused: the recipe expired", "{r}");
    let (status, granted) = lease(&s, "b1", 0);
    assert_eq!(status, 200, "the slot is open for another builder: {granted}");
    let mut red = common::report("red");
    red["result"] = "failure".into();
    red["builder"] = "b1".into();
    red["lease"] = granted["lease"].clone();
    assert_eq!(s.send_as("b1", key(2), red.to_string().as_bytes()).0, 201);
    let r = &requests(&s)[0];
    assert_eq!((r["state"].as_str(), r["done"].as_u64()), (Some("done"), Some(1)), "a red build answers: {r}");
    let page = s.get("/projects/demo/requests").1;
    assert!(page.contains("declined by its volunteer: recipe refused: the recipe expired"), "{page}");
    // Answered, and red: never a green tick for a failed build.
    assert_eq!(r["attempts"][1]["result"], "failure", "{r}");
    assert!(page.contains("answered: <span class=\"failure\">✘ failed</span>"), "{page}");
    assert!(!page.contains("✔ answered") && !page.contains("✔ done"), "{page}");
    Ok(())
}

/// A signed lease body is good once, for a minute: a copy replayed (10,000 times in the red
/// team's trial, each holding a long poll) takes no lease and holds nothing.
fn a_copied_lease_body_takes_nothing(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    setup(&s, 2);
    assert_eq!(ask(&s, &json!({"branch": "main", "builders": 2}), key(1)).0, 201);
    let body = stamped(json!({"projects": ["demo"], "wait": 0}));
    let (status, v) = post_lease(&s, "b0", &body);
    assert_eq!(status, 200, "{v}");
    // The same bytes again, as anyone who saw them could send: refused, the slot stays free.
    let (status, v) = post_lease(&s, "b0", &body);
    assert_eq!((status, v["error"].as_str()), (401, Some("replayed")), "{v}");
    assert_eq!(requests(&s)[0]["leased"], 1);
    // A body from two minutes ago (or ahead), and one without its stamp.
    for skew in [-120, 120] {
        let mut old: Value = serde_json::from_slice(&stamped(json!({"projects": ["demo"], "wait": 0})))?;
        old["at"] = json!((chrono::Utc::now() + chrono::TimeDelta::seconds(skew)).to_rfc3339());
        let (status, v) = post_lease(&s, "b1", old.to_string().as_bytes());
        assert_eq!((status, v["error"].as_str()), (401, Some("stale")), "{v}");
        assert!(v["message"].as_str().unwrap().contains("clock"), "{v}");
    }
    let (status, v) = post_lease(&s, "b1", json!({"projects": ["demo"], "wait": 0}).to_string().as_bytes());
    assert_eq!(status, 422, "{v}");
    assert!(v["message"].as_str().unwrap().starts_with("at, nonce"), "{v}");
    // A renewal replayed is refused too.
    let lease_id = requests(&s)[0]["attempts"][0]["lease"].clone();
    let renewal = stamped(json!({}));
    let put = |b: &[u8]| {
        let sig = key(2).sign(b);
        send(
            &s,
            "PUT",
            &format!("/api/v1/leases/{lease_id}"),
            b,
            &[("Content-Type", "application/json"), ("Tbox-Builder", "b0"), ("Tbox-Signature", &sig)],
        )
    };
    assert_eq!(put(&renewal).0, 200);
    assert_eq!(put(&renewal).0, 401);
    // One builder holds at most a couple of long polls, however many fresh bodies it signs.
    assert_eq!(lease(&s, "b1", 0).0, 200, "the second slot: no work is left");
    // (b1 asking again takes its unstarted lease back once, then gives it up: out of the way.)
    assert_eq!(lease(&s, "b1", 0).0, 200);
    assert_eq!(lease(&s, "b1", 0).0, 204);
    let waiting: Vec<u16> = std::thread::scope(|scope| {
        let polls: Vec<_> = (0..5)
            .map(|_| scope.spawn(|| post_lease(&s, "b1", &stamped(json!({"projects": ["demo"], "wait": 3}))).0))
            .collect();
        polls.into_iter().map(|p| p.join().unwrap()).collect()
    });
    assert_eq!(waiting.iter().filter(|&&c| c == 429).count(), 3, "{waiting:?}");
    assert_eq!(waiting.iter().filter(|&&c| c == 204).count(), 2, "{waiting:?}");
    Ok(())
}

/// Two server processes on one PostgreSQL database: builders racing through both get exactly
/// the slots, each once.
#[test]
fn two_servers_on_one_postgres_grant_each_slot_once() -> TestResult {
    let Some(db) = TestDb::new(Backend::Postgres) else { return Ok(()) };
    let url = db.url.clone();
    let a = Server::start_on(db, &url, &[]);
    setup(&a, 16);
    let b = Server::start_on(TestDb::new(Backend::Sqlite).unwrap(), &url, &[]);
    assert_eq!(ask(&a, &json!({"branch": "main", "builders": 5}), key(1)).0, 201);
    // Those who got a slot build it; the others ask again, and again get nothing.
    let mut asking: Vec<usize> = (0..16).collect();
    for round in 0..3 {
        let granted: Vec<(usize, u16)> = std::thread::scope(|scope| {
            let handles: Vec<_> = asking
                .iter()
                .map(|&i| {
                    let server = if i % 2 == 0 { &a } else { &b };
                    scope.spawn(move || (i, lease(server, &format!("b{i}"), 0).0))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let expected = if round == 0 { 5 } else { 0 };
        assert_eq!(granted.iter().filter(|(_, s)| *s == 200).count(), expected, "round {round}: {granted:?}");
        asking = granted.iter().filter(|(_, s)| *s != 200).map(|(i, _)| *i).collect();
    }
    let r = &requests(&b)[0];
    assert_eq!(r["leased"], 5);
    Ok(())
}

fn oldest_first_and_fair_across_projects(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    setup(&s, 0);
    s.admin_ok(&["project", "key", "add", "other", "--key", &s.pubkey_file(key(1))]);
    assert_eq!(publish(&s, "other", &recipe("other", 1, ""), 1).0, 201);
    let public = s.pubkey_file(key(2));
    for b in ["x", "y", "z"] {
        s.admin_ok(&["builder", "add", b, "--project", "demo", "--project", "other", "--key", &public]);
    }
    // demo asks twice, then other once.
    s.admin_ok(&["request", "add", "demo", "--branch", "first"]);
    std::thread::sleep(Duration::from_millis(20));
    s.admin_ok(&["request", "add", "demo", "--branch", "second"]);
    std::thread::sleep(Duration::from_millis(20));
    s.admin_ok(&["request", "add", "other", "--branch", "third"]);
    let take = |name: &str| {
        let (status, v) = post_lease(&s, name, &stamped(json!({"projects": ["demo", "other"], "wait": 0})));
        assert_eq!(status, 200, "{v}");
        (v["project"].as_str().unwrap().to_owned(), v["branch"].as_str().unwrap().to_owned())
    };
    // The oldest first; then the project with nothing being built, though demo's second is older.
    assert_eq!(take("x"), ("demo".to_owned(), "first".to_owned()));
    assert_eq!(take("y"), ("other".to_owned(), "third".to_owned()));
    // demo's first wants one builder and has it: z gets demo's second.
    assert_eq!(take("z"), ("demo".to_owned(), "second".to_owned()));
    Ok(())
}

/// Volunteers build requests only from a recipe the project signed and refuse an expired one:
/// the server says so instead of collecting refusals (HTTP and command line alike).
fn a_request_needs_a_current_recipe(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    s.setup();
    s.admin_ok(&["project", "key", "add", "demo", "--key", &s.pubkey_file(key(1))]);
    let (status, v) = ask(&s, &json!({"branch": "main"}), key(1));
    assert_eq!((status, v["error"].as_str()), (422, Some("no_recipe")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("recipe publish"), "{v}");
    let out = s.admin(&["request", "add", "demo", "--branch", "main"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no recipe"), "{out:?}");

    assert_eq!(publish(&s, "demo", &recipe("demo", 1, ""), 1).0, 201);
    assert_eq!(ask(&s, &json!({"branch": "main"}), key(1)).0, 201);
    // The recipe expires (time passes): refused again, saying which version and when.
    {
        use diesel::Connection as _;
        use diesel::connection::SimpleConnection as _;
        let expire = "UPDATE recipes SET expires_at = '2001-01-01 00:00:00'";
        match s.db.url.strip_prefix("sqlite://") {
            Some(path) => diesel::SqliteConnection::establish(path)?.batch_execute(expire)?,
            None => diesel::PgConnection::establish(&s.db.url)?.batch_execute(expire)?,
        }
    }
    let (status, v) = ask(&s, &json!({"branch": "other"}), key(1));
    assert_eq!((status, v["error"].as_str()), (422, Some("recipe_expired")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("(version 1) expired at 2001-01-01"), "{v}");
    assert_eq!(s.get_json("/api/v1/projects/demo/requests").1["requests"].as_array().map(Vec::len), Some(1));
    Ok(())
}

/// What builder `name` answers to its lease on revision R: a result, failing tests, artifacts.
const R: &str = "9fceb02d0ae598e95dc970b74767f19372d61af8";

fn answer(s: &Server, name: &str, lease: &Value, result: &str, failing: &[&str], artifacts: Value) -> (u16, Value) {
    let mut r = common::report(&format!("{name}-{lease}-{result}"));
    r["builder"] = name.into();
    r["revision"] = R.into();
    r["lease"] = lease.clone();
    r["result"] = result.into();
    let mut tests: Vec<Value> =
        failing.iter().map(|t| json!({"suite": "parser", "name": t, "result": "failed", "message": "no"})).collect();
    tests.push(json!({"suite": "parser", "name": "parses_one", "result": "passed"}));
    r["tests"] = Value::Array(tests);
    if result == "success" {
        r["steps"][1]["result"] = "success".into();
    }
    r["artifacts"] = artifacts;
    s.send_as(name, key(2), r.to_string().as_bytes())
}

/// Builders b0..bN with owners `owners[i]` (none where empty).
fn setup_owned(s: &Server, owners: &[&str]) {
    setup(s, 0);
    let public = s.pubkey_file(key(2));
    for (i, owner) in owners.iter().enumerate() {
        let name = format!("b{i}");
        let mut args = vec!["builder", "add", &name, "--project", "demo", "--key", &public];
        if !owner.is_empty() {
            args.extend(["--owner", owner]);
        }
        s.admin_ok(&args);
    }
}

fn request(s: &Server, id: &Value) -> Value {
    let (status, v) = s.get_json(&format!("/api/v1/projects/demo/requests/{id}"));
    assert_eq!(status, 200, "{v}");
    v
}

fn record(s: &Server, builder: &str) -> (i64, i64) {
    let (_, v) = s.get_json(&format!("/api/v1/builders/{builder}"));
    (v["agreement"]["agreed"].as_i64().unwrap(), v["agreement"]["disputed"].as_i64().unwrap())
}

/// Three volunteers of three owners asked for quorum 2: the liar's green is disputed (never
/// green), a slot more is opened, a third builder settles it, and the records say who lied —
/// on the pages, the feed and in a notification.
fn a_liar_is_disputed_then_outvoted(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    setup_owned(&s, &["Alice <a@example.org>", "Mallory", ""]);
    // A webhook nobody answers: the log still lists what was to be sent.
    s.admin_ok(&[
        "notify",
        "add",
        "demo",
        "--webhook",
        "http://127.0.0.1:9/hook",
        "--secret",
        "s3cret",
        "--allow-private-target",
    ]);
    let (status, created) = ask(&s, &json!({"branch": "main", "revision": R, "builders": 2, "quorum": 2}), key(1));
    assert_eq!(status, 201, "{created}");
    let id = &created["id"];
    assert_eq!(
        (request(&s, id)["verdict"].as_str(), request(&s, id)["distinct"].as_str()),
        (Some("pending"), Some("owner"))
    );
    let (_, l0) = lease(&s, "b0", 0);
    let (_, l1) = lease(&s, "b1", 0);
    assert_eq!(lease(&s, "b2", 0).0, 204, "two slots, both taken");
    let (status, honest) = answer(&s, "b0", &l0["lease"], "failure", &["parses_empty"], json!([]));
    assert_eq!(status, 201, "{honest}");
    assert_eq!(request(&s, id)["verdict"], "pending");
    let (status, lie) = answer(&s, "b1", &l1["lease"], "success", &[], json!([]));
    assert_eq!(status, 201, "{lie} {}", s.log_text());
    let r = request(&s, id);
    assert_eq!(
        (r["verdict"].as_str(), r["slots"].as_i64(), r["state"].as_str()),
        (Some("disputed"), Some(3), Some("open")),
        "{r}"
    );
    assert_eq!(r["answers"].as_array().unwrap().len(), 2, "{r}");
    // Disputed: neither build is green or red on one builder's word, on any page.
    let (_, page) = s.get(&format!("/builds/{}", lie["build"]));
    assert!(page.contains("Other builders disagree with this build"), "{page}");
    let (_, console) = s.get("/projects/demo/console");
    assert!(console.contains("⚖ disputed") && !console.contains("✔ success"), "{console}");
    let (_, waterfall) = s.get("/projects/demo");
    let cell = format!(r#"class="cell disputed"><a class="result" href="/builds/{}">"#, lie["build"]);
    assert!(waterfall.contains(&cell), "{waterfall}");
    let (_, badge) = s.get("/projects/demo/badge.svg");
    assert!(badge.contains("disputed") && !badge.contains("passing"), "{badge}");
    let (_, feed) = s.get("/projects/demo/feed.atom");
    assert!(feed.contains("b1 disputed on main"), "{feed}");

    // The extra slot goes to the third builder; its answer agrees with the honest one.
    let (status, l2) = lease(&s, "b2", 0);
    assert_eq!(status, 200, "{l2}");
    let (status, third) = answer(&s, "b2", &l2["lease"], "failure", &["parses_empty"], json!([]));
    assert_eq!(status, 201, "{third}");
    let r = request(&s, id);
    assert_eq!((r["verdict"].as_str(), r["state"].as_str()), (Some("agreed"), Some("done")), "{r}");
    assert_eq!(r["agreeing"], json!([honest["build"], third["build"]]), "{r}");
    let said: Vec<(String, bool)> = r["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["builder"].as_str().unwrap().to_owned(), a["agrees"].as_bool().unwrap()))
        .collect();
    assert_eq!(said, [("b0".into(), true), ("b1".into(), false), ("b2".into(), true)], "the dissent stays listed");
    assert_eq!(r["answers"][0]["failing_tests"], json!(["parser::parses_empty"]));
    assert_eq!(r["answers"][1]["owner"], "Mallory");
    assert_eq!((record(&s, "b0"), record(&s, "b1"), record(&s, "b2")), ((1, 0), (0, 1), (1, 0)));
    let (_, builder_page) = s.get("/projects/demo/builders/b1");
    assert!(builder_page.contains("disputed 1 time"), "{builder_page}");
    let (_, page) = s.get(&format!("/builds/{}", lie["build"]));
    assert!(page.contains("result success (not failure)") && page.contains("passes parser::parses_empty"), "{page}");
    let (_, list) = s.get_json("/api/v1/projects/demo/requests");
    assert_eq!(list["requests"][0]["verdict"], "agreed");
    let log = s.admin_ok(&["notify", "log", "demo"]);
    assert!(log.contains("demo: builders disagree on main (b1 among them)"), "{log}");

    // Caught, the liar cannot take its answer back or swap it: a second report, or a started
    // one, on its answered lease is refused, and nothing changes.
    let (status, v) = answer(&s, "b1", &l1["lease"], "failure", &["parses_empty"], json!([]));
    assert_eq!((status, v["error"].as_str()), (409, Some("lease_answered")), "{v}");
    let mut started = common::started("b1-restart");
    started["builder"] = "b1".into();
    started["revision"] = R.into();
    started["lease"] = l1["lease"].clone();
    let (status, v) = s.send_as("b1", key(2), started.to_string().as_bytes());
    assert_eq!((status, v["error"].as_str()), (409, Some("lease_answered")), "{v}");
    let after = request(&s, id);
    assert_eq!((&after["agreeing"], &after["answers"]), (&r["agreeing"], &r["answers"]), "{after}");
    assert_eq!(record(&s, "b1"), (0, 1));
    Ok(())
}

/// With `distinct: owner` (the default), a second machine of one owner is not given the
/// request at all; with `distinct: builder` it is, and counts.
fn one_owners_machines_are_no_quorum(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    setup_owned(&s, &["alice", " Alice ", "bob"]);
    let (_, first) =
        ask(&s, &json!({"branch": "main", "revision": R, "builders": 2, "quorum": 2, "nonce": "1"}), key(1));
    let (_, l0) = lease(&s, "b0", 0);
    assert_eq!(l0["request"], first["id"]);
    assert_eq!(lease(&s, "b1", 0).0, 204, "alice's second machine is no second opinion");
    let (_, l2) = lease(&s, "b2", 0);
    assert_eq!(l2["request"], first["id"]);
    assert_eq!(answer(&s, "b0", &l0["lease"], "success", &[], json!([])).0, 201);
    assert_eq!(answer(&s, "b2", &l2["lease"], "success", &[], json!([])).0, 201);
    assert_eq!(request(&s, &first["id"])["verdict"], "agreed");
    let (_, second) = ask(
        &s,
        &json!({"branch": "main", "revision": R, "builders": 2, "quorum": 2, "distinct": "builder", "nonce": "2"}),
        key(1),
    );
    let (_, a) = lease(&s, "b0", 0);
    let (_, b) = lease(&s, "b1", 0);
    assert_eq!((&a["request"], &b["request"]), (&second["id"], &second["id"]));
    assert_eq!(answer(&s, "b0", &a["lease"], "success", &[], json!([])).0, 201);
    assert_eq!(answer(&s, "b1", &b["lease"], "success", &[], json!([])).0, 201);
    assert_eq!(request(&s, &second["id"])["verdict"], "agreed");
    Ok(())
}

/// Artifacts both reports list must have the same digest; one listed by only one is not
/// compared.
fn artifacts_that_differ_are_a_dispute(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    setup_owned(&s, &["", "", ""]);
    let sha = |c: char| c.to_string().repeat(64);
    let (_, created) = ask(&s, &json!({"branch": "main", "revision": R, "builders": 2, "quorum": 2}), key(1));
    let (_, l0) = lease(&s, "b0", 0);
    let (_, l1) = lease(&s, "b1", 0);
    let art = |c: char| json!([{"path": "target/release/demo", "sha256": sha(c), "size": 10}]);
    let (status, built) = answer(&s, "b0", &l0["lease"], "success", &[], art('a'));
    assert_eq!(status, 201, "{built}");
    assert_eq!(answer(&s, "b1", &l1["lease"], "success", &[], art('b')).0, 201);
    let r = request(&s, &created["id"]);
    assert_eq!((r["verdict"].as_str(), r["slots"].as_i64()), (Some("disputed"), Some(3)), "{r}");
    let (_, page) = s.get(&format!("/builds/{}", built["build"]));
    // (tera writes `/` as `&#x2F;`)
    assert!(page.contains("release&#x2F;demo differs") && page.contains(&sha('a')), "{page}");
    let (_, detail) = s.get_json(&format!("/api/v1/builds/{}", built["build"]));
    assert_eq!(detail["artifacts"][0]["sha256"], sha('a'));
    // The third lists another file only: compared on what both list, it agrees with b0.
    let (_, l2) = lease(&s, "b2", 0);
    let other = json!([{"path": "target/release/demo", "sha256": sha('a'), "size": 10},
                       {"path": "docs/demo.1", "sha256": sha('c'), "size": 3}]);
    assert_eq!(answer(&s, "b2", &l2["lease"], "success", &[], other).0, 201);
    assert_eq!(request(&s, &created["id"])["verdict"], "agreed");
    Ok(())
}

fn agreement_asked_wrongly_is_refused_with_the_field_named(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    setup_owned(&s, &[""]);
    for (body, field) in [
        (json!({"branch": "main", "builders": 2, "quorum": 3}), "quorum"),
        (json!({"branch": "main", "builders": 2, "quorum": 0}), "quorum"),
        (json!({"branch": "main", "builders": 2, "quorum": 1}), "quorum"),
        (json!({"branch": "main", "builders": 2, "quorum": -1}), "quorum"),
        (json!({"branch": "main", "builders": 2, "quorum": 4_000_000_000u64}), "quorum"),
        (json!({"branch": "main", "builders": 2, "quorum": "two"}), "quorum"),
        (json!({"branch": "main", "builders": 2, "quorum": 2, "distinct": "planet"}), "distinct"),
    ] {
        let (status, v) = ask(&s, &body, key(1));
        assert_eq!(status, 422, "{body}: {v}");
        assert!(v["message"].as_str().unwrap().starts_with(field), "{body}: {v}");
    }
    assert!(requests(&s).is_empty(), "nothing recorded");
    // An artifacts list too long, or a path leaving the workdir: the report is refused.
    let (_, created) = ask(&s, &json!({"branch": "main", "revision": R, "builders": 2, "quorum": 2}), key(1));
    let (_, l0) = lease(&s, "b0", 0);
    let many: Vec<Value> =
        (0..101).map(|i| json!({"path": format!("f{i}"), "sha256": "a".repeat(64), "size": 1})).collect();
    for (artifacts, field) in [
        (Value::Array(many), "artifacts"),
        (json!([{"path": "../etc/passwd", "sha256": "a".repeat(64), "size": 1}]), "artifacts[0].path"),
        (json!([{"path": "bin", "sha256": "A".repeat(64), "size": 1}]), "artifacts[0].sha256"),
        (json!([{"path": "bin/demo\u{200b}", "sha256": "a".repeat(64), "size": 1}]), "artifacts[0].path"),
    ] {
        let (status, v) = answer(&s, "b0", &l0["lease"], "success", &[], artifacts);
        assert_eq!(status, 422, "{v}");
        assert!(v["message"].as_str().unwrap().starts_with(field), "{field}: {v}");
    }
    assert_eq!(request(&s, &created["id"])["state"], "open", "the lease is still open");
    let (status, _) = s.get_json("/api/v1/projects/demo/requests/999999");
    assert_eq!(status, 404);
    let (status, v) = s.get_json("/api/v1/projects/demo/requests/x");
    assert_eq!((status, v["error"].as_str()), (400, Some("bad_id")));
    Ok(())
}

/// `serve --spot-check 1`: every quorum-less request gets a second builder when its first
/// answer arrives (a new builder has no record), and a verdict as with quorum 2.
fn spot_checks_give_quorumless_requests_a_second_builder(backend: Backend) -> TestResult {
    let Some(s) = Server::start_with(backend, &["--spot-check", "1"]) else { return Ok(()) };
    setup_owned(&s, &["", ""]);
    let (_, created) = ask(&s, &json!({"branch": "main", "revision": R, "builders": 1}), key(1));
    let id = &created["id"];
    assert_eq!(request(&s, id)["verdict"], Value::Null);
    let (_, l0) = lease(&s, "b0", 0);
    assert_eq!(lease(&s, "b1", 0).0, 204);
    assert_eq!(answer(&s, "b0", &l0["lease"], "success", &[], json!([])).0, 201);
    let r = request(&s, id);
    assert_eq!(
        (r["spot_check"].as_bool(), r["slots"].as_i64(), r["verdict"].as_str()),
        (Some(true), Some(2), Some("pending")),
        "{r}"
    );
    let (status, l1) = lease(&s, "b1", 0);
    assert_eq!(status, 200, "{l1}");
    assert_eq!(answer(&s, "b1", &l1["lease"], "success", &[], json!([])).0, 201);
    let r = request(&s, id);
    assert_eq!((r["verdict"].as_str(), r["state"].as_str()), (Some("agreed"), Some("done")), "{r}");
    assert_eq!((record(&s, "b0"), record(&s, "b1")), ((1, 0), (1, 0)));
    Ok(())
}

/// Two server processes on one PostgreSQL database, two disagreeing answers arriving at once,
/// one through each: exactly one extra slot is opened.
#[test]
fn two_servers_on_one_postgres_open_one_extra_slot_per_dispute() -> TestResult {
    let Some(db) = TestDb::new(Backend::Postgres) else { return Ok(()) };
    let url = db.url.clone();
    let a = Server::start_on(db, &url, &[]);
    setup_owned(&a, &["", "", "", "", "", "", "", "", "", ""]);
    let b = Server::start_on(TestDb::new(Backend::Sqlite).unwrap(), &url, &[]);
    for round in 0..5 {
        let (_, created) = ask(
            &a,
            &json!({"branch": "main", "revision": R, "builders": 2, "quorum": 2, "nonce": format!("race-{round}")}),
            key(1),
        );
        let (x, y) = (format!("b{}", 2 * round), format!("b{}", 2 * round + 1));
        let (_, lx) = lease(&a, &x, 0);
        let (_, ly) = lease(&b, &y, 0);
        let statuses: Vec<u16> = std::thread::scope(|scope| {
            let one = scope.spawn(|| answer(&a, &x, &lx["lease"], "failure", &["parses_empty"], json!([])).0);
            let two = scope.spawn(|| answer(&b, &y, &ly["lease"], "success", &[], json!([])).0);
            vec![one.join().unwrap(), two.join().unwrap()]
        });
        assert_eq!(statuses, [201, 201]);
        let r = request(&a, &created["id"]);
        assert_eq!((r["verdict"].as_str(), r["slots"].as_i64()), (Some("disputed"), Some(3)), "round {round}: {r}");
        // Ended without agreement: inconclusive, and its extra slot is nobody's next lease.
        a.admin_ok(&["request", "cancel", &created["id"].to_string()]);
        assert_eq!(request(&b, &created["id"])["verdict"], "inconclusive");
    }
    Ok(())
}

/// A builder with a long clean record disagreeing for the first time is worth a notification
/// of its own (BOINC's trusted host caught out), besides the request's dispute.
fn a_long_clean_record_broken_is_news(backend: Backend) -> TestResult {
    use diesel::RunQueryDsl as _;
    let Some(s) = Server::start(backend) else { return Ok(()) };
    setup_owned(&s, &["", "", ""]);
    // Twelve agreements behind it (as if earned), none disputed.
    let mut conn = diesel::r2d2::ManageConnection::connect(&tbox_server::db::Manager::new(
        tbox_server::db::DatabaseUrl::parse(&s.db.url)?,
    ))?;
    let sql = "UPDATE builders SET agreed = 12 WHERE name = 'b1'";
    match &mut conn {
        tbox_server::db::DbConn::Sqlite(c) => diesel::sql_query(sql).execute(c)?,
        tbox_server::db::DbConn::Pg(c) => diesel::sql_query(sql).execute(c)?,
    };
    s.admin_ok(&[
        "notify",
        "add",
        "demo",
        "--webhook",
        "http://127.0.0.1:9/hook",
        "--secret",
        "s",
        "--allow-private-target",
    ]);
    let (_, created) = ask(&s, &json!({"branch": "main", "revision": R, "builders": 2, "quorum": 2}), key(1));
    let (_, l0) = lease(&s, "b0", 0);
    let (_, l1) = lease(&s, "b1", 0);
    assert_eq!(answer(&s, "b0", &l0["lease"], "failure", &["parses_empty"], json!([])).0, 201);
    assert_eq!(answer(&s, "b1", &l1["lease"], "success", &[], json!([])).0, 201);
    let (_, l2) = lease(&s, "b2", 0);
    assert_eq!(answer(&s, "b2", &l2["lease"], "failure", &["parses_empty"], json!([])).0, 201);
    assert_eq!(request(&s, &created["id"])["verdict"], "agreed");
    assert_eq!(record(&s, "b1"), (12, 1));
    let log = s.admin_ok(&["notify", "log", "demo"]);
    assert_eq!(log.matches("demo: builders disagree on main").count(), 2, "the dispute, and b1's first: {log}");
    let (_, feed) = s.get("/projects/demo/feed.atom");
    assert!(feed.contains("b1 disputed on main"), "{feed}");
    Ok(())
}

/// A builder holds one lease at a time: asking again gives up one it never started (its slot
/// goes back), and while it builds one it gets no other — one volunteer cannot sit on every
/// request.
fn one_lease_at_a_time_per_builder(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    setup(&s, 2);
    assert_eq!(ask(&s, &json!({"branch": "main", "nonce": "1"}), key(1)).0, 201);
    assert_eq!(ask(&s, &json!({"branch": "main", "nonce": "2"}), key(1)).0, 201);
    let (_, first) = lease(&s, "b0", 0);
    // Asking again gives the unstarted lease up: the oldest request is taken up again (once,
    // a restarted serve getting its work back), then given up for good.
    let (_, again) = lease(&s, "b0", 0);
    assert_eq!((&again["request"], &again["lease"]), (&first["request"], &first["lease"]));
    let (status, second) = lease(&s, "b0", 0);
    assert_eq!(status, 200, "{second}");
    assert_ne!(second["request"], first["request"]);
    let given_up = requests(&s).into_iter().find(|r| r["id"] == first["request"]).unwrap();
    assert_eq!(given_up["attempts"][0]["state"], "lost", "{given_up}");
    let (status, v) = renew(&s, "b0", &first["lease"]);
    assert_eq!(status, 410, "{v}");
    // The slot went back: b1 takes it.
    let (_, other) = lease(&s, "b1", 0);
    assert_eq!(other["request"], first["request"]);
    // Building (started): nothing more for b0, and its lease stays.
    let mut started = common::started("b0-build");
    started["builder"] = "b0".into();
    started["lease"] = second["lease"].clone();
    assert_eq!(s.send_as("b0", key(2), started.to_string().as_bytes()).0, 201);
    assert_eq!(ask(&s, &json!({"branch": "main", "nonce": "3"}), key(1)).0, 201);
    assert_eq!(lease(&s, "b0", 0).0, 204);
    assert_eq!(renew(&s, "b0", &second["lease"]).0, 200);
    Ok(())
}
