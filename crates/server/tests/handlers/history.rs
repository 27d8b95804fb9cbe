//! `GET /v1/notes/{note_id}/history`: the last 50 versions newest first,
//! deletes and undeletes as versions, nothing kept for conflicts, copies or
//! duplicates, and 404 for every id that is not one of the caller's notes.

use serde_json::{Value, json};

use crate::app::*;
use latchkey_testkit::*;

fn history_path(note_id: &str) -> String {
    format!("/v1/notes/{note_id}/history")
}

impl App {
    async fn history(&self, token: &str, note_id: &str) -> Value {
        let r = self.get(&history_path(note_id), Some(token)).await;
        let body = r.ok().clone();
        assert_keys(&body, &["versions"]);
        for v in body["versions"].as_array().unwrap() {
            assert_keys(v, &["rev", "title", "body", "deleted", "updated_at"]);
        }
        body
    }

    /// Pushes one op; returns the note's rev after it.
    async fn edit(&self, token: &str, op: Value) -> i64 {
        let res = self.push_ok(token, vec![op]).await;
        assert_eq!(res["results"][0]["status"], "applied", "{res}");
        res["results"][0]["rev"].as_i64().unwrap()
    }
}

/// (rev, title, body, deleted) of each version listed.
fn versions(history: &Value) -> Vec<(i64, String, String, bool)> {
    history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["rev"].as_i64().unwrap(),
                v["title"].as_str().unwrap().to_owned(),
                v["body"].as_str().unwrap().to_owned(),
                v["deleted"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_last_50_versions_are_kept_newest_first() {
    let app = App::new().await;
    let u = app.user().await;
    let note = uuid();
    let mut revs = Vec::new();
    let mut base = 0;
    for i in 0..55 {
        // Another note's edit in between, so the note's revs have gaps.
        app.push_new_note(u.access()).await;
        let title = format!("title {i}");
        let body = format!("body {i}");
        base = app
            .edit(u.access(), upsert(&uuid(), &note, base, &title, &body))
            .await;
        revs.push(base);
    }
    let history = app.history(u.access(), &note).await;
    let got = versions(&history);
    // 54 earlier versions exist (the 55th is current); the 50 newest stay.
    let want: Vec<_> = (4..54)
        .rev()
        .map(|i| (revs[i], format!("title {i}"), format!("body {i}"), false))
        .collect();
    assert_eq!(got, want);
    for v in history["versions"].as_array().unwrap() {
        assert!(
            (v["updated_at"].as_i64().unwrap() - now()).abs() <= 60,
            "{v}"
        );
    }
}

#[tokio::test]
async fn a_delete_and_an_undelete_are_versions_too() {
    let app = App::new().await;
    let u = app.user().await;
    let note = uuid();
    app.get(&history_path(&note), Some(u.access()))
        .await
        .err(404, "not_found");
    let r1 = app
        .edit(u.access(), upsert(&uuid(), &note, 0, "draft", "one"))
        .await;
    assert_eq!(
        app.history(u.access(), &note).await,
        json!({"versions": []})
    );
    let r2 = app
        .edit(u.access(), upsert(&uuid(), &note, r1, "final", "two"))
        .await;
    let r3 = app.edit(u.access(), delete(&uuid(), &note, r2)).await;
    let got = versions(&app.history(u.access(), &note).await);
    assert_eq!(
        got,
        [
            (r2, "final".into(), "two".into(), false),
            (r1, "draft".into(), "one".into(), false),
        ]
    );
    // Deleting a tombstone changes nothing and keeps nothing.
    app.push_ok(u.access(), vec![delete(&uuid(), &note, r3)])
        .await;
    // Brought back: the tombstone it replaces is a version.
    let r4 = app
        .edit(u.access(), upsert(&uuid(), &note, r3, "back", "three"))
        .await;
    assert!(r4 > r3);
    let got = versions(&app.history(u.access(), &note).await);
    assert_eq!(
        got,
        [
            (r3, String::new(), String::new(), true),
            (r2, "final".into(), "two".into(), false),
            (r1, "draft".into(), "one".into(), false),
        ]
    );
}

#[tokio::test]
async fn conflicts_copies_and_duplicates_keep_no_version() {
    let app = App::new().await;
    let u = app.user().await;
    let note = uuid();
    let r1 = app
        .edit(u.access(), upsert(&uuid(), &note, 0, "mine", "a"))
        .await;
    let edit = upsert(&uuid(), &note, r1, "edited", "b");
    app.edit(u.access(), edit.clone()).await;
    // The same op again is a duplicate: no second version.
    app.push_ok(u.access(), vec![edit]).await;
    // A stale edit conflicts: the note keeps its version, the copy is new.
    let res = app
        .push_ok(u.access(), vec![upsert(&uuid(), &note, r1, "theirs", "c")])
        .await;
    assert_eq!(res["results"][0]["status"], "conflict");
    let copy = res["results"][0]["conflict_copy_id"].as_str().unwrap();
    // A delete that conflicts loses and keeps nothing.
    let res = app
        .push_ok(u.access(), vec![delete(&uuid(), &note, r1)])
        .await;
    assert_eq!(res["results"][0]["status"], "conflict");

    let got = versions(&app.history(u.access(), &note).await);
    assert_eq!(got, [(r1, "mine".into(), "a".into(), false)]);
    assert_eq!(app.history(u.access(), copy).await, json!({"versions": []}));
}

#[tokio::test]
async fn only_the_owner_sees_a_notes_history() {
    let app = App::new().await;
    let u = app.user().await;
    let v = app.user().await;
    let note = uuid();
    let r1 = app
        .edit(u.access(), upsert(&uuid(), &note, 0, "secret", "x"))
        .await;
    app.edit(u.access(), upsert(&uuid(), &note, r1, "secret 2", "y"))
        .await;
    let unknown = app.get(&history_path(&uuid()), Some(u.access())).await;
    unknown.err(404, "not_found");
    let theirs = app.get(&history_path(&note), Some(v.access())).await;
    theirs.err(404, "not_found");
    // Exactly alike: nothing tells an existing note of another user apart.
    assert_eq!(theirs.body, unknown.body);
    for bad in ["not-a-uuid", "1", "%20", &format!("{note}x")] {
        app.get(&history_path(bad), Some(u.access()))
            .await
            .err(404, "not_found");
    }
    // Ids in any case are the same note.
    let upper = app.history(u.access(), &note.to_uppercase()).await;
    assert_eq!(upper, app.history(u.access(), &note).await);
    assert_eq!(versions(&upper).len(), 1);
    app.get(&history_path(&note), None)
        .await
        .err(401, "invalid_token");
}
