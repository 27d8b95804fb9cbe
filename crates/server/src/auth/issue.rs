//! Token issuing: signed access tokens, and the random refresh tokens of
//! which the server keeps only a hash.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use latchkey_protocol::token::{Audience, sign};
use latchkey_protocol::{AUDIENCE, Claims};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::keys::KeyView;
use crate::store::{SessionRecord, TokenHash};

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

/// An access token for `session` from `issuer`, signed with the current key
/// of `keys`, living `access_ttl` seconds but never outliving the session;
/// with its lifetime in seconds.
pub fn issue_access_token(
    keys: &KeyView,
    issuer: &str,
    access_ttl: u64,
    session: &SessionRecord,
    now: i64,
) -> (String, u64) {
    let exp = (now + access_ttl as i64).min(session.expires_at);
    let claims = Claims {
        iss: issuer.to_owned(),
        aud: Audience::One(AUDIENCE.into()),
        sub: session.user_id.clone(),
        name: session.username.clone(),
        sid: session.id.clone(),
        jti: uuid::Uuid::new_v4().to_string(),
        iat: now,
        nbf: now,
        exp,
    };
    (
        sign(&keys.signing, &keys.kid, &claims),
        (exp - now).max(0) as u64,
    )
}
