//! Lease benchmark client (run by `scripts/bench-leases`): N simulated builders long-poll one
//! server for work; then a project asks for builds, one request after another. Prints the
//! server's memory and threads while they all wait (and per waiting builder), the time from a
//! request to each grant (p50, p99) and grants per second.
//!
//! `bench_leases BASE DATABASE_URL BUILDER_KEY.pem PROJECT_KEY.pem SERVER_PID BUILDERS REQUESTS SLOTS`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tbox_protocol::PrivateKey;
use tbox_server::db::{self, DatabaseUrl, Manager, builders, projects};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (base, db_url, builder_key, project_key, pid) = (&a[1], &a[2], &a[3], &a[4], &a[5]);
    let (n, requests, slots): (usize, usize, usize) =
        (a[6].parse().unwrap(), a[7].parse().unwrap(), a[8].parse().unwrap());
    let builder_key = PrivateKey::from_pem(&std::fs::read_to_string(builder_key).unwrap()).unwrap();
    let project_key = PrivateKey::from_pem(&std::fs::read_to_string(project_key).unwrap()).unwrap();

    // N builders sharing one key (registration is not what is measured), straight into the database.
    let mut conn = diesel::r2d2::ManageConnection::connect(&Manager::new(DatabaseUrl::parse(db_url).unwrap())).unwrap();
    let project = projects::by_name(&mut conn, "bench").unwrap().expect("project bench");
    let pem = builder_key.public_key().to_pem();
    let fp = builder_key.public_key().fingerprint();
    db::write_transaction(&mut conn, |c| -> diesel::QueryResult<()> {
        for i in 0..n {
            let name = format!("sim{i:05}");
            let b = builders::add(
                c,
                &db::models::NewBuilder {
                    name: &name,
                    status: builders::ACTIVE,
                    owner: None,
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

    // Requests are built only from a recipe the project signed: publish one.
    let recipe = format!(
        "format = \"tbox-recipe/1\"\nproject = \"bench\"\nrepo = \"https://example.org/bench.git\"\n\
         branches = [\"main\"]\nversion = 1\nexpires = \"{}\"\n[[step]]\nname = \"build\"\nrun = \"make\"\n",
        (chrono::Utc::now() + chrono::TimeDelta::days(30)).to_rfc3339()
    );
    let put: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut resp = put
        .put(format!("{base}/api/v1/projects/bench/recipe"))
        .header("Content-Type", "application/toml")
        .header("Tbox-Signature", &project_key.sign(recipe.as_bytes()))
        .send(recipe.as_bytes())
        .unwrap();
    let status = resp.status().as_u16();
    assert!(status < 300, "the recipe was refused ({status}): {}", resp.body_mut().read_to_string().unwrap());

    let rss_before = status_field(pid, "VmRSS").unwrap_or(0);
    let fds_before = open_fds(pid);

    // Each long poll signs a fresh body (the server refuses a body seen before): the builder's
    // clock and a nonce, as tbox-report sends them.
    let builder_key = Arc::new(builder_key);
    let grants: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let seen: Arc<Mutex<std::collections::HashSet<i64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let pollers: Vec<_> = (0..n)
        .map(|i| {
            let (base, key, grants, stop) = (base.clone(), builder_key.clone(), grants.clone(), stop.clone());
            let seen = seen.clone();
            std::thread::Builder::new()
                .stack_size(128 << 10)
                .spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(60)))
                        .build()
                        .into();
                    let name = format!("sim{i:05}");
                    let mut round = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        round += 1;
                        let body = json!({"projects": ["bench"], "wait": 30, "at": chrono::Utc::now().to_rfc3339(),
                                          "nonce": format!("bench-{i:05}-{round:012}")})
                        .to_string();
                        let signature = key.sign(body.as_bytes());
                        let resp = agent
                            .post(format!("{base}/api/v1/leases"))
                            .header("Content-Type", "application/json")
                            .header("Tbox-Builder", &name)
                            .header("Tbox-Signature", &signature)
                            .send(body.as_bytes());
                        let Ok(mut resp) = resp else {
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        };
                        if resp.status().as_u16() == 200 {
                            let at = Instant::now();
                            let v: serde_json::Value =
                                serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
                            // A builder asking again gets back the lease it has not started:
                            // count each lease once, when first granted.
                            let lease = v["lease"].as_i64().unwrap();
                            let mut grants = grants.lock().unwrap();
                            if seen.lock().unwrap().insert(lease) {
                                grants.push((v["request"].as_i64().unwrap(), at));
                            }
                        } else {
                            let _ = resp.body_mut().read_to_vec();
                        }
                    }
                })
                .unwrap()
        })
        .collect();

    // Every builder's long poll is in before memory is read: a connection each, then a moment
    // for the requests to be read and checked.
    let deadline = Instant::now() + Duration::from_secs(300);
    while open_fds(pid) < fds_before + n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(5));
    let rss = status_field(pid, "VmRSS").unwrap_or(0);
    let threads = status_field(pid, "Threads").unwrap_or(0);
    println!(
        "{n} builders waiting in long polls ({} connections): server RSS {} MiB (was {} MiB idle), {:.1} KiB per \
         waiting builder, {threads} threads",
        open_fds(pid).saturating_sub(fds_before),
        rss / 1024,
        rss_before / 1024,
        rss.saturating_sub(rss_before) as f64 / n as f64
    );

    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let ask = |nonce: String, builders: usize| -> (i64, Instant) {
        let body = json!({"project": "bench", "branch": "main", "builders": builders, "nonce": nonce,
                          "created_at": chrono::Utc::now().to_rfc3339()})
        .to_string();
        let sig = project_key.sign(body.as_bytes());
        let at = Instant::now();
        let mut resp = agent
            .post(format!("{base}/api/v1/projects/bench/requests"))
            .header("Content-Type", "application/json")
            .header("Tbox-Signature", &sig)
            .send(body.as_bytes())
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        (v["id"].as_i64().unwrap_or_else(|| panic!("the request was refused: {v}")), at)
    };
    let granted =
        |ids: &[(i64, Instant)]| grants.lock().unwrap().iter().filter(|(r, _)| ids.iter().any(|(i, _)| i == r)).count();
    let wait_for = |ids: &[(i64, Instant)], want: usize| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while granted(ids) < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    // Latency: requests one at a time, as a project would make them.
    let mut paced = Vec::new();
    for r in 0..requests {
        paced.push(ask(format!("paced-{r}"), slots));
        wait_for(&paced, paced.len() * slots);
    }
    let mut latencies: Vec<Duration> = grants
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(req, at)| paced.iter().find(|(id, _)| id == req).map(|(_, t)| at.saturating_duration_since(*t)))
        .collect();
    latencies.sort();
    let pct =
        |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default();
    println!(
        "{requests} requests x {slots} builders, one after another: {} of {} granted; request to grant p50 {:.1} ms, p99 {:.1} ms",
        latencies.len(),
        requests * slots,
        pct(0.5).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
    );

    // Throughput: many slots at once, every waiting builder wanting one.
    let burst_slots = 100.min(n);
    let burst_requests = (n / burst_slots).min(10);
    let start = Instant::now();
    let burst: Vec<(i64, Instant)> = (0..burst_requests).map(|r| ask(format!("burst-{r}"), burst_slots)).collect();
    wait_for(&burst, burst_requests * burst_slots);
    let done = granted(&burst);
    let last = grants.lock().unwrap().iter().filter(|(r, _)| burst.iter().any(|(i, _)| i == r)).map(|(_, t)| *t).max();
    let span = last.map(|t| t.duration_since(start)).unwrap_or_default();
    println!(
        "{burst_requests} requests x {burst_slots} builders at once: {done} granted in {:.2} s, {:.0} grants/s",
        span.as_secs_f64(),
        done as f64 / span.as_secs_f64().max(0.001)
    );
    stop.store(true, Ordering::SeqCst);
    // The pollers end with their current long poll; no need to wait for them.
    drop(pollers);
}

/// A number field of `/proc/PID/status` (kB for memory).
fn status_field(pid: &str, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(':'))?;
    line[name.len() + 1..].split_whitespace().next()?.parse().ok()
}

/// Descriptors the server has open (its connections among them).
fn open_fds(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}
