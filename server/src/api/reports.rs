//! `POST /api/v1/reports`: a builder's signed report.

use actix_web::http::StatusCode;
use actix_web::http::header::HeaderMap;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use crate::AppState;
use crate::error::AppError;
use crate::ingest::{self, Checked, Submission};
use crate::metrics;

/// The answer to an accepted report (201 new, 200 duplicate).
#[derive(Debug, Serialize)]
pub struct Accepted {
    /// The report's id: hex SHA-256 of the body.
    pub id: String,
    /// The build it was recorded as.
    pub build: i64,
    /// The build's page.
    pub url: String,
}

/// Receives a report. An oversized body is refused from its Content-Length, or as soon as the
/// limit is passed; a compressed body is inflated (and limited) on the way in (`body.rs`).
pub async fn submit(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, AppError> {
    let answer = accept(req, state, payload).await;
    if let Err(AppError::Client { code, .. }) = &answer {
        metrics::rejected(code);
    }
    answer
}

async fn accept(req: HttpRequest, state: web::Data<AppState>, payload: web::Payload) -> Result<HttpResponse, AppError> {
    super::require_content_type(req.headers(), "application/json")?;
    let builder = header(req.headers(), "tbox-builder")?;
    let signature = header(req.headers(), "tbox-signature")?;
    // An unsigned upload is refused before its body takes any memory.
    for (value, name) in [(&builder, "Tbox-Builder"), (&signature, "Tbox-Signature")] {
        if value.as_deref().is_none_or(str::is_empty) {
            return Err(AppError::unauthorized("unsigned", format!("missing {name} header")));
        }
    }
    let body = crate::body::read(req.headers(), payload, state.body_limits(state.max_body)).await?;
    let pool = state.pool.clone();
    let writer = state.writer.clone();
    let started = std::time::Instant::now();
    let outcome = web::block(move || {
        let mut conn = pool.get()?;
        let sub = Submission { builder: builder.as_deref(), signature: signature.as_deref(), body: &body };
        match ingest::prepare(&mut conn, sub, chrono::Utc::now())? {
            Checked::Duplicate(outcome) => Ok(outcome),
            Checked::New(report) => match &writer {
                Some(writer) => {
                    drop(conn);
                    writer.write(report)
                }
                None => ingest::write(&mut conn, &report),
            },
        }
    })
    .await?;
    let outcome = outcome?;
    metrics::accepted(outcome.created, outcome.result.as_deref(), started.elapsed());
    let status = if outcome.created { StatusCode::CREATED } else { StatusCode::OK };
    let url = format!("{}/builds/{}", super::base_url(&req), outcome.build_id);
    Ok(HttpResponse::build(status)
        // A hundred bytes gain nothing from compression, and setting up a compressor for them
        // cost more than the rest of the answer.
        .insert_header(actix_web::http::header::ContentEncoding::Identity)
        .json(Accepted { id: outcome.report_id, build: outcome.build_id, url }))
}

fn header(headers: &HeaderMap, name: &str) -> Result<Option<String>, AppError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map(|s| s.trim().to_owned())
                .map_err(|_| AppError::bad_request("bad_header", format!("{name} header is not ASCII")))
        })
        .transpose()
}
