//! Decoding of request bodies and arguments: pure functions from bytes to the
//! pairs a POST or PATCH carries. Nothing here knows zones or state.
//!
//! Accepted values: a string; a number or boolean (stored as its JSON text,
//! `1` becomes `"1"`); `{"value": <one of those>, "expire": <ms>}`; and, in a
//! PATCH, `null` (delete). Everything else is 400 `KeyvalFormatError`.

use std::marker::PhantomData;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{format, Error, Result};

/// The largest `expire` accepted: about 292 million years is plenty, and keeps
/// `applied_at + expire` far from overflowing.
pub const MAX_EXPIRE_MS: u64 = 1 << 53;

/// A value to store, as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueSpec {
    /// The value as a string.
    pub value: String,
    /// `expire` in milliseconds, when given.
    pub expire_ms: Option<u64>,
}

impl ValueSpec {
    /// A plain value without `expire`.
    pub fn plain(value: impl Into<String>) -> ValueSpec {
        ValueSpec {
            value: value.into(),
            expire_ms: None,
        }
    }
}

/// The pairs of a POST body, in the order sent.
pub fn decode_post(body: &[u8]) -> Result<Vec<(String, ValueSpec)>> {
    decode_pairs(body)?
        .into_iter()
        .map(|(key, raw)| match decode_value(raw)? {
            Some(spec) => Ok((key, spec)),
            None => Err(Error::Format(format::INVALID_VALUE)),
        })
        .collect()
}

/// The pairs of a PATCH body, in the order sent; `None` deletes the key.
pub fn decode_patch(body: &[u8]) -> Result<Vec<(String, Option<ValueSpec>)>> {
    decode_pairs(body)?
        .into_iter()
        .map(|(key, raw)| Ok((key, decode_value(raw)?)))
        .collect()
}

/// The JSON object's members, keys decoded, values left raw.
fn decode_pairs(body: &[u8]) -> Result<Vec<(String, &RawValue)>> {
    let text = std::str::from_utf8(body).map_err(|_| Error::Format(format::INVALID_UTF8))?;
    let Pairs(pairs) =
        serde_json::from_str::<Pairs<'_>>(text).map_err(|_| Error::Format(format::INVALID_JSON))?;
    if pairs.is_empty() {
        return Err(Error::Format(format::KEY_REQUIRED));
    }
    let mut keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    if keys.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::Format(format::DUPLICATE_KEY));
    }
    Ok(pairs)
}

/// The members of the JSON object `text`, in order, duplicates kept, values raw.
pub(crate) fn object_members(text: &str) -> serde_json::Result<Vec<(String, &RawValue)>> {
    serde_json::from_str::<Pairs<'_>>(text).map(|Pairs(pairs)| pairs)
}

/// `None` for `null`; the value otherwise.
fn decode_value(raw: &RawValue) -> Result<Option<ValueSpec>> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'n') => Ok(None),
        Some(b'{') => {
            let object: ValueObject<'_> =
                serde_json::from_str(text).map_err(|_| Error::Format(format::INVALID_VALUE))?;
            let value = object
                .value
                .ok_or(Error::Format(format::INVALID_VALUE))
                .and_then(scalar)?;
            let expire_ms = match object.expire {
                None => None,
                Some(raw) => Some(decode_expire(raw)?),
            };
            Ok(Some(ValueSpec { value, expire_ms }))
        }
        _ => Ok(Some(ValueSpec::plain(scalar(raw)?))),
    }
}

/// A string, number or boolean as the stored string.
fn scalar(raw: &RawValue) -> Result<String> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => {
            serde_json::from_str::<String>(text).map_err(|_| Error::Format(format::INVALID_JSON))
        }
        Some(b't' | b'f' | b'-' | b'0'..=b'9') => Ok(text.to_owned()),
        _ => Err(Error::Format(format::INVALID_VALUE)),
    }
}

/// A whole number of milliseconds, at most [`MAX_EXPIRE_MS`].
fn decode_expire(raw: &RawValue) -> Result<u64> {
    match serde_json::from_str::<u64>(raw.get()) {
        Ok(ms) if ms <= MAX_EXPIRE_MS => Ok(ms),
        _ => Err(Error::Format(format::INVALID_EXPIRE)),
    }
}

/// The object form of a value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ValueObject<'a> {
    #[serde(borrow)]
    value: Option<&'a RawValue>,
    #[serde(borrow)]
    expire: Option<&'a RawValue>,
}

/// A JSON object as its members in order, duplicates kept so they can be refused.
struct Pairs<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Pairs<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PairsVisitor<'a>(PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for PairsVisitor<'a> {
            type Value = Pairs<'a>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry::<String, &'a RawValue>()? {
                    pairs.push(pair);
                }
                Ok(Pairs(pairs))
            }
        }

        deserializer.deserialize_map(PairsVisitor(PhantomData))
    }
}

/// The decoded `key` argument of a query string, if present.
///
/// `+` stays a plus sign (NGINX unescapes `%XX` only); a malformed escape or
/// a key that is not UTF-8 is 400.
pub fn key_argument(query: Option<&str>) -> Result<Option<String>> {
    let Some(query) = query else {
        return Ok(None);
    };
    for part in query.split('&') {
        if let Some(raw) = part.strip_prefix("key=") {
            return percent_decode(raw).map(Some);
        }
    }
    Ok(None)
}

fn percent_decode(raw: &str) -> Result<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(Error::Format(format::INVALID_ARGUMENT))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::Format(format::INVALID_ARGUMENT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(text: &'static str) -> Error {
        Error::Format(text)
    }

    #[test]
    fn numbers_and_booleans_keep_their_json_text() {
        let pairs = decode_post(br#"{"a":1,"b":-2.5e3,"c":true,"d":"x"}"#).unwrap();
        let values: Vec<&str> = pairs.iter().map(|(_, v)| v.value.as_str()).collect();
        assert_eq!(values, ["1", "-2.5e3", "true", "x"]);
    }

    #[test]
    fn object_values_carry_expire() {
        let pairs = decode_post(br#"{"e":{"value":"v","expire":500}}"#).unwrap();
        assert_eq!(
            pairs,
            [(
                "e".to_owned(),
                ValueSpec {
                    value: "v".into(),
                    expire_ms: Some(500)
                }
            )]
        );
        let pairs = decode_post(br#"{"e":{"value":7}}"#).unwrap();
        assert_eq!(pairs[0].1, ValueSpec::plain("7"));
    }

    #[test]
    fn null_deletes_in_patch_and_is_refused_in_post() {
        assert_eq!(
            decode_patch(br#"{"a":null}"#).unwrap(),
            [("a".to_owned(), None)]
        );
        assert_eq!(
            decode_post(br#"{"a":null}"#),
            Err(fmt(format::INVALID_VALUE))
        );
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_invalid_json() {
        for body in [
            &b"not-json"[..],
            b"[]",
            b"\"str\"",
            b"1",
            b"",
            b"{\"a\":\"1\"} x",
            b"{\"a\":}",
        ] {
            assert_eq!(
                decode_post(body),
                Err(fmt(format::INVALID_JSON)),
                "{body:?}"
            );
        }
    }

    #[test]
    fn invalid_utf8_is_refused() {
        assert_eq!(
            decode_post(b"{\"a\":\"\xff\"}"),
            Err(fmt(format::INVALID_UTF8))
        );
    }

    #[test]
    fn empty_objects_need_a_key() {
        assert_eq!(decode_post(b"{}"), Err(fmt(format::KEY_REQUIRED)));
        assert_eq!(decode_patch(b" { } "), Err(fmt(format::KEY_REQUIRED)));
    }

    #[test]
    fn arrays_objects_without_value_and_unknown_fields_are_invalid_values() {
        for body in [
            &br#"{"a":[1]}"#[..],
            br#"{"a":{}}"#,
            br#"{"a":{"expire":5}}"#,
            br#"{"a":{"value":"v","ttl":5}}"#,
            br#"{"a":{"value":[1]}}"#,
            br#"{"a":{"value":{"value":"v"}}}"#,
            br#"{"a":{"value":null}}"#,
        ] {
            assert_eq!(
                decode_patch(body),
                Err(fmt(format::INVALID_VALUE)),
                "{body:?}"
            );
        }
    }

    #[test]
    fn expire_must_be_whole_milliseconds_in_range() {
        for body in [
            &br#"{"a":{"value":"v","expire":-1}}"#[..],
            br#"{"a":{"value":"v","expire":1.5}}"#,
            br#"{"a":{"value":"v","expire":"5"}}"#,
            br#"{"a":{"value":"v","expire":18446744073709551615}}"#,
        ] {
            assert_eq!(
                decode_post(body),
                Err(fmt(format::INVALID_EXPIRE)),
                "{body:?}"
            );
        }
    }

    #[test]
    fn duplicate_keys_are_refused() {
        assert_eq!(
            decode_post(br#"{"a":"1","a":"2"}"#),
            Err(fmt(format::DUPLICATE_KEY))
        );
    }

    #[test]
    fn escaped_keys_are_decoded() {
        let pairs = decode_patch(br#"{"a\u0000b":"1","\u00e9":"2"}"#).unwrap();
        assert_eq!(pairs[0].0, "a\0b");
        assert_eq!(pairs[1].0, "é");
    }

    #[test]
    fn key_argument_is_percent_decoded() {
        assert_eq!(key_argument(None), Ok(None));
        assert_eq!(key_argument(Some("fields=x")), Ok(None));
        assert_eq!(
            key_argument(Some("x=1&key=a%20b+c")),
            Ok(Some("a b+c".into()))
        );
        assert_eq!(
            key_argument(Some("key=%zz")),
            Err(fmt(format::INVALID_ARGUMENT))
        );
        assert_eq!(
            key_argument(Some("key=%ff")),
            Err(fmt(format::INVALID_ARGUMENT))
        );
    }
}
