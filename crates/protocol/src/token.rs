//! Access tokens: the claim set, and the one verifier the server and the
//! app both use (the app offline, against the JWKS it cached at sign-in).
//!
//! The JWS work is `jsonwebtoken`'s (RustCrypto backend): parsing the
//! header, the Ed25519 signature with `alg` pinned to `EdDSA` (never taken
//! from the token), and `iss`, `aud` and the required claims. Around it sits
//! only what the library does not do: the size cap, `typ` `at+jwt`, refusing
//! any `crit`, picking the key by `kid`, and time, which is checked
//! separately against a `now` the caller gives (the app's offline clock is
//! not the system's) so that a caller may tell an expired token from a
//! forged one.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::{ACCESS_TOKEN_TYPE, ALGORITHM, AUDIENCE, Jwk, Jwks, MAX_TOKEN_BYTES};

/// The JOSE header of an access token, as `jsonwebtoken` reads and writes it.
pub use jsonwebtoken::Header;

/// `aud` may be one string or an array of strings (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
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
    /// Not three base64url parts of JSON; a header that is no JOSE header
    /// (an `alg` no JOSE registry names, such as `none`, included); claims
    /// that are not the access-token claim set, or whose `exp` or `nbf` is
    /// not a NumericDate (a negative one included).
    #[error("the token is malformed")]
    Malformed,
    /// `alg` names a JOSE algorithm other than `EdDSA`.
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

impl From<JwtError> for TokenError {
    fn from(e: JwtError) -> Self {
        match e.kind() {
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => TokenError::Algorithm,
            ErrorKind::InvalidSignature => TokenError::Signature,
            ErrorKind::InvalidIssuer => TokenError::Issuer,
            ErrorKind::InvalidAudience => TokenError::Audience,
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            // The key set holds only keys checked when they were added.
            ErrorKind::InvalidEddsaKey | ErrorKind::InvalidKeyFormat => TokenError::UnknownKey,
            // Wrong shape, base64 or JSON; a required claim missing or not
            // a NumericDate.
            _ => TokenError::Malformed,
        }
    }
}

/// The public keys a token may be signed with, by `kid`, each made into the
/// library's verifying key once, when it is added.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, DecodingKey>,
    /// The library's checks for the first issuer verified against (a key set
    /// only ever meets one), made once: building them per token costs about
    /// 2% of a signature check (ten allocations, hashing).
    validation: OnceLock<Validation>,
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
        // For Ed25519 the library's "DER" key is the raw 32-byte public key.
        self.keys
            .insert(kid.into(), DecodingKey::from_ed_der(key.as_bytes()));
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
            // Checked here, once: the library would take a bad point for a
            // bad signature on every token, and panics on a short key.
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
        jsonwebtoken::decode_header(token).ok()?.kid
    }

    /// Verifies everything but time: size, shape, header, signature, `iss`
    /// and `aud`. Use [`Claims::check_time`] (or [`KeySet::verify`]) next.
    // Measured (BENCHMARKS.md §1): 441 k instructions a call against 360 k
    // for the raw Ed25519 check (1.23x; target 1.3x). Of the extra 81 k the
    // library takes 40 k to rebuild the Ed25519 point from the key's bytes
    // on every call (its API keeps no parsed key), 12 k to read the header
    // three times (ours for `typ`/`crit`/`kid`, then twice inside `decode`)
    // and 12 k to read the claims twice (ours, its own for validation).
    pub fn verify_signed(&self, token: &str, issuer: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let header = jsonwebtoken::decode_header(token)?;
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
        let cached = self.validation.get_or_init(|| validation(issuer));
        let validation = if cached.iss.as_ref().is_some_and(|iss| iss.contains(issuer)) {
            Cow::Borrowed(cached)
        } else {
            Cow::Owned(validation(issuer))
        };
        Ok(jsonwebtoken::decode::<Claims>(token, key, &validation)?.claims)
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

/// What the library checks: `EdDSA` only, the issuer, our audience, and
/// every claim the access-token profile requires.
fn validation(issuer: &str) -> Validation {
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    // The library would read the system clock; time is checked by
    // `Claims::check_time` against the caller's clock instead.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation
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
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some(ACCESS_TOKEN_TYPE.into());
    header.kid = Some(kid.into());
    // Neither can fail: an Ed25519 key always has a PKCS#8 form, and the
    // library signs with it a header and claims that always serialize.
    let der = key
        .to_pkcs8_der()
        .expect("an Ed25519 key encodes as PKCS#8");
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes()))
        .expect("an EdDSA token over plain claims encodes")
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

    fn encode_json<T: Serialize>(value: &T) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
    }

    fn forge(header: &str, claims: &Claims, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            encode_json(claims),
            URL_SAFE_NO_PAD.encode(sig)
        )
    }

    /// A token over any header and claims JSON, well signed by `key`.
    fn signed_raw(key: &SigningKey, header: &str, claims: &str) -> String {
        use ed25519_dalek::Signer as _;
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let sig = key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
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
    fn the_issuer_is_the_one_asked_for_each_time() {
        let (key, set) = setup();
        let t = sign(&key, "k1", &claims(1000));
        // The checks are kept for the first issuer; another is still honoured.
        assert!(set.verify_signed(&t, ISS).is_ok());
        assert_eq!(
            set.verify_signed(&t, "http://other"),
            Err(TokenError::Issuer)
        );
        let (_, fresh) = setup();
        assert_eq!(
            fresh.verify_signed(&t, "http://other"),
            Err(TokenError::Issuer)
        );
        assert!(fresh.verify_signed(&t, ISS).is_ok());
    }

    #[test]
    fn refuses_forgeries() {
        let (key, set) = setup();
        let c = claims(1000);
        // `none` is no algorithm the JOSE header the library reads can name:
        // such a header is malformed (it was `Algorithm` before jsonwebtoken).
        let none = forge(r#"{"alg":"none","typ":"at+jwt","kid":"k1"}"#, &c, b"");
        assert_eq!(set.verify(&none, ISS, 1000, 30), Err(TokenError::Malformed));
        let none = signed_raw(
            &key,
            r#"{"alg":"none","typ":"at+jwt","kid":"k1"}"#,
            &serde_json::to_string(&c).unwrap(),
        );
        assert_eq!(set.verify(&none, ISS, 1000, 30), Err(TokenError::Malformed));
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
    fn signs_the_protocol_header() {
        let (key, set) = setup();
        let t = sign(&key, "k1", &claims(1000));
        let header = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.typ.as_deref(), Some(ACCESS_TOKEN_TYPE));
        assert_eq!(header.kid.as_deref(), Some("k1"));
        assert_eq!(KeySet::token_kid(&t).as_deref(), Some("k1"));
        // The key is picked by `kid` among several.
        let mut two = set.clone();
        two.insert("k0", SigningKey::from_bytes(&[8u8; 32]).verifying_key());
        assert!(two.verify(&t, ISS, 1000, 30).is_ok());
    }

    #[test]
    fn refuses_what_the_library_reads_as_malformed() {
        let (key, set) = setup();
        let header = r#"{"alg":"EdDSA","typ":"at+jwt","kid":"k1"}"#;
        let good = serde_json::to_value(claims(1000)).unwrap();
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut c = good.clone();
            f(&mut c);
            c.to_string()
        };
        assert!(
            set.verify(&signed_raw(&key, header, &good.to_string()), ISS, 1000, 30)
                .is_ok()
        );
        // A NumericDate is not negative; `Claims` alone would read these.
        for bad in [
            with(&|c| c["exp"] = (-1).into()),
            with(&|c| c["nbf"] = (-1).into()),
        ] {
            let t = signed_raw(&key, header, &bad);
            assert_eq!(set.verify_signed(&t, ISS), Err(TokenError::Malformed));
        }
        // The claims as an array in field order, not an object.
        let c = claims(1000);
        let array = serde_json::json!([
            c.iss, c.aud, c.sub, c.name, c.sid, c.jti, c.iat, c.nbf, c.exp
        ]);
        assert!(serde_json::from_value::<Claims>(array.clone()).is_ok());
        let t = signed_raw(&key, header, &array.to_string());
        assert_eq!(set.verify_signed(&t, ISS), Err(TokenError::Malformed));
        // Header parameters of the wrong JSON type.
        let body = good.to_string();
        for header in [
            r#"{"alg":"EdDSA","typ":"at+jwt","kid":"k1","x5c":5}"#,
            r#"{"alg":"EdDSA","typ":"at+jwt","kid":"k1","ext":1}"#,
            r#"{"alg":"EdDSA","typ":"at+jwt","kid":"k1","crit":"x"}"#,
            r#"["EdDSA","at+jwt","k1"]"#,
        ] {
            let t = signed_raw(&key, header, &body);
            assert_eq!(
                set.verify_signed(&t, ISS),
                Err(TokenError::Malformed),
                "{header}"
            );
        }
        // A signature that is not base64url leaves the token malformed.
        let t = sign(&key, "k1", &claims(1000));
        let not_base64 = format!("{}!", &t[..t.len() - 1]);
        assert_eq!(
            set.verify_signed(&not_base64, ISS),
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
