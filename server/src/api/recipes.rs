//! A project's signed recipes and its signing keys.
//!
//! The server is only a mirror here: it checks a recipe's signature so that nobody can fill
//! it with junk, and keeps the exact bytes and signature so that every volunteer can check
//! them again against the key *it* pinned. Nothing a volunteer runs depends on trusting us.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use serde::Serialize;
use tbox_protocol::{MAX_EXPIRY_DAYS, MAX_KEY_LIST_BYTES, MAX_RECIPE_BYTES, RecipeError, parse_recipe, report_id};

use super::status::project;
use crate::AppState;
use crate::db::models::{KeyListRow, RecipeRow};
use crate::db::{self, recipes, to_db_time};
use crate::error::AppError;
use crate::project_keys::{self, not_above};

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
        let signer = project_keys::check_signature(&mut conn, p.id, &name2, &body, &signature)?;
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
        if recipe.expires > now + chrono::TimeDelta::days(MAX_EXPIRY_DAYS) {
            return Err(AppError::invalid(
                "invalid_recipe",
                format!(
                    "expires: {} is more than {MAX_EXPIRY_DAYS} days ahead; volunteers would refuse it",
                    recipe.expires.to_rfc3339()
                ),
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
                return Err(not_above("recipe", version, cur.version));
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
                Err(not_above("recipe", version, version))
            }
            other => other,
        }?;
        Ok(Published { project: name2, version: recipe.version, digest: row.digest, key: signer, url: String::new() })
    })
    .await??;
    let url = format!("{}/api/v1/projects/{}/recipe", super::base_url(&req), name);
    Ok(HttpResponse::Created().json(Published { url, ..published }))
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
    Ok(serve_signed(&req, &Signed::from(&row), "Tbox-Recipe-Version"))
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
    Ok(serve_signed(&req, &Signed::from(&row), "Tbox-Recipe-Version"))
}

/// A signed document as stored: a recipe or a key list.
struct Signed<'a> {
    body: &'a [u8],
    signature: &'a str,
    digest: &'a str,
    key: &'a str,
    version: i64,
}

impl<'a> From<&'a RecipeRow> for Signed<'a> {
    fn from(r: &'a RecipeRow) -> Self {
        Signed {
            body: &r.body,
            signature: &r.signature,
            digest: &r.digest,
            key: &r.key_fingerprint,
            version: r.version,
        }
    }
}

impl<'a> From<&'a KeyListRow> for Signed<'a> {
    fn from(r: &'a KeyListRow) -> Self {
        Signed {
            body: &r.body,
            signature: &r.signature,
            digest: &r.digest,
            key: &r.key_fingerprint,
            version: r.version,
        }
    }
}

/// The bytes as published, with what a volunteer needs to check them.
fn serve_signed(req: &HttpRequest, row: &Signed<'_>, version_header: &'static str) -> HttpResponse {
    let etag = format!("\"{}\"", row.digest);
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut res = if fresh { HttpResponse::NotModified() } else { HttpResponse::Ok() };
    res.insert_header((header::ETAG, etag))
        .insert_header(("Tbox-Signature", row.signature))
        .insert_header(("Tbox-Key", row.key))
        .insert_header((version_header, row.version.to_string()))
        // Volunteers must get the bytes that were signed: no transformation on the way.
        .insert_header((header::CACHE_CONTROL, "no-cache, no-transform"))
        .insert_header(header::ContentEncoding::Identity);
    if fresh {
        return res.finish();
    }
    res.content_type("application/toml").body(row.body.to_vec())
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

/// `GET /api/v1/projects/{p}/keys`: the newest key list, its exact bytes (signature in
/// `Tbox-Signature`); 404 while the project has published none.
pub async fn keys(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let name = path.into_inner();
    let pool = state.pool.clone();
    let row = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = project(&mut conn, &name)?;
        recipes::current_key_list(&mut conn, p.id)?.ok_or_else(|| {
            AppError::not_found(format!(
                "project {name:?} has published no key list (`tbox-report keys publish`); volunteers trust only the \
                 key they pinned"
            ))
        })
    })
    .await??;
    Ok(serve_signed(&req, &Signed::from(&row), "Tbox-Key-List-Version"))
}

/// `GET /api/v1/projects/{p}/signing-keys`: the keys that may sign for the project on this
/// server now (the newest key list's, else the ones an admin added), with their PEM. Nobody need
/// believe it: a volunteer uses it only to find the PEM of the fingerprint it pinned.
pub async fn signing_keys(state: web::Data<AppState>, path: web::Path<String>) -> Result<HttpResponse, AppError> {
    let name = path.into_inner();
    let pool = state.pool.clone();
    let name2 = name.clone();
    let keys = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = project(&mut conn, &name2)?;
        project_keys::signers(&mut conn, p.id)
    })
    .await??;
    let keys: Vec<serde_json::Value> =
        keys.into_iter().map(|(fp, k)| serde_json::json!({ "fingerprint": fp, "public_key": k.to_pem() })).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "project": name, "keys": keys })))
}

/// `GET /api/v1/projects/{p}/key-lists/{version}`: one version from the history, for a volunteer
/// walking from the version it holds to the newest.
pub async fn key_list_version(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, AppError> {
    let (name, version) = path.into_inner();
    let version: i64 = version
        .parse()
        .map_err(|_| AppError::not_found(format!("{version:?} is not a key list version (a number)")))?;
    let pool = state.pool.clone();
    let row = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = project(&mut conn, &name)?;
        recipes::key_list_by_version(&mut conn, p.id, version)?
            .ok_or_else(|| AppError::not_found(format!("project {name:?} has no key list version {version}")))
    })
    .await??;
    Ok(serve_signed(&req, &Signed::from(&row), "Tbox-Key-List-Version"))
}

/// `GET /api/v1/projects/{p}/key-lists`: every key list version, oldest first.
pub async fn key_list_history(
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
        Ok(recipes::key_lists(&mut conn, p.id)?)
    })
    .await??;
    let base = super::base_url(&req);
    let lists: Vec<HistoryEntry> = rows
        .into_iter()
        .map(|r| HistoryEntry {
            version: r.version,
            digest: r.digest,
            key: r.key_fingerprint,
            published_at: r.published_at.and_utc().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            url: format!("{base}/api/v1/projects/{name}/key-lists/{}", r.version),
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "project": name, "key_lists": lists })))
}

/// `PUT /api/v1/projects/{p}/keys`: publishes a key list (`Content-Type: application/toml`),
/// signed by a key that may sign for the project now.
pub async fn publish_keys(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, AppError> {
    super::require_content_type(req.headers(), "application/toml")?;
    let signature = super::project_signature(req.headers())?;
    let body = crate::body::read(req.headers(), payload, state.body_limits(MAX_KEY_LIST_BYTES)).await?;
    let name = path.into_inner();
    let pool = state.pool.clone();
    let name2 = name.clone();
    let published = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = project(&mut conn, &name2)?;
        project_keys::publish(&mut conn, p.id, &name2, &body, &signature, chrono::Utc::now())
    })
    .await??;
    let url = format!("{}/api/v1/projects/{}/keys", super::base_url(&req), name);
    Ok(HttpResponse::Created().json(serde_json::json!({
        "project": name, "version": published.version, "digest": published.digest, "key": published.key, "url": url,
    })))
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
