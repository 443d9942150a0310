//! Prometheus metrics at `/metrics`, kept in atomics: each server process exposes its own
//! counters, as Prometheus expects of every scraped instance.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::{HttpResponse, web};

use crate::AppState;

/// Upper bounds of the ingest latency histogram, in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

static ACCEPTED: AtomicU64 = AtomicU64::new(0);
static DUPLICATES: AtomicU64 = AtomicU64::new(0);
static LATENCY_COUNTS: [AtomicU64; BUCKETS.len() + 1] = [const { AtomicU64::new(0) }; BUCKETS.len() + 1];
static LATENCY_SUM_MICROS: AtomicU64 = AtomicU64::new(0);
/// (label, count): rejection reasons and results are few and known only at run time.
static REJECTED: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());
static RESULTS: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());

fn bump(list: &Mutex<Vec<(String, u64)>>, label: &str) {
    if let Ok(mut l) = list.lock() {
        match l.iter_mut().find(|(k, _)| k == label) {
            Some((_, n)) => *n += 1,
            None => l.push((label.to_owned(), 1)),
        }
    }
}

/// A report was recorded (`created`) or was a duplicate; `result` is the build's result.
pub fn accepted(created: bool, result: Option<&str>, took: Duration) {
    if created {
        ACCEPTED.fetch_add(1, Ordering::Relaxed);
        bump(&RESULTS, result.unwrap_or("building"));
    } else {
        DUPLICATES.fetch_add(1, Ordering::Relaxed);
    }
    let secs = took.as_secs_f64();
    let i = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
    LATENCY_COUNTS[i].fetch_add(1, Ordering::Relaxed);
    LATENCY_SUM_MICROS.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
}

/// A report was refused, for this reason (the error code clients see).
pub fn rejected(reason: &str) {
    bump(&REJECTED, reason);
}

/// `GET /metrics`.
pub async fn get(state: web::Data<AppState>) -> HttpResponse {
    let mut out = String::new();
    let _ = writeln!(out, "# HELP tbox_build_info Version of this server.\n# TYPE tbox_build_info gauge");
    let _ = writeln!(out, "tbox_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(
        out,
        "# HELP tbox_reports_accepted_total Reports recorded.\n# TYPE tbox_reports_accepted_total counter"
    );
    let _ = writeln!(out, "tbox_reports_accepted_total {}", ACCEPTED.load(Ordering::Relaxed));
    let _ =
        writeln!(out, "# HELP tbox_reports_duplicate_total Reports received again (answered 200, nothing recorded).");
    let _ = writeln!(
        out,
        "# TYPE tbox_reports_duplicate_total counter\ntbox_reports_duplicate_total {}",
        DUPLICATES.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP tbox_reports_rejected_total Reports refused, by reason.\n# TYPE tbox_reports_rejected_total counter"
    );
    if let Ok(l) = REJECTED.lock() {
        for (reason, n) in l.iter() {
            let _ = writeln!(out, "tbox_reports_rejected_total{{reason=\"{reason}\"}} {n}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP tbox_builds_recorded_total Builds recorded by this process, by result.\n# TYPE tbox_builds_recorded_total counter"
    );
    if let Ok(l) = RESULTS.lock() {
        for (result, n) in l.iter() {
            let _ = writeln!(out, "tbox_builds_recorded_total{{result=\"{result}\"}} {n}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP tbox_ingest_seconds Time to verify, validate and store a report.\n# TYPE tbox_ingest_seconds histogram"
    );
    let mut cumulative = 0;
    for (i, b) in BUCKETS.iter().enumerate() {
        cumulative += LATENCY_COUNTS[i].load(Ordering::Relaxed);
        let _ = writeln!(out, "tbox_ingest_seconds_bucket{{le=\"{b}\"}} {cumulative}");
    }
    cumulative += LATENCY_COUNTS[BUCKETS.len()].load(Ordering::Relaxed);
    let _ = writeln!(out, "tbox_ingest_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "tbox_ingest_seconds_sum {}", LATENCY_SUM_MICROS.load(Ordering::Relaxed) as f64 / 1e6);
    let _ = writeln!(out, "tbox_ingest_seconds_count {cumulative}");
    let pool = state.pool.state();
    let _ =
        writeln!(out, "# HELP tbox_db_connections Database connections, by state.\n# TYPE tbox_db_connections gauge");
    let _ = writeln!(out, "tbox_db_connections{{state=\"in_use\"}} {}", pool.connections - pool.idle_connections);
    let _ = writeln!(out, "tbox_db_connections{{state=\"idle\"}} {}", pool.idle_connections);
    let _ = writeln!(out, "tbox_db_connections{{state=\"max\"}} {}", state.pool.max_size());
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(out)
}
