//! The HTTP API: one module per route group, merged here, with the layers
//! every request goes through (request id + one log line, panic catcher,
//! protocol error bodies for anything the framework would answer itself).

mod account;
mod authed;
mod devices;
mod events;
mod extract;
mod meta;
mod notes;
mod sync;
mod tokens;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use latchkey_protocol::{ErrorBody, ErrorCode};
use tower_http::catch_panic::CatchPanicLayer;

pub use authed::Authed;
pub use extract::{Form, decode_json, has_content_type, read_body};
pub use tokens::Grant;

use crate::error::{AppError, error_response};
use crate::state::AppState;

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(meta::router())
        .merge(tokens::router())
        .merge(devices::router())
        .merge(account::router())
        .merge(sync::router())
        .merge(events::router())
        .merge(notes::router())
        .fallback(|| async { AppError::NotFound })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .with_state(state)
        .layer(middleware::map_response(protocol_errors))
        .layer(middleware::from_fn(extract::drain_unread_body))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a handler panicked");
            AppError::Panicked.into_response()
        }))
        .layer(middleware::map_response(json_charset))
        .layer(middleware::from_fn(log_request))
}

/// Gives any error response that lacks the protocol's body (one the
/// framework made itself) the right one.
async fn protocol_errors(res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error())
        || has_content_type(res.headers(), "application/json")
    {
        return res;
    }
    let error = match status {
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::RequestTooLarge,
        StatusCode::UNAUTHORIZED => ErrorCode::InvalidToken,
        s if s.is_server_error() => ErrorCode::ServerError,
        _ => ErrorCode::InvalidRequest,
    };
    let mut fixed = error_response(
        status,
        ErrorBody {
            error,
            error_description: status.canonical_reason().unwrap_or("error").to_lowercase(),
            reason: None,
        },
    );
    for (name, value) in res.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fixed.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fixed
}

/// PROTOCOL.md names the media type of every body with its charset.
async fn json_charset(mut res: Response) -> Response {
    if res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/json")
    {
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
    }
    res
}

static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

/// One log line per request, with an id also sent back as `x-request-id`.
/// Only the method, path and status: never a header, query value or body.
async fn log_request(req: Request, next: Next) -> Response {
    let id = format!(
        "{:x}-{}",
        std::process::id(),
        REQUEST_IDS.fetch_add(1, Ordering::Relaxed)
    );
    let method = req.method().clone();
    let path = req.uri().path().chars().take(200).collect::<String>();
    let started = Instant::now();
    let mut res = next.run(req).await;
    let status = res.status().as_u16();
    let micros = started.elapsed().as_micros() as u64;
    if status >= 500 {
        tracing::warn!(request_id = %id, %method, %path, status, micros, "request");
    } else {
        tracing::info!(request_id = %id, %method, %path, status, micros, "request");
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}
