//! A project's signed recipes and its signing keys.
//!
//! The server is only a mirror here: it checks a recipe's signature so that nobody can fill
//! it with junk, and keeps the exact bytes and signature so that every volunteer can check
//! them again against the key *it* pinned. Nothing a volunteer runs depends on trusting us.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use serde::Serialize;
use tbox_protocol::{MAX_RECIPE_BYTES, PublicKey, RecipeError, parse_recipe, report_id};

use super::status::project;
use crate::AppState;
use crate::db::models::{NewProjectKey, ProjectKey, RecipeRow};
use crate::db::{self, DbConn, recipes, to_db_time};
use crate::error::AppError;

/// The answer to a publication.
#[derive(Debug, Serialize)]
struct Published {
    project: String,
    version: u64,
    /// Hex SHA-256 of the recipe bytes.
    digest: String,
    /// The key that signed it.
    key: String,
    url: String,
}

/// `PUT /api/v1/projects/{p}/recipe`: the body is the recipe, `Tbox-Signature` a project key's
/// signature over it.
pub async fn publish(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, AppError> {
    super::require_content_type(req.headers(), "application/toml")?;
    let signature = super::project_signature(req.headers())?;
    let body = crate::body::read(req.headers(), payload, state.body_limits(MAX_RECIPE_BYTES)).await?;
    let name = path.into_inner();
    let pool = state.pool.clone();
    let name2 = name.clone();
    let published = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = project(&mut conn, &name2)?;
        let keys = recipes::active_keys(&mut conn, p.id)?;
        let signer = signed_by(&keys, &body, &signature, &name2)?;
        let recipe = parse_recipe(&body).map_err(|e| match e {
            RecipeError::TooLarge(_) => AppError::too_large(e.to_string()),
            other => AppError::invalid("invalid_recipe", other.to_string()),
        })?;
        if recipe.project != name2 {
            return Err(AppError::invalid(
                "invalid_recipe",
                format!("project: the recipe is for project {:?}, not {name2:?}", recipe.project),
            ));
        }
        let now = chrono::Utc::now();
        if recipe.expires <= now {
            return Err(AppError::invalid(
                "invalid_recipe",
                format!("expires: {} is already past; volunteers would refuse it", recipe.expires.to_rfc3339()),
            ));
        }
        let known: Vec<String> = recipes::capabilities(&mut conn, p.id)?.into_iter().map(|c| c.name).collect();
        for (i, r) in recipe.requires.iter().enumerate() {
            if !known.contains(r) {
                return Err(AppError::invalid(
                    "invalid_recipe",
                    format!(
                        "requires[{i}]: capability {r:?} is not registered for project {name2:?} (an admin adds it \
                         with `tbox-server project capability add {name2} {r} --description …`)"
                    ),
                ));
            }
        }
        let version = i64::try_from(recipe.version)
            .map_err(|_| AppError::invalid("invalid_recipe", "version: too large".to_owned()))?;
        let row = RecipeRow {
            id: 0,
            project_id: p.id,
            version,
            body: body.to_vec(),
            signature: signature.clone(),
            digest: report_id(&body),
            key_fingerprint: signer.clone(),
            expires_at: to_db_time(recipe.expires),
            published_at: db::now(),
        };
        let outcome = db::write_transaction(&mut conn, |c| -> Result<(), AppError> {
            if let Some(cur) = recipes::current(c, p.id)?
                && cur.version >= version
            {
                return Err(not_above(version, cur.version));
            }
            recipes::publish(c, &row)?;
            Ok(())
        });
        match outcome {
            // Another publication of the same version won the race.
            Err(AppError::Internal(e))
                if matches!(
                    e.downcast_ref::<DieselError>(),
                    Some(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _))
                ) =>
            {
                Err(not_above(version, version))
            }
            other => other,
        }?;
        Ok(Published { project: name2, version: recipe.version, digest: row.digest, key: signer, url: String::new() })
    })
    .await??;
    let url = format!("{}/api/v1/projects/{}/recipe", super::base_url(&req), name);
    Ok(HttpResponse::Created().json(Published { url, ..published }))
}

fn not_above(version: i64, current: i64) -> AppError {
    AppError::conflict(
        "version_not_above",
        format!("version {version} is not above the current version {current}; publish version {}", current + 1),
    )
}

/// The fingerprint of the project key that made `signature` over `body`.
pub(crate) fn signed_by(keys: &[ProjectKey], body: &[u8], signature: &str, project: &str) -> Result<String, AppError> {
    if keys.is_empty() {
        return Err(AppError::unauthorized(
            "no_project_key",
            format!(
                "project {project:?} has no signing key; an admin adds one with `tbox-server project key add \
                 {project} --key project.pub`"
            ),
        ));
    }
    for k in keys {
        let Ok(key) = PublicKey::from_pem(&k.public_key) else { continue };
        match key.verify(body, signature) {
            Ok(()) => return Ok(k.fingerprint.clone()),
            Err(tbox_protocol::SignatureError::NotBase64) => {
                return Err(AppError::unauthorized("bad_signature", "Tbox-Signature is not valid base64"));
            }
            Err(tbox_protocol::SignatureError::Mismatch) => {}
        }
    }
    Err(AppError::unauthorized(
        "bad_signature",
        format!("the signature does not verify with any unrevoked key of project {project:?}"),
    ))
}

/// `GET /api/v1/projects/{p}/recipe`: the current recipe's exact bytes.
pub async fn current(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let name = path.into_inner();
    let pool = state.pool.clone();
    let row = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = project(&mut conn, &name)?;
        recipes::current(&mut conn, p.id)?.ok_or_else(|| {
            AppError::not_found(format!("project {name:?} has published no recipe (`tbox-report recipe publish`)"))
        })
    })
    .await??;
    Ok(serve_recipe(&req, &row))
}

/// `GET /api/v1/projects/{p}/recipes/{version}`: one version from the history.
pub async fn version(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, AppError> {
    let (name, version) = path.into_inner();
    let version: i64 =
        version.parse().map_err(|_| AppError::not_found(format!("{version:?} is not a recipe version (a number)")))?;
    let pool = state.pool.clone();
    let row = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = project(&mut conn, &name)?;
        recipes::by_version(&mut conn, p.id, version)?
            .ok_or_else(|| AppError::not_found(format!("project {name:?} has no recipe version {version}")))
    })
    .await??;
    Ok(serve_recipe(&req, &row))
}

/// The bytes as published, with what a volunteer needs to check them.
fn serve_recipe(req: &HttpRequest, row: &RecipeRow) -> HttpResponse {
    let etag = format!("\"{}\"", row.digest);
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut res = if fresh { HttpResponse::NotModified() } else { HttpResponse::Ok() };
    res.insert_header((header::ETAG, etag))
        .insert_header(("Tbox-Signature", row.signature.as_str()))
        .insert_header(("Tbox-Key", row.key_fingerprint.as_str()))
        .insert_header(("Tbox-Recipe-Version", row.version.to_string()))
        // Volunteers must get the bytes that were signed: no transformation on the way.
        .insert_header((header::CACHE_CONTROL, "no-cache, no-transform"))
        .insert_header(header::ContentEncoding::Identity);
    if fresh {
        return res.finish();
    }
    res.content_type("application/toml").body(row.body.clone())
}

#[derive(Debug, Serialize)]
struct HistoryEntry {
    version: i64,
    digest: String,
    key: String,
    published_at: String,
    url: String,
}

/// `GET /api/v1/projects/{p}/recipes`: every version published, newest first.
pub async fn history(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let name = path.into_inner();
    let pool = state.pool.clone();
    let name2 = name.clone();
    let rows = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = project(&mut conn, &name2)?;
        Ok(recipes::history(&mut conn, p.id)?)
    })
    .await??;
    let base = super::base_url(&req);
    let recipes: Vec<HistoryEntry> = rows
        .into_iter()
        .map(|(version, digest, key, at)| HistoryEntry {
            version,
            digest,
            key,
            published_at: at.and_utc().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            url: format!("{base}/api/v1/projects/{name}/recipes/{version}"),
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "project": name, "recipes": recipes })))
}

/// One key of a project as anyone may see it, with what lets a volunteer follow a rotation
/// without trusting this server: the previous key's signature over this key's exact PEM text.
#[derive(Debug, Serialize)]
pub struct ProjectKeyView {
    pub fingerprint: String,
    pub public_key: String,
    pub endorsed_by: Option<String>,
    pub endorsement: Option<String>,
    pub added_at: String,
    pub revoked: bool,
}

impl From<ProjectKey> for ProjectKeyView {
    fn from(k: ProjectKey) -> Self {
        ProjectKeyView {
            fingerprint: k.fingerprint,
            public_key: k.public_key,
            endorsed_by: k.endorsed_by,
            endorsement: k.endorsement,
            added_at: k.created_at.and_utc().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            revoked: k.revoked_at.is_some(),
        }
    }
}

/// `GET /api/v1/projects/{p}/keys`: the rotation chain, oldest key first.
pub async fn keys(state: web::Data<AppState>, path: web::Path<String>) -> Result<HttpResponse, AppError> {
    let name = path.into_inner();
    let pool = state.pool.clone();
    let name2 = name.clone();
    let keys = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = project(&mut conn, &name2)?;
        Ok(recipes::keys(&mut conn, p.id)?)
    })
    .await??;
    let keys: Vec<ProjectKeyView> = keys.into_iter().map(Into::into).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "project": name, "keys": keys })))
}

/// `POST /api/v1/projects/{p}/keys`: a rotation. The body is the new public key (PEM);
/// `Tbox-Signature` is a current key's signature over [`tbox_protocol::endorsement_message`]
/// (the PEM bound to the project), kept as the new key's endorsement.
pub async fn rotate(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, AppError> {
    super::require_content_type(req.headers(), "application/x-pem-file")?;
    let signature = super::project_signature(req.headers())?;
    let body = crate::body::read(req.headers(), payload, state.body_limits(16 << 10)).await?;
    let name = path.into_inner();
    let pool = state.pool.clone();
    let view = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = project(&mut conn, &name)?;
        let keys = recipes::active_keys(&mut conn, p.id)?;
        let pem = std::str::from_utf8(&body)
            .map_err(|_| AppError::invalid("invalid_key", "the new key is not PEM text".to_owned()))?;
        // The signature is over the PEM bound to this project (`endorsement_message`), as
        // volunteers will check it.
        let endorser = signed_by(&keys, &tbox_protocol::endorsement_message(&name, pem), &signature, &name)?;
        let key = PublicKey::from_pem(pem).map_err(|e| AppError::invalid("invalid_key", e.to_string()))?;
        let fingerprint = key.fingerprint();
        let new = NewProjectKey {
            project_id: p.id,
            fingerprint: &fingerprint,
            public_key: pem,
            endorsed_by: Some(&endorser),
            endorsement: Some(&signature),
            created_at: db::now(),
        };
        add_key(&mut conn, &new)?;
        let added = recipes::keys(&mut conn, p.id)?
            .into_iter()
            .find(|k| k.fingerprint == fingerprint)
            .ok_or_else(|| anyhow::anyhow!("key {fingerprint} vanished after it was added"))?;
        Ok(ProjectKeyView::from(added))
    })
    .await??;
    Ok(HttpResponse::build(StatusCode::CREATED).json(view))
}

/// Adds a project key; one the project already has (even revoked) is a 409.
pub fn add_key(conn: &mut DbConn, new: &NewProjectKey<'_>) -> Result<(), AppError> {
    db::write_transaction(conn, |c| recipes::add_key(c, new)).map_err(|e| match e {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => AppError::conflict(
            "key_exists",
            format!("the project already has key {} (a revoked key cannot come back)", new.fingerprint),
        ),
        other => other.into(),
    })
}

#[derive(Debug, Serialize)]
struct CapabilityView {
    name: String,
    description: String,
}

/// `GET /api/v1/projects/{p}/capabilities`: the names recipes may require, and what they mean.
pub async fn capabilities(state: web::Data<AppState>, path: web::Path<String>) -> Result<HttpResponse, AppError> {
    let name = path.into_inner();
    let pool = state.pool.clone();
    let name2 = name.clone();
    let caps = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = project(&mut conn, &name2)?;
        Ok(recipes::capabilities(&mut conn, p.id)?)
    })
    .await??;
    let caps: Vec<CapabilityView> =
        caps.into_iter().map(|c| CapabilityView { name: c.name, description: c.description }).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "project": name, "capabilities": caps })))
}
