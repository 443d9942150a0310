//! Errors the server answers with.
//!
//! Which type goes where:
//! - Handlers return [`AppError`]. Every client mistake is an `AppError::Client` carrying its
//!   own status (400, 401, 403, 404, 409, 413, 415, 422) and a stable machine-readable code;
//!   the body is `{"error": code, "message": text}` as DESIGN.md fixes it.
//! - Anything else (database down, a bug) becomes `AppError::Internal`: the whole cause chain
//!   goes to the log, the client gets a generic 500 (or 503 when the pool is exhausted) and
//!   never sees internals.
//! - HTML pages wrap the same error in [`PageError`], which renders it as a page instead.
//! - Admin subcommands use `anyhow` and print `{:#}`.

use actix_web::http::StatusCode;
use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The client's mistake: status, stable code, message for humans, and for 429 the seconds
    /// to wait (`Retry-After`).
    #[error("{message}")]
    Client { status: StatusCode, code: &'static str, message: String, retry_after: Option<u64> },
    /// Too busy to take a database connection now, or the database is away; try again.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Too busy with other requests' bodies; the message is for the client.
    #[error("{0}")]
    Busy(&'static str),
    /// Our fault. Logged in full, answered vaguely.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl AppError {
    fn client(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        AppError::Client { status, code, message: message.into(), retry_after: None }
    }
    /// 400: the request cannot be read.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::BAD_REQUEST, code, message)
    }
    /// 401: who is asking could not be established.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::UNAUTHORIZED, code, message)
    }
    /// 403: known, but not allowed.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::FORBIDDEN, code, message)
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::client(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// 409: would overwrite something that may not be overwritten.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::CONFLICT, code, message)
    }
    /// 405: the resource exists, but not for this method (the caller adds `Allow`).
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::client(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", message)
    }
    /// 410: it existed, and is over (an expired lease).
    pub fn gone(message: impl Into<String>) -> Self {
        Self::client(StatusCode::GONE, "gone", message)
    }
    /// 413.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::client(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }
    /// 415.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::client(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message)
    }
    /// 503 with `Retry-After`: a limit shared by all clients is reached for now.
    pub fn busy(message: &'static str) -> Self {
        AppError::Busy(message)
    }
    /// 408: the body did not come in time.
    pub fn too_slow(message: impl Into<String>) -> Self {
        Self::client(StatusCode::REQUEST_TIMEOUT, "too_slow", message)
    }
    /// 429: too many requests of this kind; try again after `retry_after` seconds.
    pub fn too_many(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        AppError::Client {
            status: StatusCode::TOO_MANY_REQUESTS,
            code,
            message: message.into(),
            retry_after: Some(retry_after.max(1)),
        }
    }
    /// 422: readable, but breaks a rule.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// The code and message a client sees.
    fn public(&self) -> (&'static str, String) {
        match self {
            AppError::Client { code, message, .. } => (code, message.clone()),
            AppError::Unavailable(_) => ("unavailable", "the server is busy; try again shortly".to_owned()),
            AppError::Busy(message) => ("busy", (*message).to_owned()),
            AppError::Internal(_) => ("internal", "internal server error; the server log has the details".to_owned()),
        }
    }

    /// Seconds a client should wait before trying again, when that is known.
    fn retry_after(&self) -> Option<u64> {
        match self {
            AppError::Client { retry_after, .. } => *retry_after,
            // The database is away or the pool exhausted: usually a matter of seconds.
            AppError::Unavailable(_) | AppError::Busy(_) => Some(5),
            AppError::Internal(_) => None,
        }
    }

    fn log(&self) {
        match self {
            AppError::Internal(e) => log::error!("{e:#}"),
            AppError::Unavailable(e) => log::warn!("{e}"),
            AppError::Busy(e) => log::info!("{e}"),
            AppError::Client { .. } => {}
        }
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(e: diesel::result::Error) -> Self {
        if lost_database(&e) {
            // PostgreSQL went away mid-request: nothing was stored, and the client should try
            // again shortly rather than treat it as a bug of ours.
            return AppError::Unavailable(format!("the database connection was lost: {e}"));
        }
        AppError::Internal(e.into())
    }
}

/// Whether an error means the database is unreachable (restarted, shut down, network gone),
/// as opposed to a query that went wrong.
pub fn lost_database(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match e {
        Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => true,
        Error::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            let m = info.message();
            // libpq's words when the server dies under a connection (SQLSTATE 57P01/57P02/57P03
            // and the socket errors, which diesel does not classify).
            [
                "server closed the connection",
                "terminating connection",
                "no connection to the server",
                "connection to server",
                "could not receive data",
                "could not send data",
                "the database system is",
            ]
            .iter()
            .any(|needle| m.contains(needle))
        }
        _ => false,
    }
}

impl From<diesel::r2d2::PoolError> for AppError {
    fn from(e: diesel::r2d2::PoolError) -> Self {
        AppError::Unavailable(format!("no database connection: {e}"))
    }
}

impl From<actix_web::error::BlockingError> for AppError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        AppError::Internal(anyhow::anyhow!("blocking task failed: {e}"))
    }
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        match self {
            AppError::Client { status, .. } => *status,
            AppError::Unavailable(_) | AppError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        self.log();
        let (code, message) = self.public();
        let mut answer = HttpResponse::build(self.status_code());
        if let Some(secs) = self.retry_after() {
            answer.insert_header((actix_web::http::header::RETRY_AFTER, secs.to_string()));
        }
        answer.json(ErrorBody { error: code, message: &message })
    }
}

/// The same errors, answered as an HTML page for browsers.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct PageError(#[from] pub AppError);

impl From<diesel::result::Error> for PageError {
    fn from(e: diesel::result::Error) -> Self {
        PageError(e.into())
    }
}

impl From<actix_web::error::BlockingError> for PageError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        PageError(e.into())
    }
}

impl From<diesel::r2d2::PoolError> for PageError {
    fn from(e: diesel::r2d2::PoolError) -> Self {
        PageError(e.into())
    }
}

impl ResponseError for PageError {
    fn status_code(&self) -> StatusCode {
        self.0.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        self.0.log();
        let (_, message) = self.0.public();
        let status = self.status_code();
        let html = crate::web::templates::error_page(status, &message);
        let mut answer = HttpResponse::build(status);
        if let Some(secs) = self.0.retry_after() {
            answer.insert_header((actix_web::http::header::RETRY_AFTER, secs.to_string()));
        }
        answer.content_type(ContentType::html()).body(html)
    }
}
