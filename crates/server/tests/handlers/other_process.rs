//! Changes made by another process on the same database (the admin commands):
//! revocations and key rotations.

use latchkey_protocol::KeySet;
use serde_json::Value;

use crate::app::*;
use latchkey_testkit::*;

#[tokio::test]
async fn a_revocation_by_another_process_applies_after_the_poll() {
    let app = App::new().await;
    let u = app.user().await;
    let second = app.login_as(&u.name, &u.password).await.ok().clone();
    let other = app.user().await;
    let cli = app.other_process().await;
    let n = cli
        .revoke_user(&u.name, latchkey_protocol::Reason::Revoked, now())
        .await
        .unwrap();
    assert_eq!(n, Some(2));
    app.state.refresh_from_store().await.unwrap();
    for at in [u.access(), second["access_token"].as_str().unwrap()] {
        let r = app.session(at).await;
        r.unauthorized();
        assert_eq!(r.body["reason"], "revoked");
    }
    assert_reason(
        &app.refresh(u.refresh()).await.body,
        "invalid_grant",
        "revoked",
    );
    app.session(other.access()).await.ok();
    // Signing in again works.
    app.login_as(&u.name, &u.password).await.ok();
}

/// The reconnect check asks the database: a revocation by another process
/// (or instance) is refused there at once, before this one polls; the
/// session's other requests are refused from then on too.
#[tokio::test]
async fn the_reconnect_check_sees_another_process_revocation_at_once() {
    let app = App::new().await;
    let u = app.user().await;
    let other = app.user().await;
    app.pull(u.access(), "").await.ok();
    let cli = app.other_process().await;
    cli.revoke_user(&u.name, latchkey_protocol::Reason::Revoked, now())
        .await
        .unwrap();
    // Not polled yet: what this process remembers still says live.
    app.pull(u.access(), "").await.ok();
    let r = app.session(u.access()).await;
    r.unauthorized();
    assert_eq!(r.body["reason"], "revoked");
    let r = app.pull(u.access(), "").await;
    r.unauthorized();
    assert_eq!(r.body["reason"], "revoked");
    app.session(other.access()).await.ok();
}

#[tokio::test]
async fn a_key_rotation_by_another_process_is_picked_up() {
    let app = App::new().await;
    let u = app.user().await;
    let (_, old_kid) = app.signing_key();
    let cli = app.other_process().await;
    let t = now();
    let key = latchkey_server::keys::generate(t);
    let new_kid = key.kid.clone();
    cli.rotate_key(key, t).await.unwrap();
    app.state.refresh_from_store().await.unwrap();

    let fresh = app.login_as(&u.name, &u.password).await.ok().clone();
    let at = fresh["access_token"].as_str().unwrap();
    assert_eq!(jwt_part(at, 0)["kid"], new_kid.as_str());
    let jwks = app.jwks().await;
    let kids = kids(&jwks);
    assert!(kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()));
    // Both the old and the new token verify, on the server and offline.
    app.session(u.access()).await.ok();
    app.session(at).await.ok();
    let set = KeySet::from_jwks(&serde_json::from_value(jwks).unwrap()).unwrap();
    set.verify(u.access(), ISSUER, now(), 30).unwrap();
    set.verify(at, ISSUER, now(), 30).unwrap();
    // Refreshes sign with the new key too.
    let t1 = app.refresh(u.refresh()).await.ok().clone();
    assert_eq!(
        jwt_part(t1["access_token"].as_str().unwrap(), 0)["kid"],
        new_kid.as_str()
    );
}

#[tokio::test]
async fn retired_keys_leave_the_jwks_once_no_token_of_theirs_can_be_valid() {
    let app = App::new().await;
    let u = app.user().await;
    let (_, first) = app.signing_key();
    let cli = app.other_process().await;
    let t = now();
    cli.rotate_key(latchkey_server::keys::generate(t), t)
        .await
        .unwrap();
    let (_, second) = app.signing_key();
    assert_eq!(second, first, "not reloaded yet");
    // The first key was retired long ago (more than 15 min + 60 s).
    sql(
        &app,
        "UPDATE signing_keys SET retired_at = retired_at - 2000 WHERE kid = ?1",
        &[(&first).into()],
    );
    let t = now();
    cli.rotate_key(latchkey_server::keys::generate(t), t)
        .await
        .unwrap();
    app.state.refresh_from_store().await.unwrap();
    let jwks = app.jwks().await;
    let kids = kids(&jwks);
    // The current key and the one retired just now; not the old one.
    assert_eq!(kids.len(), 2, "{kids:?}");
    assert!(!kids.contains(&first.as_str()));
    let (_, current) = app.signing_key();
    assert!(kids.contains(&current.as_str()));
    let r = app.session(u.access()).await;
    r.unauthorized();
}

/// The key ids a JWKS lists.
fn kids(jwks: &Value) -> Vec<&str> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect()
}
