//! The tests' own calls to a running server, as another device of the
//! same user would make them: a plain HTTP client ([`web`]), a session
//! ([`access_token`]), the notes the server holds ([`server_changes`]), and
//! a revocation that waits until the server honours it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use latchkey_protocol::{Change, PullResponse};

use crate::TestServer;

/// A plain HTTP client for the tests' own calls to the server: rustls on
/// ring (the workspace's one crypto provider, installed first), no proxy,
/// 30 s per request.
pub fn web() -> reqwest::Client {
    latchkey_client::http::install_tls_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a reqwest client")
}

/// An access token of a new session of `user` (password grant).
pub async fn access_token(http: &reqwest::Client, url: &str, user: &str, password: &str) -> String {
    let tok: serde_json::Value = http
        .post(format!("{url}/v1/auth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", user),
            ("password", password),
        ])
        .send()
        .await
        .expect("the server answers")
        .json()
        .await
        .expect("a JSON answer");
    tok["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access token for {user}: {tok}"))
        .to_string()
}

/// Every note the session of `token` can pull (tombstones included),
/// whole, in note id order.
pub async fn pull_all(http: &reqwest::Client, url: &str, token: &str) -> Vec<Change> {
    let mut since = 0;
    let mut notes = BTreeMap::new();
    loop {
        let page: PullResponse = http
            .get(format!("{url}/v1/sync/pull?since={since}&limit=1000"))
            .bearer_auth(token)
            .send()
            .await
            .expect("the server answers")
            .json()
            .await
            .expect("a pull page");
        for c in page.changes {
            notes.insert(c.note_id, c);
        }
        since = page.cursor;
        if !page.more {
            break;
        }
    }
    notes.into_values().collect()
}

/// Every note of `user` on the server (tombstones included), whole, in
/// note id order, as a new session sees them.
pub async fn server_changes(url: &str, user: &str, password: &str) -> Vec<Change> {
    let http = web();
    let token = access_token(&http, url, user, password).await;
    pull_all(&http, url, &token).await
}

/// The live notes of `user` on the server (title, body, deleted).
pub async fn server_notes(url: &str, user: &str, password: &str) -> Vec<(String, String, bool)> {
    server_changes(url, user, password)
        .await
        .into_iter()
        .filter(|c| !c.deleted)
        .map(|c| (c.title, c.body, c.deleted))
        .collect()
}

/// Revokes every session of `user` with the CLI and returns once the
/// running server refuses them (it picks up other processes' revocations
/// within a second): a session made just before is polled until it is.
pub async fn revoke_user_now(server: &TestServer, user: &str, password: &str) {
    let (url, http) = (server.url(), web());
    let probe = access_token(&http, &url, user, password).await;
    server.revoke_user(user);
    let deadline = Instant::now() + Duration::from_secs(10);
    // Every instance, when several are behind nginx: another instance
    // hears of the revocation within a second (PROTOCOL.md), so one 401
    // through nginx says nothing of the next request.
    for url in server.instance_urls() {
        loop {
            let res = http
                .get(format!("{url}/v1/auth/session"))
                .bearer_auth(&probe)
                .send()
                .await
                .expect("the server answers");
            if res.status() == 401 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the server ({url}) still honours {user}'s sessions"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
