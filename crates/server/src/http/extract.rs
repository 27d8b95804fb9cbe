//! Body extractors that answer in the protocol's terms: 415 for a wrong
//! content type, 413 past the endpoint's limit, 400 `invalid_request` for
//! anything malformed (never a framework default such as 422).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, request::Parts};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use crate::error::AppError;
#[cfg(doc)]
use crate::proxy::TrustedProxies;
use crate::state::AppState;

/// Limit of a form-encoded auth request.
pub const FORM_LIMIT: usize = 16 * 1024;

/// Whether the request's media type (ignoring parameters) is `expected`.
pub fn has_content_type(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(expected))
}

/// Reads the whole body, refusing more than `limit` bytes.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, AppError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(AppError::TooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(AppError::TooLarge { limit })
        }
        Err(_) => Err(AppError::InvalidRequest(
            "the request body could not be read".into(),
        )),
    }
}

/// How much of an unread request body is still read (and dropped) after
/// the answer, and for how long.
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Layer: reads (and drops) what a handler left of the request body, within
/// bounds. A handler that answers early (413, 401, 415, 404...) leaves the
/// client still sending; closing on unread data would reset the connection
/// and the client would never read that answer, only a broken pipe.
pub async fn drain_unread_body(req: Request, next: Next) -> Response {
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let shared = Arc::new(Mutex::new(body));
    let res = next
        .run(Request::from_parts(
            parts,
            Body::new(SharedBody(shared.clone())),
        ))
        .await;
    let rest = std::mem::take(&mut *shared.lock().unwrap_or_else(|p| p.into_inner()));
    if !rest.is_end_stream() {
        drain(rest).await;
    }
    res
}

async fn drain(mut body: Body) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
}

/// The request body as the handler sees it, while the layer above keeps
/// hold of it.
struct SharedBody(Arc<Mutex<Body>>);

/// `Option<Result<http_body::Frame<Bytes>, axum::Error>>`, named through
/// the future that yields it (axum does not re-export http-body's `Frame`).
type NextFrame = <http_body_util::combinators::Frame<'static, Body> as std::future::Future>::Output;

impl HttpBody for SharedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<NextFrame> {
        let mut body = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Pin::new(&mut *body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_end_stream()
    }
}

/// A JSON body of at most `LIMIT` bytes.
pub struct JsonBody<T, const LIMIT: usize>(pub T);

impl<S: Send + Sync, T: DeserializeOwned, const LIMIT: usize> FromRequest<S>
    for JsonBody<T, LIMIT>
{
    type Rejection = AppError;

    async fn from_request(req: Request, _: &S) -> Result<Self, AppError> {
        let (parts, body) = req.into_parts();
        if !has_content_type(&parts.headers, "application/json") {
            return Err(AppError::UnsupportedMediaType(
                "the request body must be application/json".into(),
            ));
        }
        let bytes = read_body(&parts.headers, body, LIMIT).await?;
        decode_json(&bytes).map(JsonBody)
    }
}

/// Decodes a JSON body, or says briefly what is wrong with it.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    serde_json::from_slice(bytes).map_err(|e| AppError::InvalidRequest(json_error(&e)))
}

/// Says what is wrong with a JSON body, briefly.
fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let place = format!("line {} column {}", e.line(), e.column());
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            format!("the body is not valid JSON (at {place})")
        }
        Category::Data => {
            // serde names the field and the expected type; the value it
            // may quote came from this very request.
            let msg = e.to_string();
            let msg: String = msg
                .split(" at line")
                .next()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect();
            format!("the body does not match the expected shape: {msg} (at {place})")
        }
    }
}

/// A form-encoded body (`application/x-www-form-urlencoded`), each field
/// at most once (RFC 6749 §3.2).
pub struct Form(pub Vec<(String, String)>);

impl Form {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A field that must be present and non-empty.
    pub fn require(&self, name: &str) -> Result<&str, AppError> {
        match self.get(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(AppError::InvalidRequest(format!(
                "the field {name} is missing"
            ))),
        }
    }

    /// A form body: UTF-8, then [`Form::parse`].
    pub fn decode(bytes: &[u8]) -> Result<Self, AppError> {
        if std::str::from_utf8(bytes).is_err() {
            return Err(AppError::InvalidRequest(
                "the form is not valid UTF-8".into(),
            ));
        }
        Form::parse(bytes)
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, AppError> {
        let mut fields: Vec<(String, String)> = Vec::new();
        for (k, v) in form_urlencoded::parse(bytes) {
            if fields.iter().any(|(seen, _)| *seen == k) {
                // Named, not echoed: a field name can be anything, of any length.
                let shown: String = k.chars().take(40).collect();
                return Err(AppError::InvalidRequest(format!(
                    "the field {shown:?} is given more than once"
                )));
            }
            fields.push((k.into_owned(), v.into_owned()));
        }
        Ok(Form(fields))
    }
}

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = AppError;

    async fn from_request(req: Request, _: &S) -> Result<Self, AppError> {
        let (parts, body) = req.into_parts();
        if !has_content_type(&parts.headers, "application/x-www-form-urlencoded") {
            return Err(AppError::UnsupportedMediaType(
                "the request body must be application/x-www-form-urlencoded".into(),
            ));
        }
        let bytes = read_body(&parts.headers, body, FORM_LIMIT).await?;
        Form::decode(&bytes)
    }
}

/// The client's address, for throttling: the TCP peer, or behind a trusted
/// proxy the client its `X-Forwarded-For` names ([`TrustedProxies::client`]).
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |c| c.0.ip());
        Ok(ClientIp(
            state.settings.trusted_proxies.client(peer, &parts.headers),
        ))
    }
}
