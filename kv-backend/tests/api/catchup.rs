//! Catch-up: a primary serves its log and a snapshot; a replica applies a log
//! batch or a snapshot and then follows shadow writes from there.

use axum::http::{Method, StatusCode};
use replikv_kv_backend::config::parse_zone_spec;
use replikv_kv_backend::writer::now_ms;
use serde_json::{json, Value};

use crate::helpers::{config, TestApp, TestResponse};

const ONE: &str = "/api/9/http/keyvals/one";

async fn primary_with_writes() -> (TestApp, String) {
    let primary = TestApp::new();
    let first = primary.post(ONE, r#"{"a":"1","b":"2"}"#).await;
    primary.patch(ONE, r#"{"a":"3"}"#).await;
    primary
        .post(ONE, r#"{"e":{"value":"x","expire":60000}}"#)
        .await;
    primary.patch(ONE, r#"{"b":null}"#).await;
    primary
        .post("/api/9/stream/keyvals/s", r#"{"k":"v"}"#)
        .await;
    let history = first.header("x-replikv-history").unwrap().to_owned();
    (primary, history)
}

async fn send_json(
    app: &TestApp,
    method: Method,
    path: &str,
    body: &Value,
    history: &str,
    seq: u64,
) -> TestResponse {
    let seq = seq.to_string();
    app.call(
        method,
        path,
        body.to_string().as_bytes(),
        &[
            ("x-replication-source", "primary"),
            ("x-replication-history", history),
            ("x-replication-seq", &seq),
            ("x-replication-applied-at", "0"),
        ],
    )
    .await
}

/// The log serves entries after `after`, in order, with their effects.
#[tokio::test]
async fn the_log_serves_entries_after_a_seq() {
    let (primary, history) = primary_with_writes().await;
    let batch = primary.get("/replikv/log?after=2").await.json();
    assert_eq!(batch["history"], history.as_str());
    let seqs: Vec<u64> = batch["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 4, 5]);
    assert_eq!(
        batch["entries"][1]["effects"],
        json!([{"op":"remove","key":"b"}])
    );
    assert_eq!(
        batch["entries"][2]["zone"],
        json!({"kind":"stream","name":"s"})
    );
    let limited = primary.get("/replikv/log?after=0&limit=2").await.json();
    assert_eq!(limited["entries"].as_array().unwrap().len(), 2);
    let none = primary.get("/replikv/log?after=5").await.json();
    assert_eq!(none["entries"], json!([]));
    primary
        .get("/replikv/log")
        .await
        .assert_error(400, "ReplicationFormatError");
}

/// When the log no longer reaches back, the answer is 410.
#[tokio::test]
async fn a_truncated_log_is_410() {
    let mut config = config();
    config.log_capacity = 2;
    let primary = TestApp::with_config(config);
    for key in ["a", "b", "c", "d"] {
        primary.post(ONE, &format!(r#"{{"{key}":"1"}}"#)).await;
    }
    primary
        .get("/replikv/log?after=1")
        .await
        .assert_error(410, "ReplicationLogTruncated");
    let batch = primary.get("/replikv/log?after=2").await.json();
    assert_eq!(batch["entries"].as_array().unwrap().len(), 2);
}

/// A fresh replica applies the whole log and ends equal to the primary.
#[tokio::test]
async fn a_replica_catches_up_from_the_log() {
    let (primary, history) = primary_with_writes().await;
    let replica = TestApp::new();
    let batch = primary.get("/replikv/log?after=0").await.json();
    let response = send_json(
        &replica,
        Method::POST,
        "/replikv/apply",
        &batch,
        &history,
        5,
    )
    .await;
    assert_eq!(response.status, StatusCode::NO_CONTENT, "{response:?}");
    assert_eq!(response.header("x-replikv-seq"), Some("5"));
    assert_eq!(response.header("x-replikv-history"), Some(history.as_str()));
    assert_eq!(
        replica.get("/api/9/http/keyvals/").await.json(),
        primary.get("/api/9/http/keyvals/").await.json()
    );
    assert_eq!(
        replica.get("/api/9/stream/keyvals/s").await.json(),
        json!({"k":"v"})
    );
    // The same batch again changes nothing.
    let again = send_json(
        &replica,
        Method::POST,
        "/replikv/apply",
        &batch,
        &history,
        5,
    )
    .await;
    assert_eq!(again.status, StatusCode::OK);
    // The replica's own log now serves the same entries (it could be promoted).
    assert_eq!(replica.get("/replikv/log?after=0").await.json(), batch);
    // And shadow writes go on from seq 6.
    let seq6 = replica
        .call(
            Method::POST,
            ONE,
            br#"{"z":"1"}"#,
            &[
                ("x-replication-history", &history),
                ("x-replication-seq", "6"),
                ("x-replication-applied-at", &now_ms().to_string()),
            ],
        )
        .await;
    assert_eq!(seq6.status, StatusCode::CREATED);
}

/// A batch that starts beyond applied + 1 is a gap; another history a mismatch.
#[tokio::test]
async fn a_log_batch_with_a_gap_or_another_history_is_refused() {
    let (primary, history) = primary_with_writes().await;
    let replica = TestApp::new();
    let late = primary.get("/replikv/log?after=2").await.json();
    send_json(&replica, Method::POST, "/replikv/apply", &late, &history, 5)
        .await
        .assert_error(409, "ReplicationGap");
    assert_eq!(replica.zone("one").await, json!({}));
    replica.post(ONE, r#"{"own":"1"}"#).await;
    let all = primary.get("/replikv/log?after=0").await.json();
    send_json(&replica, Method::POST, "/replikv/apply", &all, &history, 5)
        .await
        .assert_error(409, "ReplicationHistoryMismatch");
    // Without the replication headers, or with headers that do not match the body.
    replica
        .call(
            Method::POST,
            "/replikv/apply",
            all.to_string().as_bytes(),
            &[],
        )
        .await
        .assert_error(400, "ReplicationHeaderInvalid");
    send_json(&replica, Method::POST, "/replikv/apply", &all, &history, 4)
        .await
        .assert_error(400, "ReplicationFormatError");
    assert_eq!(replica.zone("one").await, json!({"own":"1"}));
}

/// A snapshot replaces a diverged replica's data, history and seq.
#[tokio::test]
async fn a_snapshot_replaces_a_diverged_replica() {
    let (primary, history) = primary_with_writes().await;
    let snapshot = primary.get("/replikv/snapshot").await.json();
    assert_eq!(snapshot["seq"], 5);
    assert_eq!(snapshot["zones"]["one"]["a"]["value"], "3");
    assert!(
        snapshot["zones"]["one"]["e"]["expires_at"]
            .as_u64()
            .unwrap()
            > now_ms()
    );
    let replica = TestApp::new();
    replica.post(ONE, r#"{"own":"1"}"#).await;
    replica
        .post("/api/9/http/keyvals/default", r#"{"d":"1"}"#)
        .await;
    let response = send_json(
        &replica,
        Method::PUT,
        "/replikv/snapshot",
        &snapshot,
        &history,
        5,
    )
    .await;
    assert_eq!(response.status, StatusCode::NO_CONTENT, "{response:?}");
    assert_eq!(
        replica.get("/api/9/http/keyvals/").await.json(),
        primary.get("/api/9/http/keyvals/").await.json()
    );
    let status = replica.get("/replikv/status").await.json();
    assert_eq!(status["history"], history.as_str());
    assert_eq!(status["seq"], 5);
    assert_eq!(status["log"]["records"], 0);
    // The same snapshot again is a duplicate.
    let again = send_json(
        &replica,
        Method::PUT,
        "/replikv/snapshot",
        &snapshot,
        &history,
        5,
    )
    .await;
    assert_eq!(again.status, StatusCode::OK);
}

/// Expiry instants travel with the snapshot (they are applied as they are, even
/// in a zone without timeout here): an entry expires at the same moment.
#[tokio::test]
async fn snapshot_entries_keep_their_expiry_instants() {
    let replica = TestApp::with_config(config().with_zone(parse_zone_spec("one:1m").unwrap()));
    let history = "0123456789abcdef0123456789abcdef";
    let now = now_ms();
    let snapshot = json!({
        "history": history, "seq": 9, "applied_at": now,
        "zones": {"one": {
            "gone": {"value": "x", "expires_at": now - 1},
            "kept": {"value": "y", "expires_at": now + 60_000},
            "forever": {"value": "z", "expires_at": null}
        }}
    });
    let response = send_json(
        &replica,
        Method::PUT,
        "/replikv/snapshot",
        &snapshot,
        history,
        9,
    )
    .await;
    assert_eq!(response.status, StatusCode::NO_CONTENT, "{response:?}");
    assert_eq!(replica.zone("one").await, json!({"kept":"y","forever":"z"}));
    assert_eq!(replica.seq().await, 9);
}
