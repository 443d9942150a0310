//! `/builds/{id}/steps/{n}/log`: a step's raw log as plain text.

use actix_web::http::header::{CacheControl, CacheDirective};
use actix_web::{HttpResponse, web};

use crate::AppState;
use crate::db::{DbConn, builds};
use crate::error::AppError;

/// Loads and decompresses a step's log; `Ok(None)` when the build or step does not exist or
/// the step has no log.
/// Also says whether the build is finished (only then does the log never change).
pub fn load(conn: &mut DbConn, build_id: i64, position: i32) -> Result<Option<(Vec<u8>, bool)>, AppError> {
    let Some((_size, compressed, finished)) = builds::log(conn, build_id, position)? else {
        return Ok(None);
    };
    let text = zstd::stream::decode_all(compressed.as_slice()).map_err(|e| anyhow::anyhow!("corrupt log: {e}"))?;
    Ok(Some((text, finished)))
}

/// `GET /builds/{id}/steps/{n}/log`.
pub async fn raw(state: web::Data<AppState>, path: web::Path<(i64, i32)>) -> Result<HttpResponse, AppError> {
    let (build_id, position) = path.into_inner();
    let pool = state.pool.clone();
    let (text, finished) = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        match load(&mut conn, build_id, position)? {
            Some(text) => Ok(text),
            None if builds::has_step(&mut conn, build_id, position)? => {
                Err(AppError::not_found(format!("step {position} of build {build_id} has no log")))
            }
            None => Err(AppError::not_found(format!("build {build_id} has no step {position}"))),
        }
    })
    .await??;
    // A finished build's log never changes, so browsers and proxies may keep it; a running
    // build's steps are replaced by its finished report.
    let cache = if finished {
        CacheControl(vec![CacheDirective::Public, CacheDirective::MaxAge(86400)])
    } else {
        CacheControl(vec![CacheDirective::NoCache])
    };
    Ok(HttpResponse::Ok().content_type("text/plain; charset=utf-8").insert_header(cache).body(text))
}
