//! The entry points of the server's fuzz targets (`fuzz/fuzz_targets/`),
//! also called by `tests/fuzz_replay.rs` on every corpus file. Each runs the
//! same functions a request goes through and asserts what must hold of the
//! answer, not only that nothing panicked. Hidden from the docs.

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderValue, Request};
use latchkey_protocol::fuzzing::{self as fx, TokenInput};
use latchkey_protocol::{PushRequest, TokenError};

use crate::auth::bearer::{bearer, check_time, verify_with};
use crate::error::AppError;
use crate::http::{Form, Grant, decode_json};

/// Longest error description an answer to a hostile body may carry: it
/// says what is wrong, it does not echo the request back.
pub const MAX_DESCRIPTION: usize = 400;

fn assert_short(e: &AppError) {
    let text = e.to_string();
    assert!(
        text.len() <= MAX_DESCRIPTION,
        "a {}-byte error description",
        text.len()
    );
}

const REFUSALS: [TokenError; 11] = [
    TokenError::TooLarge,
    TokenError::Malformed,
    TokenError::Algorithm,
    TokenError::Type,
    TokenError::Critical,
    TokenError::UnknownKey,
    TokenError::Signature,
    TokenError::Issuer,
    TokenError::Audience,
    TokenError::Expired,
    TokenError::NotYetValid,
];

/// The bearer check of every authenticated request: the `Authorization`
/// header (the input, or `Bearer` and a harness-signed token), then the
/// signature, header, `iss`, `aud` and time against the throwaway key.
pub fn server_token(data: &[u8]) {
    let keys = fx::key_set();
    let input = TokenInput::parse(data);
    let value = match &input {
        TokenInput::Raw(bytes) => HeaderValue::from_bytes(bytes),
        TokenInput::Signed { token, .. } => HeaderValue::from_str(&format!("Bearer {token}")),
    };
    let Ok(value) = value else { return };
    let Ok(request) = Request::builder().header(AUTHORIZATION, value).body(()) else {
        return;
    };
    let (parts, ()) = request.into_parts();
    let token = match bearer(&parts) {
        Ok(Some(token)) => token,
        Ok(None) => return,
        Err(e) => return assert_eq!(e.status_code(), 401),
    };
    let signed = verify_with(keys, fx::ISSUER, token);
    if let TokenInput::Signed { expected, .. } = &input {
        let got = signed.as_ref().map_err(ToString::to_string);
        let want = expected.as_ref().map_err(ToString::to_string);
        assert_eq!(got, want, "the verifier and the rules disagree");
    }
    let verdict =
        signed.and_then(|claims| check_time(&claims, fx::NOW, fx::LEEWAY).map(|()| claims));
    match verdict {
        Ok(claims) => {
            fx::assert_accepted(token, &claims);
            let leeway = fx::LEEWAY as i64;
            assert!(fx::NOW < claims.exp.saturating_add(leeway));
            assert!(fx::NOW >= claims.nbf.saturating_sub(leeway));
        }
        Err(e) => {
            // A fixed sentence: nothing of the token in the answer or a log.
            assert_eq!(e.status_code(), 401);
            let said = e.to_string();
            assert!(REFUSALS.iter().any(|r| r.to_string() == said), "{said:?}");
        }
    }
}

/// The body of a push as the handler reads it: the JSON extractor's
/// decoding, then the push's own limits. What decodes re-encodes to itself.
pub fn server_push_json(data: &[u8]) {
    match decode_json::<PushRequest>(data) {
        Ok(req) => {
            let again = serde_json::to_vec(&req).expect("a push request encodes");
            let back: PushRequest = decode_json(&again).expect("an encoded push decodes");
            assert_eq!(back, req);
            if let Err(why) = req.validate() {
                assert_short(&AppError::InvalidRequest(why));
            }
        }
        Err(e) => {
            assert_eq!(e.status_code(), 400);
            assert_short(&e);
        }
    }
}

/// The token endpoint's form: the extractor's decoding, then the grant.
/// A decoded form has each field once and survives re-encoding; a grant
/// carries the non-empty fields it needs; a refusal is a short 400.
pub fn token_form(data: &[u8]) {
    let form = match Form::decode(data) {
        Ok(form) => form,
        Err(e) => {
            assert_eq!(e.status_code(), 400);
            return assert_short(&e);
        }
    };
    for (i, (k, _)) in form.0.iter().enumerate() {
        assert!(
            form.0[..i].iter().all(|(seen, _)| seen != k),
            "field {k:?} twice"
        );
    }
    let mut encoded = form_urlencoded::Serializer::new(String::new());
    encoded.extend_pairs(form.0.iter());
    let again = Form::decode(encoded.finish().as_bytes()).expect("a re-encoded form decodes");
    assert_eq!(again.0, form.0);
    match Grant::from_form(&form) {
        Ok(Grant::Password { username, .. }) => {
            assert_eq!(form.get("grant_type"), Some("password"));
            assert!(!username.is_empty());
        }
        Ok(Grant::Refresh { refresh_token }) => {
            assert_eq!(form.get("grant_type"), Some("refresh_token"));
            assert!(!refresh_token.is_empty());
        }
        Err(e) => {
            assert_eq!(e.status_code(), 400);
            assert_short(&e);
        }
    }
}
