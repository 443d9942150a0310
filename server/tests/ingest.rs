//! `POST /api/v1/reports` against a real server, every scenario on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{Backend, Server, TestResult, key, report, started};
use serde_json::json;

on_both_backends!(
    accepted_report_is_stored_and_readable,
    duplicate_answers_200_and_records_nothing,
    tampered_body_is_401,
    unsigned_is_401,
    unknown_builder_is_401,
    wrong_key_is_401,
    project_not_allowed_is_403,
    revoked_builder_and_revoked_key_are_403,
    builder_header_must_match_body,
    malformed_json_is_400,
    invalid_field_is_422_naming_it,
    future_finished_at_is_422,
    oversized_body_is_413_before_it_is_read,
    started_then_finished_is_one_build,
    wrong_content_type_is_415,
    gzip_body_is_accepted,
    identical_logs_are_stored_once,
);

fn sha256_hex(body: &[u8]) -> String {
    tbox_protocol::report_id(body)
}

fn accepted_report_is_stored_and_readable(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else {
        return Ok(());
    };
    s.setup();
    let body = report("b1").to_string();
    let (status, v) = s.send_as("alice", key(0), body.as_bytes());
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["id"], sha256_hex(body.as_bytes()));
    let build = v["build"].as_i64().unwrap();
    assert_eq!(v["url"], s.url(&format!("/builds/{build}")));

    let builds = s.builds("demo");
    assert_eq!(builds.len(), 1);
    let b = &builds[0];
    assert_eq!(
        (b["builder"].as_str(), b["result"].as_str(), b["state"].as_str()),
        (Some("alice"), Some("failure"), Some("finished"))
    );
    assert_eq!(b["started_at"], "2026-11-01T10:00:00Z");
    assert_eq!(b["steps"], json!([{"name": "build", "result": "success"}, {"name": "test", "result": "failure"}]));

    let (status, full) = s.get_json(&format!("/api/v1/builds/{build}"));
    assert_eq!(status, 200);
    assert_eq!(full["properties"]["os"], "linux");
    assert_eq!(full["tests"].as_array().map(Vec::len), Some(2));
    assert_eq!(full["steps"][1]["exit_code"], 2);
    let log_url = full["steps"][1]["log_url"].as_str().unwrap();
    let mut resp = s.agent.get(log_url).call()?;
    assert_eq!(resp.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("text/plain; charset=utf-8"));
    assert_eq!(resp.body_mut().read_to_string()?, "FAIL: parses_empty\n1 of 2 failed\n");

    // The pages show it too.
    let (status, html) = s.get("/projects/demo");
    assert_eq!(status, 200);
    assert!(html.contains("alice") && html.contains("tests failed"), "{html}");
    let (status, html) = s.get(&format!("/builds/{build}"));
    assert_eq!(status, 200);
    let html = html.replace("&#x2F;", "/"); // tera escapes slashes in attributes
    assert!(html.contains("parses_empty") && html.contains("https://example.org/c/0123456789abcdef0123"), "{html}");
    Ok(())
}

fn duplicate_answers_200_and_records_nothing(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else {
        return Ok(());
    };
    s.setup();
    let body = report("b1").to_string();
    let (first, a) = s.send_as("alice", key(0), body.as_bytes());
    let (second, b) = s.send_as("alice", key(0), body.as_bytes());
    assert_eq!((first, second), (201, 200));
    assert_eq!(a, b);
    assert_eq!(s.builds("demo").len(), 1);
    Ok(())
}

fn tampered_body_is_401(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else {
        return Ok(());
    };
    s.setup();
    let body = report("b1").to_string().into_bytes();
    let sig = key(0).sign(&body);
    let mut tampered = body.clone();
    let i = tampered.iter().position(|&c| c == b'6').unwrap();
    tampered[i] = b'7';
    let (status, v) =
        s.post(&tampered, &[("Content-Type", "application/json"), ("Tbox-Builder", "alice"), ("Tbox-Signature", &sig)]);
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["error"], "bad_signature");
    let text = v.to_string();
    assert!(!text.contains(&sig[..20]) && !text.contains("BEGIN"), "an error never echoes key material: {text}");
    assert!(s.builds("demo").is_empty());
    Ok(())
}

fn unsigned_is_401(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else {
        return Ok(());
    };
    s.setup();
    let body = report("b1").to_string();
    let (status, v) = s.post(body.as_bytes(), &[("Content-Type", "application/json"), ("Tbox-Builder", "alice")]);
    assert_eq!((status, v["error"].as_str()), (401, Some("unsigned")), "{v}");
    let sig = key(0).sign(body.as_bytes());
    let (status, v) = s.post(body.as_bytes(), &[("Content-Type", "application/json"), ("Tbox-Signature", &sig)]);
    assert_eq!((status, v["error"].as_str()), (401, Some("unsigned")), "{v}");
    let (status, _) = s.post(
        body.as_bytes(),
        &[("Content-Type", "application/json"), ("Tbox-Builder", "alice"), ("Tbox-Signature", "not base64!")],
    );
    assert_eq!(status, 401);
    assert!(s.builds("demo").is_empty());
    Ok(())
}

fn unknown_builder_is_401(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else {
        return Ok(());
    };
    s.setup();
    let mut r = report("b1");
    r["builder"] = json!("mallory");
    let (status, v) = s.send_as("mallory", key(0), r.to_string().as_bytes());
    assert_eq!((status, v["error"].as_str()), (401, Some("unknown_builder")), "{v}");
    Ok(())
}

fn wrong_key_is_401(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else {
        return Ok(());
    };
    s.setup();
    let (status, v) = s.send_as("alice", key(1), report("b1").to_string().as_bytes());
    assert_eq!((status, v["error"].as_str()), (401, Some("bad_signature")), "{v}");
    assert!(s.builds("demo").is_empty());
    Ok(())
}

fn project_not_allowed_is_403(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else {
        return Ok(());
    };
    s.setup();
    let mut r = report("b1");
    r["project"] = json!("other");
    let (status, v) = s.send(&r);
    assert_eq!((status, v["error"].as_str()), (403, Some("not_allowed")), "{v}");
    r["project"] = json!("nonexistent");
    let (status, v) = s.send(&r);
    assert_eq!((status, v["error"].as_str()), (422, Some("unknown_project")), "{v}");
    assert!(s.builds("other").is_empty());
    Ok(())
}

fn revoked_builder_and_revoked_key_are_403(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else {
        return Ok(());
    };
    s.setup();
    assert_eq!(s.send(&report("b1")).0, 201);

    // Rotation: a second key, then the first is revoked.
    s.admin_ok(&["builder", "add", "alice", "--project", "demo", "--key", &s.pubkey_file(key(1))]);
    let old = key(0).public_key().fingerprint();
    s.admin_ok(&["builder", "revoke", "alice", "--key", &old]);
    let (status, v) = s.send(&report("b2"));
    assert_eq!((status, v["error"].as_str()), (403, Some("key_revoked")), "{v}");
    assert_eq!(s.send_as("alice", key(1), report("b3").to_string().as_bytes()).0, 201);

    // Revoking the builder refuses every key.
    s.admin_ok(&["builder", "revoke", "alice"]);
    let (status, v) = s.send_as("alice", key(1), report("b4").to_string().as_bytes());
    assert_eq!((status, v["error"].as_str()), (403, Some("builder_revoked")), "{v}");
    let listed = s.admin_ok(&["builder", "list"]);
    assert!(listed.contains("alice\trevoked") && listed.contains(&format!("{old} (revoked)")), "{listed}");

    // What was stored before is still there, by its id; the public lists no longer show a
    // revoked builder (hardening: revoked builders stay off public pages).
    for id in [1, 2] {
        assert_eq!(s.get_json(&format!("/api/v1/builds/{id}")).0, 200);
    }
    assert!(s.builds("demo").is_empty());
    Ok(())
}

fn builder_header_must_match_body(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else {
        return Ok(());
    };
    s.setup();
    s.admin_ok(&["builder", "add", "bob", "--project", "demo", "--key", &s.pubkey_file(key(1))]);
    // Bob signs, correctly, a report that claims to come from alice.
    let (status, v) = s.send_as("bob", key(1), report("b1").to_string().as_bytes());
    assert_eq!((status, v["error"].as_str()), (403, Some("builder_mismatch")), "{v}");
    assert!(s.builds("demo").is_empty());
    Ok(())
}

fn malformed_json_is_400(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else {
        return Ok(());
    };
    s.setup();
    let (status, v) = s.send_as("alice", key(0), b"{\"format\": \"tbox-report/1\", ");
    assert_eq!((status, v["error"].as_str()), (400, Some("malformed")), "{v}");
    Ok(())
}

fn invalid_field_is_422_naming_it(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else {
        return Ok(());
    };
    s.setup();
    let mut r = report("b1");
    r["steps"][1]["result"] = json!("kaput");
    let (status, v) = s.send(&r);
    assert_eq!(status, 422, "{v}");
    assert!(v["message"].as_str().unwrap().starts_with("steps[1].result:"), "{v}");

    // A NUL byte (which PostgreSQL cannot store) is the client's mistake, not a 500.
    let mut r = report("b1");
    r["tests"][0]["message"] = json!("a\u{0}b");
    let (status, v) = s.send(&r);
    assert_eq!(status, 422, "{v}");
    assert!(v["message"].as_str().unwrap().starts_with("tests[0].message:"), "{v}");

    let mut r = report("b1");
    r["started_at"] = json!("-5000-01-01T00:00:00Z");
    let (status, v) = s.send(&r);
    assert_eq!(status, 422, "{v}");

    let mut r = report("b1");
    r["builder"] = json!("alice"); // valid, but the uuid is not
    r["uuid"] = json!("has space");
    let (status, v) = s.send(&r);
    assert_eq!(status, 422, "{v}");
    assert!(v["message"].as_str().unwrap().starts_with("uuid:"), "{v}");
    assert!(s.builds("demo").is_empty());
    Ok(())
}

fn future_finished_at_is_422(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else {
        return Ok(());
    };
    s.setup();
    let mut r = report("b1");
    let future = (chrono::Utc::now() + chrono::TimeDelta::minutes(10)).to_rfc3339();
    r["finished_at"] = json!(future);
    let (status, v) = s.send(&r);
    assert_eq!(status, 422, "{v}");
    assert!(v["message"].as_str().unwrap().starts_with("finished_at:"), "{v}");
    // Old reports (spooled while the server was down) are fine.
    let mut r = report("b2");
    r["started_at"] = json!("2024-01-01T00:00:00Z");
    r["finished_at"] = json!("2024-01-01T00:30:00Z");
    assert_eq!(s.send(&r).0, 201);
    Ok(())
}

fn oversized_body_is_413_before_it_is_read(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else {
        return Ok(());
    };
    s.setup();
    // Announce 40 MB, send only a little, and expect the refusal anyway: the server must not
    // wait for (or buffer) the rest.
    let addr = s.base.trim_start_matches("http://");
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let len = 40 * 1024 * 1024;
    write!(
        tcp,
        "POST /api/v1/reports HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Tbox-Builder: alice\r\nTbox-Signature: AAAA\r\nContent-Length: {len}\r\n\r\n"
    )?;
    tcp.write_all(&[b' '; 4096])?;
    let mut answer = vec![0; 4096];
    let n = tcp.read(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"error\":\"too_large\""), "{answer}");

    // And a real 40 MB body, streamed without Content-Length (chunked), is cut off too.
    let big = format!("{{\"padding\": \"{}\"}}", "x".repeat(len));
    let sig = key(0).sign(big.as_bytes());
    let resp = s
        .agent
        .post(s.url("/api/v1/reports"))
        .header("Content-Type", "application/json")
        .header("Tbox-Builder", "alice")
        .header("Tbox-Signature", &sig)
        .send(ureq::SendBody::from_reader(&mut big.as_bytes()));
    // The server may close the connection before the client has finished sending; either
    // way nothing is stored.
    if let Ok(mut r) = resp {
        assert_eq!(r.status().as_u16(), 413, "{}", r.body_mut().read_to_string()?);
    }
    assert!(s.builds("demo").is_empty());
    Ok(())
}

fn started_then_finished_is_one_build(backend: Backend) -> TestResult {
    // The build started weeks ago: it must still be building here, not lost.
    let Some(s) = Server::start_with(backend, &["--lost-after", "5200w"]) else {
        return Ok(());
    };
    s.setup();
    let (status, a) = s.send(&started("b1"));
    assert_eq!(status, 201, "{a}");
    let builds = s.builds("demo");
    assert_eq!((builds.len(), builds[0]["state"].as_str(), &builds[0]["result"]), (1, Some("started"), &json!(null)));
    let (html_status, html) = s.get("/projects/demo");
    assert_eq!(html_status, 200);
    assert!(html.contains("building"), "a running build shows as building");

    let (status, b) = s.send(&report("b1"));
    assert_eq!(status, 201, "{b}");
    assert_eq!(a["build"], b["build"]);
    let builds = s.builds("demo");
    assert_eq!(
        (builds.len(), builds[0]["state"].as_str(), builds[0]["result"].as_str()),
        (1, Some("finished"), Some("failure"))
    );

    // Nothing else may overwrite it: another finished report for the same uuid...
    let mut other = report("b1");
    other["result"] = json!("success");
    let (status, v) = s.send(&other);
    assert_eq!((status, v["error"].as_str()), (409, Some("build_conflict")), "{v}");
    // ...while the same started report sent late is simply a duplicate.
    assert_eq!(s.send(&started("b1")).0, 200);
    let builds = s.builds("demo");
    assert_eq!((builds.len(), builds[0]["result"].as_str()), (1, Some("failure")));
    Ok(())
}

fn wrong_content_type_is_415(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else {
        return Ok(());
    };
    s.setup();
    let body = report("b1").to_string();
    let sig = key(0).sign(body.as_bytes());
    let (status, v) = s.post(
        body.as_bytes(),
        &[("Content-Type", "application/x-www-form-urlencoded"), ("Tbox-Builder", "alice"), ("Tbox-Signature", &sig)],
    );
    assert_eq!((status, v["error"].as_str()), (415, Some("unsupported_media_type")), "{v}");
    Ok(())
}

fn gzip_body_is_accepted(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else {
        return Ok(());
    };
    s.setup();
    let body = report("b1").to_string();
    let sig = key(0).sign(body.as_bytes());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes())?;
    let (status, v) = s.post(
        &gz.finish()?,
        &[
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
            ("Tbox-Builder", "alice"),
            ("Tbox-Signature", &sig),
        ],
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["id"], sha256_hex(body.as_bytes()), "the id is the digest of the uncompressed JSON");
    Ok(())
}

fn identical_logs_are_stored_once(backend: Backend) -> TestResult {
    use diesel::prelude::*;
    use tbox_server::db::{DatabaseUrl, Manager, schema::logs};
    let Some(s) = Server::start(backend) else {
        return Ok(());
    };
    s.setup();
    assert_eq!(s.send(&report("b1")).0, 201);
    assert_eq!(s.send(&report("b2")).0, 201);
    let mut conn = diesel::r2d2::ManageConnection::connect(&Manager::new(DatabaseUrl::parse(&s.db.url)?))?;
    let count: i64 = logs::table.count().get_result(&mut conn)?;
    assert_eq!(count, 2, "two builds with the same two logs store two logs");
    Ok(())
}
