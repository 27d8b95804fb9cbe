//! The protocol calls, one function each, over an [`Http`]. No state here:
//! the engine decides which token to send and what an answer means for the
//! session. Errors are already sorted: a network failure is
//! [`Error::Network`] (retryable, the session stays), a refused access token
//! is [`ApiError::Unauthorized`], and `invalid_grant` is the end of the
//! session ([`Error::SessionExpired`] / [`Error::SessionRevoked`]).

use std::time::Duration;

use latchkey_protocol::sync::EVENTS_PATH;
use latchkey_protocol::{
    ErrorBody, ErrorCode, ExposeSecret, HistoryResponse, Jwks, PasswordChange, PullResponse,
    PushRequest, PushResponse, Reason, RevokedCount, SecretString, ServerMetadata, SessionInfo,
    SessionsResponse, TokenResponse,
};
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::http::{Http, HttpRequest, HttpResponse, HttpStream};

/// Either a plain engine error, or a 401 the caller may answer with one
/// refresh and one retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    Unauthorized(Option<Reason>),
    Other(Error),
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::Other(e)
    }
}

impl ApiError {
    /// A 401 that survived the retry means the session is over.
    pub fn into_error(self) -> Error {
        match self {
            ApiError::Unauthorized(Some(Reason::Expired)) => Error::SessionExpired,
            ApiError::Unauthorized(_) => Error::SessionRevoked,
            ApiError::Other(e) => e,
        }
    }
}

/// A response and the server's clock, for the engine's clock offset.
pub struct Answer<T> {
    pub value: T,
    pub server_time: Option<i64>,
}

/// Timeouts of the calls.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub request: Duration,
    pub probe: Duration,
    /// Pushes and pulls carry up to a few MiB.
    pub sync: Duration,
}

pub(crate) fn decode<T: DeserializeOwned>(res: &HttpResponse) -> Result<T, Error> {
    serde_json::from_slice(&res.body).map_err(|_| {
        Error::Server(format!(
            "a {} answer that is not the expected JSON",
            res.status
        ))
    })
}

fn error_body(res: &HttpResponse) -> Option<ErrorBody> {
    serde_json::from_slice(&res.body).ok()
}

/// What a 400 `invalid_grant` means for a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// The session is over: a refresh, or any call made with a token.
    Session,
    /// The username or password of a sign-in is wrong.
    SignIn,
    /// The current password given to change it is wrong (the session goes on).
    CurrentPassword,
}

/// Sorts a non-200 answer.
pub(crate) fn failure(res: &HttpResponse, grant: Grant) -> ApiError {
    let body = error_body(res);
    let code = body.as_ref().map(|b| b.error);
    let reason = body.as_ref().and_then(|b| b.reason);
    match (res.status, code) {
        (401, _) => ApiError::Unauthorized(reason),
        (429, _) => Error::Throttled {
            retry_after: res.retry_after.unwrap_or(60),
        }
        .into(),
        (400, Some(ErrorCode::InvalidGrant)) if grant == Grant::SignIn => {
            Error::InvalidCredentials.into()
        }
        (400, Some(ErrorCode::InvalidGrant)) if grant == Grant::CurrentPassword => {
            Error::WrongPassword.into()
        }
        (400, Some(ErrorCode::InvalidGrant)) => match reason {
            Some(Reason::Expired) => Error::SessionExpired.into(),
            _ => Error::SessionRevoked.into(),
        },
        (413, _) => Error::TooLarge.into(),
        (409, Some(ErrorCode::CursorAhead)) => Error::CursorAhead.into(),
        // The server cannot take it now (store unreachable, hasher busy):
        // like a network error, the session stays and a retry comes later.
        (503, _) => Error::Network {
            detail: format!(
                "the server is busy; it asked to retry in {} s",
                res.retry_after.unwrap_or(5)
            ),
        }
        .into(),
        (s, _) if s >= 500 => Error::Server(format!("the server failed ({s})")).into(),
        (s, _) => {
            let what = body
                .map(|b| b.error_description)
                .unwrap_or_else(|| format!("status {s}"));
            let what: String = what.chars().take(200).collect();
            Error::Server(what).into()
        }
    }
}

async fn call<T: DeserializeOwned>(
    http: &dyn Http,
    req: HttpRequest,
    grant: Grant,
) -> Result<Answer<T>, ApiError> {
    let res = http.send(req).await?;
    if res.status != 200 {
        return Err(failure(&res, grant));
    }
    Ok(Answer {
        value: decode(&res)?,
        server_time: res.date,
    })
}

fn form(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        s.append_pair(k, v);
    }
    s.finish().into_bytes()
}

const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

pub async fn healthz(http: &dyn Http, base: &str, t: Timeouts) -> Result<Option<i64>, Error> {
    let res = http
        .send(HttpRequest::get(format!("{base}/healthz"), t.probe))
        .await?;
    if res.status == 200 {
        Ok(res.date)
    } else {
        Err(Error::Server(format!(
            "the health check answered {}",
            res.status
        )))
    }
}

pub async fn metadata(http: &dyn Http, base: &str, t: Timeouts) -> Result<ServerMetadata, Error> {
    let req = HttpRequest::get(
        format!("{base}/.well-known/oauth-authorization-server"),
        t.request,
    );
    call(http, req, Grant::Session)
        .await
        .map(|a| a.value)
        .map_err(ApiError::into_error)
}

pub async fn jwks(http: &dyn Http, base: &str, t: Timeouts) -> Result<Jwks, Error> {
    let req = HttpRequest::get(format!("{base}/.well-known/jwks.json"), t.request);
    call(http, req, Grant::Session)
        .await
        .map(|a| a.value)
        .map_err(ApiError::into_error)
}

/// The password grant, naming this device (PROTOCOL.md v1.1: shown in the
/// user's list of sessions).
pub async fn password_grant(
    http: &dyn Http,
    base: &str,
    username: &str,
    password: &str,
    device_name: &str,
    t: Timeouts,
) -> Result<Answer<TokenResponse>, Error> {
    let body = form(&[
        ("grant_type", "password"),
        ("username", username),
        ("password", password),
        ("device_name", device_name),
    ]);
    let req = HttpRequest::post(format!("{base}/v1/auth/token"), FORM, body, t.request);
    call(http, req, Grant::SignIn)
        .await
        .map_err(ApiError::into_error)
}

pub async fn refresh_grant(
    http: &dyn Http,
    base: &str,
    refresh_token: &SecretString,
    t: Timeouts,
) -> Result<Answer<TokenResponse>, Error> {
    let body = form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.expose_secret()),
    ]);
    let req = HttpRequest::post(format!("{base}/v1/auth/token"), FORM, body, t.request);
    call(http, req, Grant::Session)
        .await
        .map_err(ApiError::into_error)
}

pub async fn revoke(
    http: &dyn Http,
    base: &str,
    refresh_token: &SecretString,
    t: Timeouts,
) -> Result<(), Error> {
    let req = HttpRequest::post(
        format!("{base}/v1/auth/revoke"),
        FORM,
        form(&[("token", refresh_token.expose_secret())]),
        t.request,
    );
    let res = http.send(req).await?;
    match res.status {
        200 => Ok(()),
        _ => Err(failure(&res, Grant::Session).into_error()),
    }
}

pub async fn session(
    http: &dyn Http,
    base: &str,
    access_token: &SecretString,
    t: Timeouts,
) -> Result<Answer<SessionInfo>, ApiError> {
    let req =
        HttpRequest::get(format!("{base}/v1/auth/session"), t.request).bearer(access_token.clone());
    call(http, req, Grant::Session).await
}

pub async fn push(
    http: &dyn Http,
    base: &str,
    access_token: &SecretString,
    body: &PushRequest,
    t: Timeouts,
) -> Result<Answer<PushResponse>, ApiError> {
    let body = serde_json::to_vec(body).map_err(|e| Error::InvalidInput(e.to_string()))?;
    let req = HttpRequest::post(format!("{base}/v1/sync/push"), JSON, body, t.sync)
        .bearer(access_token.clone());
    call(http, req, Grant::Session).await
}

pub async fn pull(
    http: &dyn Http,
    base: &str,
    access_token: &SecretString,
    since: i64,
    limit: u32,
    t: Timeouts,
) -> Result<Answer<PullResponse>, ApiError> {
    let req = HttpRequest::get(
        format!("{base}/v1/sync/pull?since={since}&limit={limit}"),
        t.sync,
    )
    .bearer(access_token.clone());
    call(http, req, Grant::Session).await
}

pub async fn history(
    http: &dyn Http,
    base: &str,
    access_token: &SecretString,
    note_id: uuid::Uuid,
    t: Timeouts,
) -> Result<Answer<HistoryResponse>, ApiError> {
    let req = HttpRequest::get(format!("{base}/v1/notes/{note_id}/history"), t.sync)
        .bearer(access_token.clone());
    call(http, req, Grant::Session).await
}

/// This user's live sessions (PROTOCOL.md v1.1, "Devices and sessions").
pub async fn sessions(
    http: &dyn Http,
    base: &str,
    access_token: &SecretString,
    t: Timeouts,
) -> Result<Answer<SessionsResponse>, ApiError> {
    let req = HttpRequest::get(format!("{base}/v1/auth/sessions"), t.request)
        .bearer(access_token.clone());
    call(http, req, Grant::Session).await
}

/// Revokes one other session of this user: 204, or
/// [`Error::SessionNotFound`] (unknown, ended, or not this user's).
pub async fn revoke_session(
    http: &dyn Http,
    base: &str,
    access_token: &SecretString,
    session_id: uuid::Uuid,
    t: Timeouts,
) -> Result<Answer<()>, ApiError> {
    let req = HttpRequest::delete(format!("{base}/v1/auth/sessions/{session_id}"), t.request)
        .bearer(access_token.clone());
    let res = http.send(req).await?;
    match res.status {
        200 | 204 => Ok(Answer {
            value: (),
            server_time: res.date,
        }),
        404 => Err(Error::SessionNotFound.into()),
        _ => Err(failure(&res, Grant::Session)),
    }
}

/// Revokes every other session of this user.
pub async fn revoke_other_sessions(
    http: &dyn Http,
    base: &str,
    access_token: &SecretString,
    t: Timeouts,
) -> Result<Answer<RevokedCount>, ApiError> {
    let req = HttpRequest::post(
        format!("{base}/v1/auth/sessions/revoke-others"),
        JSON,
        b"{}".to_vec(),
        t.request,
    )
    .bearer(access_token.clone());
    call(http, req, Grant::Session).await
}

/// Changes the password; the server revokes every other session. A wrong
/// current password is [`Error::WrongPassword`], and the session goes on.
pub async fn change_password(
    http: &dyn Http,
    base: &str,
    access_token: &SecretString,
    change: &PasswordChange,
    t: Timeouts,
) -> Result<Answer<RevokedCount>, ApiError> {
    let body = serde_json::to_vec(change).map_err(|e| Error::InvalidInput(e.to_string()))?;
    let req = HttpRequest::post(format!("{base}/v1/account/password"), JSON, body, t.request)
        .bearer(access_token.clone());
    call(http, req, Grant::CurrentPassword).await
}

/// An error answer to a stream is read whole, up to this many bytes.
const STREAM_ERROR_BYTES: usize = 64 * 1024;

/// Opens the live-updates stream; a refusal is sorted like any answer.
pub async fn events(
    http: &dyn Http,
    base: &str,
    access_token: &SecretString,
    t: Timeouts,
) -> Result<Answer<HttpStream>, ApiError> {
    let req =
        HttpRequest::get(format!("{base}{EVENTS_PATH}"), t.request).bearer(access_token.clone());
    let mut stream = http.stream(req).await?;
    if stream.status == 200 {
        let server_time = stream.date;
        return Ok(Answer {
            value: stream,
            server_time,
        });
    }
    let mut body = Vec::new();
    while body.len() < STREAM_ERROR_BYTES {
        match tokio::time::timeout(t.request, stream.body.next()).await {
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let res = HttpResponse {
        status: stream.status,
        body,
        date: stream.date,
        retry_after: None,
    };
    Err(failure(&res, Grant::Session))
}
