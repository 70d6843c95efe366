//! Nobody forges replication: replication headers from clients are refused on
//! a replica and stripped on the way to a primary, whatever their spelling.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{now_ms, proof, spawn_cluster, zone_url, TestCluster};

/// A history id no node has: the proofs below are forged, not replayed.
const FORGED_HISTORY: &str = "0123456789abcdef0123456789abcdef";

/// Proof headers for a made-up shadow write, signed with `secret`.
fn forged(
    secret: &str,
    path: &str,
    seq: u64,
    timestamp_ms: u64,
    body: &str,
) -> Vec<(&'static str, String)> {
    proof(
        secret,
        "POST",
        path,
        FORGED_HISTORY,
        seq,
        timestamp_ms,
        timestamp_ms,
        body,
    )
}

async fn replica_state(t: &TestCluster) -> (Value, Value) {
    let status = t
        .send(
            Method::GET,
            &format!("{}/replikv/status", t.cluster.replica(1).backend_url()),
            &[],
            None,
        )
        .await;
    (t.backend_zone(1).await, status.json()["seq"].clone())
}

/// Each forged shadow write sent straight to a replica is refused (403, or
/// the 307 where Envoy already dropped an underscore header) and leaves the
/// replica's data and applied seq exactly as they were.
#[tokio::test]
async fn forged_replication_to_a_replica_changes_nothing() {
    let t = spawn_cluster(1).await;
    assert_eq!(
        t.post(&t.primary(), r#"{"real":"1"}"#).await.status,
        StatusCode::CREATED
    );
    t.converges_to(&json!({"real": "1"})).await;
    let before = replica_state(&t).await;

    let url = zone_url(&t.replica(1));
    let path = "/api/9/http/keyvals/default";
    let body = r#"{"forged":"1"}"#;
    let secret = t.cluster.options.secret.clone();
    let signed = |secret: &str, seq: u64, at: u64| forged(secret, path, seq, at, body);

    let owned = |h: Vec<(&'static str, String)>| h;
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "bare source header",
            vec![("X-Replication-Source", "primary".into())],
        ),
        (
            "lower-case source header",
            vec![("x-replication-source", "primary".into())],
        ),
        (
            "wrong secret",
            owned(signed("not-the-secret-of-this-cluster", 2, now_ms())),
        ),
        (
            "stale timestamp",
            owned(signed(&secret, 2, now_ms() - 10 * 60 * 1000)),
        ),
        (
            "timestamp from the future",
            owned(signed(&secret, 2, now_ms() + 10 * 60 * 1000)),
        ),
        (
            "signature of another body",
            owned(forged(&secret, path, 2, now_ms(), "{}")),
        ),
        ("duplicated source header", {
            let mut h = signed(&secret, 2, now_ms());
            h.push(("x-replication-source", "primary".into()));
            h
        }),
        ("missing signature", {
            let mut h = signed(&secret, 2, now_ms());
            h.retain(|(n, _)| *n != "x-replication-signature");
            h
        }),
    ];
    for (case, headers) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let answer = t.send(Method::POST, &url, &headers, Some(body)).await;
        assert_eq!(
            answer.status,
            StatusCode::FORBIDDEN,
            "{case}: {}",
            answer.body
        );
        assert_eq!(
            answer.json()["error"]["code"],
            "ReplicationForbidden",
            "{case}"
        );
        assert_eq!(
            replica_state(&t).await,
            before,
            "{case} changed the replica"
        );
    }

    // Envoy drops headers with underscores before the filter sees them, so
    // this is an ordinary client write: redirected, and nothing changes.
    let answer = t
        .send(
            Method::POST,
            &url,
            &[("X_Replication_Source", "primary")],
            Some(body),
        )
        .await;
    assert_eq!(answer.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(replica_state(&t).await, before);

    let admin = t.cluster.replica(1).admin_url();
    assert!(t.stat(&admin, "wasmcustom.replikv.forged_rejected").await >= 8);
}

/// Replication headers sent by a client through the load balancer (or to the
/// primary) are removed: the write is applied once, as an ordinary write, and
/// replicated normally.
#[tokio::test]
async fn replication_headers_from_clients_are_stripped_on_the_way_to_the_primary() {
    let t = spawn_cluster(1).await;
    let secret = t.cluster.options.secret.clone();
    let body = r#"{"k":"v"}"#;
    let path = "/api/9/http/keyvals/default";
    let forged = forged(&secret, path, 999, now_ms(), body);
    let mut headers: Vec<(&str, &str)> = forged.iter().map(|(n, v)| (*n, v.as_str())).collect();
    headers.push(("X-Replication-Extra", "1"));
    headers.push(("x_replication_source", "primary"));

    let answer = t
        .send(Method::POST, &zone_url(&t.lb()), &headers, Some(body))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let answer = t
        .send(
            Method::POST,
            &zone_url(&t.primary()),
            &headers,
            Some(r#"{"k2":"v"}"#),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);

    t.converges_to(&json!({"k": "v", "k2": "v"})).await;
    for node in [0, 1] {
        let status = t
            .send(
                Method::GET,
                &format!("{}/replikv/status", t.cluster.nodes[node].backend_url()),
                &[],
                None,
            )
            .await;
        assert_eq!(status.json()["seq"], 2, "node {node}");
    }
}
