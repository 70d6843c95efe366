//! The single-node rows of the NGINX keyval conformance checklist
//! (`nginx-keyval-api.md` §9) against the running service: real Envoys with
//! the filter, real kv-backends, zones `one` (timeout), `ip` (type=ip), stream
//! zone `s` and the built-in `default` (no timeout). Requests go through the
//! primary's Envoy, and through the load balancer where routing matters (the
//! read-only mount, imports). Rows 31-32 (the data path) do not apply: replikv
//! has no `keyval` variable lookups. Row 33 (two nodes) is `replication.rs`.

use std::time::{Duration, Instant};

use replikv_cluster::{workspace_root, Binaries};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{eventually, now_ms, spawn_cluster_with, Answer, TestCluster};

const ZONES: [&str; 3] = ["one:64k:timeout=1h", "ip:64k:type=ip", "stream:s:64k"];
const ONE: &str = "/api/9/http/keyvals/one";

impl TestCluster {
    async fn call(&self, method: Method, url: &str, body: Option<&str>) -> Answer {
        self.send(method, url, &[], body).await
    }
}

/// Checklist 4: the NGINX error shape, with this status and code; the text.
#[track_caller]
fn assert_error(answer: &Answer, status: u16, code: &str) -> String {
    assert_eq!(answer.status.as_u16(), status, "{answer:?}");
    assert_eq!(
        answer.header("content-type"),
        Some("application/json"),
        "{answer:?}"
    );
    let body = answer.json();
    let mut fields: Vec<&str> = body
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["error", "href", "request_id"], "{body}");
    assert_eq!(body["error"]["status"], status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(
        body["href"],
        "https://nginx.org/en/docs/http/ngx_http_api_module.html"
    );
    let id = body["request_id"].as_str().expect("request_id");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    body["error"]["text"].as_str().expect("text").to_owned()
}

/// Rows 1-27, 29 and 30 in the checklist's order, through the primary's Envoy.
#[tokio::test]
async fn checklist_rows_through_the_primary_envoy() {
    let cluster = spawn_cluster_with(1, &ZONES, &["--max-body", "64k"]).await;
    let t = &cluster;
    let p = t.primary();
    let one = format!("{p}{ONE}");
    let get = |path: String| async move { t.call(Method::GET, &path, None).await };
    let post = |url: String, body: &'static str| async move {
        t.call(Method::POST, &url, Some(body)).await
    };
    let patch = |url: String, body: &'static str| async move {
        t.call(Method::PATCH, &url, Some(body)).await
    };

    // 1. Versions, also through the balancer.
    for base in [p.clone(), t.lb()] {
        let answer = get(format!("{base}/api/")).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.json(), json!([4, 5, 6, 7, 8, 9]));
    }
    // 2, 3. Unknown version and path.
    for path in ["/api/99/http/keyvals/", "/api/3/http/keyvals/one"] {
        let text = assert_error(&get(format!("{p}{path}")).await, 404, "UnknownVersion");
        assert_eq!(text, "unknown version");
    }
    for path in ["/api/9/nosuch", "/api/9/http/keyvals/one/x", "/nosuch"] {
        let text = assert_error(&get(format!("{p}{path}")).await, 404, "PathNotFound");
        assert_eq!(text, "path not found");
    }
    // 5-7. Empty zone, unknown zone for reads and writes.
    assert_eq!(t.zone_at(&one).await, json!({}));
    assert_error(
        &get(format!("{p}/api/9/http/keyvals/nozone")).await,
        404,
        "KeyvalNotFound",
    );
    assert_error(
        &post(format!("{p}/api/9/http/keyvals/nozone"), r#"{"a":"1"}"#).await,
        404,
        "KeyvalNotFound",
    );
    // 8. Several pairs into the empty zone; the replica gets them too.
    let answer = post(one.clone(), r#"{"a":"1","b":"2"}"#).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    assert_eq!(answer.body, "");
    assert_eq!(t.zone_at(&one).await, json!({"a":"1","b":"2"}));
    let replica_one = format!("{}{ONE}", t.replica(1));
    eventually("the replica holds a and b", || async {
        (t.zone_at(&replica_one).await == json!({"a":"1","b":"2"})).then_some(())
    })
    .await;
    // 9. Several pairs into a non-empty zone.
    let text = assert_error(
        &post(one.clone(), r#"{"c":"3","d":"4"}"#).await,
        400,
        "KeyvalFormatError",
    );
    assert_eq!(text, "only one key can be added");
    // 10, 11. One new pair; an existing key is never overwritten.
    assert_eq!(
        post(one.clone(), r#"{"c":"3"}"#).await.status,
        StatusCode::CREATED
    );
    assert_error(
        &post(one.clone(), r#"{"a":"x"}"#).await,
        409,
        "KeyvalKeyExists",
    );
    // 12, 13, 14. Numbers read back as strings; ?key=.
    assert_eq!(
        post(one.clone(), r#"{"n":1}"#).await.status,
        StatusCode::CREATED
    );
    assert_eq!(get(format!("{one}?key=n")).await.json(), json!({"n":"1"}));
    assert_eq!(get(format!("{one}?key=a")).await.json(), json!({"a":"1"}));
    assert_error(
        &get(format!("{one}?key=zz")).await,
        404,
        "KeyvalKeyNotFound",
    );
    // 15-18. PATCH changes, is no upsert, deletes with null, one pair only.
    assert_eq!(
        patch(one.clone(), r#"{"a":"9"}"#).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(get(format!("{one}?key=a")).await.json(), json!({"a":"9"}));
    assert_error(
        &patch(one.clone(), r#"{"zz":"1"}"#).await,
        404,
        "KeyvalKeyNotFound",
    );
    assert_error(
        &get(format!("{one}?key=zz")).await,
        404,
        "KeyvalKeyNotFound",
    );
    assert_eq!(
        patch(one.clone(), r#"{"a":null}"#).await.status,
        StatusCode::NO_CONTENT
    );
    assert_error(&get(format!("{one}?key=a")).await, 404, "KeyvalKeyNotFound");
    let text = assert_error(
        &patch(one.clone(), r#"{"b":"1","c":"2"}"#).await,
        400,
        "KeyvalFormatError",
    );
    assert_eq!(text, "only one key can be updated");
    // 19-21. Not JSON, not an object, empty key: 400 and nothing changes.
    let before = t.zone_at(&one).await;
    for body in ["not-json", "[]", r#""str""#, r#"{"":"v"}"#] {
        assert_error(&post(one.clone(), body).await, 400, "KeyvalFormatError");
    }
    let text = assert_error(
        &post(one.clone(), r#"{"":"v"}"#).await,
        400,
        "KeyvalFormatError",
    );
    assert_eq!(text, "key required");
    assert_eq!(t.zone_at(&one).await, before);
    // 22. Keys of a type=ip zone.
    let ip = format!("{p}/api/9/http/keyvals/ip");
    let text = assert_error(
        &post(ip.clone(), r#"{"not-an-ip":"1"}"#).await,
        400,
        "KeyvalFormatError",
    );
    assert_eq!(text, "invalid key format");
    assert_eq!(
        post(ip.clone(), r#"{"1.2.3.0/24":"1"}"#).await.status,
        StatusCode::CREATED
    );
    // 23. expire: shown as a plain value, gone once it passes (to the ms: never
    // returned after its instant, which is applied_at + 500).
    let answer = post(one.clone(), r#"{"e":{"value":"v","expire":500}}"#).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let applied_at: u64 = answer
        .header("x-replikv-applied-at")
        .expect("applied-at")
        .parse()
        .unwrap();
    assert_eq!(t.zone_at(&one).await["e"], "v");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = get(format!("{one}?key=e")).await;
        let now = now_ms();
        if answer.status == StatusCode::NOT_FOUND {
            assert!(now >= applied_at + 500 - 50, "gone too early at {now}");
            break;
        }
        assert!(
            now < applied_at + 500 + 50,
            "still served at {now}, expiry {}",
            applied_at + 500
        );
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 24. PATCH with expire: still a plain string.
    assert_eq!(
        patch(one.clone(), r#"{"c":{"value":"3","expire":100000}}"#)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(get(format!("{one}?key=c")).await.json(), json!({"c":"3"}));
    // 25. expire in a zone without timeout.
    let text = assert_error(
        &post(
            format!("{p}/api/9/http/keyvals/default"),
            r#"{"x":{"value":"v","expire":500}}"#,
        )
        .await,
        400,
        "KeyvalFormatError",
    );
    assert_eq!(text, "keyval timeout is not enabled");
    // 29. Stream zones: their own namespace.
    let s = format!("{p}/api/9/stream/keyvals/s");
    assert_eq!(
        post(s.clone(), r#"{"k":"v"}"#).await.status,
        StatusCode::CREATED
    );
    assert_eq!(get(s).await.json(), json!({"k":"v"}));
    assert_error(
        &get(format!("{p}/api/9/stream/keyvals/one")).await,
        404,
        "KeyvalNotFound",
    );
    // Versions 4 to 9 serve the same zones.
    for v in 4..=9 {
        let answer = get(format!("{p}/api/{v}/http/keyvals/ip")).await;
        assert_eq!(answer.json(), json!({"1.2.3.0/24":"1"}), "version {v}");
    }
    // 30. A body over --max-body (64k).
    let big = format!(r#"{{"big":"{}"}}"#, "x".repeat(100 * 1024));
    let answer = t.call(Method::POST, &one, Some(&big)).await;
    assert_error(&answer, 413, "RequestEntityTooLarge");
    // 26. DELETE empties the zone, twice.
    for _ in 0..2 {
        let answer = t.call(Method::DELETE, &one, None).await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT);
        assert_eq!(t.zone_at(&one).await, json!({}));
    }
    // 27. All zones, with and without the slash, empty ones as {}.
    let with = get(format!("{p}/api/9/http/keyvals/")).await.json();
    let without = get(format!("{p}/api/9/http/keyvals")).await.json();
    assert_eq!(with, without);
    assert_eq!(with, json!({"default":{},"one":{},"ip":{"1.2.3.0/24":"1"}}));
    // And the replica converged on all of it.
    let primary_all = format!("{p}/api/9/http/keyvals/");
    let replica_all = format!("{}/api/9/http/keyvals/", t.replica(1));
    let expected = t.zone_at(&primary_all).await;
    eventually("the replica converges", || async {
        (t.zone_at(&replica_all).await == expected).then_some(())
    })
    .await;
}

/// Row 28: the read-only mount `/ro/` answers every write 405 and serves
/// reads, on the primary, on a replica (no 307: a write there is refused, not
/// redirected) and through the balancer.
#[tokio::test]
async fn read_only_mount_refuses_writes_everywhere_and_serves_reads() {
    let t = spawn_cluster_with(1, &ZONES, &[]).await;
    let answer = t.post(&t.lb(), r#"{"a":"1"}"#).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    let default = "/ro/9/http/keyvals/default";
    eventually("the replica holds a", || async {
        (t.zone_at(&format!("{}{default}", t.replica(1))).await == json!({"a":"1"})).then_some(())
    })
    .await;
    for base in [t.primary(), t.replica(1), t.lb()] {
        let url = format!("{base}{default}");
        for (method, body) in [
            (Method::POST, Some(r#"{"b":"2"}"#)),
            (Method::PATCH, Some(r#"{"a":"2"}"#)),
            (Method::DELETE, None),
        ] {
            let answer = t.call(method.clone(), &url, body).await;
            let text = assert_error(&answer, 405, "MethodDisabled");
            assert_eq!(text, "method disabled", "{method} {url}");
        }
        assert_eq!(t.zone_at(&url).await, json!({"a":"1"}));
        assert_eq!(
            t.call(Method::GET, &format!("{base}/ro/"), None)
                .await
                .json(),
            json!([4, 5, 6, 7, 8, 9])
        );
    }
    // Nothing was written anywhere.
    for node in 0..2 {
        assert_eq!(t.backend_zone(node).await, json!({"a":"1"}));
    }
}

/// An NGINX keyval state file imported through the balancer is an ordinary
/// write: it reaches the replica, and exporting from the replica gives the
/// same entries back.
#[tokio::test]
async fn state_file_imported_through_the_balancer_reaches_the_replica() {
    let t = spawn_cluster_with(1, &ZONES, &[]).await;
    let backend = Binaries::locate(&workspace_root())
        .expect("binaries")
        .backend;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("one.keyval");
    let later = now_ms() + 600_000;
    std::fs::write(
        &file,
        json!({"a": {"value": "1", "expire": later}, "b": {"value": "2"}}).to_string(),
    )
    .expect("state file");
    let run = |args: Vec<String>| {
        let backend = backend.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(backend)
                .args(args)
                .output()
                .expect("kv-backend runs")
        })
    };
    let output = run(vec![
        "import".into(),
        "--url".into(),
        t.lb(),
        "--zone".into(),
        "one".into(),
        file.display().to_string(),
    ])
    .await
    .expect("join");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let replica_one = format!("{}{ONE}", t.replica(1));
    eventually("the import reaches the replica", || async {
        (t.zone_at(&replica_one).await == json!({"a":"1","b":"2"})).then_some(())
    })
    .await;
    let output = run(vec![
        "export".into(),
        "--url".into(),
        t.replica(1),
        "--zone".into(),
        "one".into(),
    ])
    .await
    .expect("join");
    assert!(output.status.success());
    let exported: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(exported["a"]["value"], "1");
    let at = exported["a"]["expire"].as_u64().expect("expire");
    assert!((later..later + 5_000).contains(&at), "{at} vs {later}");
    assert_eq!(exported["b"]["value"], "2");
}

impl TestCluster {
    /// A GET that must answer 200 with JSON.
    async fn zone_at(&self, url: &str) -> Value {
        let answer = self.call(Method::GET, url, None).await;
        assert_eq!(answer.status, StatusCode::OK, "{url}: {answer:?}");
        answer.json()
    }
}
