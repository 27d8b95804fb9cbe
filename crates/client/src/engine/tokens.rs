//! The server's clock and the checking of the tokens it issues: the offset
//! of the server's `Date` header from the local clock, and the verification
//! of every new access token, with the server's keys fetched once more when
//! a token names one the session does not hold. No session state here: the
//! session decides what a verdict means.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use latchkey_protocol::{Claims, Jwks, KeySet};

use crate::api::{self, Timeouts};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::http::Http;

/// The local clock, and the server's from its `Date` header.
pub(crate) struct ServerClock {
    clock: Arc<dyn Clock>,
    /// Server time minus local time.
    offset: AtomicI64,
}

impl ServerClock {
    pub(crate) fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            offset: AtomicI64::new(0),
        }
    }

    /// Local time.
    pub(crate) fn now(&self) -> i64 {
        self.clock.now()
    }

    /// The server's idea of now, for `exp`/`nbf`.
    pub(crate) fn server_now(&self) -> i64 {
        self.clock.now() + self.offset()
    }

    /// Server time minus local time.
    pub(crate) fn offset(&self) -> i64 {
        self.offset.load(Ordering::Relaxed)
    }

    /// Takes the server's time from an answer, when it gave one.
    pub(crate) fn note(&self, server_time: Option<i64>) {
        if let Some(t) = server_time {
            let offset = t - self.clock.now();
            // The Date header has a one-second resolution.
            self.offset.store(
                if offset.abs() <= 2 { 0 } else { offset },
                Ordering::Relaxed,
            );
        }
    }
}

/// Checks the access tokens a server issues.
pub(crate) struct Verifier {
    http: Arc<dyn Http>,
    timeouts: Timeouts,
    /// Clock leeway for `exp`/`nbf`, seconds.
    leeway: u64,
}

impl Verifier {
    pub(crate) fn new(http: Arc<dyn Http>, timeouts: Timeouts, leeway: u64) -> Self {
        Self {
            http,
            timeouts,
            leeway,
        }
    }

    /// The keys `server` publishes.
    pub(crate) async fn fetch_keys(&self, server: &str) -> Result<(Jwks, KeySet)> {
        let jwks = api::jwks(self.http.as_ref(), server, self.timeouts).await?;
        let keys = key_set(&jwks)?;
        Ok((jwks, keys))
    }

    /// Verifies a fresh token response's access token at the server's time
    /// `server_now`, fetching the JWKS once if it names an unknown key, and
    /// returns it with its claims and the key that signed it.
    pub(crate) async fn verify(
        &self,
        server: &str,
        issuer: &str,
        keys: &mut KeySet,
        jwks: &mut Jwks,
        token: &str,
        server_now: i64,
    ) -> Result<Claims> {
        let kid = KeySet::token_kid(token).unwrap_or_default();
        if !keys.contains(&kid) {
            (*jwks, *keys) = self.fetch_keys(server).await?;
        }
        let claims = keys.verify(token, issuer, server_now, self.leeway)?;
        *jwks = keys_for(jwks, &kid);
        Ok(claims)
    }
}

fn key_set(jwks: &Jwks) -> Result<KeySet> {
    KeySet::from_jwks(jwks)
        .map_err(|_| Error::Server("the server published a malformed key".into()))
}

/// The key of `jwks` that verifies a token signed with `kid`, alone: the
/// keychain entry stays small.
fn keys_for(jwks: &Jwks, kid: &str) -> Jwks {
    Jwks {
        keys: jwks.keys.iter().filter(|k| k.kid == kid).cloned().collect(),
    }
}
