//! Shadow writes (docs/protocol.md): applied as effects, in seq order only,
//! duplicates answered 200, gaps and other histories 409, expiry from the
//! primary's applied_at, and every answer saying where the node is.

use axum::http::{Method, StatusCode};
use replikv_kv_backend::writer::now_ms;
use serde_json::json;

use crate::helpers::{TestApp, TestResponse};

const PRIMARY: &str = "0123456789abcdef0123456789abcdef";
const OTHER: &str = "fedcba9876543210fedcba9876543210";
const ONE: &str = "/api/9/http/keyvals/one";

async fn shadow(
    app: &TestApp,
    method: Method,
    path: &str,
    body: &str,
    history: &str,
    seq: u64,
    applied_at: u64,
) -> TestResponse {
    let seq = seq.to_string();
    let applied_at = applied_at.to_string();
    app.call(
        method,
        path,
        body.as_bytes(),
        &[
            ("x-replication-source", "primary"),
            ("x-replication-history", history),
            ("x-replication-seq", &seq),
            ("x-replication-applied-at", &applied_at),
        ],
    )
    .await
}

#[track_caller]
fn assert_position(response: &TestResponse, history: &str, seq: u64) {
    assert_eq!(
        response.header("x-replikv-history"),
        Some(history),
        "{response:?}"
    );
    assert_eq!(
        response.header("x-replikv-seq"),
        Some(seq.to_string().as_str()),
        "{response:?}"
    );
}

/// A fresh replica adopts the primary's history with seq 1, then applies in order.
#[tokio::test]
async fn shadow_writes_apply_in_order_and_report_the_applied_seq() {
    let app = TestApp::new();
    let now = now_ms();
    let first = shadow(&app, Method::POST, ONE, r#"{"a":"1"}"#, PRIMARY, 1, now).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_position(&first, PRIMARY, 1);
    assert_eq!(
        first.header("x-replikv-applied-at"),
        Some(now.to_string().as_str())
    );
    let second = shadow(&app, Method::PATCH, ONE, r#"{"a":"2"}"#, PRIMARY, 2, now).await;
    assert_eq!(second.status, StatusCode::NO_CONTENT);
    assert_position(&second, PRIMARY, 2);
    let third = shadow(&app, Method::POST, ONE, r#"{"b":"3"}"#, PRIMARY, 3, now).await;
    assert_position(&third, PRIMARY, 3);
    assert_eq!(app.zone("one").await, json!({"a":"2","b":"3"}));
    let status = app.get("/replikv/status").await.json();
    assert_eq!(status["history"], PRIMARY);
    assert_eq!(status["seq"], 3);
}

/// A seq already applied is a duplicate: 200, nothing changes.
#[tokio::test]
async fn duplicate_shadow_write_is_200_and_changes_nothing() {
    let app = TestApp::new();
    let now = now_ms();
    shadow(&app, Method::POST, ONE, r#"{"a":"1"}"#, PRIMARY, 1, now).await;
    shadow(&app, Method::PATCH, ONE, r#"{"a":"2"}"#, PRIMARY, 2, now).await;
    let again = shadow(&app, Method::POST, ONE, r#"{"a":"1"}"#, PRIMARY, 1, now).await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(again.body.is_empty());
    assert_position(&again, PRIMARY, 2);
    let again = shadow(&app, Method::DELETE, ONE, "", PRIMARY, 2, now).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(app.zone("one").await, json!({"a":"2"}));
    assert_eq!(app.seq().await, 2);
}

/// A seq beyond applied + 1 is refused: 409 ReplicationGap.
#[tokio::test]
async fn shadow_write_after_a_gap_is_409_replication_gap() {
    let app = TestApp::new();
    let now = now_ms();
    let early = shadow(&app, Method::POST, ONE, r#"{"a":"1"}"#, PRIMARY, 2, now).await;
    early.assert_error(409, "ReplicationGap");
    shadow(&app, Method::POST, ONE, r#"{"a":"1"}"#, PRIMARY, 1, now).await;
    let gap = shadow(&app, Method::POST, ONE, r#"{"c":"1"}"#, PRIMARY, 3, now).await;
    gap.assert_error(409, "ReplicationGap");
    assert_position(&gap, PRIMARY, 1);
    assert_eq!(app.zone("one").await, json!({"a":"1"}));
}

/// A shadow write of another history is refused once a history is followed.
#[tokio::test]
async fn shadow_write_of_another_history_is_409_history_mismatch() {
    let app = TestApp::new();
    let now = now_ms();
    shadow(&app, Method::POST, ONE, r#"{"a":"1"}"#, PRIMARY, 1, now).await;
    for seq in [1, 2, 5] {
        let other = shadow(&app, Method::POST, ONE, r#"{"x":"1"}"#, OTHER, seq, now).await;
        other.assert_error(409, "ReplicationHistoryMismatch");
        assert_position(&other, PRIMARY, 1);
    }
    assert_eq!(app.zone("one").await, json!({"a":"1"}));
}

/// A node that took client writes has its own history: a primary's shadow write is refused.
#[tokio::test]
async fn a_node_with_its_own_writes_refuses_another_history() {
    let app = TestApp::new();
    let own = app.post(ONE, r#"{"a":"1"}"#).await;
    let history = own.header("x-replikv-history").unwrap().to_owned();
    let other = shadow(
        &app,
        Method::POST,
        ONE,
        r#"{"x":"1"}"#,
        PRIMARY,
        2,
        now_ms(),
    )
    .await;
    other.assert_error(409, "ReplicationHistoryMismatch");
    assert_position(&other, &history, 1);
}

/// Expiry instants come from the primary's applied_at, not the replica's clock.
#[tokio::test]
async fn shadow_expiry_is_computed_from_applied_at() {
    let app = TestApp::new();
    let now = now_ms();
    // Zone `one` has timeout=10s: applied 20 s ago, the value is already gone.
    shadow(
        &app,
        Method::POST,
        ONE,
        r#"{"old":"1"}"#,
        PRIMARY,
        1,
        now - 20_000,
    )
    .await;
    // An explicit expire counts from applied_at too.
    let body = r#"{"e":{"value":"v","expire":15000}}"#;
    shadow(&app, Method::POST, ONE, body, PRIMARY, 2, now - 20_000).await;
    let body = r#"{"f":{"value":"v","expire":30000}}"#;
    shadow(&app, Method::POST, ONE, body, PRIMARY, 3, now - 20_000).await;
    shadow(&app, Method::POST, ONE, r#"{"new":"1"}"#, PRIMARY, 4, now).await;
    assert_eq!(app.zone("one").await, json!({"f":"v","new":"1"}));
    // On a zone without timeout, an expire from the primary is applied as is.
    let body = r#"{"d":{"value":"v","expire":1}}"#;
    let response = shadow(
        &app,
        Method::POST,
        "/api/9/http/keyvals/default",
        body,
        PRIMARY,
        5,
        now - 10,
    )
    .await;
    assert_eq!(response.status, StatusCode::CREATED);
    assert_eq!(app.zone("default").await, json!({}));
}

/// POST and PATCH are effects on a replica: no 409, no 404, no one-pair rule.
#[tokio::test]
async fn shadow_post_and_patch_are_applied_as_effects() {
    let app = TestApp::new();
    let now = now_ms();
    shadow(&app, Method::POST, ONE, r#"{"a":"1"}"#, PRIMARY, 1, now).await;
    // The primary's zone was empty when it took several pairs; this one is not.
    let response = shadow(
        &app,
        Method::POST,
        ONE,
        r#"{"a":"x","b":"y"}"#,
        PRIMARY,
        2,
        now,
    )
    .await;
    assert_eq!(response.status, StatusCode::CREATED);
    let response = shadow(
        &app,
        Method::PATCH,
        ONE,
        r#"{"missing":"m"}"#,
        PRIMARY,
        3,
        now,
    )
    .await;
    assert_eq!(response.status, StatusCode::NO_CONTENT);
    let response = shadow(
        &app,
        Method::PATCH,
        ONE,
        r#"{"gone":null}"#,
        PRIMARY,
        4,
        now,
    )
    .await;
    assert_eq!(response.status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.zone("one").await,
        json!({"a":"x","b":"y","missing":"m"})
    );
    let response = shadow(&app, Method::DELETE, ONE, "", PRIMARY, 5, now).await;
    assert_eq!(response.status, StatusCode::NO_CONTENT);
    assert_eq!(app.zone("one").await, json!({}));
    assert_eq!(app.seq().await, 5);
}

/// Incomplete or malformed replication headers are 400 and change nothing.
#[tokio::test]
async fn malformed_replication_headers_are_refused_with_the_position() {
    let app = TestApp::new();
    for headers in [
        vec![("x-replication-seq", "1")],
        vec![
            ("x-replication-seq", "x"),
            ("x-replication-history", PRIMARY),
            ("x-replication-applied-at", "1"),
        ],
        vec![
            ("x-replication-seq", "1"),
            ("x-replication-history", "short"),
            ("x-replication-applied-at", "1"),
        ],
        vec![
            ("x-replication-seq", "1"),
            ("x-replication-history", PRIMARY),
        ],
    ] {
        let response = app.call(Method::POST, ONE, br#"{"a":"1"}"#, &headers).await;
        response.assert_error(400, "ReplicationHeaderInvalid");
        assert!(response.header("x-replikv-history").is_some());
        assert_eq!(response.header("x-replikv-seq"), Some("0"));
    }
    assert_eq!(app.zone("one").await, json!({}));
}

/// A shadow write with a body the primary could not have accepted is 400, with the position.
#[tokio::test]
async fn undecodable_shadow_body_is_400_with_the_position() {
    let app = TestApp::new();
    let response = shadow(&app, Method::POST, ONE, "not-json", PRIMARY, 1, now_ms()).await;
    response.assert_error(400, "KeyvalFormatError");
    assert_eq!(response.header("x-replikv-seq"), Some("0"));
}
