//! Tests-page benchmark: a server on DATABASE_URL is fed BUILDS reports of TESTS tests each
//! through the API (signed, as volunteers send them: some tests fail in every build, some flip),
//! then the tests page and its JSON twin are timed: one at a time, eight at once, and asked
//! again with the ETag they carried (a 304).
//!
//! `bench_tests DATABASE_URL [BUILDS] [TESTS] [REQUESTS]` (default 20 20000 30), driven by
//! `scripts/bench-tests`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use clap::Parser as _;
use serde_json::json;
use tbox_protocol::PrivateKey;
use tbox_server::cli::{Cli, Command};
use tbox_server::db::models::{NewBuilder, NewProject};
use tbox_server::db::{self, DatabaseUrl, Manager, builders, projects};

const BUILDERS: usize = 4;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).cloned().unwrap_or_else(|| "sqlite://bench-tests.db".into());
    let n_builds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let n_tests: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let requests: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(30);

    let keys: Vec<PrivateKey> =
        (0..BUILDERS).map(|_| PrivateKey::generate(&mut rand_core::OsRng, 2048).unwrap()).collect();
    let mut conn = diesel::r2d2::ManageConnection::connect(&Manager::new(DatabaseUrl::parse(&url).unwrap())).unwrap();
    db::migrate(&mut conn).unwrap();
    let now = db::now();
    let project = projects::add(
        &mut conn,
        &NewProject {
            name: "bench",
            title: "Benchmark",
            repo_url: None,
            revision_url: None,
            created_at: now,
            compare_url: None,
        },
    )
    .unwrap();
    for (i, k) in keys.iter().enumerate() {
        let name = format!("b{i}");
        let b = builders::add(
            &mut conn,
            &NewBuilder {
                name: &name,
                status: builders::ACTIVE,
                owner: None,
                description: None,
                properties: "{}",
                created_at: now,
            },
        )
        .unwrap();
        builders::add_key(&mut conn, b.id, &k.public_key().fingerprint(), &k.public_key().to_pem()).unwrap();
        builders::allow(&mut conn, b.id, project.id).unwrap();
    }
    drop(conn);

    let cli = Cli::try_parse_from(["tbox-server", "serve", "--bind", "127.0.0.1:0", "--database", &url]).unwrap();
    let Command::Serve(serve) = cli.command else { unreachable!() };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        tbox_server::cmd::serve::run_with(serve, |a| {
            let _ = tx.send(a[0]);
        })
    });
    let base = format!("http://{}", rx.recv_timeout(Duration::from_secs(30)).unwrap());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into();

    // The reports: 300 tests fail in every build, 100 flip from build to build, the rest pass.
    let t = Instant::now();
    for j in 0..n_builds {
        let builder = j % BUILDERS;
        let tests: Vec<serde_json::Value> = (0..n_tests)
            .map(|i| {
                let result = if i < 300 || (i < 400 && j % 2 == 0) { "failed" } else { "passed" };
                json!({"suite": format!("suite{:02}", i % 40), "name": format!("test_{i:05}"), "result": result,
                       "message": if result == "failed" { "assertion failed" } else { "" }})
            })
            .collect();
        let started = format!("2026-11-01T{:02}:{:02}:00Z", j / 60, j % 60);
        let report = json!({
            "format": "tbox-report/1", "uuid": format!("bench-{j}"), "project": "bench",
            "builder": format!("b{builder}"), "state": "finished", "result": "warnings", "branch": "main",
            "revision": format!("{:040x}", j / 2), "started_at": started, "finished_at": started,
            "steps": [], "tests": tests, "reporter": "bench",
        });
        let body = serde_json::to_vec(&report).unwrap();
        let resp = agent
            .post(format!("{base}/api/v1/reports"))
            .header("Content-Type", "application/json")
            .header("Tbox-Builder", &format!("b{builder}"))
            .header("Tbox-Signature", &keys[builder].sign(&body))
            .send(&body[..])
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
    }
    println!(
        "stored {n_builds} reports of {n_tests} tests in {:.1}s ({:.0} ms each, through the API)",
        t.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64() * 1e3 / n_builds as f64
    );

    for (name, path) in
        [("tests page", "/projects/bench/tests"), ("tests/failing JSON", "/api/v1/projects/bench/tests/failing")]
    {
        let url = format!("{base}{path}");
        let mut times = Vec::with_capacity(requests);
        let mut tag = String::new();
        let mut bytes = 0;
        for _ in 0..requests {
            let t = Instant::now();
            let mut resp = agent.get(&url).call().unwrap();
            assert_eq!(resp.status().as_u16(), 200, "{path}");
            tag = resp.headers().get("etag").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            bytes = resp.body_mut().read_to_vec().unwrap().len();
            times.push(t.elapsed());
        }
        let p = percentiles(&mut times);
        println!("{name:<20} p50 {:>7.1} ms   p99 {:>7.1} ms   ({} KiB)", p.0, p.1, bytes / 1024);
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| assert_eq!(agent.get(&url).call().unwrap().status().as_u16(), 200));
            }
        });
        println!("{:<20} 8 at once: {:>7.1} ms in all", "", t.elapsed().as_secs_f64() * 1e3);
        let mut times = Vec::with_capacity(requests);
        for _ in 0..requests {
            let t = Instant::now();
            let resp = agent.get(&url).header("If-None-Match", &tag).call().unwrap();
            assert_eq!(resp.status().as_u16(), 304, "{path} with {tag}");
            times.push(t.elapsed());
        }
        let p = percentiles(&mut times);
        println!("{:<20} 304 p50 {:>7.1} ms   p99 {:>7.1} ms", "", p.0, p.1);
    }
}

fn percentiles(times: &mut [Duration]) -> (f64, f64) {
    times.sort();
    let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    (p(0.5), p(0.99))
}
