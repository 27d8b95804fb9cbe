//! The server's two error types. [`Error`] is what the library's own work
//! can fail with (storage, hashing, starting to serve, an admin command);
//! the binary prints it as one sentence. [`AppError`] is what an HTTP
//! request can fail with, and every such failure leaves through
//! [`AppError::into_response`]: the protocol's error body, the right status,
//! `WWW-Authenticate` on a 401, `Retry-After` on a 429 and a 503, and for an
//! internal failure a generic body while the cause goes to the log.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use latchkey_protocol::{ErrorBody, ErrorCode, Reason};

use crate::store::StoreError;

/// A failure of the library's own work. Each message is a whole sentence,
/// its cause included, so the binary prints it alone.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened, read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The command line asks for what cannot be: a flag out of range, plain
    /// HTTP on a public address, a bad username or password.
    #[error("{0}")]
    Invalid(String),
    /// `session revoke` names a user the database does not have.
    #[error("there is no user named {0:?}")]
    NoSuchUser(String),
    /// `serve` could not bind its address (taken, or not ours).
    #[error("cannot listen on {addr}: {}", listen_reason(.source))]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// `serve` could not load `--tls-cert` and `--tls-key`.
    #[error("cannot load the TLS certificate {} and key {}: {source}", .cert.display(), .key.display())]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A local file, the terminal, standard output, the signal handlers or
    /// serving itself failed; `what` says which, and what was being done.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Argon2 refused to hash a password (only absurd parameters make it).
    #[error("hashing the password failed: {0}")]
    Hash(#[source] argon2::password_hash::Error),
    /// The password hasher's permits were closed while a sign-in waited
    /// (nothing closes them: this would be a bug).
    #[error("the password hasher is closed")]
    HasherClosed(#[from] tokio::sync::AcquireError),
    /// A blocking task (hashing, opening the database) or the serving task
    /// panicked or was cancelled.
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Error {
    /// An I/O failure while doing `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

fn listen_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "the address is already in use".into(),
        _ => e.to_string(),
    }
}

/// The result of the library's own work.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The result of handling an HTTP request.
pub type AppResult<T> = std::result::Result<T, AppError>;

/// A failure answered to an HTTP request.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Malformed JSON or form, a missing or mistyped field, a limit exceeded.
    #[error("{0}")]
    InvalidRequest(String),
    /// The body is not of the content type the endpoint takes.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body is over the endpoint's limit.
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// Wrong credentials, or a refresh token that is unknown, spent, expired
    /// or revoked.
    #[error("{description}")]
    InvalidGrant {
        reason: Reason,
        description: &'static str,
    },
    /// A grant type other than `password` or `refresh_token`.
    #[error("{0}")]
    UnsupportedGrantType(String),
    /// The bearer token is missing, malformed, forged, expired or revoked.
    #[error("{description}")]
    InvalidToken {
        description: String,
        reason: Option<Reason>,
        /// False when no token was sent at all (RFC 6750 §3.1).
        token_sent: bool,
    },
    /// Too many failed sign-ins.
    #[error("too many failed sign-in attempts; try again in {retry_after} seconds")]
    SlowDown { retry_after: u64 },
    /// A pull from a cursor past the user's latest rev (a server restored
    /// from an older backup).
    #[error("the cursor {since} is ahead of the latest change ({latest}); pull again from 0")]
    CursorAhead { since: i64, latest: i64 },
    /// Too many sign-ins already wait for the password hasher.
    #[error("the server is busy; try again in {retry_after} seconds")]
    TemporarilyUnavailable { retry_after: u64 },
    /// No such route.
    #[error("no such endpoint")]
    NotFound,
    /// A note id the user has no note of (none exists, another user's, or
    /// not an id at all): answered alike, so nobody learns of another's notes.
    #[error("no such note")]
    NoteNotFound,
    /// A session id that names no live session of the user (none exists,
    /// it ended, another user's, or not an id at all): answered alike.
    #[error("no such session")]
    SessionNotFound,
    /// The route does not take this method.
    #[error("this endpoint does not accept that method")]
    MethodNotAllowed,
    /// A failure of the server itself (storage, the hasher); logged, never
    /// shown. (A database that cannot be reached is
    /// [`AppError::TemporarilyUnavailable`] instead: see the `From`s below.)
    #[error(transparent)]
    Internal(Error),
    /// A handler panicked (the panic layer answers with this); logged,
    /// never shown.
    #[error("handler panicked")]
    Panicked,
}

/// How long a client is asked to wait while the database cannot be
/// reached (a restart or a failover takes seconds).
pub const STORE_RETRY_AFTER_SECS: u64 = 5;

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        AppError::from(Error::Store(e))
    }
}

/// A database that cannot be reached is a 503 with `Retry-After` (PROTOCOL.md
/// v1.1, "Several instances, and store outages"), logged as a warning;
/// anything else is a 500.
impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        match e {
            Error::Store(StoreError::Unavailable(why)) => {
                tracing::warn!("the database is unavailable: {why}");
                AppError::TemporarilyUnavailable {
                    retry_after: STORE_RETRY_AFTER_SECS,
                }
            }
            other => AppError::Internal(other),
        }
    }
}

impl AppError {
    pub fn invalid_token(description: impl Into<String>, reason: Option<Reason>) -> Self {
        AppError::InvalidToken {
            description: description.into(),
            reason,
            token_sent: true,
        }
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            AppError::InvalidRequest(_)
            | AppError::InvalidGrant { .. }
            | AppError::UnsupportedGrantType(_) => StatusCode::BAD_REQUEST,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::InvalidToken { .. } => StatusCode::UNAUTHORIZED,
            AppError::SlowDown { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::CursorAhead { .. } => StatusCode::CONFLICT,
            AppError::TemporarilyUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AppError::NotFound | AppError::NoteNotFound | AppError::SessionNotFound => {
                StatusCode::NOT_FOUND
            }
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::Internal(_) | AppError::Panicked => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> ErrorCode {
        match self {
            AppError::InvalidRequest(_) | AppError::UnsupportedMediaType(_) => {
                ErrorCode::InvalidRequest
            }
            AppError::TooLarge { .. } => ErrorCode::RequestTooLarge,
            AppError::InvalidGrant { .. } => ErrorCode::InvalidGrant,
            AppError::UnsupportedGrantType(_) => ErrorCode::UnsupportedGrantType,
            AppError::InvalidToken { .. } => ErrorCode::InvalidToken,
            AppError::SlowDown { .. } => ErrorCode::SlowDown,
            AppError::CursorAhead { .. } => ErrorCode::CursorAhead,
            AppError::TemporarilyUnavailable { .. } => ErrorCode::TemporarilyUnavailable,
            AppError::NotFound | AppError::NoteNotFound | AppError::SessionNotFound => {
                ErrorCode::NotFound
            }
            AppError::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            AppError::Internal(_) | AppError::Panicked => ErrorCode::ServerError,
        }
    }

    fn reason(&self) -> Option<Reason> {
        match self {
            AppError::InvalidGrant { reason, .. } => Some(*reason),
            AppError::InvalidToken { reason, .. } => *reason,
            _ => None,
        }
    }
}

/// The body every error response carries, built in one place.
pub fn error_response(status: StatusCode, body: ErrorBody) -> Response {
    let mut res = (status, axum::Json(body)).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let description = match &self {
            AppError::Internal(_) | AppError::Panicked => {
                tracing::error!(error = %self, "internal error");
                "the server failed to handle the request; try again later".to_string()
            }
            other => other.to_string(),
        };
        let body = ErrorBody {
            error: self.code(),
            error_description: description,
            reason: self.reason(),
        };
        let mut res = error_response(status, body);
        let headers = res.headers_mut();
        match &self {
            AppError::InvalidToken { token_sent, .. } => {
                let value = if *token_sent {
                    r#"Bearer realm="latchkey", error="invalid_token""#
                } else {
                    r#"Bearer realm="latchkey""#
                };
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
            }
            AppError::SlowDown { retry_after }
            | AppError::TemporarilyUnavailable { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    async fn answer(e: StoreError) -> (StatusCode, Option<String>, serde_json::Value) {
        let res = AppError::from(e).into_response();
        let retry_after = res
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, retry_after, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_database_out_of_reach_is_503_with_retry_after_and_other_failures_500() {
        let (status, retry_after, body) =
            answer(StoreError::Unavailable("connection refused".into())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after.as_deref(), Some("5"));
        assert_eq!(body["error"], "temporarily_unavailable");
        assert!(!body.to_string().contains("refused"), "{body}");

        let (status, retry_after, body) = answer(StoreError::Corrupt("a title".into())).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(retry_after, None);
        assert_eq!(body["error"], "server_error");
        assert!(!body.to_string().contains("title"), "{body}");
    }
}
