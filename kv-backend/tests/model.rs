//! Model-based property test: random sequences of POST/PATCH/DELETE/GET on one
//! zone, sent through `app()`, give the same answers and the same final zone
//! as a plain `BTreeMap` model of NGINX's rules, and every 2xx write takes
//! exactly one seq.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Method, Request};
use axum::Router;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use replikv_kv_backend::{app, AppState, Config, Store};
use serde_json::{json, Value};
use tower::ServiceExt;

const ZONE: &str = "/api/9/http/keyvals/default";

#[derive(Debug, Clone)]
enum Val {
    Str(String),
    Num(i32),
    Bool(bool),
}

impl Val {
    fn json(&self) -> Value {
        match self {
            Val::Str(s) => json!(s),
            Val::Num(n) => json!(n),
            Val::Bool(b) => json!(b),
        }
    }

    /// How NGINX stores it: numbers and booleans as their JSON text.
    fn stored(&self) -> String {
        match self {
            Val::Str(s) => s.clone(),
            Val::Num(n) => n.to_string(),
            Val::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Post(BTreeMap<String, Val>),
    Patch(BTreeMap<String, Option<Val>>),
    Delete,
    Get(String),
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a"),
        Just("b"),
        Just("c"),
        Just("é"),
        Just("k\"q"),
        Just("")
    ]
    .prop_map(String::from)
}

fn val() -> impl Strategy<Value = Val> {
    prop_oneof![
        "[a-z0-9 ]{0,4}".prop_map(Val::Str),
        any::<i32>().prop_map(Val::Num),
        any::<bool>().prop_map(Val::Bool),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::btree_map(key(), val(), 1..3).prop_map(Op::Post),
        4 => proptest::collection::btree_map(key(), proptest::option::of(val()), 1..3)
            .prop_map(Op::Patch),
        1 => Just(Op::Delete),
        2 => key().prop_map(Op::Get),
    ]
}

/// NGINX's rules on a map; returns the expected status.
fn model(map: &mut BTreeMap<String, String>, op: &Op) -> u16 {
    match op {
        Op::Post(pairs) => {
            if pairs.keys().any(String::is_empty) || (pairs.len() > 1 && !map.is_empty()) {
                400
            } else if pairs.keys().any(|k| map.contains_key(k)) {
                409
            } else {
                for (k, v) in pairs {
                    map.insert(k.clone(), v.stored());
                }
                201
            }
        }
        Op::Patch(pairs) => {
            let Some((key, value)) = pairs.iter().next().filter(|_| pairs.len() == 1) else {
                return 400;
            };
            if key.is_empty() {
                400
            } else if !map.contains_key(key) {
                404
            } else {
                match value {
                    Some(v) => map.insert(key.clone(), v.stored()),
                    None => map.remove(key),
                };
                204
            }
        }
        Op::Delete => {
            map.clear();
            204
        }
        Op::Get(key) if key.is_empty() => 400,
        Op::Get(key) if map.contains_key(key) => 200,
        Op::Get(_) => 404,
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

async fn send(router: &Router, method: Method, uri: &str, body: String) -> (u16, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json)
}

async fn run_op(router: &Router, op: &Op) -> (u16, Value) {
    match op {
        Op::Post(pairs) => {
            let body: serde_json::Map<String, Value> =
                pairs.iter().map(|(k, v)| (k.clone(), v.json())).collect();
            send(router, Method::POST, ZONE, Value::Object(body).to_string()).await
        }
        Op::Patch(pairs) => {
            let body: serde_json::Map<String, Value> = pairs
                .iter()
                .map(|(k, v)| (k.clone(), v.as_ref().map_or(Value::Null, Val::json)))
                .collect();
            send(router, Method::PATCH, ZONE, Value::Object(body).to_string()).await
        }
        Op::Delete => send(router, Method::DELETE, ZONE, String::new()).await,
        Op::Get(key) => {
            let uri = format!("{ZONE}?key={}", percent_encode(key));
            send(router, Method::GET, &uri, String::new()).await
        }
    }
}

async fn seq(router: &Router) -> u64 {
    let (_, status) = send(router, Method::GET, "/replikv/status", String::new()).await;
    status["seq"].as_u64().unwrap()
}

/// The app answers like the model and ends with the same zone.
#[test]
fn random_write_sequences_match_the_model() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = Config::new("unused-in-memory");
    // One store for every case (opening one costs more than a case): each
    // case starts by emptying the zone.
    let store = Store::open_in_memory(&config).unwrap();
    let router = app(AppState::new(store, &config));
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = proptest::collection::vec(op(), 1..24);
    let result = runner.run(&strategy, |ops| {
        runtime.block_on(async {
            assert_eq!(
                send(&router, Method::DELETE, ZONE, String::new()).await.0,
                204
            );
            let start = seq(&router).await;
            let mut map = BTreeMap::new();
            let mut writes = 0;
            for op in &ops {
                let expected = model(&mut map, op);
                let (status, body) = run_op(&router, op).await;
                prop_assert_eq!(status, expected, "{:?} answered {}", op, body);
                if let (Op::Get(key), 200) = (op, status) {
                    prop_assert_eq!(&body, &json!({ key.clone(): map[key].clone() }));
                }
                if !matches!(op, Op::Get(_)) && (200..300).contains(&status) {
                    writes += 1;
                }
            }
            let (_, zone) = send(&router, Method::GET, ZONE, String::new()).await;
            prop_assert_eq!(zone, json!(map));
            prop_assert_eq!(seq(&router).await, start + writes);
            Ok::<(), TestCaseError>(())
        })
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}
