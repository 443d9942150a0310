//! Builders: self-registration (`POST /api/v1/builders`) and a builder's public status.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use tbox_protocol::PublicKey;

use crate::AppState;
use crate::db::models::NewBuilder;
use crate::db::{self, DbConn, builders, projects};
use crate::error::AppError;
use crate::ratelimit::Refused;

/// The body of a self-registration, signed (`Tbox-Signature`) with the private half of
/// `public_key`: proof that the sender holds the key it registers.
#[derive(Debug, Deserialize)]
pub struct Registration {
    pub name: String,
    #[serde(default)]
    pub owner: Option<String>,
    pub projects: Vec<String>,
    pub public_key: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// A builder as anyone may see it.
#[derive(Debug, Serialize)]
pub struct BuilderView {
    pub name: String,
    pub status: String,
    pub projects: Vec<String>,
    /// Projects it asked to join that wait for an admin's approval.
    pub pending_projects: Vec<String>,
    pub keys: Vec<KeyView>,
    pub last_report_at: Option<String>,
    /// Its agreement record, all projects: answers that matched a verdict, and that did not.
    pub agreement: AgreementView,
}

/// A builder's agreement record.
#[derive(Debug, Serialize)]
pub struct AgreementView {
    pub agreed: i64,
    pub disputed: i64,
}

/// A key's fingerprint and whether it still counts.
#[derive(Debug, Serialize)]
pub struct KeyView {
    pub fingerprint: String,
    pub revoked: bool,
}

/// Projects one registration may name.
const MAX_PROJECTS: usize = 32;

/// `POST /api/v1/builders`.
pub async fn register(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, AppError> {
    // The address's allowance before anything costly (reading the body, RSA), so refused floods
    // are cheap; everyone's allowance only once the signature is shown to verify, so junk cannot
    // use it up.
    // The client's address: through a trusted proxy, the one it forwards.
    let client = state.proxies.client(req.peer_addr().map(|a| a.ip()), req.headers());
    if let Some(ip) = client {
        state.registrations.check_address(ip, std::time::Instant::now()).map_err(throttled)?;
    }
    let body = crate::body::read(req.headers(), payload, state.body_limits(64 << 10)).await?;
    let signature = req
        .headers()
        .get("tbox-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| AppError::unauthorized("unsigned", "missing Tbox-Signature header"))?;
    let pool = state.pool.clone();
    let max_pending = state.max_pending;
    let registrations = state.registrations.clone();
    let network = client.map(crate::ratelimit::network);
    let (created, view) = web::block(move || -> Result<_, AppError> {
        let reg: Registration = serde_json::from_slice(&body)
            .map_err(|e| AppError::bad_request("malformed", format!("not a registration: {e}")))?;
        let key = PublicKey::from_pem(&reg.public_key)
            .map_err(|e| AppError::invalid("invalid", format!("public_key: {e}")))?;
        key.verify(&body, &signature)
            .map_err(|_| AppError::unauthorized("bad_signature", "the signature does not verify with public_key"))?;
        registrations.check_total(std::time::Instant::now()).map_err(throttled)?;
        check(&reg)?;
        let mut conn = pool.get()?;
        db::write_transaction(&mut conn, |conn| register_in(conn, &reg, &key, max_pending, network.as_deref())).map_err(
            |e| match e {
                // Someone registered the same name a moment ago.
                AppError::Internal(err)
                    if matches!(
                        err.downcast_ref::<diesel::result::Error>(),
                        Some(diesel::result::Error::DatabaseError(
                            diesel::result::DatabaseErrorKind::UniqueViolation,
                            _
                        ))
                    ) =>
                {
                    AppError::conflict(
                        "builder_exists",
                        format!("a builder named {:?} is already registered", reg.name),
                    )
                }
                other => other,
            },
        )
    })
    .await??;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(HttpResponse::build(status).json(view))
}

fn throttled(refused: Refused) -> AppError {
    match refused {
        Refused::Address(secs) => AppError::too_many(
            "rate_limited",
            format!("too many registrations from your address; try again in {secs} s"),
            secs,
        ),
        Refused::Total(secs) => AppError::too_many(
            "rate_limited",
            format!("this server takes few registrations at a time; try again in {secs} s"),
            secs,
        ),
    }
}

/// What can be said of a registration without the database.
fn check(reg: &Registration) -> Result<(), AppError> {
    let invalid = |m: String| AppError::invalid("invalid", m);
    tbox_protocol::validate_name("name", &reg.name, 64).map_err(|e| invalid(e.to_string()))?;
    if reg.projects.is_empty() {
        return Err(invalid("projects: name at least one project".into()));
    }
    if reg.projects.len() > MAX_PROJECTS {
        return Err(invalid(format!("projects: at most {MAX_PROJECTS}, got {}", reg.projects.len())));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, p) in reg.projects.iter().enumerate() {
        tbox_protocol::validate_name(&format!("projects[{i}]"), p, 64).map_err(|e| invalid(e.to_string()))?;
        if !seen.insert(p) {
            return Err(invalid(format!("projects[{i}]: {p:?} is named twice")));
        }
    }
    for text in [&reg.owner, &reg.description].into_iter().flatten() {
        if text.len() > 500 || text.chars().any(char::is_control) {
            return Err(invalid("owner and description: one line of at most 500 bytes".into()));
        }
    }
    Ok(())
}

/// Registrations one network may have waiting for approval in one project.
pub const PENDING_PER_NETWORK: i64 = 3;

fn register_in(
    conn: &mut DbConn,
    reg: &Registration,
    key: &PublicKey,
    max_pending: i64,
    network: Option<&str>,
) -> Result<(bool, BuilderView), AppError> {
    let fingerprint = key.fingerprint();
    if let Some(existing) = builders::by_name(conn, &reg.name)? {
        // Only the holder of a key the builder already has may ask again (to learn its
        // status); nobody can take a name over or add a key to it through this door.
        let keys = builders::keys(conn, existing.id)?;
        if keys.iter().any(|k| k.fingerprint == fingerprint && k.revoked_at.is_none()) {
            // The holder asks for more projects (a second `join`): they wait for an admin's
            // approval, as the first did; nothing is granted here.
            for p in &reg.projects {
                let project = projects::by_name(conn, p)?
                    .ok_or_else(|| AppError::invalid("unknown_project", format!("projects: no project named {p:?}")))?;
                if !builders::may_report(conn, existing.id, project.id)? {
                    builders::request_project(conn, existing.id, project.id)?;
                }
            }
            return Ok((false, view(conn, &reg.name)?));
        }
        return Err(AppError::conflict(
            "builder_exists",
            format!("a builder named {:?} is already registered; choose another name", reg.name),
        ));
    }
    let mut project_ids = Vec::new();
    for p in &reg.projects {
        let project = projects::by_name(conn, p)?
            .ok_or_else(|| AppError::invalid("unknown_project", format!("projects: no project named {p:?}")))?;
        // Counted inside the write transaction, so concurrent registrations cannot overshoot.
        if let Some(net) = network
            && builders::pending_from(conn, project.id, net)? >= PENDING_PER_NETWORK
        {
            return Err(AppError::too_many(
                "too_many_pending",
                format!(
                    "your network ({net}) already has {PENDING_PER_NETWORK} registrations waiting for approval in \
                     project {p:?}; ask its administrators to approve or reject them"
                ),
                3600,
            ));
        }
        if builders::pending_count(conn, project.id)? >= max_pending {
            // Full: a newcomer still gets in, in place of the oldest registration of the network
            // that holds most of the queue (a few networks cannot lock everyone else out).
            match builders::most_crowded_pending(conn, project.id, network)? {
                Some((name, net, n)) => {
                    builders::reject_pending(conn, Some(std::slice::from_ref(&name)), None)?;
                    log::info!(
                        "project {p}: pending registration {name} ({net}, {n} waiting from there) gave way to a \
                         registration from {}",
                        network.unwrap_or("an unknown address")
                    );
                }
                None => {
                    return Err(AppError::too_many(
                        "too_many_pending",
                        format!(
                            "project {p:?} already has {max_pending} registrations waiting for approval; \
                             ask its administrators to approve or reject them"
                        ),
                        3600,
                    ));
                }
            }
        }
        project_ids.push(project.id);
    }
    let builder = builders::add(
        conn,
        &NewBuilder {
            name: &reg.name,
            status: builders::PENDING,
            owner: reg.owner.as_deref(),
            description: reg.description.as_deref(),
            properties: "{}",
            created_at: db::now(),
        },
    )?;
    for id in project_ids {
        builders::allow(conn, builder.id, id)?;
    }
    builders::add_key(conn, builder.id, &fingerprint, &key.to_pem())?;
    if let Some(net) = network {
        builders::set_registered_from(conn, builder.id, net)?;
    }
    Ok((true, view(conn, &reg.name)?))
}

fn view(conn: &mut DbConn, name: &str) -> Result<BuilderView, AppError> {
    let listed =
        builders::listed(conn, name)?.ok_or_else(|| AppError::not_found(format!("no builder named {name:?}")))?;
    let pending_projects = builders::requested_projects(conn, listed.builder.id)?;
    Ok(BuilderView {
        pending_projects,
        name: listed.builder.name,
        status: listed.builder.status,
        projects: listed.projects,
        keys: listed
            .keys
            .into_iter()
            .map(|k| KeyView { fingerprint: k.fingerprint, revoked: k.revoked_at.is_some() })
            .collect(),
        last_report_at: listed.builder.last_report_at.map(super::views::time),
        agreement: AgreementView { agreed: listed.builder.agreed, disputed: listed.builder.disputed },
    })
}

/// `GET /api/v1/builders/{name}`: status, projects and key fingerprints (public information).
///
/// Only active builders, unless the request is signed by one of the builder's own keys
/// (`Tbox-Signature` over the path): a pending or revoked builder is as unknown here as on the
/// pages, except to its holder, whose `tbox-report check` wants to say "pending".
pub async fn get(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let name = path.into_inner();
    let pool = state.pool.clone();
    let proof = req.headers().get("tbox-signature").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let signed = req.uri().path().to_owned();
    let v = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let unknown = || AppError::not_found(format!("no active builder named {name:?}"));
        let builder = builders::by_name(&mut conn, &name)?.ok_or_else(unknown)?;
        if builder.status != builders::ACTIVE {
            let keys = builders::keys(&mut conn, builder.id)?;
            let proven = proof.is_some_and(|sig| {
                keys.iter().filter(|k| k.revoked_at.is_none()).any(|k| {
                    PublicKey::from_pem(&k.public_key).is_ok_and(|key| key.verify(signed.as_bytes(), &sig).is_ok())
                })
            });
            if !proven {
                return Err(unknown());
            }
        }
        view(&mut conn, &name)
    })
    .await??;
    Ok(HttpResponse::Ok().json(v))
}
