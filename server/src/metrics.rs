//! Prometheus metrics at `/metrics`, kept in memory: each server process exposes its own
//! counters, as Prometheus expects of every scraped instance.
//!
//! Every series a dashboard may use exists from the start (at 0): a rate over a series that
//! appears only with the first event is empty until then, and alerts on it never fire.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, web};

use crate::AppState;

/// Upper bounds of the latency histograms, in seconds.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0, 120.0];

/// Why reports are refused: the error codes clients see (`error.rs`, `ingest.rs`, `body.rs`).
const REASONS: &[&str] = &[
    "malformed",
    "invalid",
    "unsigned",
    "bad_header",
    "bad_signature",
    "unknown_builder",
    "key_revoked",
    "builder_pending",
    "builder_revoked",
    "builder_mismatch",
    "not_allowed",
    "unknown_project",
    "unknown_lease",
    "build_conflict",
    "too_large",
    "too_slow",
    "unsupported_media_type",
    "bad_body",
];

/// What a finished build may be.
const RESULTS: &[&str] = &["success", "warnings", "failure", "exception", "skipped", "cancelled"];

/// A latency histogram.
#[derive(Default, Clone)]
struct Histogram {
    buckets: [u64; BUCKETS.len() + 1],
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        let i = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += secs;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i];
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.buckets[BUCKETS.len()];
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

#[derive(Default)]
struct Counters {
    accepted: u64,
    duplicates: u64,
    rejected: BTreeMap<String, u64>,
    finished: BTreeMap<String, u64>,
    started: u64,
    ingest: Histogram,
    /// (method, route pattern, status) → count.
    requests: BTreeMap<(String, String, u16), u64>,
    /// route pattern → latency.
    routes: BTreeMap<String, Histogram>,
    /// (subscription kind, outcome) → notification attempts.
    notifications: BTreeMap<(&'static str, &'static str), u64>,
}

static COUNTERS: Mutex<Option<Counters>> = Mutex::new(None);

fn with(f: impl FnOnce(&mut Counters)) {
    if let Ok(mut c) = COUNTERS.lock() {
        f(c.get_or_insert_with(Counters::default));
    }
}

/// A report was recorded (`created`) or was a duplicate; `result` is the build's result once
/// it is finished. A build reported `started` then `finished` is counted once by result (at
/// its finish), and once among the builds started.
pub fn accepted(created: bool, result: Option<&str>, took: Duration) {
    with(|c| {
        if created {
            c.accepted += 1;
            match result {
                Some(r) => *c.finished.entry(r.to_owned()).or_default() += 1,
                None => c.started += 1,
            }
        } else {
            c.duplicates += 1;
        }
        c.ingest.observe(took.as_secs_f64());
    });
}

/// A report was refused, for this reason (the error code clients see).
pub fn rejected(reason: &str) {
    with(|c| *c.rejected.entry(reason.to_owned()).or_default() += 1);
}

/// How attempts to notify a subscriber end: delivered, failed (tried again later), or failed
/// for the last time (given up after a day).
pub const NOTIFY_OUTCOMES: [&str; 3] = ["delivered", "failed", "given_up"];

/// An attempt to notify a `webhook` or `email` subscriber ended so.
pub fn notification(kind: &str, outcome: &'static str) {
    let kind = if kind == "email" { "email" } else { "webhook" };
    with(|c| *c.notifications.entry((kind, outcome)).or_default() += 1);
}

/// Middleware: counts every request by method, route and status, and times it by route. The
/// route is the pattern (`/projects/{project}`), never the path, so the series stay few.
pub async fn track(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let began = Instant::now();
    let method = req.method().as_str().to_owned();
    let res = next.call(req).await?.map_into_boxed_body();
    let route = res.request().match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    let status = res.status().as_u16();
    let secs = began.elapsed().as_secs_f64();
    with(|c| {
        *c.requests.entry((method, route.clone(), status)).or_default() += 1;
        c.routes.entry(route).or_default().observe(secs);
    });
    Ok(res)
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// `GET /metrics`.
pub async fn get(state: web::Data<AppState>) -> HttpResponse {
    let mut out = String::new();
    family(&mut out, "tbox_build_info", "gauge", "Version of this server.");
    let _ = writeln!(out, "tbox_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    with(|c| {
        family(&mut out, "tbox_reports_accepted_total", "counter", "Reports recorded.");
        let _ = writeln!(out, "tbox_reports_accepted_total {}", c.accepted);
        family(
            &mut out,
            "tbox_reports_duplicate_total",
            "counter",
            "Reports received again (answered 200, nothing recorded).",
        );
        let _ = writeln!(out, "tbox_reports_duplicate_total {}", c.duplicates);
        family(&mut out, "tbox_reports_rejected_total", "counter", "Reports refused, by reason.");
        let mut reasons: BTreeMap<&str, u64> = REASONS.iter().map(|r| (*r, 0)).collect();
        for (r, n) in &c.rejected {
            *reasons.entry(r.as_str()).or_default() += n;
        }
        for (reason, n) in reasons {
            let _ = writeln!(out, "tbox_reports_rejected_total{{reason=\"{reason}\"}} {n}");
        }
        family(&mut out, "tbox_builds_started_total", "counter", "Builds reported as started by this process.");
        let _ = writeln!(out, "tbox_builds_started_total {}", c.started);
        family(
            &mut out,
            "tbox_builds_recorded_total",
            "counter",
            "Finished builds recorded by this process, by result (each build once).",
        );
        let mut results: BTreeMap<&str, u64> = RESULTS.iter().map(|r| (*r, 0)).collect();
        for (r, n) in &c.finished {
            *results.entry(r.as_str()).or_default() += n;
        }
        for (result, n) in results {
            let _ = writeln!(out, "tbox_builds_recorded_total{{result=\"{result}\"}} {n}");
        }
        family(&mut out, "tbox_ingest_seconds", "histogram", "Time to verify, validate and store a report.");
        c.ingest.write(&mut out, "tbox_ingest_seconds", "");
        family(&mut out, "tbox_http_requests_total", "counter", "HTTP requests, by method, route and status.");
        for ((method, route, status), n) in &c.requests {
            let _ = writeln!(
                out,
                "tbox_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
                label(route)
            );
        }
        family(
            &mut out,
            "tbox_notifications_total",
            "counter",
            "Attempts to notify subscribers by this process, by kind and outcome.",
        );
        for kind in ["email", "webhook"] {
            for outcome in NOTIFY_OUTCOMES {
                let n = c.notifications.get(&(kind, outcome)).copied().unwrap_or(0);
                let _ = writeln!(out, "tbox_notifications_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {n}");
            }
        }
        family(&mut out, "tbox_http_request_duration_seconds", "histogram", "Time to answer, by route.");
        for (route, h) in &c.routes {
            h.write(&mut out, "tbox_http_request_duration_seconds", &format!("route=\"{}\"", label(route)));
        }
    });
    let pool = state.pool.state();
    family(&mut out, "tbox_db_connections", "gauge", "Database connections open, by state.");
    let _ = writeln!(out, "tbox_db_connections{{state=\"in_use\"}} {}", pool.connections - pool.idle_connections);
    let _ = writeln!(out, "tbox_db_connections{{state=\"idle\"}} {}", pool.idle_connections);
    family(&mut out, "tbox_db_connections_max", "gauge", "Database connections the pool may open.");
    let _ = writeln!(out, "tbox_db_connections_max {}", state.pool.max_size());
    process(&mut out);
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(out)
}

/// A label value, escaped as the text format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The standard `process_*` metrics, from /proc (Linux).
fn process(out: &mut String) {
    // Linux reports CPU times in USER_HZ, which is 100 on every architecture it runs on.
    const TICKS: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces), counting from field 3.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let page = 4096.0;
    family(out, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.");
    let _ = writeln!(out, "process_cpu_seconds_total {}", (field(14) + field(15)) / TICKS);
    family(out, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
    let _ = writeln!(out, "process_virtual_memory_bytes {}", field(23));
    family(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
    let _ = writeln!(out, "process_resident_memory_bytes {}", field(24) * page);
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok())))
        .unwrap_or(0.0);
    family(out, "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.");
    let _ = writeln!(out, "process_start_time_seconds {}", boot + field(22) / TICKS);
    let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
    family(out, "process_open_fds", "gauge", "Number of open file descriptors.");
    let _ = writeln!(out, "process_open_fds {fds}");
    let max = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(max) = max {
        family(out, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
        let _ = writeln!(out, "process_max_fds {max}");
    }
}
