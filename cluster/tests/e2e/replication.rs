//! The article's design end to end: writes through the balancer or to the
//! primary reach every replica; writes to a replica are redirected; refused
//! writes and reads are never replicated.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{eventually, spawn_cluster, zone_url};

/// A POST through the load balancer lands on the primary, reaches the replica,
/// and every node the balancer sends reads to serves it.
#[tokio::test]
async fn post_through_balancer_reaches_every_node() {
    let t = spawn_cluster(1).await;

    let answer = t.post(&t.lb(), r#"{"greeting":"hello"}"#).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);

    assert_eq!(t.zone(&t.primary()).await, json!({"greeting": "hello"}));
    t.converges_to(&json!({"greeting": "hello"})).await;
    // Round robin over two nodes: a few reads visit both.
    for _ in 0..4 {
        assert_eq!(t.zone(&t.lb()).await, json!({"greeting": "hello"}));
    }
    let via_alias = t
        .send(
            Method::GET,
            &format!("{}/replicated/9/http/keyvals/default?key=greeting", t.lb()),
            &[],
            None,
        )
        .await;
    assert_eq!(via_alias.status, StatusCode::OK);
    assert_eq!(via_alias.json(), json!({"greeting": "hello"}));
}

/// A client write sent straight to a replica gets a 307 to the same path and
/// query on the primary, changes nothing there, and succeeds when followed.
#[tokio::test]
async fn write_to_replica_is_redirected_and_following_it_succeeds() {
    let t = spawn_cluster(1).await;
    let path = "/replicated/9/http/keyvals/default?trace=1";
    let body = r#"{"k":"v"}"#;

    let answer = t
        .send(
            Method::POST,
            &format!("{}{path}", t.replica(1)),
            &[],
            Some(body),
        )
        .await;
    assert_eq!(answer.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        answer.header("location"),
        Some(format!("{}{path}", t.primary()).as_str())
    );
    assert_eq!(answer.body, "");
    assert_eq!(t.backend_zone(1).await, json!({}));
    assert_eq!(t.backend_zone(0).await, json!({}));

    // What `curl -L` does with a 307: the same method and body at Location.
    let location = answer.header("location").expect("location").to_owned();
    let followed = t.send(Method::POST, &location, &[], Some(body)).await;
    assert_eq!(followed.status, StatusCode::CREATED, "{}", followed.body);
    t.converges_to(&json!({"k": "v"})).await;
}

/// Updates, deletes of one key and the zone DELETE on the primary all reach
/// the replica, in order.
#[tokio::test]
async fn patch_and_deletes_on_primary_reach_replica() {
    let t = spawn_cluster(1).await;
    let primary = t.primary();

    assert_eq!(
        t.post(&primary, r#"{"a":"1","b":"2"}"#).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        t.patch(&primary, r#"{"a":"9"}"#).await.status,
        StatusCode::NO_CONTENT
    );
    t.converges_to(&json!({"a": "9", "b": "2"})).await;

    assert_eq!(
        t.patch(&primary, r#"{"b":null}"#).await.status,
        StatusCode::NO_CONTENT
    );
    t.converges_to(&json!({"a": "9"})).await;

    assert_eq!(t.delete_zone(&primary).await.status, StatusCode::NO_CONTENT);
    t.converges_to(&json!({})).await;
}

/// A POST of a key that exists is refused by the primary with 409, and the
/// refused write is not replicated.
#[tokio::test]
async fn refused_write_is_not_replicated() {
    let t = spawn_cluster(1).await;
    let primary = t.primary();
    assert_eq!(
        t.post(&primary, r#"{"a":"1"}"#).await.status,
        StatusCode::CREATED
    );
    t.converges_to(&json!({"a": "1"})).await;
    // Counted by the filter, not by Envoy's upstream requests to the replica,
    // which also carry the primary's once-a-second position probes.
    let admin = t.cluster.primary().admin_url();
    let confirmed = "wasmcustom.replikv.shadow.ok";
    let before = eventually("the first write confirmed", || async {
        let ok = t.stat(&admin, confirmed).await;
        (ok >= 1).then_some(ok)
    })
    .await;

    let answer = t.post(&primary, r#"{"a":"2"}"#).await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(answer.json()["error"]["code"], "KeyvalKeyExists");

    // A later accepted write proves the pipeline is flowing; the refused one
    // must not have travelled before it.
    assert_eq!(
        t.post(&primary, r#"{"b":"1"}"#).await.status,
        StatusCode::CREATED
    );
    t.converges_to(&json!({"a": "1", "b": "1"})).await;
    eventually("the second write confirmed", || async {
        (t.stat(&admin, confirmed).await > before).then_some(())
    })
    .await;
    assert_eq!(t.stat(&admin, confirmed).await, before + 1);
}

/// Reads on the primary send nothing to the replicas.
#[tokio::test]
async fn reads_are_never_replicated() {
    let t = spawn_cluster(1).await;
    let primary = t.primary();
    assert_eq!(
        t.post(&primary, r#"{"a":"1"}"#).await.status,
        StatusCode::CREATED
    );
    t.converges_to(&json!({"a": "1"})).await;
    // The primary's Envoy also talks to the replica to probe its position once a
    // second, so its upstream request count is no measure here: what must not
    // move is what the filter ships and what the replica commits.
    let admin = t.cluster.primary().admin_url();
    let shipped = [
        "wasmcustom.replikv.shadow.sent",
        "wasmcustom.replikv.shadow.batches",
        "wasmcustom.replikv.catchup.started",
    ];
    let mut before = Vec::new();
    for name in shipped {
        before.push(t.stat(&admin, name).await);
    }
    let replica_status = format!("{}/replikv/status", t.cluster.replica(1).backend_url());
    let commits = t.send(Method::GET, &replica_status, &[], None).await.json()["commits"].clone();
    assert!(before[0] >= 1, "the write was shipped");

    for _ in 0..20 {
        t.zone(&primary).await;
        let head = t.send(Method::HEAD, &zone_url(&primary), &[], None).await;
        assert_eq!(head.status, StatusCode::OK);
    }
    for (name, before) in shipped.iter().zip(before) {
        assert_eq!(t.stat(&admin, name).await, before, "{name}");
    }
    let status = t.send(Method::GET, &replica_status, &[], None).await.json();
    assert_eq!(
        status["commits"], commits,
        "the replica committed nothing: {status}"
    );
    assert_eq!(status["seq"], 1);
}

/// With two replicas, every write reaches both.
#[tokio::test]
async fn every_replica_receives_every_write() {
    let t = spawn_cluster(2).await;
    let lb = t.lb();
    for i in 0..10 {
        let answer = t.post(&lb, &format!(r#"{{"k{i}":"v{i}"}}"#)).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    }
    assert_eq!(
        t.patch(&lb, r#"{"k3":"changed"}"#).await.status,
        StatusCode::NO_CONTENT
    );
    let mut expected = serde_json::Map::new();
    for i in 0..10 {
        expected.insert(format!("k{i}"), json!(format!("v{i}")));
    }
    expected.insert("k3".into(), json!("changed"));
    t.converges_to(&expected.into()).await;

    let admin = t.cluster.primary().admin_url();
    let ok = eventually("every shadow write acknowledged", || {
        let t = &t;
        let admin = admin.clone();
        async move {
            let ok = t.stat(&admin, "wasmcustom.replikv.shadow.ok").await;
            (ok >= 22).then_some(ok)
        }
    })
    .await;
    assert!(ok >= 22, "11 writes to 2 replicas, {ok} acknowledged");
}
