//! The entry points of the client's fuzz targets (`fuzz/fuzz_targets/`),
//! also called by `tests/fuzz_replay.rs` on every corpus file. Each runs the
//! code the engine runs on that input and asserts what must hold of the
//! result, not only that nothing panicked. Hidden from the docs.

use std::time::Duration;

use latchkey_protocol::fuzzing::{self as fx, TokenInput};
use latchkey_protocol::{ExposeSecret, PullResponse, PushResponse, TokenError, UserInfo};

use crate::api::{self, ApiError};
use crate::http::HttpResponse;
use crate::policy::{self, Verdict};
use crate::vault::VaultEntry;

/// Longest error text a hostile answer may produce (it is shown in the UI).
pub const MAX_MESSAGE: usize = 400;

/// The keychain entry the client target's token sits in: the throwaway
/// key's JWKS, the fixed issuer, user and session.
pub fn entry_with(access_token: String) -> VaultEntry {
    VaultEntry {
        server: fx::ISSUER.into(),
        issuer: fx::ISSUER.into(),
        user: UserInfo {
            id: fx::USER_ID.into(),
            username: "alice".into(),
        },
        session_id: fx::SESSION_ID.into(),
        access_token: access_token.into(),
        refresh_token: "fuzz-refresh-token".into(),
        refresh_expires_at: fx::NOW + 30 * 86_400,
        jwks: fx::jwks(),
        latest_seen_time: fx::NOW,
        last_confirmed_at: fx::NOW,
        clock_locked: false,
        revoke_pending: false,
    }
}

/// The client's two token checks: a stored token at restore (offline,
/// against the cached keys, plus its user and session), and a fresh one
/// from the server (with time). Accepted tokens are checked claim by claim.
pub fn client_token(data: &[u8]) {
    let input = TokenInput::parse(data);
    let token = match &input {
        TokenInput::Raw(bytes) => match std::str::from_utf8(bytes) {
            Ok(token) => token.to_owned(),
            Err(_) => return,
        },
        TokenInput::Signed { token, .. } => token.clone(),
    };
    let entry = entry_with(token.clone());
    let stored = entry.verify().map(|(_, claims)| claims);
    if let TokenInput::Signed { expected, .. } = &input {
        let want = expected.clone().and_then(|c| {
            if c.sub == fx::USER_ID && c.sid == fx::SESSION_ID {
                Ok(c)
            } else {
                Err(TokenError::Signature)
            }
        });
        assert_eq!(stored, want, "the verifier and the rules disagree");
    }
    if let Ok(claims) = &stored {
        fx::assert_accepted(&token, claims);
        assert_eq!(
            (claims.sub.as_str(), claims.sid.as_str()),
            (fx::USER_ID, fx::SESSION_ID)
        );
    }
    let fresh = fx::key_set().verify(&token, fx::ISSUER, fx::NOW, fx::LEEWAY);
    if let Ok(claims) = &fresh {
        fx::assert_accepted(&token, claims);
        let leeway = fx::LEEWAY as i64;
        assert!(fx::NOW < claims.exp.saturating_add(leeway));
        assert!(fx::NOW >= claims.nbf.saturating_sub(leeway));
        let signed = fx::key_set().verify_signed(&token, fx::ISSUER);
        assert_eq!(signed.as_ref(), Ok(claims));
    }
}

/// The engine's decoding of the server's push and pull answers (and of an
/// error body in their place). What decodes re-encodes to itself; a refusal
/// reads as a short sentence.
pub fn client_sync_json(data: &[u8]) {
    let answer = |status| HttpResponse {
        status,
        body: data.to_vec(),
        date: None,
        retry_after: None,
    };
    if let Ok(push) = api::decode::<PushResponse>(&answer(200)) {
        let again = serde_json::to_vec(&push).expect("a push answer encodes");
        assert_eq!(
            api::decode::<PushResponse>(&answer_of(again)).ok(),
            Some(push)
        );
    }
    if let Ok(pull) = api::decode::<PullResponse>(&answer(200)) {
        let again = serde_json::to_vec(&pull).expect("a pull answer encodes");
        assert_eq!(
            api::decode::<PullResponse>(&answer_of(again)).ok(),
            Some(pull)
        );
    }
    for status in [400, 401, 409, 503] {
        let failure = api::failure(&answer(status), api::Grant::Session);
        if status == 401 {
            assert!(matches!(failure, ApiError::Unauthorized(_)));
        }
        let text = failure.into_error().to_string();
        assert!(
            text.len() <= MAX_MESSAGE,
            "a {}-byte error message",
            text.len()
        );
    }
}

fn answer_of(body: Vec<u8>) -> HttpResponse {
    HttpResponse {
        status: 200,
        body,
        date: None,
        retry_after: None,
    }
}

/// A stored keychain entry as the engine reads it at start: decoding, the
/// token check, the offline policy. A decoded entry re-encodes to itself;
/// the policy never moves the latest time seen back, and a usable verdict
/// ends within the session.
pub fn vault_entry(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(entry) = VaultEntry::from_json(text) else {
        return;
    };
    let json = entry.to_json();
    let again = VaultEntry::from_json(json.expose_secret()).expect("no round trip");
    assert_eq!(
        again.to_json().expose_secret(),
        json.expose_secret(),
        "no round trip"
    );
    if let Ok((keys, claims)) = entry.verify() {
        assert_eq!(claims.iss, entry.issuer);
        assert_eq!(
            (&claims.sub, &claims.sid),
            (&entry.user.id, &entry.session_id)
        );
        assert!(!keys.is_empty());
    }
    let mut judged = entry.clone();
    let grace = Duration::from_secs(7 * 86_400);
    let (verdict, _) = policy::evaluate(&mut judged, fx::NOW, entry.latest_seen_time, grace);
    assert!(judged.latest_seen_time >= entry.latest_seen_time);
    match verdict {
        Verdict::Usable { until } => {
            assert!(!judged.clock_locked);
            assert!(judged.latest_seen_time < until && until <= judged.refresh_expires_at);
        }
        Verdict::Locked(_) => {}
    }
}

/// The live-updates stream as a hostile server could send it: `data` cut
/// into chunks (sizes taken from its first byte) is fed to the SSE parser.
/// The events never depend on where the chunks end, none holds more than
/// the parser's bound, and their data decodes or is refused without harm.
pub fn client_events(data: &[u8]) {
    use crate::sse::{MAX_EVENT_BYTES, Parser};
    let Some((&step, bytes)) = data.split_first() else {
        return;
    };
    let whole = Parser::new().feed(bytes);
    let mut parser = Parser::new();
    let mut chunked = Ok(Vec::new());
    for chunk in bytes.chunks(usize::from(step % 17) + 1) {
        match parser.feed(chunk) {
            Ok(events) => {
                if let Ok(all) = &mut chunked {
                    all.extend(events);
                }
            }
            Err(e) => {
                chunked = Err(e);
                break;
            }
        }
    }
    // A byte-order mark cut across chunks is the one allowed difference.
    if !bytes.starts_with(b"\xEF") {
        assert_eq!(whole, chunked, "chunking changed the events");
    }
    for event in whole.into_iter().flatten() {
        assert!(event.name.len() + event.data.len() <= MAX_EVENT_BYTES);
        let _ = serde_json::from_str::<latchkey_protocol::ChangedEvent>(&event.data);
        let _ = serde_json::from_str::<latchkey_protocol::RevokedEvent>(&event.data);
    }
}
