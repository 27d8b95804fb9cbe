//! Sign-in, refresh, logout and the session check.

use axum::extract::{Request, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use latchkey_protocol::{MAX_DEVICE_NAME_CHARS, Reason, SessionInfo, TokenResponse, UserInfo};

use super::Authed;
use super::extract::{ClientIp, Form};
use crate::auth::bearer::{bearer, verify_with};
use crate::auth::issue::{issue_access_token, random_token, token_hash};
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::store::{RefreshOutcome, SessionRecord, UserRecord};
use crate::throttle::Refused;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/token", post(token))
        .route("/v1/auth/revoke", post(revoke))
        .route("/v1/auth/session", get(session))
}

/// Token answers must never be cached (RFC 6749 §5.1).
fn no_store(body: TokenResponse) -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        Json(body),
    )
}

/// What a token request asks for, read from its form.
#[derive(Debug, PartialEq, Eq)]
pub enum Grant<'a> {
    Password {
        username: &'a str,
        password: &'a str,
        /// What the device calls itself, for the session list.
        device_name: Option<&'a str>,
    },
    Refresh {
        refresh_token: &'a str,
    },
}

impl<'a> Grant<'a> {
    pub fn from_form(form: &'a Form) -> AppResult<Self> {
        match form.require("grant_type")? {
            "password" => Ok(Grant::Password {
                username: form.require("username")?,
                password: form.get("password").ok_or_else(|| {
                    AppError::InvalidRequest("the field password is missing".into())
                })?,
                device_name: device_name(form)?,
            }),
            "refresh_token" => Ok(Grant::Refresh {
                refresh_token: form.require("refresh_token")?,
            }),
            other => {
                let shown: String = other.chars().take(40).collect();
                Err(AppError::UnsupportedGrantType(format!(
                    "the grant type {shown:?} is not supported; use password or refresh_token"
                )))
            }
        }
    }
}

/// The optional `device_name` of a password grant; an empty one is none.
fn device_name(form: &Form) -> AppResult<Option<&str>> {
    match form.get("device_name").filter(|n| !n.is_empty()) {
        Some(name) if name.chars().count() > MAX_DEVICE_NAME_CHARS => {
            Err(AppError::InvalidRequest(format!(
                "device_name may be at most {MAX_DEVICE_NAME_CHARS} characters long"
            )))
        }
        name => Ok(name),
    }
}

async fn token(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    form: Form,
) -> AppResult<impl IntoResponse> {
    let now = crate::clock::now();
    let answer = match Grant::from_form(&form)? {
        Grant::Password {
            username,
            password,
            device_name,
        } => password_grant(&state, username, password, device_name, ip, now).await?,
        Grant::Refresh { refresh_token } => refresh_grant(&state, refresh_token, now).await?,
    };
    Ok(no_store(answer))
}

fn token_response(
    state: &AppState,
    session: &SessionRecord,
    refresh_token: String,
    now: i64,
) -> TokenResponse {
    let (access_token, expires_in) = issue_access_token(
        &state.keys.current(),
        &state.settings.issuer,
        state.settings.access_ttl,
        session,
        now,
    );
    TokenResponse {
        access_token: access_token.into(),
        token_type: "Bearer".into(),
        expires_in,
        refresh_token: refresh_token.into(),
        refresh_expires_in: (session.expires_at - now).max(0) as u64,
        session_id: session.id.clone(),
        user: UserInfo {
            id: session.user_id.clone(),
            username: session.username.clone(),
        },
    }
}

async fn password_grant(
    state: &AppState,
    username: &str,
    password: &str,
    device_name: Option<&str>,
    ip: std::net::IpAddr,
    now: i64,
) -> AppResult<TokenResponse> {
    let user = check_password(
        state,
        username,
        password,
        ip,
        "the username or password is wrong",
    )
    .await?;
    // The wait for attempts in flight may have taken a moment.
    let now = now.max(crate::clock::now());
    let refresh_token = random_token();
    let sid = uuid::Uuid::new_v4().to_string();
    let expires_at = now + state.settings.refresh_ttl as i64;
    let session = state
        .store
        .create_session(
            &user,
            &sid,
            token_hash(&refresh_token),
            device_name,
            now,
            expires_at,
        )
        .await?;
    state.sessions.insert(session.clone());
    Ok(token_response(state, &session, refresh_token, now))
}

/// Checks `username`'s `password` as a sign-in does: through the throttle
/// (429 `slow_down` past its limits; a wrong password counts as a failed
/// login of the user from `ip`) and the hasher's queue (503 when full: no
/// password was checked, so it is no guess). Returns the user; a wrong
/// password (or an unknown user, which costs a hash too) is
/// `invalid_grant` with `wrong` as its description.
pub(super) async fn check_password(
    state: &AppState,
    username: &str,
    password: &str,
    ip: std::net::IpAddr,
    wrong: &'static str,
) -> AppResult<UserRecord> {
    let attempt = state
        .throttle
        .begin(username, ip)
        .await
        .map_err(|refused| match refused {
            Refused::Store(e) => AppError::from(e),
            other => AppError::SlowDown {
                retry_after: other.retry_after().unwrap_or(1),
            },
        })?;
    let Ok(slot) = state.hasher.enter() else {
        attempt.abandon().await;
        return Err(AppError::TemporarilyUnavailable { retry_after: 1 });
    };
    let user = state.store.find_user(username).await?;
    let ok = slot
        .verify(
            password.to_owned(),
            user.as_ref().map(|u| u.password_hash.clone()),
        )
        .await?;
    let (true, Some(user)) = (ok, user) else {
        attempt.failed().await;
        tracing::info!(%ip, "wrong password");
        return Err(AppError::InvalidGrant {
            reason: Reason::Invalid,
            description: wrong,
        });
    };
    attempt.succeeded().await;
    Ok(user)
}

async fn refresh_grant(state: &AppState, presented: &str, now: i64) -> AppResult<TokenResponse> {
    let presented = token_hash(presented);
    let refresh_token = random_token();
    match state
        .store
        .refresh(presented, token_hash(&refresh_token), now)
        .await?
    {
        RefreshOutcome::Rotated(session) => Ok(token_response(state, &session, refresh_token, now)),
        RefreshOutcome::Refused(reason) => {
            if reason == Reason::Reused {
                // The store just revoked the session: every token of it must
                // fail from the very next request, not the next poll.
                state.sessions.poll(state.store.as_ref(), now).await?;
            }
            let description = match reason {
                Reason::Reused => {
                    "the refresh token was already used; the session has been revoked"
                }
                Reason::Revoked => "the session has been revoked",
                Reason::Expired => "the session has expired; sign in again",
                _ => "the refresh token is not valid",
            };
            Err(AppError::InvalidGrant {
                reason,
                description,
            })
        }
    }
}

/// Logout (RFC 7009): a refresh token in the form, or the access token as
/// Bearer with an empty body. 200 whatever the token.
async fn revoke(State(state): State<AppState>, req: Request) -> AppResult<impl IntoResponse> {
    let now = crate::clock::now();
    let (parts, body) = req.into_parts();
    let bytes = super::read_body(&parts.headers, body, super::extract::FORM_LIMIT).await?;
    if !bytes.is_empty() {
        if !super::has_content_type(&parts.headers, "application/x-www-form-urlencoded") {
            return Err(AppError::UnsupportedMediaType(
                "the request body must be application/x-www-form-urlencoded".into(),
            ));
        }
        let form = Form::parse(&bytes)?;
        if let Some(token) = form.get("token").filter(|t| !t.is_empty()) {
            if let Some(sid) = state
                .store
                .revoke_by_refresh(token_hash(token), now)
                .await?
            {
                state.sessions.mark_revoked(&sid, Reason::Revoked, now);
            }
            return Ok(Json(serde_json::json!({})));
        }
    }
    // An access token ends its session even when expired: logging out late
    // must still work. Its signature must be good, though.
    let Some(token) = bearer(&parts)? else {
        return Err(AppError::InvalidRequest(
            "send the refresh token as the form field token, or the access token as Bearer".into(),
        ));
    };
    let claims = verify_with(&state.keys.current().verify, &state.settings.issuer, token)?;
    if state
        .store
        .revoke_session(&claims.sid, Reason::Revoked, now)
        .await?
    {
        state
            .sessions
            .mark_revoked(&claims.sid, Reason::Revoked, now);
    }
    Ok(Json(serde_json::json!({})))
}

/// The reconnect check; it also marks the session as seen.
async fn session(State(state): State<AppState>, authed: Authed) -> AppResult<Json<SessionInfo>> {
    let now = crate::clock::now();
    if let Some(reason) = state.store.touch_session(&authed.session.id, now).await? {
        return Err(state
            .sessions
            .revoked_in_store(&authed.session.id, reason, now));
    }
    Ok(Json(SessionInfo {
        session_id: authed.session.id,
        user: UserInfo {
            id: authed.session.user_id,
            username: authed.session.username,
        },
        expires_at: authed.claims.exp,
        refresh_expires_at: authed.session.expires_at,
    }))
}
