//! `POST /v1/sync/push`: malformed bodies and ops, the media type, and the
//! size limits of the request and the answer.

use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use serde_json::{Value, json};

use crate::app::*;
use latchkey_testkit::*;

#[tokio::test]
async fn one_malformed_op_rejects_the_whole_push() {
    let app = App::new().await;
    let u = app.user().await;
    let good = || upsert(&uuid(), &uuid(), 0, "good", "fine");
    let mut bad_ops: Vec<(&str, Value)> = vec![
        (
            "note id not a uuid",
            upsert(&uuid(), "not-a-uuid", 0, "t", ""),
        ),
        ("op id not a uuid", upsert("12345", &uuid(), 0, "t", "")),
        ("op id a number", {
            let mut o = good();
            o["op_id"] = json!(12345);
            o
        }),
        (
            "uuid with junk",
            upsert(&format!("{}x", uuid()), &uuid(), 0, "t", ""),
        ),
        ("empty uuid", upsert(&uuid(), "", 0, "t", "")),
        ("negative base_rev", upsert(&uuid(), &uuid(), -1, "t", "")),
        ("negative base_rev on delete", delete(&uuid(), &uuid(), -7)),
        ("unknown action", {
            let mut o = good();
            o["action"] = json!("rename");
            o
        }),
        ("action in capitals", {
            let mut o = good();
            o["action"] = json!("UPSERT");
            o
        }),
        ("action missing", {
            let mut o = good();
            o.as_object_mut().unwrap().remove("action");
            o
        }),
        ("action null", {
            let mut o = good();
            o["action"] = json!(null);
            o
        }),
        ("base_rev as text", {
            let mut o = good();
            o["base_rev"] = json!("0");
            o
        }),
        ("base_rev fractional", {
            let mut o = good();
            o["base_rev"] = json!(1.5);
            o
        }),
        ("base_rev too big", {
            let mut o = good();
            o["base_rev"] = json!(u64::MAX);
            o
        }),
        ("base_rev missing", {
            let mut o = good();
            o.as_object_mut().unwrap().remove("base_rev");
            o
        }),
        ("title missing", {
            let mut o = good();
            o.as_object_mut().unwrap().remove("title");
            o
        }),
        ("body missing", {
            let mut o = good();
            o.as_object_mut().unwrap().remove("body");
            o
        }),
        ("title a number", {
            let mut o = good();
            o["title"] = json!(5);
            o
        }),
        ("body null", {
            let mut o = good();
            o["body"] = json!(null);
            o
        }),
        ("client_time missing", {
            let mut o = good();
            o.as_object_mut().unwrap().remove("client_time");
            o
        }),
        ("client_time as text", {
            let mut o = good();
            o["client_time"] = json!("now");
            o
        }),
        ("note_id missing", {
            let mut o = good();
            o.as_object_mut().unwrap().remove("note_id");
            o
        }),
        ("op not an object", json!("upsert")),
        ("op null", json!(null)),
        (
            "title over 4 KiB",
            upsert(&uuid(), &uuid(), 0, &"t".repeat(4097), ""),
        ),
        (
            // 2049 characters but 4098 bytes of UTF-8
            "title over 4 KiB of UTF-8",
            upsert(&uuid(), &uuid(), 0, &"é".repeat(2049), ""),
        ),
        (
            "body over 4 MiB",
            upsert(&uuid(), &uuid(), 0, "t", &"b".repeat(4 * 1024 * 1024 + 1)),
        ),
    ];
    // Positions: first, middle, last.
    for (i, (label, bad)) in bad_ops.drain(..).enumerate() {
        let mut batch = vec![good(), good()];
        batch.insert(i % 3, bad);
        let r = app.push(u.access(), &ops(batch)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{label}: {}", r.body);
        assert_error(&r.body, "invalid_request");
    }
    // Nothing of any of those was applied.
    assert_eq!(
        app.pull_ok(u.access(), "").await,
        json!({"changes": [], "cursor": 0, "more": false})
    );
    // The limits themselves are fine.
    app.push_ok(
        u.access(),
        vec![
            upsert(&uuid(), &uuid(), 0, &"t".repeat(4096), ""),
            upsert(&uuid(), &uuid(), 0, &"é".repeat(2048), ""),
            upsert(&uuid(), &uuid(), 0, "", &"b".repeat(4 * 1024 * 1024)),
        ],
    )
    .await;
}

#[tokio::test]
async fn malformed_push_bodies_are_400() {
    let app = App::new().await;
    let u = app.user().await;
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        br#"{"ops":["#.to_vec(),
        b"not json".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"{}".to_vec(),
        br#"{"ops":null}"#.to_vec(),
        br#"{"ops":{}}"#.to_vec(),
        br#"{"ops":"all"}"#.to_vec(),
        br#"{"ops":[]} trailing"#.to_vec(),
        b"\xff\xfe\x00\x01binary".to_vec(),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        format!(r#"{{"ops":{}{}}}"#, "[".repeat(5000), "]".repeat(5000)).into_bytes(),
    ];
    for body in bodies {
        let r = app
            .call(request(
                Method::POST,
                "/v1/sync/push",
                Some(JSON),
                Body::from(body.clone()),
                Some(u.access()),
            ))
            .await;
        let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).to_string();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{shown}: {}", r.body);
        assert_error(&r.body, "invalid_request");
    }
    // More than 1000 ops.
    let batch: Vec<Value> = (0..1001)
        .map(|_| upsert(&uuid(), &uuid(), 0, "t", ""))
        .collect();
    app.push(u.access(), &ops(batch))
        .await
        .err(400, "invalid_request");
    assert_eq!(app.pull_ok(u.access(), "").await["cursor"], 0);
}

#[tokio::test]
async fn push_wants_json() {
    let app = App::new().await;
    let u = app.user().await;
    let body = ops(vec![upsert(&uuid(), &uuid(), 0, "t", "")]).to_string();
    for ct in [
        None,
        Some("text/plain"),
        Some(FORM),
        Some("application/jsonx"),
    ] {
        app.call(request(
            Method::POST,
            "/v1/sync/push",
            ct,
            Body::from(body.clone()),
            Some(u.access()),
        ))
        .await
        .err(415, "invalid_request");
    }
    app.call(request(
        Method::POST,
        "/v1/sync/push",
        Some("application/json; charset=utf-8"),
        Body::from(body),
        Some(u.access()),
    ))
    .await
    .ok();
}

#[tokio::test]
async fn a_push_over_8_mib_is_413() {
    let app = App::new().await;
    let u = app.user().await;
    // Three bodies of 3 MiB: each op is fine, the request is not.
    let big = "b".repeat(3 * 1024 * 1024);
    let body = ops((0..3)
        .map(|_| upsert(&uuid(), &uuid(), 0, "t", &big))
        .collect())
    .to_string();
    assert!(body.len() > 8 * 1024 * 1024);
    // Without a Content-Length (streamed) and with one.
    app.call(request(
        Method::POST,
        "/v1/sync/push",
        Some(JSON),
        Body::from(body.clone()),
        Some(u.access()),
    ))
    .await
    .err(413, "request_too_large");
    let mut req = request(
        Method::POST,
        "/v1/sync/push",
        Some(JSON),
        Body::from(body.clone()),
        Some(u.access()),
    );
    req.headers_mut()
        .insert(header::CONTENT_LENGTH, body.len().into());
    app.call(req).await.err(413, "request_too_large");
    assert_eq!(app.pull_ok(u.access(), "").await["cursor"], 0);
}

/// PROTOCOL.md v1.1: a push answer carries `server_note`s only until their
/// JSON would pass 8 MiB; that one and every later one are left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_answer_leaves_out_server_notes_past_8_mib() {
    let app = App::new().await;
    let u = app.user().await;
    let body = |c: char| c.to_string().repeat(3 * 1024 * 1024);
    let notes: Vec<String> = (0..3).map(|_| uuid()).collect();
    for (n, c) in notes.iter().zip(['a', 'b', 'c']) {
        app.push_ok(u.access(), vec![upsert(&uuid(), n, 0, "big", &body(c))])
            .await;
    }
    // Another device edits all three offline from nothing: three conflicts.
    let batch: Vec<Value> = notes
        .iter()
        .map(|n| upsert(&uuid(), n, 0, "mine", "small"))
        .collect();
    for attempt in ["first", "retried"] {
        let r = app.push(u.access(), &ops(batch.clone())).await;
        let res = r.ok();
        assert!(
            r.raw.len() < 7 * 1024 * 1024,
            "{attempt}: {} bytes",
            r.raw.len()
        );
        let results = res["results"].as_array().unwrap();
        for (i, result) in results.iter().enumerate() {
            let status = if attempt == "first" {
                "conflict"
            } else {
                "duplicate"
            };
            assert_eq!(result["status"], status, "{attempt} {i}");
            assert!(result["conflict_copy_id"].is_string(), "{attempt} {i}");
        }
        assert_eq!(results[0]["server_note"]["body"], body('a'), "{attempt}");
        assert_eq!(results[1]["server_note"]["body"], body('b'), "{attempt}");
        // The third would take the total past 8 MiB: the key is absent.
        assert!(
            results[2].as_object().unwrap().get("server_note").is_none(),
            "{attempt}"
        );
    }
    // The note the answer left out is intact, and a pull brings it.
    let mut since = 0;
    let mut third = None;
    loop {
        let page = app.pull_ok(u.access(), &format!("?since={since}")).await;
        for c in page["changes"].as_array().unwrap() {
            if c["note_id"] == notes[2].as_str() {
                third = Some(c.clone());
            }
        }
        since = page["cursor"].as_i64().unwrap();
        if page["more"] == false {
            break;
        }
    }
    let third = third.expect("the third note is pulled");
    assert_eq!(third["body"], body('c'));
    assert_eq!(third["title"], "big");
    assert_eq!(third["rev"], 3);
}
