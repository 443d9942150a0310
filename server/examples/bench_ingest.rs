//! Ingest benchmark client: sends pre-signed, realistic reports (5 steps, ~64 KiB of logs,
//! 200 tests) from several concurrent clients and prints reports/s and p50/p99 latency.
//!
//! Driven by `scripts/bench-ingest`, which starts a server per backend:
//! `bench_ingest BASE_URL BUILDER PRIVATE_KEY.pem [REPORTS] [CLIENTS]`
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use serde_json::json;
use tbox_protocol::PrivateKey;

fn log_text(step: usize, build: usize) -> String {
    // Compiler-like output: repetitive, as real logs are, so compression ratios are realistic.
    (0..100)
        .map(|i| {
            format!(
                "[{step}/{i}] cc -O2 -Wall -c src/module_{i}.c -o build/module_{i}.o  # build {build}\n\
                 src/module_{i}.c:{}:5: warning: unused variable 'tmp_{i}' [-Wunused-variable]\n",
                i * 7 + 3
            )
        })
        .collect()
}

fn report(n: usize, builder: &str) -> Vec<u8> {
    let t = |m: u32| format!("2026-11-01T10:{:02}:00Z", m);
    let steps: Vec<_> = (0..5)
        .map(|s| {
            json!({"name": format!("step{s}"), "result": "success", "started_at": t(s as u32),
                   "finished_at": t(s as u32 + 1), "exit_code": 0, "log": log_text(s, n),
                   "kind": if s == 4 { Some("test") } else { None }})
        })
        .collect();
    let tests: Vec<_> = (0..200)
        .map(|i| {
            json!({"suite": format!("suite{}", i / 20), "name": format!("test_{i}"),
                        "result": if i % 50 == 0 { "failed" } else { "passed" }, "duration_ms": i,
                        "message": if i % 50 == 0 { Some("assertion failed: left == right") } else { None }})
        })
        .collect();
    json!({"format": "tbox-report/1", "uuid": format!("bench-{n}-{}", std::process::id()), "project": "bench",
           "builder": builder, "state": "finished", "result": "success", "branch": "main",
           "revision": format!("{n:040x}"), "started_at": t(0), "finished_at": t(6), "steps": steps,
           "tests": tests, "properties": {"os": "linux"}, "reporter": "bench_ingest"})
    .to_string()
    .into_bytes()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: bench_ingest BASE_URL BUILDER PRIVATE_KEY.pem [REPORTS] [CLIENTS]");
        std::process::exit(2);
    }
    let (base, builder) = (args[1].clone(), args[2].clone());
    let key = PrivateKey::from_pem(&std::fs::read_to_string(&args[3]).unwrap()).unwrap();
    let total: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(400);
    let clients: usize = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(4);

    // Sign everything first: the benchmark measures the server, not the client.
    let bodies: Vec<(Vec<u8>, String)> = (0..total)
        .map(|n| {
            let body = report(n, &builder);
            let sig = key.sign(&body);
            (body, sig)
        })
        .collect();
    let body_kib = bodies.iter().map(|(b, _)| b.len()).sum::<usize>() / total / 1024;

    let url = format!("{base}/api/v1/reports");
    let start = Instant::now();
    let chunks: Vec<Vec<(Vec<u8>, String)>> = {
        let mut chunks = vec![Vec::new(); clients];
        for (i, b) in bodies.into_iter().enumerate() {
            chunks[i % clients].push(b);
        }
        chunks
    };
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let url = url.clone();
            let builder = builder.clone();
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                let mut lat = Vec::with_capacity(chunk.len());
                for (body, sig) in chunk {
                    let t = Instant::now();
                    let resp = agent
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .header("Tbox-Builder", &builder)
                        .header("Tbox-Signature", &sig)
                        .send(&body[..])
                        .unwrap();
                    assert_eq!(resp.status().as_u16(), 201, "report refused");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<Duration> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let elapsed = start.elapsed();
    lat.sort();
    println!(
        "{total} reports (~{body_kib} KiB each, 5 steps, 200 tests) from {clients} clients in {:.2}s: \
         {:.0} reports/s, p50 {:.1} ms, p99 {:.1} ms",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
    );
}
