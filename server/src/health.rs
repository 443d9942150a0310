//! `GET /healthz`: whether this server process can serve, for load balancers, orchestrators
//! and `systemctl`-style checks: 200 when the database answers, 503 when it does not. Cheap (a
//! trivial query on a pooled connection, waiting at most two seconds for one), never cached,
//! no authentication, nothing about the deployment in the answer.

use std::time::Duration;

use actix_web::http::header::{CacheControl, CacheDirective};
use actix_web::{HttpResponse, web};

use crate::AppState;

/// How long a health check waits for a database connection.
const WAIT: Duration = Duration::from_secs(2);

/// `GET /healthz` (and `HEAD`).
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    let pool = state.pool.clone();
    let answer = web::block(move || -> Result<(), String> {
        let mut conn = pool.get_timeout(WAIT).map_err(|e| e.to_string())?;
        crate::db::ping(&mut conn).map_err(|e| e.to_string())
    })
    .await;
    let no_store = CacheControl(vec![CacheDirective::NoStore]);
    match answer {
        Ok(Ok(())) => HttpResponse::Ok().insert_header(no_store).json(serde_json::json!({"status": "ok"})),
        Ok(Err(why)) => {
            log::warn!("health check: the database does not answer: {why}");
            unavailable(no_store)
        }
        Err(_) => unavailable(no_store),
    }
}

fn unavailable(no_store: CacheControl) -> HttpResponse {
    HttpResponse::ServiceUnavailable().insert_header(no_store).json(serde_json::json!({
        "error": "database_unavailable",
        "message": "the database does not answer",
    }))
}
