//! Shared test harness: a cluster per test, an HTTP client that never follows
//! redirects, and small helpers that read like the API.

use std::future::Future;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use replikv_cluster::{workspace_root, Binaries, Cluster, ClusterOptions, PortPlan, Topology};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Every wait in these tests gives up after this long.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct TestCluster {
    pub cluster: Cluster,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// Starts a cluster with `replicas` replica nodes on free ports.
pub async fn spawn_cluster(replicas: usize) -> TestCluster {
    spawn_cluster_with(replicas, &[], &[]).await
}

/// Like [`spawn_cluster`], every kv-backend started with these `--zone` specs
/// and extra arguments.
pub async fn spawn_cluster_with(
    replicas: usize,
    zones: &[&str],
    backend_args: &[&str],
) -> TestCluster {
    let dir = tempfile::tempdir().expect("temp dir");
    let binaries = Binaries::locate(&workspace_root()).expect("binaries (run `make e2e`)");
    let topology = Topology::local(replicas, PortPlan::Ephemeral).expect("topology");
    let mut options = ClusterOptions::new(dir.path()).expect("options");
    options.zones = zones.iter().map(|z| z.to_string()).collect();
    options.backend_args = backend_args.iter().map(|a| a.to_string()).collect();
    let cluster = Cluster::start(topology, &binaries, options)
        .await
        .expect("cluster starts");
    TestCluster {
        cluster,
        http: client(),
        _dir: dir,
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// An answer reduced to what the tests look at.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl TestCluster {
    pub fn lb(&self) -> String {
        self.cluster.url()
    }

    pub fn primary(&self) -> String {
        self.cluster.primary().url()
    }

    pub fn replica(&self, i: usize) -> String {
        self.cluster.replica(i).url()
    }

    /// Sends `method` to `base` + `path` with extra headers and a body.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answer {
        let mut request = self.http.request(method, url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body.to_owned());
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        Answer {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.text().await.expect("body"),
        }
    }

    pub async fn post(&self, base: &str, body: &str) -> Answer {
        self.send(Method::POST, &zone_url(base), &[], Some(body))
            .await
    }

    pub async fn patch(&self, base: &str, body: &str) -> Answer {
        self.send(Method::PATCH, &zone_url(base), &[], Some(body))
            .await
    }

    pub async fn delete_zone(&self, base: &str) -> Answer {
        self.send(Method::DELETE, &zone_url(base), &[], None).await
    }

    /// The whole zone `default` as one node (or the balancer) serves it.
    pub async fn zone(&self, base: &str) -> Value {
        let answer = self.send(Method::GET, &zone_url(base), &[], None).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.json()
    }

    /// The zone as the kv-backend of a node holds it, bypassing Envoy.
    pub async fn backend_zone(&self, node: usize) -> Value {
        self.zone(&self.cluster.nodes[node].backend_url()).await
    }

    /// Waits until every node's kv-backend holds exactly `expected`.
    pub async fn converges_to(&self, expected: &Value) {
        for node in 0..self.cluster.nodes.len() {
            eventually(&format!("node {node} holds {expected}"), || async move {
                (self.backend_zone(node).await == *expected).then_some(())
            })
            .await;
        }
    }

    /// A counter or gauge from an Envoy admin endpoint (0 when absent).
    pub async fn stat(&self, admin_url: &str, name: &str) -> u64 {
        let url = format!("{admin_url}/stats?filter=^{}$", name.replace('.', "\\."));
        let text = self
            .http
            .get(url)
            .send()
            .await
            .expect("stats")
            .text()
            .await
            .expect("text");
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: "))?.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for process in self.cluster.processes() {
                eprintln!("==== {} ({})", process.name, process.log_path.display());
                eprintln!("{}", process.log_tail(40));
            }
        }
    }
}

pub fn zone_url(base: &str) -> String {
    format!("{base}/api/9/http/keyvals/default")
}

/// Polls `check` until it gives `Some`, for at most [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The proof headers of docs/protocol.md for a request signed at `timestamp`.
#[allow(clippy::too_many_arguments)]
pub fn proof(
    secret: &str,
    method: &str,
    path: &str,
    history: &str,
    seq: u64,
    applied_at: u64,
    timestamp: u64,
    body: &str,
) -> Vec<(&'static str, String)> {
    let message = [
        "replikv-v1".to_owned(),
        method.to_owned(),
        path.to_owned(),
        history.to_owned(),
        seq.to_string(),
        applied_at.to_string(),
        timestamp.to_string(),
        hex::encode(Sha256::digest(body.as_bytes())),
    ]
    .join("\n");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(message.as_bytes());
    vec![
        ("x-replication-source", "primary".to_owned()),
        ("x-replication-history", history.to_owned()),
        ("x-replication-seq", seq.to_string()),
        ("x-replication-applied-at", applied_at.to_string()),
        ("x-replication-timestamp", timestamp.to_string()),
        (
            "x-replication-signature",
            hex::encode(mac.finalize().into_bytes()),
        ),
    ]
}
