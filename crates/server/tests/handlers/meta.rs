//! Health, server metadata (RFC 8414) and the JWKS.

use serde_json::json;

use crate::app::*;
use latchkey_testkit::*;

#[tokio::test]
async fn healthz_answers_ok() {
    let app = App::new().await;
    let r = app.get("/healthz", None).await;
    assert_eq!(r.ok(), &json!({"status": "ok"}));
}

#[tokio::test]
async fn metadata_lists_issuer_and_endpoints() {
    let app = App::new().await;
    let r = app
        .get("/.well-known/oauth-authorization-server", None)
        .await;
    let m = r.ok();
    assert_keys(
        m,
        &[
            "issuer",
            "token_endpoint",
            "revocation_endpoint",
            "jwks_uri",
            "grant_types_supported",
        ],
    );
    assert_eq!(m["issuer"], ISSUER);
    assert_eq!(m["token_endpoint"], format!("{ISSUER}/v1/auth/token"));
    assert_eq!(m["revocation_endpoint"], format!("{ISSUER}/v1/auth/revoke"));
    assert_eq!(m["jwks_uri"], format!("{ISSUER}/.well-known/jwks.json"));
    assert_eq!(
        m["grant_types_supported"],
        json!(["password", "refresh_token"])
    );
}

#[tokio::test]
async fn jwks_lists_the_signing_key_and_is_cacheable() {
    let app = App::new().await;
    let r = app.get("/.well-known/jwks.json", None).await;
    let cc = r.header("cache-control").unwrap();
    assert!(cc.contains("max-age=300"), "{cc}");
    let jwks = r.ok();
    assert_keys(jwks, &["keys"]);
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let k = &keys[0];
    assert_keys(k, &["kty", "crv", "x", "kid", "alg", "use"]);
    assert_eq!(k["kty"], "OKP");
    assert_eq!(k["crv"], "Ed25519");
    assert_eq!(k["alg"], "EdDSA");
    assert_eq!(k["use"], "sig");
    let x = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        k["x"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(x.len(), 32);
    let (key, kid) = app.signing_key();
    assert_eq!(k["kid"], kid.as_str());
    assert_eq!(x, key.verifying_key().as_bytes());
}
