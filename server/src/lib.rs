//! tbox-server: receives signed build reports from volunteers and shows them.
//!
//! How a request flows, file by file:
//! `main.rs` → `cli.rs` (subcommands, one file each in `cmd/`) → `cmd/serve.rs` builds the
//! pool and the app → `routes.rs` (the one table of URLs) → handlers by resource in `api/`
//! (JSON) and `web/` (pages) → `db/` (schema, rows, queries).
//! A report goes `api/reports.rs` → `ingest.rs` (signature, validation, one transaction).
//! `error.rs` says which error type goes where.

#![allow(missing_docs)] // Internal modules; the crate's public face is its CLI and HTTP API.

/// `println!` that does not panic when stdout is closed early (`tbox-report check | head`): the
/// reader has gone, which is not an error of ours.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub mod api;
pub mod body;
pub mod cli;
pub mod cmd;
pub mod connections;
pub mod db;
pub mod error;
pub mod health;
pub mod ingest;
pub mod leases;
pub mod logging;
pub mod logscan;
pub mod metrics;
pub mod notify;
pub mod project_keys;
pub mod proxy;
pub mod ratelimit;
pub mod results;
pub mod routes;
pub mod signature;
pub mod web;
pub mod writer;

/// What every handler shares: built once in `serve`, handed out as `web::Data`.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The database pool.
    pub pool: db::Pool,
    /// On SQLite, the one thread that writes reports (group commit); none on PostgreSQL.
    pub writer: Option<writer::Writer>,
    /// Largest report body accepted, in bytes.
    pub max_body: usize,
    /// Bytes per second a body must average after its grace period.
    pub min_body_rate: u64,
    /// How long any body may take regardless of its rate.
    pub body_grace: std::time::Duration,
    /// Bytes all request bodies being read may hold together.
    pub body_memory: usize,
    /// Self-registrations per client address and in total.
    pub registrations: std::sync::Arc<ratelimit::Limiter>,
    /// Registrations that may wait for approval in one project.
    pub max_pending: i64,
    /// A builder not heard from for this long is shown as stale.
    pub stale_after: chrono::TimeDelta,
    /// A started build with no finished report after this long is shown as lost.
    pub lost_after: chrono::TimeDelta,
    /// The server's public base URL, if configured (no trailing slash).
    pub public_url: Option<String>,
    /// How long a lease lasts without renewal.
    pub lease_ttl: chrono::TimeDelta,
    /// Moves when there may be new work for builders waiting on a lease (long polls).
    pub work: leases::Work,
    /// Reverse proxies whose `X-Forwarded-*` headers are believed (`serve --trusted-proxy`).
    pub proxies: proxy::TrustedProxies,
}

impl AppState {
    /// How a body of at most `max` bytes must arrive.
    pub fn body_limits(&self, max: usize) -> body::Limits {
        body::Limits { max, min_rate: self.min_body_rate, grace: self.body_grace, budget: self.body_memory.max(max) }
    }
}
