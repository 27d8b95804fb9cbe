//! Helpers shared by the handler tests (`handlers/`, Router + oneshot) and
//! the process tests (`process.rs`, the real binary over HTTP): random names,
//! sync ops, token forgery, error-body checks, and polling with a deadline.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer as _, SigningKey};
use rand::Rng as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// A name no other test (or run) uses: `prefix` plus random letters.
pub fn unique(prefix: &str) -> String {
    let tail: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(10)
        .map(char::from)
        .collect();
    format!("{prefix}-{}", tail.to_lowercase())
}

/// A fresh random UUID, lowercase.
pub fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A password good enough for a test user.
pub fn password() -> String {
    unique("pw")
}

/// Unix seconds, now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An upsert op as the app sends it.
pub fn upsert(op_id: &str, note_id: &str, base_rev: i64, title: &str, body: &str) -> Value {
    json!({"op_id": op_id, "note_id": note_id, "base_rev": base_rev, "action": "upsert",
           "title": title, "body": body, "client_time": 1_764_400_000})
}

/// A delete op as the app sends it.
pub fn delete(op_id: &str, note_id: &str, base_rev: i64) -> Value {
    json!({"op_id": op_id, "note_id": note_id, "base_rev": base_rev, "action": "delete"})
}

/// A push body.
pub fn ops(ops: Vec<Value>) -> Value {
    json!({ "ops": ops })
}

/// Checks a protocol error body: exactly `error`, a non-empty
/// `error_description`, and at most an optional `reason`.
pub fn assert_error(body: &Value, code: &str) {
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("error body is not an object: {body}"));
    assert_eq!(obj.get("error"), Some(&json!(code)), "body: {body}");
    let desc = obj
        .get("error_description")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no error_description: {body}"));
    assert!(!desc.is_empty(), "empty error_description: {body}");
    for k in obj.keys() {
        assert!(
            ["error", "error_description", "reason"].contains(&k.as_str()),
            "unexpected field {k} in error body {body}"
        );
    }
}

/// Checks an error body and its `reason`.
pub fn assert_reason(body: &Value, code: &str, reason: &str) {
    assert_error(body, code);
    assert_eq!(body["reason"], json!(reason), "body: {body}");
}

/// Checks the exact key set of a JSON object.
pub fn assert_keys(v: &Value, keys: &[&str]) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    let mut got: Vec<&str> = obj.keys().map(String::as_str).collect();
    got.sort_unstable();
    let mut want = keys.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "object: {v}");
}

/// Checks the shape of a 200 answer of `POST /v1/auth/token`.
pub fn assert_token_response(v: &Value, username: &str) {
    assert_keys(
        v,
        &[
            "access_token",
            "token_type",
            "expires_in",
            "refresh_token",
            "refresh_expires_in",
            "session_id",
            "user",
        ],
    );
    assert_eq!(v["token_type"], "Bearer");
    assert!(v["expires_in"].as_u64().is_some_and(|n| n > 0), "{v}");
    assert!(
        v["refresh_expires_in"].as_u64().is_some_and(|n| n > 0),
        "{v}"
    );
    assert!(v["session_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert_keys(&v["user"], &["id", "username"]);
    assert_eq!(v["user"]["username"], username);
    assert!(v["user"]["id"].as_str().is_some_and(|s| !s.is_empty()));
    let at = v["access_token"].as_str().unwrap();
    assert_eq!(at.split('.').count(), 3, "not a JWT");
    let rt = v["refresh_token"].as_str().unwrap();
    let raw = URL_SAFE_NO_PAD
        .decode(rt)
        .expect("refresh token is base64url without padding");
    assert!(raw.len() >= 32, "refresh token under 256 bits");
}

/// Checks one `changes[]` entry / `server_note`.
pub fn assert_change_shape(v: &Value) {
    assert_keys(
        v,
        &[
            "note_id",
            "rev",
            "title",
            "body",
            "deleted",
            "updated_at",
            "conflict_of",
        ],
    );
}

/// The decoded JSON of one part of a JWT.
pub fn jwt_part(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).expect("JWT part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn b64_json(v: &Value) -> String {
    b64(&serde_json::to_vec(v).unwrap())
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
    let raw = URL_SAFE_NO_PAD.decode(public_x).unwrap();
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

/// Waits until `f` returns `Some`, polling every 25 ms, for at most `limit`.
pub async fn poll_until<T, F, Fut>(limit: Duration, mut f: F) -> Option<(T, Duration)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Some((v, start.elapsed()));
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
