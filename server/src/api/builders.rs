//! Builders: self-registration (`POST /api/v1/builders`) and a builder's public status.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use tbox_protocol::PublicKey;

use crate::AppState;
use crate::db::models::NewBuilder;
use crate::db::{self, DbConn, builders, projects};
use crate::error::AppError;

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
    pub keys: Vec<KeyView>,
    pub last_report_at: Option<String>,
}

/// A key's fingerprint and whether it still counts.
#[derive(Debug, Serialize)]
pub struct KeyView {
    pub fingerprint: String,
    pub revoked: bool,
}

/// `POST /api/v1/builders`.
pub async fn register(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: Result<web::Bytes, actix_web::Error>,
) -> Result<HttpResponse, AppError> {
    let body = body.map_err(|e| AppError::bad_request("bad_body", format!("the body could not be read: {e}")))?;
    let signature = req
        .headers()
        .get("tbox-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| AppError::unauthorized("unsigned", "missing Tbox-Signature header"))?;
    let pool = state.pool.clone();
    let (created, view) = web::block(move || -> Result<_, AppError> {
        let reg: Registration = serde_json::from_slice(&body)
            .map_err(|e| AppError::bad_request("malformed", format!("not a registration: {e}")))?;
        let key = PublicKey::from_pem(&reg.public_key)
            .map_err(|e| AppError::invalid("invalid", format!("public_key: {e}")))?;
        key.verify(&body, &signature)
            .map_err(|_| AppError::unauthorized("bad_signature", "the signature does not verify with public_key"))?;
        let mut conn = pool.get()?;
        db::write_transaction(&mut conn, |conn| register_in(conn, &reg, &key)).map_err(|e| match e {
            // Someone registered the same name a moment ago.
            AppError::Internal(err)
                if matches!(
                    err.downcast_ref::<diesel::result::Error>(),
                    Some(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _))
                ) =>
            {
                AppError::conflict("builder_exists", format!("a builder named {:?} is already registered", reg.name))
            }
            other => other,
        })
    })
    .await??;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(HttpResponse::build(status).json(view))
}

fn register_in(conn: &mut DbConn, reg: &Registration, key: &PublicKey) -> Result<(bool, BuilderView), AppError> {
    tbox_protocol::validate_name("name", &reg.name, 64).map_err(|e| AppError::invalid("invalid", e.to_string()))?;
    if reg.projects.is_empty() {
        return Err(AppError::invalid("invalid", "projects: name at least one project"));
    }
    for text in [&reg.owner, &reg.description].into_iter().flatten() {
        if text.len() > 500 || text.chars().any(char::is_control) {
            return Err(AppError::invalid("invalid", "owner and description: one line of at most 500 bytes"));
        }
    }
    let fingerprint = key.fingerprint();
    if let Some(existing) = builders::by_name(conn, &reg.name)? {
        // Only the holder of a key the builder already has may ask again (to learn its
        // status); nobody can take a name over or add a key to it through this door.
        let keys = builders::keys(conn, existing.id)?;
        if keys.iter().any(|k| k.fingerprint == fingerprint && k.revoked_at.is_none()) {
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
    Ok((true, view(conn, &reg.name)?))
}

fn view(conn: &mut DbConn, name: &str) -> Result<BuilderView, AppError> {
    let listed =
        builders::listed(conn, name)?.ok_or_else(|| AppError::not_found(format!("no builder named {name:?}")))?;
    Ok(BuilderView {
        name: listed.builder.name,
        status: listed.builder.status,
        projects: listed.projects,
        keys: listed
            .keys
            .into_iter()
            .map(|k| KeyView { fingerprint: k.fingerprint, revoked: k.revoked_at.is_some() })
            .collect(),
        last_report_at: listed.builder.last_report_at.map(super::views::time),
    })
}

/// `GET /api/v1/builders/{name}`: status, projects and key fingerprints (public information).
pub async fn get(state: web::Data<AppState>, path: web::Path<String>) -> Result<HttpResponse, AppError> {
    let name = path.into_inner();
    let pool = state.pool.clone();
    let v = web::block(move || -> Result<_, AppError> { view(&mut *pool.get()?, &name) }).await??;
    Ok(HttpResponse::Ok().json(v))
}
