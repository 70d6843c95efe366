//! Bad input gets a clear 4xx in the NGINX error shape and changes nothing.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;

use crate::helpers::{config, TestApp};

const ONE: &str = "/api/9/http/keyvals/one";

/// Asserts that zone `one` still holds exactly `{"a":"1"}` and nothing took a seq.
async fn unchanged(app: &TestApp) {
    assert_eq!(app.zone("one").await, json!({"a":"1"}));
    assert_eq!(app.seq().await, 1);
}

async fn seeded() -> TestApp {
    let app = TestApp::new();
    assert_eq!(
        app.post(ONE, r#"{"a":"1"}"#).await.status,
        StatusCode::CREATED
    );
    app
}

/// Checklist 19: not JSON at all.
#[tokio::test]
async fn invalid_json_is_a_format_error() {
    let app = seeded().await;
    for body in [
        "not-json",
        "",
        "{",
        r#"{"b":}"#,
        r#"{"b":"1"} trailing"#,
        r#"{b:"1"}"#,
    ] {
        for response in [app.post(ONE, body).await, app.patch(ONE, body).await] {
            let text = response.assert_error(400, "KeyvalFormatError");
            assert_eq!(text, "invalid JSON", "{body:?}");
        }
    }
    unchanged(&app).await;
}

/// Checklist 20: JSON that is not an object.
#[tokio::test]
async fn non_object_bodies_are_format_errors() {
    let app = seeded().await;
    for body in ["[]", r#"["a"]"#, r#""str""#, "1", "null", "true"] {
        app.post(ONE, body)
            .await
            .assert_error(400, "KeyvalFormatError");
        app.patch(ONE, body)
            .await
            .assert_error(400, "KeyvalFormatError");
    }
    unchanged(&app).await;
}

/// Checklist 21: an empty key, or no key at all.
#[tokio::test]
async fn empty_key_is_refused() {
    let app = seeded().await;
    for body in [r#"{"":"v"}"#, "{}"] {
        let text = app
            .post(ONE, body)
            .await
            .assert_error(400, "KeyvalFormatError");
        assert_eq!(text, "key required");
        app.patch(ONE, body)
            .await
            .assert_error(400, "KeyvalFormatError");
    }
    app.get(&format!("{ONE}?key="))
        .await
        .assert_error(400, "KeyvalFormatError");
    unchanged(&app).await;
}

/// Checklist 22: a key that is no address or network in a `type=ip` zone.
#[tokio::test]
async fn invalid_ip_key_is_refused_in_an_ip_zone() {
    let app = TestApp::new();
    let path = "/api/9/http/keyvals/ip";
    for body in [
        r#"{"not-an-ip":"1"}"#,
        r#"{"1.2.3.4/33":"1"}"#,
        r#"{"1.2.3":"1"}"#,
    ] {
        let text = app
            .post(path, body)
            .await
            .assert_error(400, "KeyvalFormatError");
        assert_eq!(text, "invalid key format");
    }
    assert_eq!(app.zone("ip").await, json!({}));
    let response = app
        .post(path, r#"{"1.2.3.0/24":"1","::1":"2","10.0.0.1":"3"}"#)
        .await;
    assert_eq!(response.status, StatusCode::CREATED);
    assert_eq!(
        app.zone("ip").await,
        json!({"1.2.3.0/24":"1","::1":"2","10.0.0.1":"3"})
    );
}

/// A body that is not UTF-8.
#[tokio::test]
async fn invalid_utf8_is_refused() {
    let app = seeded().await;
    for body in [&b"{\"b\":\"\xff\xfe\"}"[..], b"{\"\xc3\":\"1\"}"] {
        app.call(Method::POST, ONE, body, &[])
            .await
            .assert_error(400, "KeyvalFormatError");
    }
    // A lone surrogate escape is no valid string either.
    app.post(ONE, r#"{"b":"\ud800"}"#)
        .await
        .assert_error(400, "KeyvalFormatError");
    unchanged(&app).await;
}

/// NUL cannot be part of a key.
#[tokio::test]
async fn nul_in_key_is_refused() {
    let app = seeded().await;
    let text = app
        .post(ONE, r#"{"b\u0000c":"1"}"#)
        .await
        .assert_error(400, "KeyvalFormatError");
    assert_eq!(text, "invalid key format");
    app.patch(ONE, r#"{"a\u0000":"1"}"#)
        .await
        .assert_error(400, "KeyvalFormatError");
    unchanged(&app).await;
}

/// Arrays, objects without `value`, null in a POST, unknown fields and bad `expire`.
#[tokio::test]
async fn malformed_values_are_refused() {
    let app = seeded().await;
    for body in [
        r#"{"b":[1]}"#,
        r#"{"b":{}}"#,
        r#"{"b":{"expire":1000}}"#,
        r#"{"b":{"value":"v","other":1}}"#,
        r#"{"b":{"value":["v"]}}"#,
        r#"{"b":null}"#,
        r#"{"b":{"value":"v","expire":-5}}"#,
        r#"{"b":{"value":"v","expire":"5"}}"#,
        r#"{"b":{"value":"v","expire":2.5}}"#,
        r#"{"b":"1","b":"2"}"#,
    ] {
        app.post(ONE, body)
            .await
            .assert_error(400, "KeyvalFormatError");
    }
    for body in [r#"{"a":[1]}"#, r#"{"a":{"expire":1000}}"#] {
        app.patch(ONE, body)
            .await
            .assert_error(400, "KeyvalFormatError");
    }
    unchanged(&app).await;
}

/// A multi-key POST is all or nothing: one bad pair refuses them all.
#[tokio::test]
async fn multi_key_post_is_all_or_nothing() {
    let app = TestApp::new();
    let path = "/api/9/http/keyvals/ip";
    app.post(path, r#"{"1.1.1.1":"a","bad":"b","2.2.2.2":"c"}"#)
        .await
        .assert_error(400, "KeyvalFormatError");
    app.post(ONE, r#"{"x":"1","":"2"}"#)
        .await
        .assert_error(400, "KeyvalFormatError");
    app.post(
        "/api/9/http/keyvals/default",
        r#"{"x":"1","y":{"value":"2","expire":5}}"#,
    )
    .await
    .assert_error(400, "KeyvalFormatError");
    assert_eq!(
        app.get("/api/9/http/keyvals/").await.json()["ip"],
        json!({})
    );
    assert_eq!(app.zone("one").await, json!({}));
    assert_eq!(app.zone("default").await, json!({}));
    assert_eq!(app.seq().await, 0);
}

/// A write that would take the zone over its size is 507 KeyvalZoneFull.
#[tokio::test]
async fn full_zone_is_507_and_changes_nothing() {
    let app = TestApp::new();
    let path = "/api/9/http/keyvals/tiny";
    let big = "x".repeat(600);
    assert_eq!(
        app.post(path, &format!(r#"{{"a":"{big}"}}"#)).await.status,
        StatusCode::CREATED
    );
    app.post(path, &format!(r#"{{"b":"{big}"}}"#))
        .await
        .assert_error(507, "KeyvalZoneFull");
    let bigger = "y".repeat(2000);
    app.patch(path, &format!(r#"{{"a":"{bigger}"}}"#))
        .await
        .assert_error(507, "KeyvalZoneFull");
    assert_eq!(app.zone("tiny").await, json!({"a": big}));
    // Shrinking a value always fits.
    assert_eq!(
        app.patch(path, r#"{"a":"s"}"#).await.status,
        StatusCode::NO_CONTENT
    );
    // Several small pairs into an empty zone that do not fit together: none is stored.
    app.delete(path).await;
    let many: serde_json::Map<String, serde_json::Value> = (0..20)
        .map(|i| (format!("k{i}"), json!("v".repeat(10))))
        .collect();
    app.post(path, &serde_json::Value::Object(many).to_string())
        .await
        .assert_error(507, "KeyvalZoneFull");
    assert_eq!(app.zone("tiny").await, json!({}));
}

/// A declared length over the limit is refused before the body is read.
#[tokio::test]
async fn body_over_the_limit_is_413_from_content_length() {
    let mut config = config();
    config.max_body = 64;
    let app = TestApp::with_config(config);
    let request = Request::builder()
        .method(Method::POST)
        .uri(ONE)
        .header("content-length", "100000000")
        .body(Body::empty())
        .unwrap();
    app.send(request)
        .await
        .assert_error(413, "RequestEntityTooLarge");
    let body = format!(r#"{{"a":"{}"}}"#, "x".repeat(100));
    app.post(ONE, &body)
        .await
        .assert_error(413, "RequestEntityTooLarge");
    assert_eq!(app.zone("one").await, json!({}));
}

/// A streamed body without a length is cut off at the limit.
#[tokio::test]
async fn streamed_body_over_the_limit_is_413() {
    let mut config = config();
    config.max_body = 1024;
    let app = TestApp::with_config(config);
    let chunks: Vec<Result<&'static [u8], std::io::Error>> =
        (0..1000).map(|_| Ok(&b"xxxxxxxxxxxxxxxx"[..])).collect();
    let request = Request::builder()
        .method(Method::PATCH)
        .uri(ONE)
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    app.send(request)
        .await
        .assert_error(413, "RequestEntityTooLarge");
}

/// A `?key=` argument with a broken escape.
#[tokio::test]
async fn malformed_key_argument_is_refused() {
    let app = seeded().await;
    app.get(&format!("{ONE}?key=%zz"))
        .await
        .assert_error(400, "KeyvalFormatError");
    let response = app.get(&format!("{ONE}?key=%61")).await;
    assert_eq!(response.json(), json!({"a":"1"}));
}

/// A huge number of keys in one POST: refused as a whole when the zone cannot
/// hold them (507, nothing stored), stored as one write when it can.
#[tokio::test]
async fn huge_number_of_keys_in_one_post() {
    let mut config = config();
    config.max_body = 8 << 20;
    config = config.with_zone(replikv_kv_backend::config::parse_zone_spec("big:16m").unwrap());
    let app = TestApp::with_config(config);
    let many = |n: usize| {
        let object: serde_json::Map<String, serde_json::Value> =
            (0..n).map(|i| (format!("k{i}"), json!("v"))).collect();
        serde_json::Value::Object(object).to_string()
    };
    // 100 000 pairs (1.3 MB) into the 32 KiB zone `default`.
    app.post("/api/9/http/keyvals/default", &many(100_000))
        .await
        .assert_error(507, "KeyvalZoneFull");
    assert_eq!(app.zone("default").await, json!({}));
    assert_eq!(app.seq().await, 0);
    // 10 000 pairs into a zone that holds them: one write, one seq.
    let response = app.post("/api/9/http/keyvals/big", &many(10_000)).await;
    assert_eq!(response.status, StatusCode::CREATED, "{response:?}");
    assert_eq!(response.header("x-replikv-seq"), Some("1"));
    let zone = app.zone("big").await;
    assert_eq!(zone.as_object().unwrap().len(), 10_000);
    assert_eq!(zone["k9999"], "v");
    // One key too many for the zone's size, in a non-empty zone: one pair per call.
    app.post("/api/9/http/keyvals/big", &many(2))
        .await
        .assert_error(400, "KeyvalFormatError");
}
