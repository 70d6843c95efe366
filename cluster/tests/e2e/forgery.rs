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

/// Client replication headers, spelt every way a client could, that no
/// kv-backend may ever see.
const CLIENT_REPLICATION_HEADERS: &str = "X-Replication-Source: primary\r\n\
    X-REPLICATION-SEQ: 7\r\n\
    x-replication-signature: 00\r\n\
    X-Replication-Source: primary\r\n\
    X_Replication_Source: primary\r\n\
    x-replication_seq: 8\r\n\
    X-Replication-Anything-Else: 1\r\n";

/// The request line and header names of every request a recorder got.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<String>)>>>;

/// Stands in for a node's kv-backend on its address: records the request line
/// and header names of every request and answers `200 {}`.
struct HeaderRecorder {
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl HeaderRecorder {
    async fn bind(address: &str) -> Self {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .unwrap_or_else(|e| panic!("binding {address}: {e}"));
        let seen = Seen::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(Self::serve(stream, record.clone()));
            }
        });
        Self { seen, task }
    }

    /// Answers every request on one keep-alive connection.
    async fn serve(stream: tokio::net::TcpStream, seen: Seen) {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let mut stream = BufReader::new(stream);
        loop {
            let mut request_line = String::new();
            if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                return;
            }
            let (mut names, mut length) = (Vec::new(), 0usize);
            loop {
                let mut line = String::new();
                if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
                names.push(name.to_owned());
            }
            let mut body = vec![0; length];
            if stream.read_exact(&mut body).await.is_err() {
                return;
            }
            let head = request_line.starts_with("HEAD ");
            seen.lock()
                .unwrap()
                .push((request_line.trim_end().to_owned(), names));
            let answer = if head {
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"
            } else {
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
            };
            if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    /// The header names of the requests whose request line contains `marker`.
    fn requests_with(&self, marker: &str) -> Vec<Vec<String>> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(line, _)| line.contains(marker))
            .map(|(_, names)| names.clone())
            .collect()
    }

    /// Every header name that came in, on any request.
    fn all_names(&self) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        seen.iter().flat_map(|(_, names)| names.clone()).collect()
    }
}

impl Drop for HeaderRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends one raw HTTP/1.1 request (header spelling exactly as written) and
/// returns the status code.
async fn raw_request(base: &str, method: &str, path: &str, headers: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("{address}: {e}"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: replikv\r\n{headers}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

fn is_replication_header(name: &str) -> bool {
    name.to_ascii_lowercase()
        .replace('_', "-")
        .starts_with("x-replication")
}

/// Whatever the method, route and role, a client's `X-Replication-*` headers
/// never reach a kv-backend: reads (which skip the Wasm filter) lose them in
/// Envoy, writes to the primary lose them in the filter, and writes to a
/// replica never get there at all. Each node's backend is replaced by a
/// recorder that shows exactly what arrives.
#[tokio::test]
async fn client_replication_headers_never_reach_a_backend() {
    let mut t = spawn_cluster(1).await;
    let mut recorders = Vec::new();
    for node in 0..2 {
        t.cluster.nodes[node]
            .backend
            .kill9()
            .await
            .expect("kill -9");
        let backend = t.cluster.nodes[node].spec.backend.clone();
        recorders
            .push(HeaderRecorder::bind(&format!("{}:{}", backend.address, backend.port)).await);
    }

    let reads = [
        ("GET", "/api/9/http/keyvals/default?key=mark-get"),
        ("HEAD", "/api/9/http/keyvals/default?key=mark-head"),
        ("GET", "/replicated/9/http/keyvals/default?key=mark-alias"),
        ("GET", "/replikv/status?mark-internal"),
    ];
    for (node, recorder) in recorders.iter().enumerate() {
        let base = t.cluster.nodes[node].url();
        for (method, path) in reads {
            let status = raw_request(&base, method, path, CLIENT_REPLICATION_HEADERS, "").await;
            assert_eq!(status, 200, "{method} {path} on node {node}");
            let marker = path.split(['=', '?']).next_back().unwrap();
            let arrived = recorder.requests_with(marker);
            assert_eq!(
                arrived.len(),
                1,
                "{method} {path} reached node {node}'s backend once"
            );
            assert!(
                !arrived[0].iter().any(|n| is_replication_header(n)),
                "{method} {path} on node {node} reached the backend with {:?}",
                arrived[0]
            );
        }
    }

    // Writes: stripped on the primary, refused on the replica.
    let writes = [
        ("POST", "/api/9/http/keyvals/default?mark-post"),
        ("PATCH", "/replicated/9/http/keyvals/default?mark-patch"),
        ("DELETE", "/api/9/http/keyvals/default?mark-delete"),
    ];
    for (method, path) in writes {
        let marker = path.split('?').next_back().unwrap();
        let status = raw_request(
            &t.primary(),
            method,
            path,
            CLIENT_REPLICATION_HEADERS,
            r#"{"k":"v"}"#,
        )
        .await;
        assert_eq!(status, 200, "{method} {path} on the primary");
        let arrived = recorders[0].requests_with(marker);
        assert_eq!(
            arrived.len(),
            1,
            "{method} {path} reached the primary's backend once"
        );
        assert!(
            !arrived[0].iter().any(|n| is_replication_header(n)),
            "{:?}",
            arrived[0]
        );

        let status = raw_request(
            &t.replica(1),
            method,
            path,
            CLIENT_REPLICATION_HEADERS,
            r#"{"k":"v"}"#,
        )
        .await;
        assert!(
            matches!(status, 307 | 403),
            "{method} {path} on the replica: {status}"
        );
        assert!(recorders[1].requests_with(marker).is_empty());
    }

    // Through the load balancer: reads to either node, writes to the primary.
    for (method, marker) in [("GET", "mark-lb-get"), ("POST", "mark-lb-post")] {
        let path = format!("/api/9/http/keyvals/default?{marker}");
        let status = raw_request(&t.lb(), method, &path, CLIENT_REPLICATION_HEADERS, "{}").await;
        assert_eq!(status, 200, "{method} {path} through the load balancer");
        let arrived: Vec<_> = recorders
            .iter()
            .flat_map(|r| r.requests_with(marker))
            .collect();
        assert_eq!(arrived.len(), 1, "{method} {path} reached one backend once");
        assert!(
            !arrived[0].iter().any(|n| is_replication_header(n)),
            "{:?}",
            arrived[0]
        );
    }

    // Nor did any other request to the primary's backend (health checks,
    // catch-up probes) carry one. (The replica's legitimately gets proofs.)
    let names = recorders[0].all_names();
    assert!(!names.iter().any(|n| is_replication_header(n)), "{names:?}");
}
