//! NGINX keyval `state=` files: moving a zone from NGINX Plus to replikv and back.
//!
//! NGINX Plus does not publish the format of `keyval_zone ... state=FILE`; its
//! documentation says only "JSON" and "do not edit". What is assumed here is
//! the format of the state file of njs's `js_shared_dict_zone ... state=`
//! (njs 0.8.5+, `nginx/ngx_js_shared_dict.c`), which NGINX built as the open
//! counterpart of the keyval state file:
//!
//! ```json
//! {"key":{"value":"v","expire":1716396536683},"other":{"value":"w"}}
//! ```
//!
//! - one JSON object, key → `{"value": string, "expire": Unix ms}`;
//! - `expire` is an absolute instant in Unix milliseconds, written only for
//!   zones with a `timeout`; entries already expired are not written;
//! - on load, in a zone with a `timeout`, an entry whose `expire` has passed is
//!   dropped and one without `expire` (or `0`) gets `now + timeout`; in a zone
//!   without `timeout`, `expire` is ignored;
//! - an empty file is an empty zone; a key twice is an error; unknown fields
//!   of an entry are ignored.
//!
//! The reader is lenient where NGINX's own API is: a value may also be a plain
//! string, number or boolean (`{"k":"v"}`, the API's GET shape), stored as its
//! text. [`export`] serves a zone in this format; `kv-backend import` (see
//! `tool.rs`) loads one through the normal write path, so it gets a seq and
//! replicates like any client write.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::response::Response;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::api::json;
use crate::error::{Error, Result};
use crate::request::ValueSpec;
use crate::server::AppState;
use crate::writer::now_ms;
use crate::zone::{Entry, ZoneId, ZoneKind};

/// One entry of a state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateEntry {
    /// The value.
    pub value: String,
    /// Absolute expiry instant in Unix ms; absent (or 0) for none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expire: Option<u64>,
}

/// `GET /replikv/state/{http|stream}/{zone}`: the zone's live entries as an
/// NGINX keyval state file.
pub async fn export(
    State(state): State<AppState>,
    Path((kind, zone)): Path<(String, String)>,
) -> Result<Response> {
    let kind = match kind.as_str() {
        "http" => ZoneKind::Http,
        "stream" => ZoneKind::Stream,
        _ => return Err(Error::PathNotFound),
    };
    let id = ZoneId { kind, name: zone };
    if state.store.zone(&id).is_none() {
        return Err(Error::ZoneNotFound(id.name));
    }
    let now = now_ms();
    let entries: BTreeMap<String, StateEntry> = state.store.read(|data| {
        data.zones
            .get(&id)
            .map(|zone| {
                zone.live(now)
                    .map(|(key, entry)| (key.clone(), to_state(entry)))
                    .collect()
            })
            .unwrap_or_default()
    });
    Ok(json(&entries))
}

fn to_state(entry: &Entry) -> StateEntry {
    StateEntry {
        value: entry.value.clone(),
        expire: entry.expires_at,
    }
}

/// Reads a state file: its entries in file order.
pub fn parse(bytes: &[u8]) -> std::result::Result<Vec<(String, StateEntry)>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let members =
        crate::request::object_members(text).map_err(|e| format!("not a JSON object: {e}"))?;
    let mut keys: Vec<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    if let Some(pair) = keys.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("key {:?} appears twice", pair[0]));
    }
    members
        .into_iter()
        .map(|(key, raw)| {
            let entry = entry(raw).map_err(|e| format!("key {key:?}: {e}"))?;
            Ok((key, entry))
        })
        .collect()
}

fn entry(raw: &RawValue) -> std::result::Result<StateEntry, String> {
    #[derive(serde::Deserialize)]
    struct Object<'a> {
        #[serde(borrow)]
        value: Option<&'a RawValue>,
        expire: Option<u64>,
    }
    let text = raw.get();
    if text.starts_with('{') {
        let object: Object<'_> = serde_json::from_str(text)
            .map_err(|_| "expected {\"value\": ..., \"expire\": Unix ms}".to_owned())?;
        let value = object.value.ok_or("missing value")?;
        Ok(StateEntry {
            value: scalar(value)?,
            expire: object.expire.filter(|at| *at > 0),
        })
    } else {
        Ok(StateEntry {
            value: scalar(raw)?,
            expire: None,
        })
    }
}

fn scalar(raw: &RawValue) -> std::result::Result<String, String> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(text).map_err(|e| e.to_string()),
        Some(b't' | b'f' | b'-' | b'0'..=b'9') => Ok(text.to_owned()),
        _ => Err("a value must be a string, number or boolean".into()),
    }
}

/// What loading a state file at `now_ms` into a zone with `timeout_ms` stores,
/// as the pairs of an API POST: expired entries are left out, the others keep
/// their instant as `expire = instant - now` (so the instant moves by the
/// request's latency at most), entries without one get the zone's timeout;
/// in a zone without timeout, `expire` is dropped. Also returns how many
/// entries were left out.
pub fn to_pairs(
    entries: Vec<(String, StateEntry)>,
    now_ms: u64,
    timeout_ms: Option<u64>,
) -> (Vec<(String, ValueSpec)>, usize) {
    let total = entries.len();
    let pairs: Vec<(String, ValueSpec)> = entries
        .into_iter()
        .filter_map(|(key, entry)| {
            let expire_ms = match (timeout_ms, entry.expire) {
                (None, _) | (Some(_), None) => None,
                (Some(_), Some(at)) if at <= now_ms => return None,
                (Some(_), Some(at)) => Some(at - now_ms),
            };
            Some((
                key,
                ValueSpec {
                    value: entry.value,
                    expire_ms,
                },
            ))
        })
        .collect();
    let skipped = total - pairs.len();
    (pairs, skipped)
}

/// The JSON body of an API POST of `pairs`: plain strings, or
/// `{"value","expire"}` objects where an expire is set.
pub fn post_body(pairs: &[(String, ValueSpec)]) -> String {
    let object: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|(key, spec)| {
            let value = match spec.expire_ms {
                None => serde_json::Value::String(spec.value.clone()),
                Some(ms) => serde_json::json!({"value": spec.value, "expire": ms}),
            };
            (key.clone(), value)
        })
        .collect();
    serde_json::Value::Object(object).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(value: &str, expire: Option<u64>) -> StateEntry {
        StateEntry {
            value: value.into(),
            expire,
        }
    }

    #[test]
    fn reads_the_njs_state_format_and_plain_values() {
        let file = br#"{"a":{"value":"1","expire":2000},"b":{"value":"x"},
            "c":"plain","d":7,"e":{"value":"v","expire":0,"future":true}}"#;
        assert_eq!(
            parse(file).unwrap(),
            [
                ("a".to_owned(), e("1", Some(2000))),
                ("b".to_owned(), e("x", None)),
                ("c".to_owned(), e("plain", None)),
                ("d".to_owned(), e("7", None)),
                ("e".to_owned(), e("v", None)),
            ]
        );
        assert_eq!(parse(b"").unwrap(), []);
        assert_eq!(parse(b" \n").unwrap(), []);
        assert_eq!(parse(b"{}").unwrap(), []);
    }

    #[test]
    fn refuses_what_nginx_would_not_load() {
        for bad in [
            &b"[]"[..],
            b"{\"a\":}",
            b"{\"a\":{\"expire\":5}}",
            b"{\"a\":{\"value\":[1]}}",
            b"{\"a\":null}",
            b"{\"a\":\"1\",\"a\":\"2\"}",
            b"{\"a\":{\"value\":\"v\",\"expire\":-1}}",
            b"\xff",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn loading_drops_expired_entries_and_keeps_instants_relative_to_now() {
        let entries = vec![
            ("gone".to_owned(), e("1", Some(1000))),
            ("edge".to_owned(), e("1", Some(1500))),
            ("later".to_owned(), e("2", Some(4000))),
            ("none".to_owned(), e("3", None)),
        ];
        let (pairs, skipped) = to_pairs(entries.clone(), 1500, Some(60_000));
        assert_eq!(skipped, 2);
        assert_eq!(
            pairs,
            [
                (
                    "later".to_owned(),
                    ValueSpec {
                        value: "2".into(),
                        expire_ms: Some(2500)
                    }
                ),
                ("none".to_owned(), ValueSpec::plain("3")),
            ]
        );
        let (pairs, skipped) = to_pairs(entries, 1500, None);
        assert_eq!(skipped, 0);
        assert!(pairs.iter().all(|(_, spec)| spec.expire_ms.is_none()));
    }

    #[test]
    fn post_bodies_round_trip_through_the_request_decoder() {
        let pairs = vec![
            ("a".to_owned(), ValueSpec::plain("1")),
            (
                "b\u{0}".to_owned(),
                ValueSpec {
                    value: "\"q\"".into(),
                    expire_ms: Some(5),
                },
            ),
        ];
        let decoded = crate::request::decode_post(post_body(&pairs).as_bytes()).unwrap();
        assert_eq!(decoded, pairs);
    }

    #[test]
    fn entries_render_as_the_state_format() {
        let entries: BTreeMap<String, StateEntry> = [
            ("a".to_owned(), e("1", None)),
            ("b".to_owned(), e("2", Some(99))),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            serde_json::to_string(&entries).unwrap(),
            r#"{"a":{"value":"1"},"b":{"value":"2","expire":99}}"#
        );
    }
}
