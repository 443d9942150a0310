//! Project keys, recipe publication and key lists over HTTP, on both backends: the server as a
//! mirror that refuses junk and serves the exact bytes it was given.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, Server, TestResult, in_days, key, publish, put, recipe};
use serde_json::Value;

on_both_backends!(
    publish_checks_signature_version_and_fields,
    the_recipe_is_served_byte_for_byte_with_its_signature,
    key_lists_are_signed_versioned_and_decide_who_signs,
    project_keys_and_capabilities_from_the_command_line,
    a_second_project_waits_for_approval,
);

/// demo with key 1 as its project key.
fn setup(s: &Server) {
    s.setup();
    s.admin_ok(&["project", "key", "add", "demo", "--key", &s.pubkey_file(key(1))]);
}

fn publish_checks_signature_version_and_fields(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    s.setup();
    // No project key yet: 401 that says how to add one.
    let (status, v) = publish(&s, "demo", &recipe("demo", 1, ""), 1);
    assert_eq!(status, 401, "{v}");
    assert!(v["message"].as_str().unwrap().contains("project key add"), "{v}");
    s.admin_ok(&["project", "key", "add", "demo", "--key", &s.pubkey_file(key(1))]);

    // Unsigned, foreign-signed, garbage signature: 401; wrong type: 415.
    let body = recipe("demo", 1, "");
    assert_eq!(put(&s, "demo", body.as_bytes(), None, "application/toml").0, 401);
    let (status, v) = publish(&s, "demo", &body, 2);
    assert_eq!((status, v["error"].as_str()), (401, Some("bad_signature")), "{v}");
    assert_eq!(put(&s, "demo", body.as_bytes(), Some("!!"), "application/toml").0, 401);
    assert_eq!(put(&s, "demo", body.as_bytes(), Some(&key(1).sign(body.as_bytes())), "application/json").0, 415);

    // Invalid recipes: 422 naming the field.
    for (bad, field) in [
        (recipe("other", 1, ""), "project"),
        (recipe("demo", 0, ""), "version"),
        (recipe("demo", 9_223_372_036_854_775_807, ""), "version"),
        (recipe("demo", 1 << 53, ""), "version"),
        (recipe("demo", 1, "").replace(&in_days(30), "2001-01-01T00:00:00Z"), "expires"),
        // A recipe that lives for decades would let a frozen mirror keep it (and its key) alive.
        (recipe("demo", 1, "").replace(&in_days(30), "2099-01-01T00:00:00Z"), "expires"),
        (recipe("demo", 1, "requires = [\"docker\"]"), "requires[0]"),
        (recipe("demo", 1, "").replace("run = \"make\"", "run = \"make\"\ntimeout = \"forever\""), "step 1.timeout"),
        (recipe("demo", 1, "").replace("https://example.org/demo.git", "--upload-pack=evil"), "repo"),
    ] {
        let (status, v) = publish(&s, "demo", &bad, 1);
        assert_eq!(status, 422, "{field}: {v}");
        assert!(v["message"].as_str().unwrap().contains(field), "{field}: {v}");
    }
    // Too large: 413 before it is parsed.
    let huge = recipe("demo", 1, &format!("# {}", "x".repeat(70_000)));
    assert_eq!(publish(&s, "demo", &huge, 1).0, 413);

    // Published; the same version again, or a lower one, is 409.
    let (status, v) = publish(&s, "demo", &body, 1);
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["version"], 1);
    assert_eq!(v["key"].as_str(), Some(key(1).public_key().fingerprint().as_str()));
    let (status, v) = publish(&s, "demo", &recipe("demo", 1, "# other bytes"), 1);
    assert_eq!((status, v["error"].as_str()), (409, Some("version_not_above")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("publish version 2"), "{v}");
    assert_eq!(publish(&s, "demo", &recipe("demo", 3, ""), 1).0, 201);
    assert_eq!(publish(&s, "demo", &recipe("demo", 2, ""), 1).0, 409);
    // History keeps both, newest first.
    let (_, h) = s.get_json("/api/v1/projects/demo/recipes");
    let versions: Vec<i64> = h["recipes"].as_array().unwrap().iter().map(|r| r["version"].as_i64().unwrap()).collect();
    assert_eq!(versions, vec![3, 1]);
    // A revoked key signs nothing any more.
    s.admin_ok(&["project", "key", "revoke", "demo", "--key", &key(1).public_key().fingerprint()]);
    assert_eq!(publish(&s, "demo", &recipe("demo", 4, ""), 1).0, 401);
    // Unknown project: 404.
    assert_eq!(publish(&s, "nope", &recipe("nope", 1, ""), 1).0, 404);
    Ok(())
}

fn the_recipe_is_served_byte_for_byte_with_its_signature(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    setup(&s);
    let (status, v) = s.get_json("/api/v1/projects/demo/recipe");
    assert_eq!(status, 404, "{v}");
    // CRLF, a trailing space and a comment: the bytes are signed, so they must come back as sent.
    let body = recipe("demo", 7, "network = false   \r\n");
    let sig = key(1).sign(body.as_bytes());
    assert_eq!(publish(&s, "demo", &body, 1).0, 201);
    let mut resp = s.agent.get(s.url("/api/v1/projects/demo/recipe")).header("Accept-Encoding", "gzip").call()?;
    assert_eq!(resp.status().as_u16(), 200);
    let h = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(h("tbox-signature").as_deref(), Some(sig.as_str()));
    assert_eq!(h("tbox-recipe-version").as_deref(), Some("7"));
    assert_eq!(h("content-type").as_deref(), Some("application/toml"));
    let etag = h("etag").unwrap();
    assert_eq!(etag, format!("\"{}\"", tbox_protocol::report_id(body.as_bytes())));
    assert_eq!(resp.body_mut().read_to_vec()?, body.as_bytes());
    // A cache that has it hears 304.
    let again = s.agent.get(s.url("/api/v1/projects/demo/recipe")).header("If-None-Match", &etag).call()?;
    assert_eq!(again.status().as_u16(), 304);
    // One version from the history, the same bytes.
    let (status, text) = s.get("/api/v1/projects/demo/recipes/7");
    assert_eq!((status, text.as_str()), (200, body.as_str()));
    assert_eq!(s.get("/api/v1/projects/demo/recipes/6").0, 404);
    assert_eq!(s.get("/api/v1/projects/demo/recipes/x").0, 404);
    // The project page shows it.
    let (_, page) = s.get("/projects/demo");
    assert!(page.contains("Recipe version 7") && page.contains(&key(1).public_key().fingerprint()), "{page}");
    Ok(())
}

/// A key list for demo listing `keys`, revoking `revoked` (test key numbers).
fn key_list(version: u64, keys: &[usize], revoked: &[usize], expires: &str) -> String {
    let pems: Vec<String> = keys.iter().map(|k| format!("\"\"\"{}\"\"\"", key(*k).public_key().to_pem())).collect();
    let revoked: Vec<String> = revoked.iter().map(|k| format!("{:?}", key(*k).public_key().fingerprint())).collect();
    format!(
        "format = \"tbox-keys/1\"\nproject = \"demo\"\nversion = {version}\nexpires = \"{expires}\"\n\
         keys = [{}]\nrevoked = [{}]\n",
        pems.join(", "),
        revoked.join(", ")
    )
}

fn put_keys(s: &Server, body: &str, signer: usize) -> (u16, Value) {
    let mut resp = s
        .agent
        .put(s.url("/api/v1/projects/demo/keys"))
        .header("Content-Type", "application/toml")
        .header("Tbox-Signature", &key(signer).sign(body.as_bytes()))
        .send(body.as_bytes())
        .unwrap();
    let status = resp.status().as_u16();
    (status, serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap())
}

fn key_lists_are_signed_versioned_and_decide_who_signs(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    setup(&s);
    let fp = |k: usize| key(k).public_key().fingerprint();
    let (status, v) = s.get_json("/api/v1/projects/demo/keys");
    assert_eq!(status, 404, "{v}");
    assert!(v["message"].as_str().unwrap().contains("no key list"), "{v}");
    // Before any list, the admin's key signs; anyone can find its PEM to check a pin against.
    let (_, signers) = s.get_json("/api/v1/projects/demo/signing-keys");
    assert_eq!(signers["keys"][0]["fingerprint"].as_str(), Some(fp(1).as_str()));

    let v1 = key_list(1, &[1, 2], &[], &in_days(100));
    assert_eq!(put_keys(&s, &v1, 0).0, 401, "a stranger's list");
    for (bad, field) in [
        (key_list(1, &[1], &[], &in_days(500)), "expires"),
        (key_list(1, &[1], &[], "2001-01-01T00:00:00Z"), "expires"),
        (key_list(1, &[1], &[], &in_days(100)).replace("\"demo\"", "\"other\""), "project"),
        (key_list(1, &[1], &[1], &in_days(100)), "revoked[0]"),
        (key_list(1, &[], &[], &in_days(100)), "keys"),
        ("format = \"tbox-keys/1\"\nsurprise = 1\n".to_owned(), "surprise"),
    ] {
        let (status, v) = put_keys(&s, &bad, 1);
        assert_eq!(status, 422, "{field}: {v}");
        assert!(v["message"].as_str().unwrap().contains(field), "{field}: {v}");
    }
    let (status, v) = put_keys(&s, &v1, 1);
    assert_eq!(status, 201, "{v}");
    assert_eq!((v["version"].as_u64(), v["key"].as_str()), (Some(1), Some(fp(1).as_str())));
    // Served byte for byte, with its signature.
    let mut resp = s.agent.get(s.url("/api/v1/projects/demo/keys")).call()?;
    assert_eq!(resp.status().as_u16(), 200);
    let h = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(h("tbox-signature"), Some(key(1).sign(v1.as_bytes())));
    assert_eq!(h("tbox-key-list-version").as_deref(), Some("1"));
    assert_eq!(resp.body_mut().read_to_string()?, v1);
    let (status, v) = put_keys(&s, &v1, 1);
    assert_eq!((status, v["error"].as_str()), (409, Some("version_not_above")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("publish version 2"), "{v}");

    // Rotation: key 1 hands over to key 0 and is revoked; from now on only key 0 signs.
    let v2 = key_list(2, &[0], &[1], &in_days(100));
    assert_eq!(put_keys(&s, &v2, 2).0, 201, "key 2 is in force in version 1");
    let (status, v) = publish(&s, "demo", &recipe("demo", 1, ""), 1);
    assert_eq!(status, 401, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains(&format!("by {}, which project \"demo\" has revoked", fp(1))),
        "{v}"
    );
    let (status, v) = publish(&s, "demo", &recipe("demo", 1, ""), 2);
    assert_eq!(status, 401, "{v}");
    assert!(v["message"].as_str().unwrap().contains("no longer puts in force"), "{v}");
    assert_eq!(publish(&s, "demo", &recipe("demo", 1, ""), 0).0, 201);
    let (_, signers) = s.get_json("/api/v1/projects/demo/signing-keys");
    assert_eq!(signers["keys"].as_array().unwrap().len(), 1);
    assert_eq!(signers["keys"][0]["fingerprint"].as_str(), Some(fp(0).as_str()));
    // A list signed by a key out of force, or bringing a revoked key back: refused.
    assert_eq!(put_keys(&s, &key_list(3, &[0], &[1], &in_days(100)), 2).0, 401);
    let (status, v) = put_keys(&s, &key_list(3, &[0, 1], &[], &in_days(100)), 0);
    assert_eq!(status, 422, "{v}");
    assert!(v["message"].as_str().unwrap().contains("never comes back"), "{v}");
    // The history lets a volunteer holding version 1 walk to version 2.
    let (_, h) = s.get_json("/api/v1/projects/demo/key-lists");
    let versions: Vec<u64> =
        h["key_lists"].as_array().unwrap().iter().map(|e| e["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, vec![1, 2]);
    assert_eq!(s.get("/api/v1/projects/demo/key-lists/1"), (200, v1));
    assert_eq!(s.get("/api/v1/projects/demo/key-lists/9").0, 404);
    // The server's own table follows, for its admins.
    let listed = s.admin_ok(&["project", "key", "list", "demo"]);
    assert!(
        listed.contains(&format!("{}\trevoked", fp(1))) && listed.contains(&format!("{}\tactive", fp(0))),
        "{listed}"
    );
    Ok(())
}

fn project_keys_and_capabilities_from_the_command_line(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    setup(&s);
    let fp = key(1).public_key().fingerprint();
    let out = s.admin(&["project", "key", "add", "demo", "--key", &s.pubkey_file(key(1))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already has key"));
    let listed = s.admin_ok(&["project", "key", "list", "demo"]);
    assert!(listed.contains(&fp) && listed.contains("active"), "{listed}");
    assert_eq!(s.admin(&["project", "key", "revoke", "demo", "--key", "SHA256:nope"]).status.code(), Some(1));
    assert_eq!(s.admin(&["project", "key", "add", "nope", "--key", &s.pubkey_file(key(1))]).status.code(), Some(1));
    // A second key that nothing volunteers trust endorses: said first, and only added with --yes.
    let out = s.admin(&["project", "key", "add", "demo", "--key", &s.pubkey_file(key(2))]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("would refuse every recipe") && said.contains("--yes"), "{said}");
    assert!(!s.admin_ok(&["project", "key", "list", "demo"]).contains(&key(2).public_key().fingerprint()));
    s.admin_ok(&["project", "key", "add", "demo", "--key", &s.pubkey_file(key(2)), "--yes"]);
    assert!(s.admin_ok(&["project", "key", "list", "demo"]).contains(&key(2).public_key().fingerprint()));

    s.admin_ok(&["project", "capability", "add", "demo", "docker", "--description", "Docker Engine 24 or later"]);
    assert_eq!(
        s.admin(&["project", "capability", "add", "demo", "bad name", "--description", "x"]).status.code(),
        Some(1)
    );
    let (_, caps) = s.get_json("/api/v1/projects/demo/capabilities");
    assert_eq!(caps["capabilities"][0]["name"], "docker");
    assert_eq!(caps["capabilities"][0]["description"], "Docker Engine 24 or later");
    // Once registered, a recipe may require it.
    assert_eq!(publish(&s, "demo", &recipe("demo", 1, "requires = [\"docker\"]"), 1).0, 201);
    s.admin_ok(&["project", "capability", "remove", "demo", "docker"]);
    assert!(!s.admin_ok(&["project", "capability", "list", "demo"]).contains("docker"));
    Ok(())
}

fn a_second_project_waits_for_approval(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    s.setup();
    // alice (active, demo) asks for `other` too, by registering again with her key.
    let body = serde_json::to_vec(&serde_json::json!({
        "name": "alice", "projects": ["other"], "public_key": key(0).public_key().to_pem()
    }))?;
    let mut resp = s
        .agent
        .post(s.url("/api/v1/builders"))
        .header("Content-Type", "application/json")
        .header("Tbox-Signature", &key(0).sign(&body))
        .send(&body[..])?;
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = serde_json::from_str(&resp.body_mut().read_to_string()?)?;
    assert_eq!(v["projects"], serde_json::json!(["demo"]));
    assert_eq!(v["pending_projects"], serde_json::json!(["other"]));
    // Not yet allowed for other.
    let mut r = common::report("u1");
    r["project"] = "other".into();
    assert_eq!(s.send(&r).0, 403);
    assert!(s.admin_ok(&["builder", "list", "--pending"]).contains("asks to join: other"));
    let out = s.admin_ok(&["builder", "approve", "alice"]);
    assert!(out.contains("also report for: other"), "{out}");
    assert_eq!(s.send(&r).0, 201);
    Ok(())
}
