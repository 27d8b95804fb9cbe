//! Signing keys: the current Ed25519 key, the public keys tokens may still
//! be verified with, and the JWKS, reloaded when another process rotates.

use std::sync::{Arc, RwLock};

use ed25519_dalek::SigningKey;
use latchkey_protocol::token::public_jwk;
use latchkey_protocol::{Jwks, KeySet, MAX_LEEWAY_SECS};
use rand::RngCore as _;

use crate::store::{self, KeyRecord, Store, StoreError};

/// One consistent view of the keys.
pub struct KeyView {
    pub kid: String,
    pub signing: SigningKey,
    pub verify: KeySet,
    /// The JWKS, serialized once per change.
    pub jwks: bytes_json::Json,
}

/// Keys shared by every request; swapped whole on reload.
pub struct Keys {
    view: RwLock<Arc<KeyView>>,
    version: RwLock<i64>,
}

/// A new random key record.
pub fn generate(now: i64) -> KeyRecord {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let mut id = [0u8; 9];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let kid = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, id);
    KeyRecord {
        kid,
        secret,
        created_at: now,
        retired_at: None,
    }
}

impl Keys {
    /// Loads the keys, making the first one if the database has none.
    pub async fn load(store: &dyn Store, now: i64, access_ttl: u64) -> store::Result<Self> {
        if store.keys().await?.is_empty() {
            store.rotate_key(generate(now), now).await?;
        }
        let version = store.keys_version().await?;
        let view = build_view(store.keys().await?, now, access_ttl)?;
        Ok(Self {
            view: RwLock::new(Arc::new(view)),
            version: RwLock::new(version),
        })
    }

    /// The keys as of the last (re)load.
    pub fn current(&self) -> Arc<KeyView> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Rebuilds the view: picks up a rotation made by any process, and drops
    /// retired keys no token of which can still be valid.
    pub async fn reload(&self, store: &dyn Store, now: i64, access_ttl: u64) -> store::Result<()> {
        let version = store.keys_version().await?;
        let view = build_view(store.keys().await?, now, access_ttl)?;
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(view);
        *self.version.write().unwrap_or_else(|p| p.into_inner()) = version;
        Ok(())
    }

    /// Whether the stored keys changed since the last load.
    pub async fn stale(&self, store: &dyn Store) -> store::Result<bool> {
        let stored = store.keys_version().await?;
        Ok(stored != *self.version.read().unwrap_or_else(|p| p.into_inner()))
    }
}

fn build_view(records: Vec<KeyRecord>, now: i64, access_ttl: u64) -> store::Result<KeyView> {
    // A retired key stays while a token it signed may still be accepted.
    let keep = (access_ttl + MAX_LEEWAY_SECS) as i64;
    let current = records
        .iter()
        .rev()
        .find(|k| k.retired_at.is_none())
        .or(records.last())
        .ok_or_else(|| StoreError::Corrupt("the database holds no signing key".into()))?;
    let signing = SigningKey::from_bytes(&current.secret);
    let mut verify = KeySet::new();
    let mut jwks = Jwks { keys: Vec::new() };
    for rec in records.iter().rev() {
        if rec.retired_at.is_some_and(|at| at + keep <= now) {
            continue;
        }
        let public = SigningKey::from_bytes(&rec.secret).verifying_key();
        jwks.keys.push(public_jwk(&rec.kid, &public));
        verify.insert(rec.kid.clone(), public);
    }
    Ok(KeyView {
        kid: current.kid.clone(),
        signing,
        verify,
        jwks: bytes_json::Json::new(&jwks),
    })
}

/// A JSON body serialized once and served many times.
pub mod bytes_json {
    use axum::http::header;
    use axum::response::{IntoResponse, Response};

    #[derive(Clone)]
    pub struct Json(axum::body::Bytes);

    impl Json {
        pub fn new<T: serde::Serialize>(value: &T) -> Self {
            Self(serde_json::to_vec(value).unwrap_or_default().into())
        }
    }

    impl IntoResponse for Json {
        fn into_response(self) -> Response {
            ([(header::CONTENT_TYPE, "application/json")], self.0).into_response()
        }
    }
}
