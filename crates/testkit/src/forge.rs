//! Tokens as an attacker (or a damaged keychain) would make them: any
//! header and claims signed by any key, tampered payloads, algorithm
//! confusion, `alg: none`, and strings that are not tokens at all.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::{now, uuid};

/// The decoded JSON of part `i` of a JWT (0: header, 1: claims).
pub fn jwt_part(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).expect("JWT part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

/// base64url without padding.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `v` as JSON, base64url.
pub fn b64_json(v: &Value) -> String {
    b64(&serde_json::to_vec(v).expect("JSON"))
}

/// A token with any header and claims, signed by `key` (Ed25519).
pub fn sign_raw(key: &SigningKey, header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64_json(header), b64_json(claims));
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", b64(&sig.to_bytes()))
}

/// The standard header for `kid`.
pub fn header(kid: &str) -> Value {
    json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid})
}

/// Claims that would be accepted (given the right key and issuer).
pub fn claims(iss: &str, sub: &str, name: &str, sid: &str) -> Value {
    let now = now();
    json!({"iss": iss, "aud": "latchkey", "sub": sub, "name": name, "sid": sid,
           "jti": uuid(), "iat": now, "nbf": now, "exp": now + 600})
}

/// HMAC-SHA256 (RFC 2104), for the HS256 forgery.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// An HS256 token whose HMAC secret is the server's public key: the
/// classic algorithm-confusion forgery.
pub fn hs256_with_public_key(public_x: &str, kid: &str, claims: &Value) -> Vec<String> {
    let header = json!({"alg": "HS256", "typ": "at+jwt", "kid": kid});
    let input = format!("{}.{}", b64_json(&header), b64_json(claims));
    // Try the secret as the raw key bytes and as the JWK text, as an
    // attacker would.
    let raw = URL_SAFE_NO_PAD.decode(public_x).expect("base64url");
    [raw, public_x.as_bytes().to_vec()]
        .iter()
        .map(|secret| format!("{input}.{}", b64(&hmac_sha256(secret, input.as_bytes()))))
        .collect()
}

/// An `alg: none` token (empty signature), in the usual spellings.
pub fn alg_none(kid: &str, claims: &Value) -> Vec<String> {
    ["none", "None", "NONE", "nOnE"]
        .iter()
        .flat_map(|alg| {
            let header = json!({"alg": alg, "typ": "at+jwt", "kid": kid});
            let input = format!("{}.{}", b64_json(&header), b64_json(claims));
            [format!("{input}."), input]
        })
        .collect()
}

/// `token` with its payload replaced by `claims`, keeping the old signature.
pub fn tamper(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{}.{}", parts[0], b64_json(claims), parts[2])
}

/// Strings that are not tokens at all.
pub fn garbage_tokens() -> Vec<String> {
    vec![
        "garbage".into(),
        "a.b.c".into(),
        "..".into(),
        "a.b.c.d".into(),
        "eyJhbGciOiJFZERTQSJ9".into(),
        "%%%.%%%.%%%".into(),
        format!("{}.{}.", b64(b"{}"), b64(b"{}")),
        format!("{}.{}.{}", b64(b"[1,2]"), b64(b"null"), b64(&[0; 64])),
        "Zm9v".into(),
    ]
}
