//! Push and pull together: round trips, idempotent resends, conflicts and
//! their copies, deletes, and users kept apart.

use serde_json::{Value, json};

use crate::app::*;
use latchkey_testkit::*;

fn applied(r: &Value, op_id: &str, note_id: &str, rev: i64) {
    assert_eq!(
        r,
        &json!({"op_id": op_id, "status": "applied", "note_id": note_id, "rev": rev})
    );
}

/// Note `n` made ("Plan", "the text"), then a stale edit of it pushed,
/// whose conflict copy the user edits ("Mine", "edited copy"): the op
/// that made the note, the stale op, and the copy's id.
async fn a_note_and_an_edited_conflict_copy(
    app: &App,
    u: &User,
    n: &str,
) -> (Value, Value, String) {
    let create = upsert(&uuid(), n, 0, "Plan", "the text");
    app.push_ok(u.access(), vec![create.clone()]).await;
    let stale = upsert(&uuid(), n, 0, "Plan", "other text");
    let first = app.push_ok(u.access(), vec![stale.clone()]).await;
    let copy_id = first["results"][0]["conflict_copy_id"]
        .as_str()
        .unwrap()
        .to_string();
    let copy_rev = first["results"][0]["copy_rev"].as_i64().unwrap();
    app.push_ok(
        u.access(),
        vec![upsert(&uuid(), &copy_id, copy_rev, "Mine", "edited copy")],
    )
    .await;
    (create, stale, copy_id)
}

/// 31 days pass for every op result but `keep`'s (an op id; "" for none):
/// past the refresh-token lifetime, the prune takes them.
fn a_month_passes_for_op_results_but(app: &App, keep: &str) {
    sql(
        app,
        "UPDATE ops SET created_at = created_at - ?1 WHERE op_id != ?2",
        &[(31 * 24 * 3600).into(), keep.into()],
    );
}

/// The note `id` among a pull's changes.
fn pulled(all: &Value, id: &str) -> Value {
    all["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["note_id"] == id)
        .unwrap_or_else(|| panic!("{id} not pulled"))
        .clone()
}

#[tokio::test]
async fn push_then_pull_round_trips_notes() {
    let app = App::new().await;
    let u = app.user().await;
    let (o1, o2, n1, n2) = (uuid(), uuid(), uuid(), uuid());
    let res = app
        .push_ok(
            u.access(),
            vec![
                upsert(&o1, &n1, 0, "first", "hello"),
                upsert(&o2, &n2, 0, "ünïcødé ✓", "line\nbreak \"quoted\""),
            ],
        )
        .await;
    assert_keys(&res, &["results", "cursor"]);
    applied(&res["results"][0], &o1, &n1, 1);
    applied(&res["results"][1], &o2, &n2, 2);
    assert_eq!(res["cursor"], 2);

    let pulled = app.pull_ok(u.access(), "?since=0").await;
    assert_keys(&pulled, &["changes", "cursor", "more"]);
    assert_eq!(pulled["cursor"], 2);
    assert_eq!(pulled["more"], false);
    let changes = pulled["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2);
    for c in changes {
        assert_change_shape(c);
        assert!((c["updated_at"].as_i64().unwrap() - now()).abs() <= 5);
    }
    assert_eq!(changes[0]["note_id"], n1.as_str());
    assert_eq!(changes[0]["rev"], 1);
    assert_eq!(changes[0]["title"], "first");
    assert_eq!(changes[0]["body"], "hello");
    assert_eq!(changes[0]["deleted"], false);
    assert_eq!(changes[0]["conflict_of"], Value::Null);
    assert_eq!(changes[1]["title"], "ünïcødé ✓");
    assert_eq!(changes[1]["body"], "line\nbreak \"quoted\"");

    // No query at all means since=0; past the end is empty.
    assert_eq!(app.pull_ok(u.access(), "").await, pulled);
    let tail = app.pull_ok(u.access(), "?since=1").await;
    assert_eq!(tail["changes"].as_array().unwrap().len(), 1);
    assert_eq!(tail["changes"][0]["rev"], 2);
    let end = app.pull_ok(u.access(), "?since=2").await;
    assert_eq!(end, json!({"changes": [], "cursor": 2, "more": false}));

    // An edit on the current rev applies and gets the next rev.
    let o3 = uuid();
    let res = app
        .push_ok(u.access(), vec![upsert(&o3, &n1, 1, "first v2", "")])
        .await;
    applied(&res["results"][0], &o3, &n1, 3);
    let tail = app.pull_ok(u.access(), "?since=2").await;
    assert_eq!(tail["changes"][0]["title"], "first v2");
    assert_eq!(tail["changes"][0]["body"], "");
    // The edited note is no longer at its old rev.
    let all = app.pull_ok(u.access(), "").await;
    let revs: Vec<i64> = all["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["rev"].as_i64().unwrap())
        .collect();
    assert_eq!(revs, vec![2, 3]);
}

#[tokio::test]
async fn an_empty_push_is_200_with_no_results() {
    let app = App::new().await;
    let u = app.user().await;
    assert_eq!(
        app.push_ok(u.access(), vec![]).await,
        json!({"results": [], "cursor": 0})
    );
    app.push_ok(u.access(), vec![upsert(&uuid(), &uuid(), 0, "a", "b")])
        .await;
    assert_eq!(
        app.push_ok(u.access(), vec![]).await,
        json!({"results": [], "cursor": 1})
    );
}

#[tokio::test]
async fn pushing_the_same_batch_twice_changes_nothing() {
    let app = App::new().await;
    let u = app.user().await;
    let n = uuid();
    app.push_ok(u.access(), vec![upsert(&uuid(), &n, 0, "v1", "")])
        .await;
    let batch = vec![
        upsert(&uuid(), &uuid(), 0, "new", "x"),
        upsert(&uuid(), &n, 1, "v2", "y"),
        // stale: conflicts, makes a copy
        upsert(&uuid(), &n, 1, "v2 elsewhere", "z"),
        delete(&uuid(), &uuid(), 0),
    ];
    let first = app.push_ok(u.access(), batch.clone()).await;
    let before = app.pull_ok(u.access(), "").await;
    let second = app.push_ok(u.access(), batch.clone()).await;
    let after = app.pull_ok(u.access(), "").await;
    assert_eq!(before, after, "a retried push changed the data");
    assert_eq!(first["cursor"], second["cursor"]);
    let (a, b) = (
        first["results"].as_array().unwrap(),
        second["results"].as_array().unwrap(),
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(y["status"], "duplicate", "{y}");
        for k in [
            "op_id",
            "note_id",
            "rev",
            "conflict_copy_id",
            "copy_rev",
            "server_note",
        ] {
            assert_eq!(x.get(k), y.get(k), "{k}: {x} vs {y}");
        }
    }
    assert_eq!(a[2]["status"], "conflict");
    // The same op twice in one batch is a duplicate too.
    let op = upsert(&uuid(), &uuid(), 0, "once", "");
    let res = app.push_ok(u.access(), vec![op.clone(), op]).await;
    assert_eq!(res["results"][0]["status"], "applied");
    assert_eq!(res["results"][1]["status"], "duplicate");
    assert_eq!(res["results"][1]["rev"], res["results"][0]["rev"]);
}

#[tokio::test]
async fn a_conflict_keeps_the_server_version_and_makes_a_copy() {
    let app = App::new().await;
    let u = app.user().await;
    let n = uuid();
    app.push_ok(
        u.access(),
        vec![upsert(&uuid(), &n, 0, "Groceries", "milk")],
    )
    .await;
    // Device A edits rev 1 -> rev 2.
    app.push_ok(
        u.access(),
        vec![upsert(&uuid(), &n, 1, "Groceries", "milk, eggs")],
    )
    .await;
    // Device B edited rev 1 too, offline.
    let op = uuid();
    let res = app
        .push_ok(
            u.access(),
            vec![upsert(&op, &n, 1, "Groceries", "milk, bread")],
        )
        .await;
    let r = &res["results"][0];
    assert_keys(
        r,
        &[
            "op_id",
            "status",
            "note_id",
            "rev",
            "conflict_copy_id",
            "copy_rev",
            "server_note",
        ],
    );
    assert_eq!(r["op_id"], op.as_str());
    assert_eq!(r["status"], "conflict");
    assert_eq!(r["note_id"], n.as_str());
    assert_eq!(r["rev"], 2);
    assert_eq!(r["copy_rev"], 3);
    assert_eq!(res["cursor"], 3);
    let sn = &r["server_note"];
    assert_change_shape(sn);
    assert_eq!(sn["note_id"], n.as_str());
    assert_eq!(sn["rev"], 2);
    assert_eq!(sn["title"], "Groceries");
    assert_eq!(sn["body"], "milk, eggs");
    assert_eq!(sn["deleted"], false);
    let copy_id = r["conflict_copy_id"].as_str().unwrap();
    uuid::Uuid::parse_str(copy_id).unwrap();
    assert_ne!(copy_id, n);
    assert_eq!(copy_id, copy_id.to_lowercase());

    let pulled = app.pull_ok(u.access(), "?since=2").await;
    let changes = pulled["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1);
    let copy = &changes[0];
    assert_eq!(copy["note_id"], copy_id);
    assert_eq!(copy["rev"], 3);
    assert_eq!(copy["title"], "Groceries (conflict copy)");
    assert_eq!(copy["body"], "milk, bread");
    assert_eq!(copy["deleted"], false);
    assert_eq!(copy["conflict_of"], n.as_str());
    // The original stays as the server had it.
    let all = app.pull_ok(u.access(), "").await;
    let orig = all["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["note_id"] == n.as_str())
        .unwrap()
        .clone();
    assert_eq!(orig["body"], "milk, eggs");
    assert_eq!(orig["rev"], 2);
    assert_eq!(orig["conflict_of"], Value::Null);
}

#[tokio::test]
async fn a_base_from_the_future_conflicts_without_losing_anything() {
    let app = App::new().await;
    let u = app.user().await;
    let n = uuid();
    app.push_ok(u.access(), vec![upsert(&uuid(), &n, 0, "t", "b")])
        .await;
    let res = app
        .push_ok(u.access(), vec![upsert(&uuid(), &n, 9, "t", "mine")])
        .await;
    let r = &res["results"][0];
    assert_eq!(r["status"], "conflict");
    assert_eq!(r["server_note"]["rev"], 1);
    assert_eq!(r["server_note"]["body"], "b");
    // A note the server never had, with a base rev: a conflict too.
    let ghost = uuid();
    let res = app
        .push_ok(u.access(), vec![upsert(&uuid(), &ghost, 5, "g", "kept")])
        .await;
    let r = &res["results"][0];
    assert_eq!(r["status"], "conflict");
    let copy = r["conflict_copy_id"].as_str().unwrap().to_string();
    let all = app.pull_ok(u.access(), "").await;
    assert!(
        all["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["note_id"] == copy.as_str() && c["body"] == "kept")
    );
}

#[tokio::test]
async fn a_delete_that_conflicts_with_an_edit_loses() {
    let app = App::new().await;
    let u = app.user().await;
    let n = uuid();
    app.push_ok(u.access(), vec![upsert(&uuid(), &n, 0, "keep me", "v1")])
        .await;
    app.push_ok(u.access(), vec![upsert(&uuid(), &n, 1, "keep me", "v2")])
        .await;
    let op = uuid();
    let res = app.push_ok(u.access(), vec![delete(&op, &n, 1)]).await;
    let r = &res["results"][0];
    assert_keys(r, &["op_id", "status", "note_id", "rev", "server_note"]);
    assert_eq!(r["status"], "conflict");
    assert_eq!(r["rev"], 2);
    assert_eq!(r["server_note"]["body"], "v2");
    assert_eq!(r["server_note"]["deleted"], false);
    assert_eq!(res["cursor"], 2, "a losing delete wrote something");
    let all = app.pull_ok(u.access(), "").await;
    let changes = all["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{all}");
    assert_eq!(changes[0]["deleted"], false);
    assert_eq!(changes[0]["body"], "v2");
}

#[tokio::test]
async fn deletes_leave_tombstones_and_an_upsert_on_one_brings_the_note_back() {
    let app = App::new().await;
    let u = app.user().await;
    let n = uuid();
    app.push_ok(u.access(), vec![upsert(&uuid(), &n, 0, "secret", "text")])
        .await;
    let op = uuid();
    let res = app.push_ok(u.access(), vec![delete(&op, &n, 1)]).await;
    applied(&res["results"][0], &op, &n, 2);
    let pulled = app.pull_ok(u.access(), "?since=1").await;
    let t = &pulled["changes"][0];
    assert_change_shape(t);
    assert_eq!(t["note_id"], n.as_str());
    assert_eq!(t["rev"], 2);
    assert_eq!(t["deleted"], true);
    assert_eq!(t["title"], "");
    assert_eq!(t["body"], "");
    // Everything since 0 shows the tombstone only, not the old content.
    let all = app.pull_ok(u.access(), "").await;
    assert_eq!(all["changes"].as_array().unwrap().len(), 1);
    assert!(!all.to_string().contains("secret"));

    let op = uuid();
    let res = app
        .push_ok(u.access(), vec![upsert(&op, &n, 2, "back", "again")])
        .await;
    applied(&res["results"][0], &op, &n, 3);
    let back = app.pull_ok(u.access(), "?since=2").await;
    assert_eq!(back["changes"][0]["deleted"], false);
    assert_eq!(back["changes"][0]["title"], "back");
    assert_eq!(back["changes"][0]["body"], "again");

    // An upsert on a stale base of a deleted note is a conflict, with a copy.
    app.push_ok(u.access(), vec![delete(&uuid(), &n, 3)]).await;
    let res = app
        .push_ok(
            u.access(),
            vec![upsert(&uuid(), &n, 3, "edited offline", "x")],
        )
        .await;
    let r = &res["results"][0];
    assert_eq!(r["status"], "conflict");
    assert_eq!(r["server_note"]["deleted"], true);
    assert!(r["conflict_copy_id"].is_string());
}

#[tokio::test]
async fn uuids_are_accepted_in_any_case_and_answered_in_lowercase() {
    let app = App::new().await;
    let u = app.user().await;
    let (op, n) = (uuid(), uuid());
    let res = app
        .push_ok(
            u.access(),
            vec![upsert(&op.to_uppercase(), &n.to_uppercase(), 0, "t", "b")],
        )
        .await;
    applied(&res["results"][0], &op, &n, 1);
    let pulled = app.pull_ok(u.access(), "").await;
    assert_eq!(pulled["changes"][0]["note_id"], n.as_str());
    // It is the same op, and the same note, whatever the case.
    let res = app
        .push_ok(u.access(), vec![upsert(&op, &n, 0, "t", "b")])
        .await;
    assert_eq!(res["results"][0]["status"], "duplicate");
    let op2 = uuid();
    let res = app
        .push_ok(
            u.access(),
            vec![upsert(&op2.to_uppercase(), &n, 1, "t2", "")],
        )
        .await;
    applied(&res["results"][0], &op2, &n, 2);
    // A conflict answers in lowercase too.
    let op3 = uuid();
    let res = app
        .push_ok(
            u.access(),
            vec![upsert(&op3.to_uppercase(), &n.to_uppercase(), 1, "t3", "")],
        )
        .await;
    let r = &res["results"][0];
    assert_eq!(r["op_id"], op3.as_str());
    assert_eq!(r["note_id"], n.as_str());
    assert_eq!(r["server_note"]["note_id"], n.as_str());
    let copy = r["conflict_copy_id"].as_str().unwrap();
    assert_eq!(copy, copy.to_lowercase());
    let pulled = app.pull_ok(u.access(), "?since=2").await;
    assert_eq!(pulled["changes"][0]["conflict_of"], n.as_str());
}

#[tokio::test]
async fn users_never_see_or_touch_each_others_notes() {
    let app = App::new().await;
    let alice = app.user().await;
    let bob = app.user().await;
    let n = uuid();
    let op = uuid();
    // Both write the SAME note id, even with the same op id.
    let a = app
        .push_ok(alice.access(), vec![upsert(&op, &n, 0, "alice's", "A")])
        .await;
    let b = app
        .push_ok(bob.access(), vec![upsert(&op, &n, 0, "bob's", "B")])
        .await;
    applied(&a["results"][0], &op, &n, 1);
    applied(&b["results"][0], &op, &n, 1);
    // Each sees only their own.
    let pa = app.pull_ok(alice.access(), "").await;
    let pb = app.pull_ok(bob.access(), "").await;
    assert_eq!(pa["changes"].as_array().unwrap().len(), 1);
    assert_eq!(pa["changes"][0]["title"], "alice's");
    assert_eq!(pb["changes"].as_array().unwrap().len(), 1);
    assert_eq!(pb["changes"][0]["title"], "bob's");
    // Bob edits and deletes "the" note: only his changes.
    app.push_ok(bob.access(), vec![upsert(&uuid(), &n, 1, "bob v2", "")])
        .await;
    app.push_ok(bob.access(), vec![delete(&uuid(), &n, 2)])
        .await;
    let pa2 = app.pull_ok(alice.access(), "").await;
    assert_eq!(pa2, pa, "bob's writes changed alice's view");
    // Bob cannot detect alice's other notes: a note only alice has looks,
    // to bob, exactly like a note nobody has.
    let only_alice = uuid();
    app.push_ok(
        alice.access(),
        vec![upsert(&uuid(), &only_alice, 0, "private", "diary")],
    )
    .await;
    let probe = |id: &str| vec![upsert(&uuid(), id, 1, "probe", ""), delete(&uuid(), id, 1)];
    let nobody = uuid();
    let r1 = app.push_ok(bob.access(), probe(&only_alice)).await;
    let r2 = app.push_ok(bob.access(), probe(&nobody)).await;
    for (x, y) in r1["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip(r2["results"].as_array().unwrap())
    {
        assert_eq!(x["status"], y["status"]);
        assert_eq!(x["rev"], y["rev"]);
        assert_eq!(
            x["server_note"]["title"], y["server_note"]["title"],
            "{x} vs {y}"
        );
        assert_eq!(x["server_note"]["deleted"], y["server_note"]["deleted"]);
    }
    assert!(!r1.to_string().contains("private"));
    assert!(!r1.to_string().contains("diary"));
    let pa3 = app.pull_ok(alice.access(), "").await;
    let changes = pa3["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2);
    assert!(changes.iter().all(|c| c["title"] != "probe"));
    let pb3 = app.pull_ok(bob.access(), "").await;
    assert!(!pb3.to_string().contains("alice"));
    assert!(!pb3.to_string().contains("diary"));
    // Revs are one sequence per user.
    assert_eq!(pa3["cursor"], 2);
}

#[tokio::test]
async fn ops_of_one_batch_apply_in_order() {
    let app = App::new().await;
    let u = app.user().await;
    let (n, m) = (uuid(), uuid());
    let res = app
        .push_ok(
            u.access(),
            vec![
                upsert(&uuid(), &n, 0, "v1", ""),
                upsert(&uuid(), &n, 1, "v2", ""),
                upsert(&uuid(), &m, 0, "other", ""),
                delete(&uuid(), &n, 2),
                upsert(&uuid(), &n, 4, "v3", "back"),
            ],
        )
        .await;
    let statuses: Vec<(&str, i64)> = res["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["status"].as_str().unwrap(), r["rev"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("applied", 1),
            ("applied", 2),
            ("applied", 3),
            ("applied", 4),
            ("applied", 5)
        ]
    );
    assert_eq!(res["cursor"], 5);
    let all = app.pull_ok(u.access(), "").await;
    let changes = all["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[1]["note_id"], n.as_str());
    assert_eq!(changes[1]["title"], "v3");
    assert_eq!(changes[1]["deleted"], false);
}

/// PROTOCOL.md v1.1: a conflict copy of a note with a 4 KiB title has a
/// title that still fits 4 KiB, so the copy can be edited and pushed.
#[tokio::test]
async fn a_conflict_copy_of_a_4_kib_title_fits_and_can_be_pushed_again() {
    let app = App::new().await;
    let u = app.user().await;
    // 4,096 bytes, with 3-byte characters across the 4,080-byte cut.
    let title = format!("a{}", "€".repeat(1365));
    assert_eq!(title.len(), 4096);
    let n = uuid();
    app.push_ok(u.access(), vec![upsert(&uuid(), &n, 0, &title, "one")])
        .await;
    app.push_ok(u.access(), vec![upsert(&uuid(), &n, 1, &title, "two")])
        .await;
    let res = app
        .push_ok(u.access(), vec![upsert(&uuid(), &n, 1, &title, "three")])
        .await;
    let r = &res["results"][0];
    assert_eq!(r["status"], "conflict");
    let copy_id = r["conflict_copy_id"].as_str().unwrap();
    let copy_rev = r["copy_rev"].as_i64().unwrap();
    let pulled = app.pull_ok(u.access(), "?since=2").await;
    let copy = &pulled["changes"][0];
    assert_eq!(copy["note_id"], copy_id);
    let copy_title = copy["title"].as_str().unwrap();
    assert!(copy_title.len() <= 4096, "{} bytes", copy_title.len());
    assert!(copy_title.ends_with(" (conflict copy)"));
    assert_eq!(copy_title, format!("a{} (conflict copy)", "€".repeat(1359)));
    // Edited and pushed again as it is.
    let again = app
        .push_ok(
            u.access(),
            vec![upsert(
                &uuid(),
                copy_id,
                copy_rev,
                copy_title,
                "three, edited",
            )],
        )
        .await;
    assert_eq!(again["results"][0]["status"], "applied");
}

/// The op results are pruned once older than the refresh-token lifetime.
/// A resend of a pruned op id is a new op: its base rev no longer matches,
/// so it conflicts, and its text lands in a conflict copy. Nothing is lost,
/// not even an edit made to the copy its first sending made.
#[tokio::test]
async fn a_resent_op_whose_result_was_pruned_conflicts_and_keeps_its_text() {
    let app = App::new().await;
    let u = app.user().await;
    let n = uuid();
    // A conflict whose copy the user then edits.
    let (create, stale, copy_id) = a_note_and_an_edited_conflict_copy(&app, &u, &n).await;
    // A delete, applied.
    let gone = uuid();
    app.push_ok(u.access(), vec![upsert(&uuid(), &gone, 0, "x", "y")])
        .await;
    let delete_op = delete(&uuid(), &gone, 4);
    assert_eq!(
        app.push_ok(u.access(), vec![delete_op.clone()]).await["results"][0]["status"],
        "applied"
    );
    // A recent op that must survive the prune.
    let recent = upsert(&uuid(), &uuid(), 0, "recent", "r");
    app.push_ok(u.access(), vec![recent.clone()]).await;

    a_month_passes_for_op_results_but(&app, recent["op_id"].as_str().unwrap());
    assert_eq!(app.state.prune_ops(now()).await.unwrap(), 5);
    assert_eq!(app.state.prune_ops(now()).await.unwrap(), 0);
    let again = app.push_ok(u.access(), vec![recent]).await;
    assert_eq!(again["results"][0]["status"], "duplicate");

    let res = app
        .push_ok(u.access(), vec![create, stale, delete_op])
        .await;
    let [c, s, d] = [0, 1, 2].map(|i| res["results"][i].clone());
    // The creation: a conflict, the server's note intact, a copy of the text.
    assert_eq!(c["status"], "conflict");
    assert_eq!(c["server_note"]["body"], "the text");
    let c_copy = c["conflict_copy_id"].as_str().unwrap();
    // The old conflict: a new copy, not the edited one overwritten.
    assert_eq!(s["status"], "conflict");
    let s_copy = s["conflict_copy_id"].as_str().unwrap();
    assert_ne!(s_copy, copy_id);
    // The delete: a conflict with no copy; the tombstone stays.
    assert_eq!(d["status"], "conflict");
    assert!(d.get("conflict_copy_id").is_none(), "{d}");
    let all = app.pull_ok(u.access(), "").await;
    let note = |id: &str| pulled(&all, id);
    assert_eq!(note(&n)["body"], "the text");
    assert_eq!(note(c_copy)["body"], "the text");
    assert_eq!(note(c_copy)["title"], "Plan (conflict copy)");
    assert_eq!(note(s_copy)["body"], "other text");
    assert_eq!(note(&copy_id)["body"], "edited copy");
    assert_eq!(note(&copy_id)["title"], "Mine");
    assert_eq!(note(&gone)["deleted"], true);
}

/// A resent op whose result was pruned, in one push after an op that
/// creates its note: it conflicts with that op, and the copy its first
/// sending made (edited since) is kept, a new copy made beside it.
#[tokio::test]
async fn a_resent_op_conflicting_with_an_earlier_op_of_its_push_keeps_the_old_copy() {
    let app = App::new().await;
    let u = app.user().await;
    let n = uuid();
    let (_, stale, old_copy) = a_note_and_an_edited_conflict_copy(&app, &u, &n).await;
    a_month_passes_for_op_results_but(&app, "");
    assert_eq!(app.state.prune_ops(now()).await.unwrap(), 3);

    // A new note, and the old op resent on it, both based on nothing.
    let fresh = uuid();
    let res = app
        .push_ok(
            u.access(),
            vec![
                upsert(&uuid(), &fresh, 0, "Fresh", "first"),
                upsert(
                    stale["op_id"].as_str().unwrap(),
                    &fresh,
                    0,
                    "Fresh",
                    "second",
                ),
            ],
        )
        .await;
    assert_eq!(res["results"][0]["status"], "applied");
    let second = &res["results"][1];
    assert_eq!(second["status"], "conflict", "{second}");
    let new_copy = second["conflict_copy_id"].as_str().unwrap();
    assert_ne!(new_copy, old_copy);
    let all = app.pull_ok(u.access(), "").await;
    let body = |id: &str| pulled(&all, id)["body"].clone();
    assert_eq!(body(&fresh), "first");
    assert_eq!(body(new_copy), "second");
    assert_eq!(body(&old_copy), "edited copy");
    assert_eq!(body(&n), "the text");
}
