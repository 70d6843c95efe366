//! Replication that loses nothing and cannot be forged, under faults: killed
//! and frozen processes, cut links, a replica away longer than the log, crafted
//! duplicates, reorders and replays. Every test is bounded in time and ends by
//! comparing every node's whole data (`GET /replikv/snapshot` on each kv-backend:
//! history, seq, every zone with its expiry instants) with the primary's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{now_ms, proof, spawn_cluster_with, zone_url, Answer, TestCluster};

/// A zone big enough for every load below.
const BIG_DEFAULT: &str = "default:4m";

async fn spawn(replicas: usize, backend_args: &[&str], zones: &[&str]) -> TestCluster {
    let mut all_zones = vec![BIG_DEFAULT];
    all_zones.extend_from_slice(zones);
    spawn_cluster_with(replicas, &all_zones, backend_args).await
}

/// A node's whole state as its kv-backend holds it: history, seq and every
/// zone with expiry instants.
async fn state(t: &TestCluster, node: usize) -> Option<Value> {
    let url = format!("{}/replikv/snapshot", t.cluster.nodes[node].backend_url());
    let response = t.http.get(url).send().await.ok()?;
    let v: Value = response.json().await.ok()?;
    Some(json!({"history": v["history"], "seq": v["seq"], "zones": v["zones"]}))
}

/// Waits (at most `within`) until every node holds exactly the primary's state.
async fn assert_converged(t: &TestCluster, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let primary = state(t, 0).await;
        let mut same = primary.is_some();
        for node in 1..t.cluster.nodes.len() {
            same = same && state(t, node).await == primary;
        }
        if same {
            return primary.unwrap_or_default();
        }
        if Instant::now() > deadline {
            let mut report = String::new();
            for node in 0..t.cluster.nodes.len() {
                let s = state(t, node).await.unwrap_or_default();
                let keys = s["zones"]["default"].as_object().map_or(0, |o| o.len());
                report.push_str(&format!(
                    "\n  node {node}: seq {} history {} default keys {keys}",
                    s["seq"], s["history"]
                ));
            }
            for node in 0..t.cluster.nodes.len() {
                let status = t
                    .send(
                        Method::GET,
                        &format!("{}/replikv/replication", t.cluster.nodes[node].url()),
                        &[],
                        None,
                    )
                    .await;
                report.push_str(&format!("\n  node {node} replication: {}", status.body));
            }
            panic!("nodes did not converge within {within:?}:{report}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every key in `acked` is in zone `default` of every node.
async fn assert_all_present(t: &TestCluster, acked: &[String]) {
    for node in 0..t.cluster.nodes.len() {
        let zone = t.backend_zone(node).await;
        let missing: Vec<&String> = acked.iter().filter(|k| zone.get(*k).is_none()).collect();
        assert!(
            missing.is_empty(),
            "node {node} lacks {} acknowledged writes, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
}

/// Clients writing unique keys to the primary until stopped; each remembers
/// the keys that got a 2xx.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(t: &TestCluster, clients: usize, prefix: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let url = zone_url(&t.primary());
        let handles = (0..clients)
            .map(|c| {
                let (stop, url, http) = (stop.clone(), url.clone(), t.http.clone());
                let prefix = format!("{prefix}-{c}");
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    let started = Instant::now();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < Duration::from_secs(40)
                    {
                        n += 1;
                        let key = format!("{prefix}-{n}");
                        let body = json!({ key.clone(): format!("v{n}") }).to_string();
                        let sent = http
                            .post(&url)
                            .timeout(Duration::from_secs(3))
                            .body(body)
                            .send()
                            .await;
                        if sent.is_ok_and(|r| r.status().is_success()) {
                            acked.push(key);
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    acked
                })
            })
            .collect();
        Load {
            stop,
            clients: handles,
        }
    }

    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut acked = Vec::new();
        for client in self.clients {
            acked.extend(client.await.unwrap_or_default());
        }
        acked
    }
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// A counter of a node's filter, as `/stats` shows it.
async fn counter(t: &TestCluster, node: usize, name: &str) -> u64 {
    t.stat(
        &t.cluster.nodes[node].admin_url(),
        &format!("wasmcustom.replikv.{name}"),
    )
    .await
}

/// A write applied on the primary's kv-backend directly, so that no filter
/// ships it: the test plays the shipper.
struct Unshipped {
    method: Method,
    body: String,
    history: String,
    seq: u64,
    applied_at: u64,
}

const API_PATH: &str = "/api/9/http/keyvals/default";

async fn write_unshipped(t: &TestCluster, method: Method, body: &str) -> Unshipped {
    let url = format!("{}{API_PATH}", t.cluster.primary().backend_url());
    let answer = t.send(method.clone(), &url, &[], Some(body)).await;
    assert!(answer.status.is_success(), "{}", answer.body);
    let number = |name: &str| {
        answer
            .header(name)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    Unshipped {
        method,
        body: body.to_owned(),
        history: answer
            .header("x-replikv-history")
            .unwrap_or_default()
            .to_owned(),
        seq: number("x-replikv-seq"),
        applied_at: number("x-replikv-applied-at"),
    }
}

/// Sends `write` to replica 1 as the primary would, signed at `timestamp`.
async fn deliver(t: &TestCluster, write: &Unshipped, timestamp: u64) -> Answer {
    let headers = proof(
        &t.cluster.options.secret,
        write.method.as_str(),
        API_PATH,
        &write.history,
        write.seq,
        write.applied_at,
        timestamp,
        &write.body,
    );
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    t.send(
        write.method.clone(),
        &format!("{}{API_PATH}", t.replica(1)),
        &headers,
        Some(&write.body),
    )
    .await
}

async fn replica_seq(t: &TestCluster) -> u64 {
    state(t, 1)
        .await
        .map_or(0, |s| s["seq"].as_u64().unwrap_or(0))
}

/// (1) kill -9 of a replica's kv-backend under writes from several clients:
/// within 5 s of its restart it equals the primary, with every acknowledged write.
#[tokio::test]
async fn replica_backend_killed_under_load_catches_up() {
    let mut t = spawn(1, &[], &[]).await;
    let load = Load::start(&t, 3, "kill");
    sleep_ms(800).await;
    t.cluster
        .replica_mut(1)
        .backend
        .kill9()
        .await
        .expect("kill -9");
    sleep_ms(1_500).await;
    t.cluster
        .replica_mut(1)
        .restart_backend()
        .await
        .expect("replica backend restarts");
    sleep_ms(800).await;
    let acked = load.finish().await;
    assert!(acked.len() > 50, "only {} writes acknowledged", acked.len());
    assert_converged(&t, Duration::from_secs(5)).await;
    assert_all_present(&t, &acked).await;
}

/// (2) SIGSTOP of the replica's Envoy for several seconds under writes, then
/// SIGCONT: it converges with nothing missing and nothing twice.
#[tokio::test]
async fn frozen_replica_envoy_converges() {
    let t = spawn(1, &[], &[]).await;
    let load = Load::start(&t, 2, "frozen");
    sleep_ms(500).await;
    t.cluster
        .replica(1)
        .envoy
        .signal(Signal::SIGSTOP)
        .expect("SIGSTOP");
    sleep_ms(3_000).await;
    t.cluster
        .replica(1)
        .envoy
        .signal(Signal::SIGCONT)
        .expect("SIGCONT");
    sleep_ms(500).await;
    let acked = load.finish().await;
    let state = assert_converged(&t, Duration::from_secs(10)).await;
    assert_all_present(&t, &acked).await;
    // Each write is one seq and one key: no gap, no duplicate.
    let keys = state["zones"]["default"].as_object().map_or(0, |o| o.len());
    assert_eq!(state["seq"].as_u64(), Some(keys as u64), "{keys} keys");
}

/// (3) kill -9 of the primary's kv-backend under writes: every acknowledged
/// write is on both nodes after its restart.
#[tokio::test]
async fn primary_backend_killed_under_load_loses_nothing_acknowledged() {
    let mut t = spawn(1, &[], &[]).await;
    let load = Load::start(&t, 3, "pkill");
    sleep_ms(800).await;
    t.cluster
        .primary_mut()
        .backend
        .kill9()
        .await
        .expect("kill -9");
    sleep_ms(500).await;
    t.cluster
        .primary_mut()
        .restart_backend()
        .await
        .expect("primary backend restarts");
    sleep_ms(800).await;
    let acked = load.finish().await;
    assert!(acked.len() > 20, "only {} writes acknowledged", acked.len());
    assert_converged(&t, Duration::from_secs(10)).await;
    assert_all_present(&t, &acked).await;
}

/// (4) A replica away for longer than the log covers takes exactly one full
/// snapshot, then converges.
#[tokio::test]
async fn replica_behind_the_log_takes_exactly_one_snapshot() {
    let mut t = spawn(1, &["--log-capacity", "20"], &[]).await;
    for i in 0..5 {
        let a = t
            .post(
                &t.primary(),
                &json!({ format!("before{i}"): "1" }).to_string(),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED);
    }
    assert_converged(&t, Duration::from_secs(10)).await;
    assert_eq!(counter(&t, 0, "catchup.snapshots").await, 0);

    t.cluster
        .replica_mut(1)
        .envoy
        .stop(Duration::from_secs(5))
        .await
        .expect("replica envoy stops");
    for i in 0..100 {
        let a = t
            .post(
                &t.primary(),
                &json!({ format!("away{i}"): "1" }).to_string(),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    }
    // Long enough for the shippers to give the replica up to the log.
    sleep_ms(3_500).await;
    t.cluster
        .replica_mut(1)
        .restart_envoy()
        .await
        .expect("replica envoy restarts");
    assert_converged(&t, Duration::from_secs(10)).await;
    assert_eq!(counter(&t, 0, "catchup.snapshots").await, 1);
    // Later writes flow again, without another snapshot.
    let a = t.post(&t.primary(), r#"{"after":"1"}"#).await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_converged(&t, Duration::from_secs(10)).await;
    assert_eq!(counter(&t, 0, "catchup.snapshots").await, 1);
}

/// (5) The link to the replica cut and restored every second under load.
#[tokio::test]
async fn repeated_link_cuts_under_load_converge() {
    let mut t = spawn(1, &[], &[]).await;
    let load = Load::start(&t, 2, "cuts");
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        sleep_ms(500).await;
        t.cluster
            .replica_mut(1)
            .envoy
            .stop(Duration::from_secs(2))
            .await
            .expect("stop");
        sleep_ms(500).await;
        t.cluster
            .replica_mut(1)
            .restart_envoy()
            .await
            .expect("restart");
    }
    let acked = load.finish().await;
    assert_converged(&t, Duration::from_secs(10)).await;
    assert_all_present(&t, &acked).await;
}

/// (6) Shadow writes delivered out of order and twice are applied once, in order.
#[tokio::test]
async fn duplicated_and_reordered_shadow_writes_apply_once_in_order() {
    let t = spawn(1, &[], &[]).await;
    let a = t.post(&t.primary(), r#"{"base":"1"}"#).await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_converged(&t, Duration::from_secs(10)).await;

    // Two writes whose order shows in the result: POST k=1, then PATCH k=2.
    let first = write_unshipped(&t, Method::POST, r#"{"k":"1"}"#).await;
    let second = write_unshipped(&t, Method::PATCH, r#"{"k":"2"}"#).await;
    assert_eq!(second.seq, first.seq + 1);

    let now = now_ms();
    let early = deliver(&t, &second, now).await;
    // A gap, unless catch-up got there first.
    assert!(
        early.status == StatusCode::CONFLICT || early.status.is_success(),
        "{} {}",
        early.status,
        early.body
    );
    let a = deliver(&t, &first, now + 1).await;
    assert!(a.status.is_success(), "{} {}", a.status, a.body);
    let again = deliver(&t, &first, now + 2).await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "re-signed duplicate: {}",
        again.body
    );
    let a = deliver(&t, &second, now + 3).await;
    assert!(a.status.is_success(), "{} {}", a.status, a.body);
    let again = deliver(&t, &first, now + 4).await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "late duplicate: {}",
        again.body
    );

    assert_eq!(replica_seq(&t).await, second.seq);
    assert_eq!(t.backend_zone(1).await, json!({"base": "1", "k": "2"}));
    assert_converged(&t, Duration::from_secs(10)).await;
}

/// One forged request: what it is, method, path, headers, body.
type Forgery<'a> = (&'a str, Method, &'a str, Vec<(&'a str, String)>, String);

/// (7) Every forgery, replay included: 403, counted, and the replica unchanged.
#[tokio::test]
async fn every_forgery_and_replay_is_refused_and_counted() {
    let t = spawn(1, &[], &[]).await;
    let write = write_unshipped(&t, Method::POST, r#"{"signed":"1"}"#).await;
    let signed_at = now_ms();
    let a = deliver(&t, &write, signed_at).await;
    assert!(a.status.is_success(), "{} {}", a.status, a.body);
    let before = state(&t, 1).await;
    let forged_before = counter(&t, 1, "forged_rejected").await;

    // The very same signed request again: a replay.
    let replay = deliver(&t, &write, signed_at).await;
    assert_eq!(replay.status, StatusCode::FORBIDDEN, "{}", replay.body);
    assert_eq!(replay.json()["error"]["code"], "ReplicationReplay");
    // An older signature of the same seq, too.
    let older = deliver(&t, &write, signed_at - 1).await;
    assert_eq!(older.json()["error"]["code"], "ReplicationReplay");
    assert_eq!(counter(&t, 1, "replay_rejected").await, 2);

    let secret = t.cluster.options.secret.clone();
    let snapshot = json!({"history": write.history, "seq": write.seq + 100, "applied_at": 0,
        "zones": {"default": {"evil": {"value": "1", "expires_at": null}}}})
    .to_string();
    let batch = json!({"history": write.history, "entries": []}).to_string();
    let sign = |secret: &str, method: &str, path: &str, seq: u64, body: &str| {
        proof(secret, method, path, &write.history, seq, 0, now_ms(), body)
    };
    let cases: Vec<Forgery> = vec![
        (
            "unsigned snapshot",
            Method::PUT,
            "/replikv/snapshot",
            vec![],
            snapshot.clone(),
        ),
        (
            "snapshot with a bare source header",
            Method::PUT,
            "/replikv/snapshot",
            vec![("x-replication-source", "primary".into())],
            snapshot.clone(),
        ),
        (
            "snapshot signed with another secret",
            Method::PUT,
            "/replikv/snapshot",
            sign(
                "not-the-secret-of-this-cluster",
                "PUT",
                "/replikv/snapshot",
                write.seq + 100,
                &snapshot,
            ),
            snapshot.clone(),
        ),
        (
            "snapshot signature over another body",
            Method::PUT,
            "/replikv/snapshot",
            sign(&secret, "PUT", "/replikv/snapshot", write.seq + 100, "{}"),
            snapshot.clone(),
        ),
        (
            "apply signed with another secret",
            Method::POST,
            "/replikv/apply",
            sign(
                "not-the-secret-of-this-cluster",
                "POST",
                "/replikv/apply",
                write.seq,
                &batch,
            ),
            batch.clone(),
        ),
        (
            "stale write",
            Method::POST,
            API_PATH,
            proof(
                &secret,
                "POST",
                API_PATH,
                &write.history,
                write.seq + 1,
                0,
                now_ms() - 600_000,
                r#"{"x":"1"}"#,
            ),
            r#"{"x":"1"}"#.to_owned(),
        ),
        (
            "underscore alias",
            Method::PUT,
            "/replikv/snapshot",
            vec![("x_replication_source", "primary".into())],
            snapshot.clone(),
        ),
    ];
    let mut refused = 0;
    for (what, method, path, headers, body) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let a = t
            .send(
                method.clone(),
                &format!("{}{path}", t.replica(1)),
                &headers,
                Some(body),
            )
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{what}: {}", a.body);
        assert!(
            a.json()["error"]["code"]
                .as_str()
                .is_some_and(|c| c.starts_with("Replication")),
            "{what}: {}",
            a.body
        );
        refused += 1;
    }
    assert_eq!(state(&t, 1).await, before, "the replica changed");
    assert_eq!(
        counter(&t, 1, "forged_rejected").await,
        forged_before + 2 + refused
    );

    // The primary never lets a client write reach its internal endpoints.
    let primary_before = state(&t, 0).await;
    for (method, path, body) in [
        (Method::PUT, "/replikv/snapshot", snapshot.as_str()),
        (Method::POST, "/replikv/apply", batch.as_str()),
    ] {
        let a = t
            .send(method, &format!("{}{path}", t.primary()), &[], Some(body))
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}: {}", a.body);
    }
    assert_eq!(state(&t, 0).await, primary_before, "the primary changed");
    assert_converged(&t, Duration::from_secs(10)).await;
}

/// (8) Deletes (PATCH null, zone DELETE) made while a replica is down reach it
/// once it is back.
#[tokio::test]
async fn deletes_made_while_a_replica_is_down_arrive() {
    let mut t = spawn(1, &[], &[]).await;
    for body in [r#"{"a":"1"}"#, r#"{"b":"1"}"#] {
        assert_eq!(t.post(&t.primary(), body).await.status, StatusCode::CREATED);
    }
    assert_converged(&t, Duration::from_secs(10)).await;
    t.cluster
        .replica_mut(1)
        .backend
        .kill9()
        .await
        .expect("kill -9");

    assert_eq!(
        t.patch(&t.primary(), r#"{"a":null}"#).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        t.delete_zone(&t.primary()).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        t.post(&t.primary(), r#"{"c":"1"}"#).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        t.patch(&t.primary(), r#"{"c":null}"#).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        t.post(&t.primary(), r#"{"d":"1"}"#).await.status,
        StatusCode::CREATED
    );
    // Long enough for the shippers to leave the replica to catch-up.
    sleep_ms(2_500).await;

    t.cluster
        .replica_mut(1)
        .restart_backend()
        .await
        .expect("replica backend restarts");
    assert_converged(&t, Duration::from_secs(10)).await;
    assert_eq!(t.backend_zone(1).await, json!({"d": "1"}));
}

/// (9) Expiring keys expire on the replica at the primary's instant, also
/// when they reached it by catch-up.
#[tokio::test]
async fn expiring_keys_expire_at_the_primarys_instant_after_catch_up() {
    let mut t = spawn(1, &[], &["sessions:64k:timeout=1h"]).await;
    let sessions = format!("{}/api/9/http/keyvals/sessions", t.primary());
    let a = t
        .send(Method::POST, &sessions, &[], Some(r#"{"live":"1"}"#))
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let a = t
        .send(
            Method::POST,
            &sessions,
            &[],
            Some(r#"{"short":{"value":"1","expire":6000}}"#),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_converged(&t, Duration::from_secs(10)).await;

    t.cluster
        .replica_mut(1)
        .envoy
        .stop(Duration::from_secs(5))
        .await
        .expect("replica envoy stops");
    let a = t
        .send(
            Method::POST,
            &sessions,
            &[],
            Some(r#"{"away":{"value":"1","expire":9000}}"#),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    sleep_ms(2_500).await;
    t.cluster
        .replica_mut(1)
        .restart_envoy()
        .await
        .expect("replica envoy restarts");
    // Equal zones include equal expiry instants.
    let state = assert_converged(&t, Duration::from_secs(10)).await;
    let at = |key: &str| state["zones"]["sessions"][key]["expires_at"].as_u64();
    assert!(at("away").is_some() && at("live").is_some(), "{state}");

    // After the instants, gone on both; the plain key stays (zone timeout 1h).
    let latest = at("away")
        .unwrap_or_default()
        .max(at("short").unwrap_or_default());
    sleep_ms(latest.saturating_sub(now_ms()) + 100).await;
    for node in 0..2 {
        let url = format!(
            "{}/api/9/http/keyvals/sessions",
            t.cluster.nodes[node].backend_url()
        );
        let zone = t.send(Method::GET, &url, &[], None).await.json();
        assert_eq!(zone, json!({"live": "1"}), "node {node}");
    }
    assert_converged(&t, Duration::from_secs(5)).await;
}

/// (10) K-replica acknowledgement: with K=1 and the replica away, the write
/// fails after the timeout with a clear error, and is still applied on the
/// primary; with the replica up it succeeds once the replica has it.
#[tokio::test]
async fn k_acks_time_out_clearly_and_the_write_stays_applied() {
    let mut t = spawn(1, &[], &[]).await;
    let url = zone_url(&t.primary());
    let wait = [
        ("x-replikv-min-acks", "1"),
        ("x-replikv-ack-timeout-ms", "1000"),
    ];

    let a = t
        .send(Method::POST, &url, &wait, Some(r#"{"acked":"1"}"#))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let on_replica = t.backend_zone(1).await;
    assert_eq!(
        on_replica.get("acked"),
        Some(&json!("1")),
        "replica lacks the acked write"
    );

    t.cluster
        .replica_mut(1)
        .envoy
        .stop(Duration::from_secs(5))
        .await
        .expect("replica envoy stops");
    let started = Instant::now();
    let a = t
        .send(Method::POST, &url, &wait, Some(r#"{"late":"1"}"#))
        .await;
    let took = started.elapsed();
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT, "{}", a.body);
    let error = &a.json()["error"];
    assert_eq!(error["code"], "ReplicationTimeout");
    let text = error["text"].as_str().unwrap_or_default();
    assert!(text.contains("WAS applied on the primary"), "{text}");
    assert!(text.contains("0 of the 1"), "{text}");
    assert!(
        took >= Duration::from_millis(900),
        "answered after {took:?}"
    );
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    assert_eq!(
        t.backend_zone(0).await.get("late"),
        Some(&json!("1")),
        "the write must stay applied on the primary"
    );
    let bad = t
        .send(
            Method::POST,
            &url,
            &[("x-replikv-min-acks", "2")],
            Some(r#"{"no":"1"}"#),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    assert_eq!(t.backend_zone(0).await.get("no"), None);

    t.cluster
        .replica_mut(1)
        .restart_envoy()
        .await
        .expect("replica envoy restarts");
    assert_converged(&t, Duration::from_secs(10)).await;
    assert_eq!(counter(&t, 0, "acks.timeout").await, 1);
}

/// The replication view: role, history, seq, lag and each replica's state,
/// and the lag gauges in Prometheus form.
#[tokio::test]
async fn replication_view_and_prometheus_gauges() {
    let t = spawn(1, &[], &[]).await;
    assert_eq!(
        t.post(&t.primary(), r#"{"v":"1"}"#).await.status,
        StatusCode::CREATED
    );
    assert_converged(&t, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let view = loop {
        let a = t
            .send(
                Method::GET,
                &format!("{}/replikv/replication", t.primary()),
                &[],
                None,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK);
        let v = a.json();
        // A probe that raced the first shadow write may still be finishing a
        // (then empty) catch-up round: `catching_up` until its next reply.
        if v["seq"] == 1 && v["replicas"][0]["seq"] == 1 && v["replicas"][0]["state"] == "streaming"
        {
            break v;
        }
        assert!(Instant::now() < deadline, "view never showed seq 1: {v}");
        sleep_ms(200).await;
    };
    assert_eq!(view["role"], "primary");
    assert_eq!(view["replicas"][0]["state"], "streaming");
    assert_eq!(view["replicas"][0]["lag_writes"], 0);
    assert!(
        view["counters"]["replikv.shadow.ok"].as_u64() >= Some(1),
        "{view}"
    );

    // The replica's view is as old as its last probe of its own backend (up to
    // probe_interval_ms): it adopts the primary's history at a later probe.
    let deadline = Instant::now() + Duration::from_secs(5);
    let replica = loop {
        let replica = t
            .send(
                Method::GET,
                &format!("{}/replikv/replication", t.replica(1)),
                &[],
                None,
            )
            .await
            .json();
        if replica["history"] == view["history"] {
            break replica;
        }
        assert!(
            Instant::now() < deadline,
            "replica view never showed the primary's history: {replica}"
        );
        sleep_ms(200).await;
    };
    assert_eq!(replica["role"], "replica");

    let prometheus = t
        .http
        .get(format!(
            "{}/stats/prometheus",
            t.cluster.primary().admin_url()
        ))
        .send()
        .await
        .expect("prometheus")
        .text()
        .await
        .expect("text");
    for name in [
        "replikv_lag_writes",
        "replikv_seq",
        "replikv_catchup_snapshots",
    ] {
        assert!(prometheus.contains(name), "{name} not in /stats/prometheus");
    }
}
