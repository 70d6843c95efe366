//! Fuzzing the request decoder with proptest, bounded so it runs in every
//! `cargo test` (a few seconds; `REPLIKV_FUZZ_CASES=N` runs more):
//!
//! - the pure decoder (`decode_post`, `decode_patch`, `key_argument`) over
//!   arbitrary bytes and arbitrary JSON shapes never panics, and refuses only
//!   with 400 `KeyvalFormatError`;
//! - the whole app, over random methods, paths, queries, headers and bodies
//!   (bytes, JSON shapes, near-valid bodies), always answers 2xx or 4xx (or
//!   507 `KeyvalZoneFull`) with the NGINX error shape, and an answer that is
//!   not 2xx changes nothing: same zones, same seq.

use axum::body::Body;
use axum::http::{Method, Request};
use axum::Router;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use replikv_kv_backend::config::parse_zone_spec;
use replikv_kv_backend::request::{decode_patch, decode_post, key_argument};
use replikv_kv_backend::{app, AppState, Config, Error, Store};
use serde_json::Value;
use tower::ServiceExt;

fn cases(default: u32) -> u32 {
    std::env::var("REPLIKV_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

/// Strings that tend to break things: empty, NUL, quotes, non-ASCII, addresses.
fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("a".to_owned()),
        Just("k\0".to_owned()),
        Just("\"".to_owned()),
        Just("é€😀".to_owned()),
        Just("10.0.0.0/8".to_owned()),
        Just("::1".to_owned()),
        Just("value".to_owned()),
        Just("expire".to_owned()),
        "[a-c]{0,3}",
        any::<String>().prop_map(|s| s.chars().take(12).collect()),
    ]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        tricky_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((tricky_string(), inner), 0..4)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// Bodies shaped like the API's, and not.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let value_object = (json_value(), json_value(), any::<bool>()).prop_map(|(v, e, with_e)| {
        let mut object = serde_json::Map::new();
        object.insert("value".into(), v);
        if with_e {
            object.insert("expire".into(), e);
        }
        Value::Object(object)
    });
    let member = prop_oneof![json_value(), value_object];
    let object = proptest::collection::vec((tricky_string(), member), 0..4).prop_map(
        |pairs: Vec<(String, Value)>| {
            let members: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), v))
                .collect();
            // Written by hand so that duplicate keys survive.
            format!("{{{}}}", members.join(",")).into_bytes()
        },
    );
    let object = object.boxed();
    prop_oneof![
        4 => object.clone(),
        2 => json_value().prop_map(|v| v.to_string().into_bytes()),
        2 => proptest::collection::vec(any::<u8>(), 0..64),
        // Near-valid: a valid object cut short, or with one byte replaced.
        1 => (object.clone(), any::<usize>()).prop_map(|(b, at)| b[..at % (b.len() + 1)].to_vec()),
        1 => (object, any::<usize>(), any::<u8>()).prop_map(|(mut b, at, byte)| {
            if !b.is_empty() {
                let i = at % b.len();
                b[i] = byte;
            }
            b
        }),
    ]
}

/// The decoder never panics and refuses only with a format error (400).
#[test]
fn the_decoder_never_panics_and_refuses_with_a_format_error() {
    let strategy = (body(), proptest::collection::vec(any::<u8>(), 0..24));
    let result = runner(cases(2000)).run(&strategy, |(body, query)| {
        for result in [
            decode_post(&body).map(|_| ()),
            decode_patch(&body).map(|_| ()),
        ] {
            if let Err(error) = result {
                prop_assert!(matches!(error, Error::Format(_)), "{:?}", error);
                prop_assert_eq!(error.status().as_u16(), 400);
            }
        }
        let query = String::from_utf8_lossy(&query).into_owned();
        if let Err(error) = key_argument(Some(&format!("key={query}"))) {
            prop_assert!(matches!(error, Error::Format(_)), "{:?}", error);
        }
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}

#[derive(Debug, Clone)]
struct Call {
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn call() -> impl Strategy<Value = Call> {
    let method = prop_oneof![
        4 => Just(Method::POST),
        3 => Just(Method::PATCH),
        1 => Just(Method::DELETE),
        2 => Just(Method::GET),
        1 => Just(Method::PUT),
        1 => Just(Method::HEAD),
    ];
    let path = prop_oneof![
        6 => Just("/api/9/http/keyvals/one".to_owned()),
        2 => Just("/api/9/http/keyvals/ip".to_owned()),
        2 => Just("/api/9/http/keyvals/tiny".to_owned()),
        2 => Just("/api/5/stream/keyvals/s".to_owned()),
        1 => Just("/api/9/http/keyvals/nozone".to_owned()),
        1 => Just("/ro/9/http/keyvals/one".to_owned()),
        1 => Just("/api/9/http/keyvals/".to_owned()),
        1 => Just("/api/3/http/keyvals/one".to_owned()),
        1 => "/[a-z0-9/]{0,12}",
    ];
    let query = prop_oneof![
        Just(String::new()),
        Just("?key=a".to_owned()),
        Just("?key=".to_owned()),
        Just("?key=%zz".to_owned()),
        Just("?key=%ff%fe".to_owned()),
        "\\?key=[a-z%0-9]{0,6}",
    ];
    let headers = prop_oneof![
        6 => Just(Vec::new()),
        1 => Just(vec![("content-length", "99999999".to_owned())]),
        1 => "[0-9a-z]{0,4}".prop_map(|s| vec![("x-replication-seq", s)]),
        1 => Just(vec![("content-type", "text/plain".to_owned())]),
    ];
    (method, path, query, headers, body()).prop_map(|(method, path, query, headers, body)| Call {
        method,
        path: format!("{path}{query}"),
        headers,
        body,
    })
}

async fn send(router: &Router, call: &Call) -> (u16, Vec<u8>) {
    let mut request = Request::builder()
        .method(call.method.clone())
        .uri(&call.path);
    for (name, value) in &call.headers {
        request = request.header(*name, value);
    }
    let body = if call.headers.iter().any(|(n, _)| *n == "content-length") {
        Body::empty()
    } else {
        Body::from(call.body.clone())
    };
    let response = router
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, bytes.to_vec())
}

/// Everything a write could change: every zone (http and stream) and the seq.
async fn everything(router: &Router) -> (Value, Value, Value) {
    let get = |path: &'static str| async move {
        let call = Call {
            method: Method::GET,
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
        };
        serde_json::from_slice::<Value>(&send(router, &call).await.1).unwrap()
    };
    let status = get("/replikv/status").await;
    (
        get("/api/9/http/keyvals/").await,
        get("/api/9/stream/keyvals/").await,
        status["seq"].clone(),
    )
}

/// Every answer is 2xx or 4xx (507 only for a full zone) in the NGINX error
/// shape, and an answer that is not 2xx changes nothing.
#[test]
fn the_app_answers_every_request_and_bad_input_changes_nothing() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    for spec in [
        "one:1m:timeout=1h",
        "ip:64k:type=ip",
        "tiny:1k",
        "stream:s:64k",
    ] {
        config = config.with_zone(parse_zone_spec(spec).unwrap());
    }
    config.max_body = 4096;
    // One store for every case: opening one costs more than many cases.
    let store = Store::open(&config).unwrap();
    let router = app(AppState::new(store, &config));
    let result = runner(cases(300)).run(&call(), |call| {
        runtime.block_on(async {
            let before = everything(&router).await;
            let (status, body) = send(&router, &call).await;
            let ok = (200..300).contains(&status);
            prop_assert!(
                ok || (400..500).contains(&status) || status == 507,
                "{:?} answered {}",
                call,
                status
            );
            if !ok && call.method == Method::HEAD {
                prop_assert!(body.is_empty(), "HEAD answers carry no body");
                prop_assert_eq!(everything(&router).await, before);
            } else if !ok {
                let error: Value = serde_json::from_slice(&body)
                    .map_err(|e| TestCaseError::fail(format!("{call:?}: {e}: {body:?}")))?;
                prop_assert_eq!(&error["error"]["status"], &Value::from(status));
                prop_assert!(error["error"]["code"].is_string(), "{}", error);
                prop_assert!(error["error"]["text"].is_string(), "{}", error);
                prop_assert_eq!(error["request_id"].as_str().map(str::len), Some(32));
                if status == 507 {
                    prop_assert_eq!(&error["error"]["code"], "KeyvalZoneFull");
                }
                prop_assert_eq!(everything(&router).await, before, "{:?} changed data", call);
            }
            Ok::<(), TestCaseError>(())
        })
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}
