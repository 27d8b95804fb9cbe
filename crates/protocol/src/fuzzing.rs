//! Shared by the fuzz targets (`fuzz/`) and their corpus replay tests: a
//! throwaway signing key, the fixed issuer and clock the token targets
//! verify against, and the decoding of a fuzz input into a token. Not part
//! of the protocol; hidden from the docs.
//!
//! The key below is public on purpose and trusted by nothing: only the fuzz
//! targets, their replay and their corpus use it.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use jsonwebtoken::Algorithm;

use crate::token::{Audience, Claims, Header, KeySet, TokenError, public_jwk};
use crate::{ACCESS_TOKEN_TYPE, AUDIENCE, Jwks, MAX_TOKEN_BYTES};

/// The `kid` of the throwaway key.
pub const KID: &str = "fuzz-key";
/// The issuer the token targets pin.
pub const ISSUER: &str = "http://127.0.0.1:8787";
/// The fixed "now" of the token targets, Unix seconds.
pub const NOW: i64 = 1_700_000_000;
/// The clock leeway of the token targets.
pub const LEEWAY: u64 = 30;
/// The user and session the client target's keychain entry belongs to.
pub const USER_ID: &str = "0b9a4a8e-5d3c-4f1e-9c7a-2f6d8e1b3a50";
pub const SESSION_ID: &str = "7c2e9f14-8a6b-4d35-b0e1-5f9a3c7d2e68";

/// Marks an input to be signed by the harness: `#sign\n<header JSON>\n<claims JSON>`.
pub const SIGN_PREFIX: &[u8] = b"#sign\n";

/// The throwaway key (made once: deriving its public half is most of the
/// cost of an execution otherwise).
pub fn signing_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::from_bytes(&[0x42; 32]))
}

/// The key set holding only the throwaway key.
pub fn key_set() -> &'static KeySet {
    static SET: OnceLock<KeySet> = OnceLock::new();
    SET.get_or_init(|| {
        let mut set = KeySet::new();
        set.insert(KID, signing_key().verifying_key());
        set
    })
}

/// The JWKS of the throwaway key, as a client caches it.
pub fn jwks() -> Jwks {
    Jwks {
        keys: vec![public_jwk(KID, &signing_key().verifying_key())],
    }
}

/// What a token fuzz input stands for.
pub enum TokenInput<'a> {
    /// The bytes as sent (a token, or an `Authorization` header value).
    Raw(&'a [u8]),
    /// A token the harness signed with the throwaway key over the given
    /// header and claims bytes, so that mutations reach past the signature;
    /// `expected` is what [`KeySet::verify_signed`] must answer for it.
    Signed {
        token: String,
        expected: Result<Claims, TokenError>,
    },
}

impl<'a> TokenInput<'a> {
    pub fn parse(data: &'a [u8]) -> Self {
        let Some(rest) = data.strip_prefix(SIGN_PREFIX) else {
            return TokenInput::Raw(data);
        };
        let (header, claims) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        let token = sign_raw(header, claims);
        let expected = expected(&token, header, claims);
        TokenInput::Signed { token, expected }
    }
}

/// A token over raw header and claims bytes, signed with the throwaway key.
pub fn sign_raw(header: &[u8], claims: &[u8]) -> String {
    use ed25519_dalek::Signer as _;
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims));
    let sig = signing_key().sign(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(sig.to_bytes()));
    token
}

/// The verdict the rules of `token.rs` give a well-signed token, written
/// out independently of the verifier, step by step in its order: ours
/// first (size, `typ`, `crit`, `kid`), then jsonwebtoken's (`alg`, the
/// claims, `iss`, `aud`). The header and the claims are read as the library
/// reads them: a JOSE header (an `alg` it does not know, such as `none`, or a
/// parameter of the wrong JSON type is malformed), and a claims *object*
/// whose `exp` and `nbf` are NumericDates, so not negative.
fn expected(token: &str, header: &[u8], claims: &[u8]) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge);
    }
    let header: Header = serde_json::from_slice(header).map_err(|_| TokenError::Malformed)?;
    let typ = header.typ.as_deref().unwrap_or("").to_ascii_lowercase();
    if typ != ACCESS_TOKEN_TYPE && typ != "application/at+jwt" {
        return Err(TokenError::Type);
    }
    if header.crit.is_some() {
        return Err(TokenError::Critical);
    }
    if header.kid.as_deref() != Some(KID) {
        return Err(TokenError::UnknownKey);
    }
    if header.alg != Algorithm::EdDSA {
        return Err(TokenError::Algorithm);
    }
    let object = serde_json::from_slice::<serde_json::Value>(claims).is_ok_and(|c| c.is_object());
    let claims: Claims = serde_json::from_slice(claims).map_err(|_| TokenError::Malformed)?;
    if !object || claims.exp < 0 || claims.nbf < 0 {
        return Err(TokenError::Malformed);
    }
    if claims.iss != ISSUER {
        return Err(TokenError::Issuer);
    }
    let aud_ok = match &claims.aud {
        Audience::One(a) => a == AUDIENCE,
        Audience::Many(all) => all.iter().any(|a| a == AUDIENCE),
    };
    if !aud_ok {
        return Err(TokenError::Audience);
    }
    Ok(claims)
}

/// Asserts what any accepted token must be: within the size limit, signed
/// with `EdDSA` by the throwaway key, typed as an access token with no
/// critical header, for the pinned issuer and for `latchkey`.
pub fn assert_accepted(token: &str, claims: &Claims) {
    assert!(
        token.len() <= MAX_TOKEN_BYTES,
        "accepted an oversized token"
    );
    let header = token.split('.').next().unwrap_or_default();
    let header: Header = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(header)
            .expect("accepted a header that is not base64url"),
    )
    .expect("accepted a header that is not JSON");
    assert_eq!(header.alg, Algorithm::EdDSA);
    let typ = header.typ.unwrap_or_default().to_ascii_lowercase();
    assert!(
        typ == ACCESS_TOKEN_TYPE || typ == "application/at+jwt",
        "typ {typ:?}"
    );
    assert!(header.crit.is_none());
    assert_eq!(header.kid.as_deref(), Some(KID));
    assert_eq!(KeySet::token_kid(token).as_deref(), Some(KID));
    assert_eq!(claims.iss, ISSUER);
    match &claims.aud {
        Audience::One(a) => assert_eq!(a, AUDIENCE),
        Audience::Many(all) => assert!(all.iter().any(|a| a == AUDIENCE)),
    }
}

/// A real token re-signed for the corpus: its claims kept but for `iss`,
/// `sub` and `sid` (set to this module's), its times moved so it was issued
/// at [`NOW`], and signed with the throwaway key under [`KID`]. Returns the
/// token and its header and claims JSON.
pub fn resign(token: &str) -> Option<(String, String, String)> {
    let claims = token.split('.').nth(1)?;
    let mut claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
    let shift = NOW - claims.iat;
    claims.iss = ISSUER.into();
    claims.sub = USER_ID.into();
    claims.sid = SESSION_ID.into();
    claims.iat += shift;
    claims.nbf += shift;
    claims.exp += shift;
    let token = crate::token::sign(signing_key(), KID, &claims);
    let mut parts = token.split('.');
    let mut json = || String::from_utf8(URL_SAFE_NO_PAD.decode(parts.next()?).ok()?).ok();
    let (header, claims) = (json()?, json()?);
    Some((token, header, claims))
}

/// Runs `entry` on every file of `fuzz/corpus/<target>/` (which must exist
/// and hold files) and of `fuzz/regressions/<target>/` (inputs that once
/// failed, if any), and fails naming every file that panicked. Returns how
/// many files ran. `fuzz_dir` is the repository's `fuzz/`.
pub fn replay(fuzz_dir: &std::path::Path, target: &str, entry: fn(&[u8])) -> usize {
    let files = |dir: std::path::PathBuf| -> std::io::Result<Vec<std::path::PathBuf>> {
        let mut files = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let path = item?.path();
            if path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    };
    let corpus = fuzz_dir.join("corpus").join(target);
    let mut all = files(corpus.clone())
        .unwrap_or_else(|e| panic!("the corpus {} cannot be read: {e}", corpus.display()));
    assert!(!all.is_empty(), "the corpus {} is empty", corpus.display());
    all.extend(files(fuzz_dir.join("regressions").join(target)).unwrap_or_default());
    let failed: Vec<String> = all
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).expect("read a corpus file");
            std::panic::catch_unwind(|| entry(&data)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{target} failed on {failed:#?}");
    all.len()
}
