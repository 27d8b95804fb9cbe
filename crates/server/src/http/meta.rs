//! Health, server metadata (RFC 8414) and the JWKS.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use latchkey_protocol::ServerMetadata;
use serde_json::json;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/.well-known/jwks.json", get(jwks))
}

async fn healthz() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({"status": "ok"})),
    )
}

async fn metadata(State(state): State<AppState>) -> impl IntoResponse {
    let issuer = state.settings.issuer.clone();
    let base = issuer.trim_end_matches('/');
    let meta = ServerMetadata {
        token_endpoint: format!("{base}/v1/auth/token"),
        revocation_endpoint: format!("{base}/v1/auth/revoke"),
        jwks_uri: format!("{base}/.well-known/jwks.json"),
        grant_types_supported: vec!["password".into(), "refresh_token".into()],
        issuer,
    };
    ([(header::CACHE_CONTROL, "max-age=300")], Json(meta))
}

async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "max-age=300")],
        state.keys.current().jwks.clone(),
    )
}
