//! The single-node rows of the conformance checklist (nginx-keyval-api.md §9),
//! one test per behaviour, plus the replikv headers on successful writes.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::TestApp;

const ONE: &str = "/api/9/http/keyvals/one";

/// Checklist 1: the version list contains 9.
#[tokio::test]
async fn get_api_lists_the_supported_versions() {
    let app = TestApp::new();
    for path in ["/api/", "/api"] {
        let response = app.get(path).await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(response.json(), json!([4, 5, 6, 7, 8, 9]));
    }
}

/// Checklist 2: an unsupported version is 404 UnknownVersion.
#[tokio::test]
async fn unknown_version_is_404_unknown_version() {
    let app = TestApp::new();
    for path in [
        "/api/99/http/keyvals/",
        "/api/3/http/keyvals/one",
        "/api/x/",
    ] {
        let text = app.get(path).await.assert_error(404, "UnknownVersion");
        assert_eq!(text, "unknown version");
    }
}

/// Checklist 3: an unknown path is 404 PathNotFound, inside and outside /api/.
#[tokio::test]
async fn unknown_path_is_404_path_not_found() {
    let app = TestApp::new();
    for path in [
        "/api/9/nosuch",
        "/api/9/http/upstreams/",
        "/nosuch",
        "/api/9/http/keyvals/one/x",
    ] {
        let text = app.get(path).await.assert_error(404, "PathNotFound");
        assert_eq!(text, "path not found");
    }
}

/// Checklist 4: the error body's request id is the client's x-request-id when usable.
#[tokio::test]
async fn error_request_id_comes_from_x_request_id_when_it_is_hex() {
    let app = TestApp::new();
    let uuid = "0F8FAD5B-D9CB-469F-A165-70867728950E";
    let response = app
        .call(
            Method::GET,
            "/api/9/http/keyvals/nozone",
            b"",
            &[("x-request-id", uuid)],
        )
        .await;
    response.assert_error(404, "KeyvalNotFound");
    assert_eq!(
        response.json()["request_id"],
        "0f8fad5bd9cb469fa16570867728950e"
    );
    let response = app
        .call(
            Method::GET,
            "/api/9/http/keyvals/nozone",
            b"",
            &[("x-request-id", "nope")],
        )
        .await;
    response.assert_error(404, "KeyvalNotFound");
    assert_ne!(response.json()["request_id"], "nope");
}

/// Checklist 5: an empty zone reads as `{}`.
#[tokio::test]
async fn empty_zone_reads_as_an_empty_object() {
    let app = TestApp::new();
    assert_eq!(app.zone("one").await, json!({}));
    assert_eq!(app.zone("default").await, json!({}));
}

/// Checklist 6: GET of a zone that is not configured.
#[tokio::test]
async fn get_of_unknown_zone_is_keyval_not_found() {
    let app = TestApp::new();
    let text = app
        .get("/api/9/http/keyvals/nozone")
        .await
        .assert_error(404, "KeyvalNotFound");
    assert!(text.contains("nozone"), "{text}");
}

/// Checklist 7: writes to a zone that is not configured.
#[tokio::test]
async fn writes_to_unknown_zone_are_keyval_not_found() {
    let app = TestApp::new();
    let path = "/api/9/http/keyvals/nozone";
    app.post(path, r#"{"a":"1"}"#)
        .await
        .assert_error(404, "KeyvalNotFound");
    app.patch(path, r#"{"a":"1"}"#)
        .await
        .assert_error(404, "KeyvalNotFound");
    app.delete(path).await.assert_error(404, "KeyvalNotFound");
    assert_eq!(app.seq().await, 0);
}

/// Checklist 8: several pairs go into an empty zone in one POST.
#[tokio::test]
async fn post_of_several_pairs_into_an_empty_zone_adds_them_all() {
    let app = TestApp::new();
    let response = app.post(ONE, r#"{"a":"1","b":"2"}"#).await;
    assert_eq!(response.status, StatusCode::CREATED);
    assert!(response.body.is_empty());
    assert_eq!(app.zone("one").await, json!({"a":"1","b":"2"}));
}

/// Checklist 9: several pairs into a non-empty zone are refused as a whole.
#[tokio::test]
async fn post_of_several_pairs_into_a_non_empty_zone_is_refused_and_changes_nothing() {
    let app = TestApp::new();
    app.post(ONE, r#"{"a":"1"}"#).await;
    let text = app
        .post(ONE, r#"{"c":"3","d":"4"}"#)
        .await
        .assert_error(400, "KeyvalFormatError");
    assert_eq!(text, "only one key can be added");
    assert_eq!(app.zone("one").await, json!({"a":"1"}));
}

/// Checklist 10: one new pair into a non-empty zone.
#[tokio::test]
async fn post_of_a_new_key_is_created() {
    let app = TestApp::new();
    app.post(ONE, r#"{"a":"1"}"#).await;
    assert_eq!(
        app.post(ONE, r#"{"c":"3"}"#).await.status,
        StatusCode::CREATED
    );
    assert_eq!(app.zone("one").await, json!({"a":"1","c":"3"}));
}

/// Checklist 11: POST never overwrites.
#[tokio::test]
async fn post_of_existing_key_is_refused_and_changes_nothing() {
    let app = TestApp::new();
    app.post(ONE, r#"{"a":"1"}"#).await;
    let text = app
        .post(ONE, r#"{"a":"x"}"#)
        .await
        .assert_error(409, "KeyvalKeyExists");
    assert_eq!(text, r#"key "a" already exists"#);
    assert_eq!(app.zone("one").await, json!({"a":"1"}));
    assert_eq!(app.seq().await, 1);
}

/// Checklist 12: numbers and booleans are stored as their JSON text.
#[tokio::test]
async fn numbers_and_booleans_read_back_as_strings() {
    let app = TestApp::new();
    assert_eq!(
        app.post(ONE, r#"{"n":1}"#).await.status,
        StatusCode::CREATED
    );
    app.post(ONE, r#"{"f":1.5}"#).await;
    app.post(ONE, r#"{"t":true}"#).await;
    app.post(ONE, r#"{"o":{"value":42}}"#).await;
    assert_eq!(
        app.get(&format!("{ONE}?key=n")).await.json(),
        json!({"n":"1"})
    );
    assert_eq!(
        app.zone("one").await,
        json!({"n":"1","f":"1.5","t":"true","o":"42"})
    );
}

/// Checklist 13: `?key=` returns just that pair.
#[tokio::test]
async fn get_with_key_returns_only_that_key() {
    let app = TestApp::new();
    app.post(ONE, r#"{"a":"1","b":"2"}"#).await;
    let response = app.get(&format!("{ONE}?key=a")).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.json(), json!({"a":"1"}));
}

/// Checklist 14: `?key=` of an absent key.
#[tokio::test]
async fn get_of_missing_key_is_keyval_key_not_found() {
    let app = TestApp::new();
    app.post(ONE, r#"{"a":"1"}"#).await;
    let text = app
        .get(&format!("{ONE}?key=zz"))
        .await
        .assert_error(404, "KeyvalKeyNotFound");
    assert!(text.contains("zz"), "{text}");
}

/// Checklist 15: PATCH changes an existing pair.
#[tokio::test]
async fn patch_changes_an_existing_key() {
    let app = TestApp::new();
    app.post(ONE, r#"{"a":"1"}"#).await;
    let response = app.patch(ONE, r#"{"a":"9"}"#).await;
    assert_eq!(response.status, StatusCode::NO_CONTENT);
    assert_eq!(app.zone("one").await, json!({"a":"9"}));
}

/// Checklist 16: PATCH is not an upsert.
#[tokio::test]
async fn patch_of_missing_key_is_not_found_and_creates_nothing() {
    let app = TestApp::new();
    app.post(ONE, r#"{"a":"1"}"#).await;
    app.patch(ONE, r#"{"zz":"1"}"#)
        .await
        .assert_error(404, "KeyvalKeyNotFound");
    app.patch(ONE, r#"{"zz":null}"#)
        .await
        .assert_error(404, "KeyvalKeyNotFound");
    assert_eq!(app.zone("one").await, json!({"a":"1"}));
    assert_eq!(app.seq().await, 1);
}

/// Checklist 17: PATCH with null deletes one pair.
#[tokio::test]
async fn patch_null_deletes_the_key() {
    let app = TestApp::new();
    app.post(ONE, r#"{"a":"1","b":"2"}"#).await;
    assert_eq!(
        app.patch(ONE, r#"{"a":null}"#).await.status,
        StatusCode::NO_CONTENT
    );
    app.get(&format!("{ONE}?key=a"))
        .await
        .assert_error(404, "KeyvalKeyNotFound");
    assert_eq!(app.zone("one").await, json!({"b":"2"}));
}

/// Checklist 18: PATCH takes one pair.
#[tokio::test]
async fn patch_with_several_keys_is_refused() {
    let app = TestApp::new();
    app.post(ONE, r#"{"b":"0","c":"0"}"#).await;
    let text = app
        .patch(ONE, r#"{"b":"1","c":"2"}"#)
        .await
        .assert_error(400, "KeyvalFormatError");
    assert_eq!(text, "only one key can be updated");
    assert_eq!(app.zone("one").await, json!({"b":"0","c":"0"}));
}

/// Checklist 23: `expire` hides the pair once it passes; GET never shows `expire`.
#[tokio::test]
async fn expire_hides_the_key_after_it_passes() {
    let app = TestApp::new();
    let response = app.post(ONE, r#"{"e":{"value":"v","expire":500}}"#).await;
    assert_eq!(response.status, StatusCode::CREATED);
    assert_eq!(app.zone("one").await, json!({"e":"v"}));
    assert_eq!(
        app.get("/api/9/http/keyvals/").await.json()["one"],
        json!({"e":"v"})
    );
    tokio::time::sleep(Duration::from_millis(650)).await;
    app.get(&format!("{ONE}?key=e"))
        .await
        .assert_error(404, "KeyvalKeyNotFound");
    assert_eq!(app.zone("one").await, json!({}));
}

/// A plain value in a zone with `timeout=` lives for the timeout.
#[tokio::test]
async fn plain_values_expire_after_the_zone_timeout() {
    let app = TestApp::new();
    let path = "/api/9/http/keyvals/short";
    app.post(path, r#"{"k":"v"}"#).await;
    assert_eq!(app.zone("short").await, json!({"k":"v"}));
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(app.zone("short").await, json!({}));
    // The expired key no longer blocks a POST of the same key.
    assert_eq!(
        app.post(path, r#"{"k":"w"}"#).await.status,
        StatusCode::CREATED
    );
}

/// PATCH re-arms the expiry from its own applied_at.
#[tokio::test]
async fn patch_re_arms_the_expiry() {
    let app = TestApp::new();
    let path = "/api/9/http/keyvals/medium";
    app.post(path, r#"{"k":"v"}"#).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        app.patch(path, r#"{"k":"w"}"#).await.status,
        StatusCode::NO_CONTENT
    );
    // Past the first expiry (1 s after the POST), before the re-armed one.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.zone("medium").await, json!({"k":"w"}));
}

/// Checklist 24: an `expire` set by PATCH still reads as a plain string.
#[tokio::test]
async fn patch_with_expire_still_reads_as_plain_string() {
    let app = TestApp::new();
    app.post(ONE, r#"{"c":"1"}"#).await;
    let response = app
        .patch(ONE, r#"{"c":{"value":"3","expire":100000}}"#)
        .await;
    assert_eq!(response.status, StatusCode::NO_CONTENT);
    assert_eq!(app.zone("one").await, json!({"c":"3"}));
}

/// Checklist 25: `expire` needs the zone's timeout.
#[tokio::test]
async fn expire_on_zone_without_timeout_is_refused() {
    let app = TestApp::new();
    let path = "/api/9/http/keyvals/default";
    let text = app
        .post(path, r#"{"e":{"value":"v","expire":500}}"#)
        .await
        .assert_error(400, "KeyvalFormatError");
    assert_eq!(text, "keyval timeout is not enabled");
    app.post(path, r#"{"e":"v"}"#).await;
    app.patch(path, r#"{"e":{"value":"v","expire":500}}"#)
        .await
        .assert_error(400, "KeyvalFormatError");
    assert_eq!(app.zone("default").await, json!({"e":"v"}));
}

/// Checklist 26: DELETE empties the zone, and again.
#[tokio::test]
async fn delete_empties_the_zone_and_is_idempotent() {
    let app = TestApp::new();
    app.post(ONE, r#"{"a":"1","b":"2"}"#).await;
    assert_eq!(app.delete(ONE).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.zone("one").await, json!({}));
    assert_eq!(app.delete(ONE).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.zone("one").await, json!({}));
    // The zone takes several pairs again, being empty.
    assert_eq!(
        app.post(ONE, r#"{"x":"1","y":"2"}"#).await.status,
        StatusCode::CREATED
    );
}

/// Checklist 27: all zones, with and without the trailing slash, empty ones as `{}`.
#[tokio::test]
async fn all_zones_listing_with_and_without_slash_is_the_same() {
    let app = TestApp::new();
    app.post(ONE, r#"{"a":"1"}"#).await;
    let with = app.get("/api/9/http/keyvals/").await;
    let without = app.get("/api/9/http/keyvals").await;
    assert_eq!(with.status, StatusCode::OK);
    assert_eq!(with.json(), without.json());
    assert_eq!(
        with.json(),
        json!({"default":{},"one":{"a":"1"},"short":{},"medium":{},"ip":{},"tiny":{}})
    );
}

/// Checklist 28 (the part that is the backend's): other methods are 405 MethodDisabled.
#[tokio::test]
async fn methods_other_than_get_post_patch_delete_are_method_disabled() {
    let app = TestApp::new();
    for method in [Method::PUT, Method::OPTIONS, Method::TRACE] {
        let text = app
            .call(method, ONE, br#"{"a":"1"}"#, &[])
            .await
            .assert_error(405, "MethodDisabled");
        assert_eq!(text, "method disabled");
    }
    for path in ["/api/", "/api/9/http/keyvals/", "/replikv/status"] {
        app.post(path, r#"{"a":"1"}"#)
            .await
            .assert_error(405, "MethodDisabled");
    }
    assert_eq!(app.zone("one").await, json!({}));
}

/// HEAD reads like GET, without a body.
#[tokio::test]
async fn head_of_a_zone_is_200_without_body() {
    let app = TestApp::new();
    let response = app.call(Method::HEAD, ONE, b"", &[]).await;
    assert_eq!(response.status, StatusCode::OK);
}

/// Checklist 29: stream zones live in their own namespace.
#[tokio::test]
async fn stream_zones_are_a_separate_namespace() {
    let app = TestApp::new();
    let path = "/api/9/stream/keyvals/s";
    assert_eq!(
        app.post(path, r#"{"k":"v"}"#).await.status,
        StatusCode::CREATED
    );
    assert_eq!(app.get(path).await.json(), json!({"k":"v"}));
    assert_eq!(
        app.get("/api/9/stream/keyvals/").await.json(),
        json!({"s":{"k":"v"}})
    );
    app.get("/api/9/stream/keyvals/one")
        .await
        .assert_error(404, "KeyvalNotFound");
    app.get("/api/9/http/keyvals/s")
        .await
        .assert_error(404, "KeyvalNotFound");
}

/// Every API version from 4 to 9 serves the same zones.
#[tokio::test]
async fn every_supported_version_serves_the_zones() {
    let app = TestApp::new();
    app.post("/api/4/http/keyvals/one", r#"{"a":"1"}"#).await;
    for v in 4..=9 {
        let response = app.get(&format!("/api/{v}/http/keyvals/one")).await;
        assert_eq!(response.json(), json!({"a":"1"}), "version {v}");
    }
}

/// Successful writes carry the history, their seq and applied_at; refusals take no seq.
#[tokio::test]
async fn successful_writes_carry_history_seq_and_applied_at() {
    let app = TestApp::new();
    let first = app.post(ONE, r#"{"a":"1"}"#).await;
    let history = first.header("x-replikv-history").unwrap().to_owned();
    assert!(history.len() == 32 && history.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(first.header("x-replikv-seq"), Some("1"));
    let applied_at: u64 = first
        .header("x-replikv-applied-at")
        .unwrap()
        .parse()
        .unwrap();
    assert!(applied_at > 1_600_000_000_000);
    app.post(ONE, r#"{"a":"2"}"#)
        .await
        .assert_error(409, "KeyvalKeyExists");
    let second = app.patch(ONE, r#"{"a":"2"}"#).await;
    assert_eq!(second.header("x-replikv-seq"), Some("2"));
    assert_eq!(second.header("x-replikv-history"), Some(history.as_str()));
    let third = app.delete(ONE).await;
    assert_eq!(third.header("x-replikv-seq"), Some("3"));
    let status = app.get("/replikv/status").await.json();
    assert_eq!(status["history"], history.as_str());
    assert_eq!(status["seq"], 3);
}

/// The status endpoint reports counts per zone.
#[tokio::test]
async fn status_reports_history_seq_and_zone_counts() {
    let app = TestApp::new();
    app.post(ONE, r#"{"a":"1","b":"2"}"#).await;
    app.post("/api/9/stream/keyvals/s", r#"{"k":"v"}"#).await;
    let status = app.get("/replikv/status").await.json();
    assert_eq!(status["seq"], 2);
    assert_eq!(status["zones"]["one"]["keys"], 2);
    assert_eq!(status["zones"]["stream:s"]["keys"], 1);
    assert_eq!(status["zones"]["default"]["size"], 32768);
    assert_eq!(status["log"]["records"], 2);
}

/// Checklist 28: the read-only mount (`/ro`, NGINX `api write=off`) serves
/// every read of the API and answers every write 405 MethodDisabled.
#[tokio::test]
async fn read_only_mount_serves_reads_and_refuses_every_write() {
    let app = TestApp::new();
    app.post(ONE, r#"{"a":"1"}"#).await;
    let ro = "/ro/9/http/keyvals/one";
    for (method, body) in [
        (Method::POST, r#"{"b":"2"}"#),
        (Method::PATCH, r#"{"a":"2"}"#),
        (Method::DELETE, ""),
        (Method::PUT, r#"{"b":"2"}"#),
    ] {
        let text = app
            .call(method.clone(), ro, body.as_bytes(), &[])
            .await
            .assert_error(405, "MethodDisabled");
        assert_eq!(text, "method disabled", "{method}");
    }
    // Also for a zone that does not exist, and for a shadow write.
    app.post("/ro/9/http/keyvals/nozone", r#"{"b":"2"}"#)
        .await
        .assert_error(405, "MethodDisabled");
    app.call(
        Method::POST,
        ro,
        br#"{"b":"2"}"#,
        &[("x-replication-seq", "2")],
    )
    .await
    .assert_error(405, "MethodDisabled");
    assert_eq!(app.zone("one").await, json!({"a":"1"}));
    assert_eq!(app.seq().await, 1);

    assert_eq!(app.get(ro).await.json(), json!({"a":"1"}));
    assert_eq!(
        app.get(&format!("{ro}?key=a")).await.json(),
        json!({"a":"1"})
    );
    for path in ["/ro", "/ro/"] {
        assert_eq!(app.get(path).await.json(), json!([4, 5, 6, 7, 8, 9]));
    }
    assert_eq!(app.get("/ro/9/").await.json(), json!(["http", "stream"]));
    assert_eq!(
        app.get("/ro/9/http/keyvals").await.json(),
        app.get("/api/9/http/keyvals").await.json()
    );
    app.get(&format!("{ro}?key=zz"))
        .await
        .assert_error(404, "KeyvalKeyNotFound");
    app.get("/ro/9/http/keyvals/nozone")
        .await
        .assert_error(404, "KeyvalNotFound");
    app.get("/ro/99/http/keyvals/")
        .await
        .assert_error(404, "UnknownVersion");
    app.get("/ro/9/nosuch")
        .await
        .assert_error(404, "PathNotFound");
    assert_eq!(
        app.get("/ro/9/stream/keyvals/s").await.status,
        StatusCode::OK
    );
}

/// `--read-only-prefix` moves the mount; an empty one removes it.
#[tokio::test]
async fn read_only_mount_follows_its_configured_prefix() {
    let mut config = crate::helpers::config();
    config.read_only_prefix = Some("/api-ro".into());
    let app = TestApp::with_config(config);
    assert_eq!(
        app.get("/api-ro/9/http/keyvals/one").await.status,
        StatusCode::OK
    );
    app.post("/api-ro/9/http/keyvals/one", r#"{"a":"1"}"#)
        .await
        .assert_error(405, "MethodDisabled");
    app.get("/ro/9/http/keyvals/one")
        .await
        .assert_error(404, "PathNotFound");

    let mut config = crate::helpers::config();
    config.read_only_prefix = None;
    let app = TestApp::with_config(config);
    app.get("/ro/9/http/keyvals/one")
        .await
        .assert_error(404, "PathNotFound");
}
