//! Leases: a builder asks for work (`POST /api/v1/leases`, a long poll) and renews what it
//! got (`PUT /api/v1/leases/{id}`), both signed like a report.

use std::time::{Duration, Instant};

use actix_web::http::header::HeaderMap;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::views::time;
use crate::AppState;
use crate::db::models::Builder;
use crate::db::requests::{self, Asking, LeaseError};
use crate::db::{self, DbConn};
use crate::error::AppError;
use crate::ingest::{Submission, authenticate};

/// The longest a builder may wait for work in one request.
pub const MAX_WAIT: u64 = 120;

/// The body of `POST /api/v1/leases`.
#[derive(Debug, Deserialize)]
struct Ask {
    projects: Vec<String>,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    wait: u64,
}

/// What makes a signed lease or renew body good once: the builder's clock and a random nonce.
#[derive(Debug, Deserialize)]
struct Stamp {
    #[serde(default)]
    at: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
}

/// How far a signed body's `at` may be from the server's clock.
const FRESH: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// Long polls one builder may have waiting at once in this process: its `serve` needs one; a
/// second covers a restart while the first has not noticed yet.
pub const POLLS_PER_BUILDER: usize = 2;

/// Refuses a body that is not fresh (`at` more than a minute from our clock) or was sent
/// before (its `nonce` seen): a copied body cannot take leases in its builder's name.
fn check_stamp(pool: &crate::db::Pool, builder: &Builder, body: &[u8]) -> Result<(), AppError> {
    let stamp: Stamp = serde_json::from_slice(body)
        .map_err(|e| AppError::bad_request("malformed", format!("not a lease request: {e}")))?;
    let (Some(at), Some(nonce)) = (stamp.at, stamp.nonce) else {
        return Err(AppError::invalid(
            "invalid",
            "at, nonce: a signed lease or renew body carries the builder's time and a random nonce (tbox-report 0.1 \
             and later send them; update tbox-report)",
        ));
    };
    let at = DateTime::parse_from_rfc3339(&at)
        .map_err(|e| AppError::invalid("invalid", format!("at: not an RFC 3339 time: {e}")))?
        .to_utc();
    if nonce.len() < 16 || nonce.len() > 128 || !nonce.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AppError::invalid("invalid", "nonce: 16 to 128 printable characters"));
    }
    let now = Utc::now();
    if (now - at).abs() > FRESH {
        return Err(AppError::unauthorized(
            "stale",
            format!(
                "at: {} is {} s from the server's clock ({}): a signed body is good for a minute; if this is not a \
                 copied body, set this machine's clock (NTP)",
                at.to_rfc3339(),
                (now - at).num_seconds().abs(),
                now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        ));
    }
    let mut conn = pool.get()?;
    if !requests::remember_nonce(&mut conn, builder.id, &nonce, db::now())? {
        return Err(AppError::unauthorized(
            "replayed",
            "this signed body was sent before (its nonce is known): a copy of it is refused",
        ));
    }
    Ok(())
}

/// A lease granted: what to build.
#[derive(Debug, Serialize)]
struct Granted {
    lease: i64,
    request: i64,
    project: String,
    branch: String,
    revision: Option<String>,
    expires_at: String,
    /// The request as the project signed it (absent when an admin made it on the server):
    /// the builder checks it before it builds a requested revision.
    signed_request: Option<String>,
    request_signature: Option<String>,
}

/// The signed headers and body of a builder's request, checked.
async fn signed(req: &HttpRequest, state: &AppState, payload: web::Payload) -> Result<(Builder, web::Bytes), AppError> {
    let header = |h: &HeaderMap, n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(|s| s.trim().to_owned());
    let builder = header(req.headers(), "tbox-builder");
    let signature = header(req.headers(), "tbox-signature");
    if builder.as_deref().is_none_or(str::is_empty) || signature.as_deref().is_none_or(str::is_empty) {
        return Err(AppError::unauthorized("unsigned", "missing Tbox-Builder or Tbox-Signature header"));
    }
    let body = crate::body::read(req.headers(), payload, state.body_limits(64 << 10)).await?;
    let pool = state.pool.clone();
    let b2 = body.clone();
    let who = web::block(move || -> Result<Builder, AppError> {
        let mut conn = pool.get()?;
        let digest: [u8; 32] = Sha256::digest(&b2).into();
        let sub = Submission { builder: builder.as_deref(), signature: signature.as_deref(), body: &b2 };
        authenticate(&mut conn, sub, &digest)
    })
    .await??;
    Ok((who, body))
}

/// `POST /api/v1/leases`: 200 with a lease as soon as there is work for this builder, or 204
/// after `wait` seconds (at most [`MAX_WAIT`]).
pub async fn take(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, AppError> {
    let (builder, body) = signed(&req, &state, payload).await?;
    let ask: Ask = serde_json::from_slice(&body)
        .map_err(|e| AppError::bad_request("malformed", format!("not a lease request: {e}")))?;
    let (pool, b2, bytes) = (state.pool.clone(), builder.clone(), body.clone());
    web::block(move || check_stamp(&pool, &b2, &bytes)).await??;
    if ask.projects.is_empty() || ask.projects.len() > 100 {
        return Err(AppError::invalid("invalid", "projects: name 1 to 100 projects"));
    }
    for (i, c) in ask.capabilities.iter().enumerate() {
        tbox_protocol::validate_name(&format!("capabilities[{i}]"), c, 64)
            .map_err(|e| AppError::invalid("invalid", e.to_string()))?;
    }
    let wait = Duration::from_secs(ask.wait.min(MAX_WAIT));
    let pool = state.pool.clone();
    let (id, names) = (builder.id, ask.projects.clone());
    let projects =
        web::block(move || -> Result<_, AppError> { Ok(requests::allowed_projects(&mut *pool.get()?, id, &names)?) })
            .await??;
    if projects.is_empty() {
        return Err(AppError::forbidden(
            "not_allowed",
            format!("builder {:?} may report for none of {:?}", builder.name, ask.projects),
        ));
    }
    // A builder's own `serve` waits on one connection: more is a replayed or runaway client,
    // which must not hold this process's memory and connections.
    let Some(waiting) = state.work.wait_slot(builder.id, POLLS_PER_BUILDER) else {
        return Err(AppError::too_many(
            "too_many_polls",
            format!("builder {:?} already waits for work on {POLLS_PER_BUILDER} connections", builder.name),
            30,
        ));
    };
    // Subscribed before the first look, so that work appearing in between is not missed.
    let mut changes = state.work.subscribe();
    let deadline = Instant::now() + wait;
    loop {
        let (pool, projects, capabilities, ttl) =
            (state.pool.clone(), projects.clone(), ask.capabilities.clone(), state.lease_ttl);
        let turn = state.work.turn().await;
        // Looked at with the turn held: no newer poll of this builder's can take a lease in
        // this process meanwhile.
        if waiting.superseded() {
            return Ok(HttpResponse::NoContent().finish());
        }
        let granted = web::block(move || -> Result<_, AppError> {
            let _turn = turn;
            let mut conn = pool.get()?;
            try_grant(&mut conn, builder.id, &projects, &capabilities, ttl)
        })
        .await??;
        if let Some(g) = granted {
            return Ok(HttpResponse::Ok().json(Granted {
                lease: g.lease.id,
                request: g.request.id,
                project: g.project,
                branch: g.request.branch,
                revision: g.request.revision,
                expires_at: time(g.lease.expires_at),
                signed_request: g.request.body,
                request_signature: g.request.signature,
            }));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(HttpResponse::NoContent().finish());
        }
        // Woken when something changes, or at the end of the wait. (A closed channel means the
        // server is stopping: answer now.)
        match actix_web::rt::time::timeout(left, changes.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return Ok(HttpResponse::NoContent().finish()),
        }
    }
}

fn try_grant(
    conn: &mut DbConn,
    builder_id: i64,
    projects: &[(i64, String)],
    capabilities: &[String],
    ttl: chrono::TimeDelta,
) -> Result<Option<requests::Granted>, AppError> {
    let asking = Asking { builder_id, projects, capabilities };
    let now = db::now();
    // Most wake-ups find nothing for this builder: look before taking the grant lock.
    if !requests::has_work(conn, &asking, now)? {
        return Ok(None);
    }
    Ok(requests::grant(conn, &asking, ttl, now)?)
}

/// `PUT /api/v1/leases/{id}`: another `--lease-ttl` for a lease being built; 410 once it ran
/// out (the attempt is lost and its slot given to another builder) or is done.
pub async fn renew(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, AppError> {
    let id: i64 = path.parse().map_err(|_| AppError::not_found(format!("{:?} is not a lease id", path.as_str())))?;
    let (builder, body) = signed(&req, &state, payload).await?;
    let (pool, b2) = (state.pool.clone(), builder.clone());
    web::block(move || check_stamp(&pool, &b2, &body)).await??;
    let pool = state.pool.clone();
    let ttl = state.lease_ttl;
    let renewed = web::block(move || -> Result<_, AppError> {
        Ok(requests::renew(&mut *pool.get()?, id, builder.id, ttl, db::now())?)
    })
    .await??;
    match renewed {
        Ok(lease) => Ok(HttpResponse::Ok().json(serde_json::json!({
            "lease": lease.id, "state": lease.state, "expires_at": time(lease.expires_at)
        }))),
        Err(LeaseError::Unknown) => Err(AppError::not_found(format!("no lease {id} of this builder"))),
        Err(LeaseError::Mismatch(what)) => Err(AppError::invalid("lease_mismatch", what)),
        Err(LeaseError::Answered(what)) => Err(AppError::conflict("lease_answered", what)),
        Err(LeaseError::Over(state)) => Err(AppError::gone(format!(
            "lease {id} is {state}: build the request again only if a new lease is granted"
        ))),
    }
}
