//! Liar benchmark client (run by `scripts/bench-liar`): HONEST builders of distinct owners and
//! one that always reports success, answering REQUESTS requests of a project whose revision
//! has a real failing test. Each request is taken by whoever asks first (builders ask in a
//! random order), and every builder reports at once. Prints, for the mode the server runs in,
//! how many of the liar's false greens were caught (its answer disputed, or the request not
//! agreed on its word) and how many builds that cost beyond one per request.
//!
//! `bench_liar BASE DATABASE_URL BUILDER_KEY.pem PROJECT_KEY.pem HONEST REQUESTS MODE [LIARS]`
//! MODE: `quorum` (every request asks for 2 builders, quorum 2) or `plain` (1 builder, no
//! quorum: the server's `--spot-check` decides). LIARS: 1 (default) or 0, for what agreement
//! costs an honest farm.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use rand_core::RngCore;
use serde_json::{Value, json};
use tbox_protocol::PrivateKey;
use tbox_server::db::{self, DatabaseUrl, Manager, builders, projects};

const REVISION: &str = "9fceb02d0ae598e95dc970b74767f19372d61af8";

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (base, db_url, builder_key, project_key) = (&a[1], &a[2], &a[3], &a[4]);
    let (honest, requests): (usize, usize) = (a[5].parse().unwrap(), a[6].parse().unwrap());
    let quorum = a[7] == "quorum";
    let liars: usize = a.get(8).map_or(1, |n| n.parse().unwrap());
    let builder_key = PrivateKey::from_pem(&std::fs::read_to_string(builder_key).unwrap()).unwrap();
    let project_key = PrivateKey::from_pem(&std::fs::read_to_string(project_key).unwrap()).unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();

    // The builders, straight into the database (registration is not what is measured): one
    // owner each, the liar last.
    let mut names: Vec<String> = (0..honest).map(|i| format!("honest{i:02}")).collect();
    if liars > 0 {
        names.push("liar".to_owned());
    }
    let mut conn = diesel::r2d2::ManageConnection::connect(&Manager::new(DatabaseUrl::parse(db_url).unwrap())).unwrap();
    let project = projects::by_name(&mut conn, "bench").unwrap().expect("project bench");
    let (pem, fp) = (builder_key.public_key().to_pem(), builder_key.public_key().fingerprint());
    db::write_transaction(&mut conn, |c| -> diesel::QueryResult<()> {
        for name in &names {
            let b = builders::add(
                c,
                &db::models::NewBuilder {
                    name,
                    status: builders::ACTIVE,
                    owner: Some(name),
                    description: None,
                    properties: "{}",
                    created_at: db::now(),
                },
            )?;
            builders::add_key(c, b.id, &fp, &pem)?;
            builders::allow(c, b.id, project.id)?;
        }
        Ok(())
    })
    .unwrap();

    let expires = (chrono::Utc::now() + chrono::TimeDelta::days(30)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let recipe = format!(
        "format = \"tbox-recipe/1\"\nproject = \"bench\"\nrepo = \"https://example.org/bench.git\"\n\
         branches = [\"main\"]\nversion = 1\nexpires = \"{expires}\"\n[[step]]\nname = \"test\"\nrun = \"make check\"\n"
    );
    let (status, v) = send(
        &agent,
        "PUT",
        &format!("{base}/api/v1/projects/bench/recipe"),
        recipe.as_bytes(),
        &[("Content-Type", "application/toml"), ("Tbox-Signature", &project_key.sign(recipe.as_bytes()))],
    );
    assert_eq!(status, 201, "recipe: {v}");

    let mut nonce = 0u64;
    let mut fresh = || {
        nonce += 1;
        format!("liar-bench-{}-{nonce}", std::process::id())
    };
    let (mut builds, mut lies, mut caught, mut agreed) = (0usize, 0usize, 0usize, 0usize);
    for n in 0..requests {
        let mut ask = json!({"project": "bench", "created_at": chrono::Utc::now().to_rfc3339(), "branch": "main",
                             "revision": REVISION, "builders": 1, "nonce": fresh()});
        if quorum {
            ask["builders"] = json!(2);
            ask["quorum"] = json!(2);
        }
        let body = ask.to_string();
        let (status, created) = send(
            &agent,
            "POST",
            &format!("{base}/api/v1/projects/bench/requests"),
            body.as_bytes(),
            &[("Content-Type", "application/json"), ("Tbox-Signature", &project_key.sign(body.as_bytes()))],
        );
        assert_eq!(status, 201, "request {n}: {created}");
        let id = created["id"].as_i64().unwrap();
        // Builders ask in a random order, again and again, until nobody gets anything more.
        loop {
            let mut order: Vec<&String> = names.iter().collect();
            shuffle(&mut order);
            let mut granted = false;
            for name in order {
                let lease = json!({"projects": ["bench"], "wait": 0, "at": chrono::Utc::now().to_rfc3339(),
                                   "nonce": fresh()})
                .to_string();
                let (status, l) = send(
                    &agent,
                    "POST",
                    &format!("{base}/api/v1/leases"),
                    lease.as_bytes(),
                    &[
                        ("Content-Type", "application/json"),
                        ("Tbox-Builder", name),
                        ("Tbox-Signature", &builder_key.sign(lease.as_bytes())),
                    ],
                );
                if status != 200 {
                    continue;
                }
                granted = true;
                builds += 1;
                let liar = name == "liar";
                let report = report(name, &l["lease"], liar, &fresh()).to_string();
                let (status, v) = send(
                    &agent,
                    "POST",
                    &format!("{base}/api/v1/reports"),
                    report.as_bytes(),
                    &[
                        ("Content-Type", "application/json"),
                        ("Tbox-Builder", name),
                        ("Tbox-Signature", &builder_key.sign(report.as_bytes())),
                    ],
                );
                assert_eq!(status, 201, "report: {v}");
            }
            if !granted {
                break;
            }
        }
        let (_, r) = send(&agent, "GET", &format!("{base}/api/v1/projects/bench/requests/{id}"), b"", &[]);
        let said_by_liar = r["attempts"].as_array().unwrap().iter().any(|a| a["builder"] == "liar");
        if said_by_liar {
            lies += 1;
            // Caught: its answer was judged and found wrong, or the request never took it.
            let judged_wrong =
                r["answers"].as_array().unwrap().iter().any(|a| a["builder"] == "liar" && a["agrees"] == false);
            if judged_wrong || r["verdict"] == "disputed" || r["verdict"] == "inconclusive" {
                caught += 1;
            }
        }
        if r["verdict"] == "agreed" {
            agreed += 1;
        }
    }
    let extra = builds.saturating_sub(requests);
    println!(
        "requests {requests}, honest builders {honest} + {liars} liar: liar's false greens {lies}, caught {caught} ({:.0}%); \
         builds {builds}, extra {extra} ({:.0}% over one build per request); requests agreed {agreed}",
        percent(caught, lies),
        percent(extra, requests)
    );
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 { 0.0 } else { 100.0 * part as f64 / whole as f64 }
}

/// What a builder reports: the truth (a failing test) or, for the liar, success without tests.
fn report(builder: &str, lease: &Value, liar: bool, uuid: &str) -> Value {
    let now = chrono::Utc::now().to_rfc3339();
    let (result, tests) = if liar {
        ("success", json!([{"suite": "parser", "name": "parses_empty", "result": "passed"}]))
    } else {
        ("failure", json!([{"suite": "parser", "name": "parses_empty", "result": "failed", "message": "expected []"}]))
    };
    json!({
        "format": "tbox-report/1", "uuid": uuid, "project": "bench", "builder": builder, "state": "finished",
        "result": result, "branch": "main", "revision": REVISION, "started_at": now, "finished_at": now,
        "steps": [{"name": "test", "kind": "test", "result": result, "started_at": now, "finished_at": now}],
        "tests": tests, "lease": lease, "reporter": "bench_liar"
    })
}

fn shuffle<T>(v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = (rand_core::OsRng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

fn send(agent: &ureq::Agent, method: &str, url: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, Value) {
    let mut resp = match method {
        "GET" => agent.get(url).call(),
        _ => {
            let mut req = if method == "PUT" { agent.put(url) } else { agent.post(url) };
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req.send(body)
        }
    }
    .unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}
