//! Prometheus metrics at `/metrics`, kept in memory: each server process exposes its own
//! counters, as Prometheus expects of every scraped instance. The Prometheus organisation's
//! `prometheus-client` keeps them and writes the OpenMetrics text format (escaping, histogram
//! buckets and `_total` suffixes are its business, not ours).
//!
//! Every series a dashboard may use exists from the start (at 0): a rate over a series that
//! appears only with the first event is empty until then, and alerts on it never fire.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Attempt {
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolState {
    state: String,
}

fn latency() -> Histogram {
    Histogram::new(BUCKETS)
}

/// This process's counters (each a shared handle: a clone counts into the same value).
struct Metrics {
    accepted: Counter,
    duplicates: Counter,
    rejected: Family<Reason, Counter>,
    started: Counter,
    finished: Family<Outcome, Counter>,
    ingest: Histogram,
    requests: Family<Request, Counter>,
    routes: Family<Route, Histogram, fn() -> Histogram>,
    notifications: Family<Attempt, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = Metrics {
        accepted: Counter::default(),
        duplicates: Counter::default(),
        rejected: Family::default(),
        started: Counter::default(),
        finished: Family::default(),
        ingest: latency(),
        requests: Family::default(),
        routes: Family::new_with_constructor(latency),
        notifications: Family::default(),
    };
    for reason in REASONS {
        let _ = m.rejected.get_or_create(&Reason { reason: (*reason).to_owned() });
    }
    for result in RESULTS {
        let _ = m.finished.get_or_create(&Outcome { result: (*result).to_owned() });
    }
    for kind in NOTIFY_KINDS {
        for outcome in NOTIFY_OUTCOMES {
            let _ = m.notifications.get_or_create(&Attempt { kind: kind.to_owned(), outcome: outcome.to_owned() });
        }
    }
    m
});

/// A report was recorded (`created`) or was a duplicate; `result` is the build's result once
/// it is finished. A build reported `started` then `finished` is counted once by result (at
/// its finish), and once among the builds started.
pub fn accepted(created: bool, result: Option<&str>, took: Duration) {
    let m = &*METRICS;
    if created {
        m.accepted.inc();
        match result {
            Some(r) => {
                m.finished.get_or_create(&Outcome { result: r.to_owned() }).inc();
            }
            None => {
                m.started.inc();
            }
        }
    } else {
        m.duplicates.inc();
    }
    m.ingest.observe(took.as_secs_f64());
}

/// A report was refused, for this reason (the error code clients see).
pub fn rejected(reason: &str) {
    METRICS.rejected.get_or_create(&Reason { reason: reason.to_owned() }).inc();
}

/// How attempts to notify a subscriber end: delivered, failed (tried again later), or failed
/// for the last time (given up).
pub const NOTIFY_OUTCOMES: [&str; 3] = ["delivered", "failed", "given_up"];

/// Whom notifications go to: subscriptions' kinds.
const NOTIFY_KINDS: [&str; 3] = ["email", "webhook", "forge"];

/// An attempt to notify a `webhook`, `email` or `forge` subscriber ended so.
pub fn notification(kind: &str, outcome: &'static str) {
    let kind = NOTIFY_KINDS.iter().find(|k| **k == kind).copied().unwrap_or("webhook");
    METRICS.notifications.get_or_create(&Attempt { kind: kind.to_owned(), outcome: outcome.to_owned() }).inc();
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
    METRICS.requests.get_or_create(&Request { method, route: route.clone(), status }).inc();
    METRICS.routes.get_or_create(&Route { route }).observe(secs);
    Ok(res)
}

/// `GET /metrics`: this process's counters, its database pool and the standard `process_*`
/// metrics, in the OpenMetrics text format.
pub async fn get(state: web::Data<AppState>) -> HttpResponse {
    let m = &*METRICS;
    let mut r = Registry::default();
    r.register("tbox_build", "Version of this server", Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]));
    r.register("tbox_reports_accepted", "Reports recorded", m.accepted.clone());
    r.register(
        "tbox_reports_duplicate",
        "Reports received again (answered 200, nothing recorded)",
        m.duplicates.clone(),
    );
    r.register("tbox_reports_rejected", "Reports refused, by reason", m.rejected.clone());
    r.register("tbox_builds_started", "Builds reported as started by this process", m.started.clone());
    r.register(
        "tbox_builds_recorded",
        "Finished builds recorded by this process, by result (each build once)",
        m.finished.clone(),
    );
    r.register("tbox_ingest_seconds", "Time to verify, validate and store a report", m.ingest.clone());
    r.register("tbox_http_requests", "HTTP requests, by method, route and status", m.requests.clone());
    r.register("tbox_http_request_duration_seconds", "Time to answer, by route", m.routes.clone());
    r.register(
        "tbox_notifications",
        "Attempts to notify subscribers by this process, by kind and outcome",
        m.notifications.clone(),
    );
    let pool = state.pool.state();
    let connections = Family::<PoolState, Gauge>::default();
    let in_use = pool.connections.saturating_sub(pool.idle_connections);
    connections.get_or_create(&PoolState { state: "in_use".to_owned() }).set(i64::from(in_use));
    connections.get_or_create(&PoolState { state: "idle".to_owned() }).set(i64::from(pool.idle_connections));
    r.register("tbox_db_connections", "Database connections open, by state", connections);
    r.register(
        "tbox_db_connections_max",
        "Database connections the pool may open",
        ConstGauge::new(i64::from(state.pool.max_size())),
    );
    process(&mut r);
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &r) {
        log::error!("/metrics: {e}");
        return HttpResponse::InternalServerError().finish();
    }
    HttpResponse::Ok().content_type("application/openmetrics-text; version=1.0.0; charset=utf-8").body(out)
}

/// The standard `process_*` metrics, from /proc (Linux), in the units the kernel counts in
/// here: clock ticks and pages of this machine's sizes, not assumed ones.
fn process(r: &mut Registry) {
    use nix::unistd::{SysconfVar, sysconf};
    let conf = |v: SysconfVar, default: f64| sysconf(v).ok().flatten().map_or(default, |n| n as f64);
    let ticks = conf(SysconfVar::CLK_TCK, 100.0);
    let page = conf(SysconfVar::PAGE_SIZE, 4096.0);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces), counting from field 3.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    r.register(
        "process_cpu_seconds",
        "Total user and system CPU time spent in seconds",
        ConstCounter::new((field(14) + field(15)) / ticks),
    );
    r.register("process_virtual_memory_bytes", "Virtual memory size in bytes", ConstGauge::new(field(23)));
    r.register("process_resident_memory_bytes", "Resident memory size in bytes", ConstGauge::new(field(24) * page));
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok())))
        .unwrap_or(0.0);
    r.register(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds",
        ConstGauge::new(boot + field(22) / ticks),
    );
    let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
    r.register("process_open_fds", "Number of open file descriptors", ConstGauge::new(fds as i64));
    let max = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok().map(|(soft, _)| soft);
    if let Some(max) = max.and_then(|m| i64::try_from(m).ok()) {
        r.register("process_max_fds", "Maximum number of open file descriptors", ConstGauge::new(max));
    }
}
