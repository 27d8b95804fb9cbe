//! Passwords, token issuing, and the bearer-token extractor: a handler that
//! takes [`Authed`] cannot forget to check the token or its session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use latchkey_protocol::token::{Audience, sign};
use latchkey_protocol::{AUDIENCE, Claims, KeySet, Reason, TokenError};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use crate::error::AppError;
use crate::state::AppState;
use crate::store::{SessionRecord, TokenHash};

/// Argon2id hashing, off the async runtime and bounded, so a flood of
/// sign-ins cannot take the machine's memory: a few hashes run at once, and
/// only so many sign-ins may wait for them; past that a sign-in is told to
/// come back ([`HasherBusy`]) rather than queued without limit.
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// Sign-ins waiting for, or running in, the hasher.
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    /// Verified against when the username is unknown, so that costs a hash too.
    dummy: String,
}

/// Too many sign-ins already wait for the hasher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many sign-ins wait for the password hasher")]
pub struct HasherBusy;

/// A place in the hasher's queue; given back when dropped.
pub struct HashSlot {
    queued: Arc<AtomicUsize>,
    permits: Arc<Semaphore>,
    dummy: String,
}

impl Drop for HashSlot {
    fn drop(&mut self) {
        self.queued.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Hashes that run at once, per CPU.
const HASHES_PER_CPU: usize = 2;
/// Sign-ins that may wait, per hash that may run, and at least: a waiting
/// sign-in costs a task, not Argon2's memory, and 64 of them are through
/// in well under a second with 4 hashes at a time.
const QUEUED_PER_HASH: usize = 16;
const MIN_QUEUED: usize = 64;

impl Hasher {
    /// A hasher letting `max_queued` sign-ins wait at once (default:
    /// [`QUEUED_PER_HASH`] per hash that may run, at least [`MIN_QUEUED`]).
    pub fn new(max_queued: Option<usize>) -> anyhow::Result<Self> {
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get()) * HASHES_PER_CPU;
        Ok(Self {
            permits: Arc::new(Semaphore::new(parallel)),
            queued: Arc::new(AtomicUsize::new(0)),
            max_queued: max_queued
                .unwrap_or((parallel * QUEUED_PER_HASH).max(MIN_QUEUED))
                .max(1),
            dummy: hash_password_blocking(&random_token())?,
        })
    }

    /// Takes a place in the queue, if there is one.
    pub fn enter(&self) -> Result<HashSlot, HasherBusy> {
        self.queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_queued).then_some(n + 1)
            })
            .map_err(|_| HasherBusy)?;
        Ok(HashSlot {
            queued: self.queued.clone(),
            permits: self.permits.clone(),
            dummy: self.dummy.clone(),
        })
    }
}

impl HashSlot {
    /// Checks `password` against `hash`, or against the dummy hash when
    /// there is no user, taking the same time either way. The place in the
    /// queue and the hashing permit are held until the hash is done, even
    /// if the request is dropped meanwhile.
    pub async fn verify(self, password: String, hash: Option<String>) -> anyhow::Result<bool> {
        let permit = self.permits.clone().acquire_owned().await?;
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy.clone());
        let ok = tokio::task::spawn_blocking(move || {
            let _held = (permit, self);
            PasswordHash::new(&hash)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await?;
        Ok(ok && known)
    }
}

/// An Argon2id PHC string for `password` (blocking: call off the runtime).
pub fn hash_password_blocking(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password failed: {e}"))
}

/// 256 random bits, base64url: a refresh token, or a generated secret.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What the server keeps of a refresh token.
pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// A signed access token for `session`, never outliving the session.
pub fn issue_access_token(state: &AppState, session: &SessionRecord, now: i64) -> (String, u64) {
    let exp = (now + state.settings.access_ttl as i64).min(session.expires_at);
    let claims = Claims {
        iss: state.settings.issuer.clone(),
        aud: Audience::One(AUDIENCE.into()),
        sub: session.user_id.clone(),
        name: session.username.clone(),
        sid: session.id.clone(),
        jti: uuid::Uuid::new_v4().to_string(),
        iat: now,
        nbf: now,
        exp,
    };
    let keys = state.keys.current();
    (
        sign(&keys.signing, &keys.kid, &claims),
        (exp - now).max(0) as u64,
    )
}

/// Verifies a bearer token's signature, header, `iss` and `aud` (not time).
pub fn verify_signed(state: &AppState, token: &str) -> Result<Claims, AppError> {
    verify_with(&state.keys.current().verify, &state.settings.issuer, token)
}

/// [`verify_signed`] against given keys and issuer.
pub fn verify_with(keys: &KeySet, issuer: &str, token: &str) -> Result<Claims, AppError> {
    keys.verify_signed(token, issuer).map_err(token_error)
}

/// A verified token's `exp` and `nbf` against `now`, as a 401.
pub fn check_time(claims: &Claims, now: i64, leeway: u64) -> Result<(), AppError> {
    claims.check_time(now, leeway).map_err(token_error)
}

fn token_error(e: TokenError) -> AppError {
    let reason = match e {
        TokenError::Expired => Reason::Expired,
        _ => Reason::Invalid,
    };
    AppError::invalid_token(e.to_string(), Some(reason))
}

/// The bearer token of a request, if it sent one. Another scheme (`Basic`)
/// or an empty `Bearer` is no token at all: RFC 6750 §3.1 then wants a
/// challenge without an error code.
pub fn bearer(parts: &Parts) -> Result<Option<&str>, AppError> {
    let Some(value) = parts.headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| {
        AppError::invalid_token(
            "the Authorization header is not valid text",
            Some(Reason::Invalid),
        )
    })?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Ok(None),
    }
}

/// Access tokens whose signature, header, `iss` and `aud` were verified,
/// so a token used again skips the Ed25519 check (about half the CPU of an
/// authenticated request). Keyed by the token's SHA-256, so only a
/// byte-exact copy of a verified token hits, and an entry costs the same
/// whatever the token's size; time and the session are still checked on
/// every request. Bounded: tokens past their `exp` (and leeway) are pruned,
/// and when full, those expiring soonest make room.
pub struct VerifiedTokens {
    map: RwLock<HashMap<[u8; 32], Arc<Claims>>>,
    max: usize,
}

const VERIFIED_TOKENS_MAX: usize = 20_000;

impl Default for VerifiedTokens {
    fn default() -> Self {
        Self::with_capacity(VERIFIED_TOKENS_MAX)
    }
}

impl VerifiedTokens {
    /// A cache of at most `max` tokens.
    pub fn with_capacity(max: usize) -> Self {
        Self {
            map: RwLock::default(),
            max: max.max(1),
        }
    }

    fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    pub fn get(&self, token: &str) -> Option<Arc<Claims>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&Self::key(token))
            .cloned()
    }

    pub fn insert(&self, token: &str, claims: Arc<Claims>) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.max {
            // A quarter goes at once, so that making room stays rare.
            evict_soonest(&mut map, self.max - self.max / 4, |c| c.exp);
        }
        map.insert(Self::key(token), claims);
    }

    /// Drops tokens no longer valid at `now` even with the leeway.
    pub fn prune(&self, now: i64, leeway: u64) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, c| c.exp + leeway as i64 > now);
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every token, e.g. when the signing keys change.
    pub fn clear(&self) {
        self.map.write().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Cuts `map` down to at most `keep` entries, dropping those whose `end`
/// comes soonest (they would be the first to go anyway).
pub fn evict_soonest<K: Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    keep: usize,
    end: impl Fn(&V) -> i64,
) {
    if map.len() <= keep {
        return;
    }
    let mut ends: Vec<i64> = map.values().map(&end).collect();
    let cut = ends.len() - keep;
    let (_, &mut threshold, _) = ends.select_nth_unstable(cut - 1);
    // Everything ending before the threshold goes; of those ending at it,
    // only as many as needed.
    let mut at_threshold = cut - ends[..cut - 1].iter().filter(|&&e| e < threshold).count();
    map.retain(|_, v| {
        let e = end(v);
        if e < threshold {
            false
        } else if e == threshold && at_threshold > 0 {
            at_threshold -= 1;
            false
        } else {
            true
        }
    });
}

/// A request with a valid access token of a live session.
pub struct Authed {
    pub claims: Arc<Claims>,
    pub session: SessionRecord,
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let token = bearer(parts)?.ok_or(AppError::InvalidToken {
            description: "no access token was sent".into(),
            reason: None,
            token_sent: false,
        })?;
        let now = crate::now();
        let claims = match state.verified.get(token) {
            Some(claims) => claims,
            None => {
                let claims = Arc::new(verify_signed(state, token)?);
                state.verified.insert(token, claims.clone());
                claims
            }
        };
        check_time(&claims, now, state.settings.leeway)?;
        let session = state
            .sessions
            .check(state.store.as_ref(), &claims.sid, now)
            .await?;
        if session.user_id != claims.sub {
            return Err(AppError::invalid_token(
                "the token does not match its session",
                Some(Reason::Invalid),
            ));
        }
        Ok(Authed { claims, session })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_protocol::token::Audience;

    fn claims(exp: i64) -> Arc<Claims> {
        Arc::new(Claims {
            iss: "i".into(),
            aud: Audience::One(AUDIENCE.into()),
            sub: "s".into(),
            name: "n".into(),
            sid: "sid".into(),
            jti: "j".into(),
            iat: 0,
            nbf: 0,
            exp,
        })
    }

    #[test]
    fn expired_tokens_leave_the_cache() {
        let cache = VerifiedTokens::with_capacity(100);
        cache.insert("old", claims(1_000));
        cache.insert("new", claims(2_000));
        cache.prune(1_020, 30);
        assert!(cache.get("old").is_some(), "still within the leeway");
        cache.prune(1_030, 30);
        assert!(cache.get("old").is_none());
        assert_eq!(cache.get("new").unwrap().exp, 2_000);
    }

    #[test]
    fn a_full_cache_makes_room_by_dropping_the_soonest_to_expire() {
        let cache = VerifiedTokens::with_capacity(8);
        for i in 0..1_000 {
            cache.insert(&format!("t{i}"), claims(10_000 + i));
            assert!(cache.len() <= 8);
        }
        // The newest (latest to expire) is always kept.
        assert_eq!(cache.get("t999").unwrap().exp, 10_999);
        assert!(cache.get("t0").is_none());
        // Big tokens cost no more than small ones: only their hash is kept.
        let big = "x".repeat(8 * 1024);
        cache.insert(&big, claims(20_000));
        assert!(cache.get(&big).is_some());
        assert!(cache.get(&big[1..]).is_none());
    }

    #[test]
    fn eviction_keeps_exactly_the_latest_ends() {
        let mut map: HashMap<u32, i64> = (0..10).map(|i| (i, i64::from(i % 3))).collect();
        evict_soonest(&mut map, 4, |v| *v);
        assert_eq!(map.len(), 4);
        let mut ends: Vec<i64> = map.values().copied().collect();
        ends.sort_unstable();
        assert_eq!(ends, [1, 2, 2, 2]);
        evict_soonest(&mut map, 10, |v| *v);
        assert_eq!(map.len(), 4);
        evict_soonest(&mut map, 0, |v| *v);
        assert!(map.is_empty());
    }
}
