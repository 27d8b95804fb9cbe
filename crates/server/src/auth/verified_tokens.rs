//! The cache of access tokens already verified, so that a token used again
//! skips the Ed25519 check (about half the CPU of an authenticated request).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use latchkey_protocol::Claims;
use sha2::{Digest as _, Sha256};

use crate::evict::evict_soonest;

/// Access tokens whose signature, header, `iss` and `aud` were verified.
/// Keyed by the token's SHA-256, so only a byte-exact copy of a verified
/// token hits, and an entry costs the same whatever the token's size; time
/// and the session are still checked on every request. Bounded: tokens past
/// their `exp` (and leeway) are pruned, and when full, those expiring
/// soonest make room.
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

    /// The claims of `token`, if it was verified before.
    pub fn get(&self, token: &str) -> Option<Arc<Claims>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&Self::key(token))
            .cloned()
    }

    /// Remembers that `token`, with these claims, passed verification.
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

    /// How many tokens are cached.
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no token is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every token, e.g. when the signing keys change.
    pub fn clear(&self) {
        self.map.write().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_protocol::AUDIENCE;
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
}
