//! `TestApp`: a router over a store in a temporary directory with the checklist's zones,
//! and one method per kind of request, so tests read like the checklist.

use std::path::PathBuf;
use std::sync::OnceLock;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use replikv_kv_backend::config::parse_zone_spec;
use replikv_kv_backend::store::DB_FILE;
use replikv_kv_backend::{app, AppState, Config, Store};
use serde_json::Value;
use tower::ServiceExt;

/// An app with zones `default` (32k), `one` (timeout 10s), `short`
/// (timeout 300ms), `medium` (timeout 1s), `ip` (type=ip), `tiny` (1k) and stream zone `s`.
pub struct TestApp {
    /// Both `Option` only so that `Drop` can move them to a closing thread.
    router: Option<Router>,
    data_dir: Option<tempfile::TempDir>,
}

impl Drop for TestApp {
    /// Closing a redb database costs about 0.1 s of CPU in a debug build: it
    /// happens on a thread of its own so the test ends at once. The data dir
    /// goes after the store (under `target/tmp`, so one left behind by a test
    /// process that exits first is harmless).
    fn drop(&mut self) {
        let (router, data_dir) = (self.router.take(), self.data_dir.take());
        std::thread::spawn(move || {
            drop(router);
            drop(data_dir);
        });
    }
}

/// An empty redb file, made once and kept under `target/tmp`: copying it is
/// much cheaper than creating a database (about 0.1 s in a debug build). It
/// holds no table and no history, so every store opened on a copy draws its
/// own history id. Made under a temporary name and renamed into place, so
/// test processes running at once never see half of one.
fn template() -> &'static std::path::Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let path = scratch_root().join("empty-template.redb");
        if !path.exists() {
            let partial = scratch_root().join(format!("empty-template.{}", std::process::id()));
            drop(redb::Database::create(&partial).unwrap());
            std::fs::rename(&partial, &path).unwrap();
        }
        path
    })
}

fn scratch_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kv-backend-api")
}

/// What came back.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub fn config() -> Config {
    let mut config = Config::new("set-by-with-config");
    for spec in [
        "one:1m:timeout=10s",
        "short:1m:timeout=300ms",
        "medium:1m:timeout=1s",
        "ip:1m:type=ip",
        "tiny:1k",
        "stream:s:32k",
    ] {
        config = config.with_zone(parse_zone_spec(spec).unwrap());
    }
    config
}

impl TestApp {
    pub fn new() -> TestApp {
        TestApp::with_config(config())
    }

    /// A store in a fresh temporary directory, on a copy of the empty template
    /// database (it exercises the real file).
    pub fn with_config(mut config: Config) -> TestApp {
        std::fs::create_dir_all(scratch_root()).unwrap();
        let data_dir = tempfile::tempdir_in(scratch_root()).unwrap();
        std::fs::copy(template(), data_dir.path().join(DB_FILE)).unwrap();
        config.data_dir = data_dir.path().to_owned();
        let store = Store::open(&config).unwrap();
        TestApp {
            router: Some(app(AppState::new(store, &config))),
            data_dir: Some(data_dir),
        }
    }

    pub async fn send(&self, request: Request<Body>) -> TestResponse {
        let router = self.router.clone().expect("the router lives until drop");
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        TestResponse {
            status,
            headers,
            body,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> TestResponse {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(Body::from(body.to_vec())).unwrap())
            .await
    }

    pub async fn get(&self, path: &str) -> TestResponse {
        self.call(Method::GET, path, b"", &[]).await
    }

    pub async fn post(&self, path: &str, body: &str) -> TestResponse {
        self.call(Method::POST, path, body.as_bytes(), &[]).await
    }

    pub async fn patch(&self, path: &str, body: &str) -> TestResponse {
        self.call(Method::PATCH, path, body.as_bytes(), &[]).await
    }

    pub async fn delete(&self, path: &str) -> TestResponse {
        self.call(Method::DELETE, path, b"", &[]).await
    }

    /// The zone's content as JSON.
    pub async fn zone(&self, zone: &str) -> Value {
        let response = self.get(&format!("/api/9/http/keyvals/{zone}")).await;
        assert_eq!(response.status, StatusCode::OK, "{response:?}");
        response.json()
    }

    pub async fn seq(&self) -> u64 {
        self.get("/replikv/status").await.json()["seq"]
            .as_u64()
            .unwrap()
    }
}

impl TestResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the NGINX error shape with this status and code; returns the text.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let body = self.json();
        let object = body.as_object().expect("error body is an object");
        let mut fields: Vec<&str> = object.keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["error", "href", "request_id"], "{body}");
        assert_eq!(body["error"]["status"], status, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert_eq!(
            body["href"],
            "https://nginx.org/en/docs/http/ngx_http_api_module.html"
        );
        let id = body["request_id"].as_str().unwrap();
        assert!(
            id.len() == 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{id}"
        );
        assert_eq!(body["error"].as_object().unwrap().len(), 3, "{body}");
        body["error"]["text"].as_str().unwrap().to_owned()
    }
}
