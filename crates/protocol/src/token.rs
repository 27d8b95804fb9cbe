//! Access tokens: the claim set, and the one verifier the server and the
//! app both use (the app offline, against the JWKS it cached at sign-in).
//!
//! Deliberately narrow: the algorithm is never taken from the token. A token
//! is accepted only with `alg` exactly `EdDSA`, `typ` `at+jwt`, a `kid` found
//! in the [`KeySet`], a good Ed25519 signature, then the right `iss` and
//! `aud`; time is checked separately so that a caller may tell an expired
//! token from a forged one.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::{ACCESS_TOKEN_TYPE, ALGORITHM, AUDIENCE, Jwk, Jwks, MAX_TOKEN_BYTES};

/// The JOSE header of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default)]
    pub typ: Option<String>,
    #[serde(default)]
    pub kid: Option<String>,
    /// Present only to be refused: Latchkey understands no critical extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crit: Option<serde_json::Value>,
}

/// `aud` may be one string or an array of strings (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, aud: &str) -> bool {
        match self {
            Audience::One(a) => a == aud,
            Audience::Many(all) => all.iter().any(|a| a == aud),
        }
    }
}

/// The claims of an access token (RFC 9068 profile plus `name` and `sid`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: Audience,
    /// The user's stable id.
    pub sub: String,
    /// The username.
    pub name: String,
    /// The session id: one per sign-in, shared by every token of it.
    pub sid: String,
    pub jti: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

impl Claims {
    /// Checks `exp` and `nbf` against `now` (Unix seconds) with `leeway` seconds.
    pub fn check_time(&self, now: i64, leeway: u64) -> Result<(), TokenError> {
        let leeway = leeway.min(crate::MAX_LEEWAY_SECS) as i64;
        if now >= self.exp.saturating_add(leeway) {
            return Err(TokenError::Expired);
        }
        if now < self.nbf.saturating_sub(leeway) {
            return Err(TokenError::NotYetValid);
        }
        Ok(())
    }
}

/// Why a token was refused. The `Display` text is safe to show and log: it
/// never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("the token is too large")]
    TooLarge,
    /// Not three base64url parts of JSON.
    #[error("the token is malformed")]
    Malformed,
    /// `alg` is anything but `EdDSA`.
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    /// `typ` is not `at+jwt`.
    #[error("the token is not an access token")]
    Type,
    /// The header names a critical extension.
    #[error("the token uses an unsupported critical header")]
    Critical,
    /// No `kid`, or one not in the key set.
    #[error("the token was signed by an unknown key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    Signature,
    /// `iss` is not the pinned issuer.
    #[error("the token was issued by another server")]
    Issuer,
    /// `aud` does not include `latchkey`.
    #[error("the token is meant for another audience")]
    Audience,
    /// `exp` has passed (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
}

/// The public keys a token may be signed with, by `kid`, parsed once.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, VerifyingKey>,
}

/// A JWK that is not an Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key {kid:?} is not a usable Ed25519 public key")]
pub struct BadKey {
    pub kid: String,
}

impl KeySet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one key.
    pub fn insert(&mut self, kid: impl Into<String>, key: VerifyingKey) {
        self.keys.insert(kid.into(), key);
    }

    /// The Ed25519 signing keys of a JWKS. Keys of other types are skipped
    /// (they could never verify an EdDSA token); a malformed Ed25519 key is
    /// an error.
    pub fn from_jwks(jwks: &Jwks) -> Result<Self, BadKey> {
        let mut set = Self::new();
        for jwk in &jwks.keys {
            if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
                continue;
            }
            if jwk.use_.as_deref().is_some_and(|u| u != "sig")
                || jwk.alg.as_deref().is_some_and(|a| a != ALGORITHM)
            {
                continue;
            }
            let bad = || BadKey {
                kid: jwk.kid.clone(),
            };
            let x = URL_SAFE_NO_PAD.decode(&jwk.x).map_err(|_| bad())?;
            let x: [u8; 32] = x.try_into().map_err(|_| bad())?;
            let key = VerifyingKey::from_bytes(&x).map_err(|_| bad())?;
            set.insert(jwk.kid.clone(), key);
        }
        Ok(set)
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// The `kid` a token's header names, without verifying anything: lets a
    /// client decide to refetch the JWKS on an unknown key.
    pub fn token_kid(token: &str) -> Option<String> {
        let header = token.split('.').next()?;
        decode_json::<Header>(header).ok()?.kid
    }

    /// Verifies everything but time: size, shape, header, signature, `iss`
    /// and `aud`. Use [`Claims::check_time`] (or [`KeySet::verify`]) next.
    pub fn verify_signed(&self, token: &str, issuer: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let mut parts = token.splitn(3, '.');
        let (Some(header_b64), Some(claims_b64), Some(sig_b64)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        if sig_b64.contains('.') {
            return Err(TokenError::Malformed);
        }
        let header: Header = decode_json(header_b64)?;
        if header.alg != ALGORITHM {
            return Err(TokenError::Algorithm);
        }
        match header.typ.as_deref() {
            Some(t)
                if t.eq_ignore_ascii_case(ACCESS_TOKEN_TYPE)
                    || t.eq_ignore_ascii_case("application/at+jwt") => {}
            _ => return Err(TokenError::Type),
        }
        if header.crit.is_some() {
            return Err(TokenError::Critical);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.get(kid))
            .ok_or(TokenError::UnknownKey)?;
        let mut sig = [0u8; 64];
        match URL_SAFE_NO_PAD.decode_slice(sig_b64, &mut sig) {
            Ok(64) => {}
            _ => return Err(TokenError::Signature),
        }
        let signing_input = &token.as_bytes()[..header_b64.len() + 1 + claims_b64.len()];
        key.verify(signing_input, &Signature::from_bytes(&sig))
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims = decode_json(claims_b64)?;
        if claims.iss != issuer {
            return Err(TokenError::Issuer);
        }
        if !claims.aud.contains(AUDIENCE) {
            return Err(TokenError::Audience);
        }
        Ok(claims)
    }

    /// Full verification: [`KeySet::verify_signed`] then the time check.
    pub fn verify(
        &self,
        token: &str,
        issuer: &str,
        now: i64,
        leeway: u64,
    ) -> Result<Claims, TokenError> {
        let claims = self.verify_signed(token, issuer)?;
        claims.check_time(now, leeway)?;
        Ok(claims)
    }
}

fn decode_json<T: for<'de> Deserialize<'de>>(b64: &str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

/// The public JWK of an Ed25519 key.
pub fn public_jwk(kid: &str, key: &VerifyingKey) -> Jwk {
    Jwk {
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        x: URL_SAFE_NO_PAD.encode(key.as_bytes()),
        kid: kid.into(),
        alg: Some(ALGORITHM.into()),
        use_: Some("sig".into()),
    }
}

/// Encodes and signs a token. Only the server holds a signing key; this
/// lives here so the encoding is written once, beside the verifier.
pub fn sign(key: &ed25519_dalek::SigningKey, kid: &str, claims: &Claims) -> String {
    use ed25519_dalek::Signer as _;
    let header = Header {
        alg: ALGORITHM.into(),
        typ: Some(ACCESS_TOKEN_TYPE.into()),
        kid: Some(kid.into()),
        crit: None,
    };
    let mut token = encode_json(&header);
    token.push('.');
    token.push_str(&encode_json(claims));
    let sig = key.sign(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(sig.to_bytes()));
    token
}

fn encode_json<T: Serialize>(value: &T) -> String {
    // Serializing these plain structs cannot fail.
    let json = serde_json::to_vec(value).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    const ISS: &str = "http://127.0.0.1:8787";

    fn claims(now: i64) -> Claims {
        Claims {
            iss: ISS.into(),
            aud: Audience::One(AUDIENCE.into()),
            sub: "u1".into(),
            name: "alice".into(),
            sid: "s1".into(),
            jti: "j1".into(),
            iat: now,
            nbf: now,
            exp: now + 900,
        }
    }

    fn setup() -> (SigningKey, KeySet) {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let mut set = KeySet::new();
        set.insert("k1", key.verifying_key());
        (key, set)
    }

    fn forge(header: &str, claims: &Claims, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            encode_json(claims),
            URL_SAFE_NO_PAD.encode(sig)
        )
    }

    #[test]
    fn round_trip() {
        let (key, set) = setup();
        let t = sign(&key, "k1", &claims(1000));
        let c = set.verify(&t, ISS, 1000, 30).unwrap();
        assert_eq!(c.name, "alice");
    }

    #[test]
    fn time_is_checked_with_leeway() {
        let (key, set) = setup();
        let t = sign(&key, "k1", &claims(1000));
        assert!(set.verify(&t, ISS, 1900 + 29, 30).is_ok());
        assert_eq!(set.verify(&t, ISS, 1930, 30), Err(TokenError::Expired));
        assert_eq!(set.verify(&t, ISS, 900, 30), Err(TokenError::NotYetValid));
        // leeway is capped at 60 s whatever the caller asks
        assert_eq!(set.verify(&t, ISS, 1961, 3600), Err(TokenError::Expired));
    }

    #[test]
    fn refuses_forgeries() {
        let (key, set) = setup();
        let c = claims(1000);
        let none = forge(r#"{"alg":"none","typ":"at+jwt","kid":"k1"}"#, &c, b"");
        assert_eq!(set.verify(&none, ISS, 1000, 30), Err(TokenError::Algorithm));
        let hs = forge(r#"{"alg":"HS256","typ":"at+jwt","kid":"k1"}"#, &c, &[0; 32]);
        assert_eq!(set.verify(&hs, ISS, 1000, 30), Err(TokenError::Algorithm));
        let jwt = forge(r#"{"alg":"EdDSA","typ":"JWT","kid":"k1"}"#, &c, &[0; 64]);
        assert_eq!(set.verify(&jwt, ISS, 1000, 30), Err(TokenError::Type));
        let crit = forge(
            r#"{"alg":"EdDSA","typ":"at+jwt","kid":"k1","crit":["x"]}"#,
            &c,
            &[0; 64],
        );
        assert_eq!(set.verify(&crit, ISS, 1000, 30), Err(TokenError::Critical));

        // a foreign key under the same kid
        let other = SigningKey::from_bytes(&[9u8; 32]);
        let t = sign(&other, "k1", &c);
        assert_eq!(set.verify(&t, ISS, 1000, 30), Err(TokenError::Signature));
        let t = sign(&key, "k2", &c);
        assert_eq!(set.verify(&t, ISS, 1000, 30), Err(TokenError::UnknownKey));

        // tampered payload, original signature
        let good = sign(&key, "k1", &c);
        let mut evil = c.clone();
        evil.name = "mallory".into();
        let parts: Vec<&str> = good.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], encode_json(&evil), parts[2]);
        assert_eq!(
            set.verify(&tampered, ISS, 1000, 30),
            Err(TokenError::Signature)
        );

        let mut wrong = c.clone();
        wrong.iss = "http://evil".into();
        let t = sign(&key, "k1", &wrong);
        assert_eq!(set.verify(&t, ISS, 1000, 30), Err(TokenError::Issuer));
        let mut wrong = c.clone();
        wrong.aud = Audience::Many(vec!["other".into()]);
        let t = sign(&key, "k1", &wrong);
        assert_eq!(set.verify(&t, ISS, 1000, 30), Err(TokenError::Audience));
    }

    #[test]
    fn refuses_malformed_input() {
        let (key, set) = setup();
        for bad in ["", ".", "..", "a.b.c", "a.b.c.d", "\u{0}", "é.é.é"] {
            assert!(set.verify(bad, ISS, 1000, 30).is_err(), "{bad:?}");
        }
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(set.verify(&huge, ISS, 1000, 30), Err(TokenError::TooLarge));
        let good = sign(&key, "k1", &claims(1000));
        let extra = format!("{good}.x");
        assert_eq!(
            set.verify(&extra, ISS, 1000, 30),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn jwks_round_trip() {
        let (key, _) = setup();
        let jwks = Jwks {
            keys: vec![public_jwk("k1", &key.verifying_key())],
        };
        let set = KeySet::from_jwks(&jwks).unwrap();
        assert!(set.contains("k1"));
        let mut bad = jwks.clone();
        bad.keys[0].x = "AAAA".into();
        assert!(KeySet::from_jwks(&bad).is_err());
    }
}
