//! A store that cannot be reached (PostgreSQL restarting): every request
//! that needs it is 503 `temporarily_unavailable` with `Retry-After`, never
//! a 400 or 401 that would make a client drop its session; once the
//! database is back, the same server answers as before.

use axum::http::{StatusCode, header};

use crate::app::*;
use latchkey_testkit::*;

#[tokio::test]
async fn while_the_database_restarts_requests_are_503_then_served_again() {
    if !on_postgres() {
        println!("skipped on SQLite: a file cannot be out of reach");
        return;
    }
    let cluster = PgCluster::start();
    let app = App::on_database(&cluster.database()).await;
    let u = app.user().await;
    let cursor = app.push_new_note(u.access()).await;

    cluster.stop_server();
    let unavailable = |r: Resp| {
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
        assert_eq!(r.body["error"], "temporarily_unavailable");
        assert!(r.headers.contains_key(header::RETRY_AFTER));
    };
    unavailable(app.login_as(&u.name, &u.password).await);
    unavailable(app.refresh(u.refresh()).await);
    unavailable(app.pull(u.access(), "?since=0").await);
    unavailable(
        app.push(
            u.access(),
            &ops(vec![upsert(&uuid(), &uuid(), 0, "t", "b")]),
        )
        .await,
    );

    cluster.start_server();
    // The session was kept: the same tokens work.
    let page = app.pull_ok(u.access(), "?since=0").await;
    assert_eq!(page["cursor"], cursor);
    app.refresh(u.refresh()).await.ok();
    app.login_as(&u.name, &u.password).await.ok();
}
