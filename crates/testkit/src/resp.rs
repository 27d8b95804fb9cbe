//! The server's answers as the tests read them ([`Resp`]), and the checks
//! PROTOCOL.md sets on them: what every answer has, the error body, the
//! token response and the shape of a note. Both the handler tests (the
//! router, in process) and the process tests (the binary, over HTTP) read
//! answers through it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, WWW_AUTHENTICATE};
use serde_json::{Value, json};

/// One answer, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    /// The body as sent.
    pub raw: Vec<u8>,
}

impl Resp {
    /// An answer read whole; `what` names the request in failures.
    ///
    /// # Panics
    /// Unless it has what every answer has: no 422, a JSON body
    /// (`application/json; charset=utf-8`), a protocol error body on every
    /// error, and on a 401 `invalid_token` with `WWW-Authenticate`. A 5xx
    /// is the caller's to judge (the router under test may be busy).
    pub fn new(what: &str, status: StatusCode, headers: HeaderMap, raw: Vec<u8>) -> Self {
        let text = String::from_utf8_lossy(&raw);
        assert_ne!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {text}");
        let ct = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert_eq!(ct, "application/json; charset=utf-8", "{what}");
        let body: Value =
            serde_json::from_slice(&raw).unwrap_or_else(|_| panic!("{what}: not JSON: {text:?}"));
        if !status.is_success() {
            assert!(body["error"].is_string(), "{what}: {status} {body}");
            assert!(body["error_description"].is_string(), "{what}: {body}");
            if status == StatusCode::UNAUTHORIZED {
                assert_eq!(body["error"], "invalid_token", "{what}");
                assert!(headers.contains_key(WWW_AUTHENTICATE), "{what}");
            }
        }
        Resp {
            status,
            headers,
            body,
            raw,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// Asserts a 200; returns the body.
    pub fn ok(&self) -> &Value {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.text());
        &self.body
    }

    /// Asserts a protocol error with this status and code.
    pub fn err(&self, status: u16, code: &str) -> &Self {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        assert_error(&self.body, code);
        self
    }

    /// Asserts a 401 `invalid_token` with `WWW-Authenticate: Bearer ...
    /// error="invalid_token"` (a token was sent).
    pub fn unauthorized(&self) -> &Self {
        self.err(401, "invalid_token");
        let www = self.header("www-authenticate").expect("WWW-Authenticate");
        assert!(www.starts_with("Bearer"), "{www}");
        assert!(www.contains(r#"error="invalid_token""#), "{www}");
        self
    }
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
    let at = v["access_token"].as_str().expect("an access token");
    assert_eq!(at.split('.').count(), 3, "not a JWT");
    let rt = v["refresh_token"].as_str().expect("a refresh token");
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
