//! The replication proof: the canonical string of docs/protocol.md, its
//! HMAC-SHA256 signature, and the checks a replica runs on the headers and body
//! of a shadow write before anything reaches its backend.

use crate::config::REPLICATION_PREFIX;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// First line of the signed message; bump it when the message changes shape.
pub(crate) const PROOF_VERSION: &str = "replikv-v1";
/// Value of the source header on every shadow write.
pub(crate) const SOURCE_PRIMARY: &str = "primary";

pub(crate) const HISTORY: &str = "x-replication-history";
pub(crate) const SEQ: &str = "x-replication-seq";
pub(crate) const APPLIED_AT: &str = "x-replication-applied-at";
pub(crate) const TIMESTAMP: &str = "x-replication-timestamp";
pub(crate) const SIGNATURE: &str = "x-replication-signature";

/// Lowercase hex of `bytes`.
pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Decodes lowercase hex of exactly `N` bytes; anything else is `None`.
fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    if bytes.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// Whether `s` is a history id: 32 lowercase hex digits.
pub(crate) fn is_history_id(s: &str) -> bool {
    parse_hex::<16>(s).is_some()
}

/// Parses a decimal u64 with no sign, no spaces and no leading `+`.
pub(crate) fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Lowercase hex SHA-256 of the body (of the empty string when there is none).
pub(crate) fn body_digest(body: &[u8]) -> String {
    hex_lower(&Sha256::digest(body))
}

/// A header name as replication sees it: lowercase, `_` read as `-`, so that
/// `X_Replication_Source` and `x-replication-source` are the same header.
pub(crate) fn normalize_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// Whether a request header belongs to the replication namespace.
pub(crate) fn is_replication_header(name: &str) -> bool {
    normalize_name(name).starts_with(REPLICATION_PREFIX)
}

/// Everything the signature covers except the secret and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SignedFields<'a> {
    pub method: &'a str,
    /// Path and query exactly as sent.
    pub path: &'a str,
    pub history: &'a str,
    pub seq: u64,
    pub applied_at: u64,
    pub timestamp: u64,
}

/// The message that is signed: the fields of protocol.md joined by `\n`.
pub(crate) fn canonical_string(fields: &SignedFields<'_>, body: &[u8]) -> String {
    format!(
        "{PROOF_VERSION}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
        fields.method,
        fields.path,
        fields.history,
        fields.seq,
        fields.applied_at,
        fields.timestamp,
        body_digest(body)
    )
}

/// A keyed MAC over the canonical string. HMAC accepts keys of any length, so
/// this is `None` only in theory; callers treat `None` as a failed proof.
fn mac(secret: &[u8], fields: &SignedFields<'_>, body: &[u8]) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(secret).ok()?;
    mac.update(canonical_string(fields, body).as_bytes());
    Some(mac)
}

/// Lowercase hex HMAC-SHA256 of the canonical string.
pub(crate) fn sign(secret: &[u8], fields: &SignedFields<'_>, body: &[u8]) -> Option<String> {
    Some(hex_lower(
        &mac(secret, fields, body)?.finalize().into_bytes(),
    ))
}

/// Why a request that claims to be replication traffic is refused. The
/// `Display` text is the `text` of the 403 body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofError {
    /// A required header is absent.
    Missing(String),
    /// A replication header appears more than once (under any spelling).
    Duplicate(String),
    /// A replication header is spelled other than in lowercase with dashes.
    NonCanonicalName(String),
    /// A header in the replication namespace that the protocol does not define.
    Unexpected(String),
    /// A header whose value does not parse.
    Malformed(String),
    /// The source header does not say `primary`.
    WrongSource,
    /// The timestamp is farther than the allowed skew from this node's clock.
    StaleTimestamp { skew_ms: u64, max_ms: u64 },
    /// The signature does not match the request.
    BadSignature,
}

impl fmt::Display for ProofError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProofError::Missing(h) => write!(f, "replication header {h} is missing"),
            ProofError::Duplicate(h) => write!(f, "replication header {h} appears more than once"),
            ProofError::NonCanonicalName(h) => {
                write!(f, "replication header {h} must be spelled in lowercase with dashes")
            }
            ProofError::Unexpected(h) => write!(f, "unexpected replication header {h}"),
            ProofError::Malformed(h) => write!(f, "replication header {h} is malformed"),
            ProofError::WrongSource => write!(f, "replication source is not {SOURCE_PRIMARY}"),
            ProofError::StaleTimestamp { skew_ms, max_ms } => write!(
                f,
                "replication timestamp is {skew_ms} ms away from this node's clock (at most {max_ms} allowed)"
            ),
            ProofError::BadSignature => write!(f, "replication signature is invalid"),
        }
    }
}

/// The proof headers of one request, parsed but not yet checked against a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub history: String,
    pub seq: u64,
    pub applied_at: u64,
    pub timestamp: u64,
    signature: [u8; 32],
}

/// Reads the proof headers: each present exactly once under its canonical name,
/// no other replication header, every value well formed, the source `primary`
/// and the timestamp within `max_skew_ms` of `now_ms`. The signature is checked
/// later by [`Proof::verify`], once the body is known.
pub(crate) fn parse_proof(
    headers: &[(String, String)],
    source_header: &str,
    now_ms: u64,
    max_skew_ms: u64,
) -> Result<Proof, ProofError> {
    let names = [
        source_header,
        HISTORY,
        SEQ,
        APPLIED_AT,
        TIMESTAMP,
        SIGNATURE,
    ];
    let mut values: [Option<&str>; 6] = [None; 6];
    for (name, value) in headers {
        let normalized = normalize_name(name);
        if !normalized.starts_with(REPLICATION_PREFIX) {
            continue;
        }
        let Some(slot) = names.iter().position(|n| *n == normalized) else {
            return Err(ProofError::Unexpected(normalized));
        };
        if values[slot].is_some() {
            return Err(ProofError::Duplicate(normalized));
        }
        if name != &normalized {
            return Err(ProofError::NonCanonicalName(name.clone()));
        }
        values[slot] = Some(value.as_str());
    }
    let get = |i: usize| values[i].ok_or_else(|| ProofError::Missing(names[i].to_owned()));
    let (source, history, seq, applied_at, timestamp, signature) =
        (get(0)?, get(1)?, get(2)?, get(3)?, get(4)?, get(5)?);

    if source != SOURCE_PRIMARY {
        return Err(ProofError::WrongSource);
    }
    if !is_history_id(history) {
        return Err(ProofError::Malformed(HISTORY.to_owned()));
    }
    let number = |value: &str, name: &str| {
        parse_decimal(value).ok_or_else(|| ProofError::Malformed(name.to_owned()))
    };
    let seq = number(seq, SEQ)?;
    let applied_at = number(applied_at, APPLIED_AT)?;
    let timestamp = number(timestamp, TIMESTAMP)?;
    let signature =
        parse_hex::<32>(signature).ok_or_else(|| ProofError::Malformed(SIGNATURE.to_owned()))?;

    let skew_ms = now_ms.abs_diff(timestamp);
    if skew_ms > max_skew_ms {
        return Err(ProofError::StaleTimestamp {
            skew_ms,
            max_ms: max_skew_ms,
        });
    }
    Ok(Proof {
        history: history.to_owned(),
        seq,
        applied_at,
        timestamp,
        signature,
    })
}

impl Proof {
    /// Checks the signature over this request, in constant time.
    pub(crate) fn verify(
        &self,
        secret: &[u8],
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(), ProofError> {
        let fields = SignedFields {
            method,
            path,
            history: &self.history,
            seq: self.seq,
            applied_at: self.applied_at,
            timestamp: self.timestamp,
        };
        mac(secret, &fields, body)
            .ok_or(ProofError::BadSignature)?
            .verify_slice(&self.signature)
            .map_err(|_| ProofError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef-test-secret";
    const HISTORY_ID: &str = "00112233445566778899aabbccddeeff";
    const NOW: u64 = 1_700_000_000_000;
    const SKEW: u64 = 30_000;

    fn fields<'a>(method: &'a str, path: &'a str) -> SignedFields<'a> {
        SignedFields {
            method,
            path,
            history: HISTORY_ID,
            seq: 7,
            applied_at: NOW - 5,
            timestamp: NOW,
        }
    }

    fn headers_for(method: &str, path: &str, body: &[u8]) -> Vec<(String, String)> {
        let f = fields(method, path);
        vec![
            ("x-replication-source".into(), "primary".into()),
            (HISTORY.into(), f.history.into()),
            (SEQ.into(), f.seq.to_string()),
            (APPLIED_AT.into(), f.applied_at.to_string()),
            (TIMESTAMP.into(), f.timestamp.to_string()),
            (SIGNATURE.into(), sign(SECRET, &f, body).unwrap()),
            ("content-type".into(), "application/json".into()),
        ]
    }

    fn check(
        headers: &[(String, String)],
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(), ProofError> {
        parse_proof(headers, "x-replication-source", NOW, SKEW)?.verify(SECRET, method, path, body)
    }

    #[test]
    fn canonical_string_joins_fields_with_newlines() {
        let s = canonical_string(&fields("POST", "/api/9/http/keyvals/default?x=1"), b"");
        assert_eq!(
            s,
            format!(
                "replikv-v1\nPOST\n/api/9/http/keyvals/default?x=1\n{HISTORY_ID}\n7\n{}\n{NOW}\n\
                 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                NOW - 5
            )
        );
    }

    #[test]
    fn signature_matches_an_independent_hmac() {
        // Computed with Python: hmac.new(b"0123456789abcdef-test-secret",
        // b"replikv-v1\nPOST\n/p\nh\n1\n2\n3\n" + sha256(b"{}").hexdigest(), sha256).
        let f = SignedFields {
            method: "POST",
            path: "/p",
            history: "h",
            seq: 1,
            applied_at: 2,
            timestamp: 3,
        };
        assert_eq!(
            sign(SECRET, &f, b"{}").unwrap(),
            "0285662a5b4780086645e1e5917988341989e20029ed236b94d8974cb91e9b11"
        );
    }

    #[test]
    fn correctly_signed_write_is_accepted() {
        let body = br#"{"k":"v"}"#;
        let h = headers_for("POST", "/api/9/http/keyvals/default", body);
        assert_eq!(
            check(&h, "POST", "/api/9/http/keyvals/default", body),
            Ok(())
        );
    }

    #[test]
    fn bodiless_delete_is_signed_over_the_empty_body() {
        let h = headers_for("DELETE", "/api/9/http/keyvals/default", b"");
        assert_eq!(
            check(&h, "DELETE", "/api/9/http/keyvals/default", b""),
            Ok(())
        );
    }

    #[test]
    fn signature_over_other_body_is_refused() {
        let h = headers_for("POST", "/api/9/http/keyvals/default", br#"{"k":"v"}"#);
        assert_eq!(
            check(
                &h,
                "POST",
                "/api/9/http/keyvals/default",
                br#"{"k":"evil"}"#
            ),
            Err(ProofError::BadSignature)
        );
    }

    #[test]
    fn signature_over_other_path_or_method_is_refused() {
        let body = br#"{"k":"v"}"#;
        let h = headers_for("POST", "/api/9/http/keyvals/default", body);
        assert_eq!(
            check(&h, "POST", "/api/9/http/keyvals/other", body),
            Err(ProofError::BadSignature)
        );
        assert_eq!(
            check(&h, "PATCH", "/api/9/http/keyvals/default", body),
            Err(ProofError::BadSignature)
        );
    }

    #[test]
    fn signature_with_other_secret_is_refused() {
        let body = b"{}";
        let h = headers_for("POST", "/p", body);
        let proof = parse_proof(&h, "x-replication-source", NOW, SKEW).unwrap();
        assert_eq!(
            proof.verify(b"another-secret-of-16+", "POST", "/p", body),
            Err(ProofError::BadSignature)
        );
    }

    #[test]
    fn changed_seq_breaks_the_signature() {
        let mut h = headers_for("POST", "/p", b"");
        h[2].1 = "8".into();
        assert_eq!(check(&h, "POST", "/p", b""), Err(ProofError::BadSignature));
    }

    #[test]
    fn stale_timestamp_is_refused() {
        let h = headers_for("POST", "/p", b"");
        let err = parse_proof(&h, "x-replication-source", NOW + SKEW + 1, SKEW).unwrap_err();
        assert_eq!(
            err,
            ProofError::StaleTimestamp {
                skew_ms: SKEW + 1,
                max_ms: SKEW
            }
        );
        assert!(parse_proof(&h, "x-replication-source", NOW + SKEW, SKEW).is_ok());
    }

    #[test]
    fn timestamp_from_the_future_is_refused() {
        let h = headers_for("POST", "/p", b"");
        assert!(matches!(
            parse_proof(&h, "x-replication-source", NOW - SKEW - 1, SKEW),
            Err(ProofError::StaleTimestamp { .. })
        ));
    }

    #[test]
    fn each_missing_header_is_named() {
        for name in [
            "x-replication-source",
            HISTORY,
            SEQ,
            APPLIED_AT,
            TIMESTAMP,
            SIGNATURE,
        ] {
            let h: Vec<_> = headers_for("POST", "/p", b"")
                .into_iter()
                .filter(|(n, _)| n != name)
                .collect();
            assert_eq!(
                check(&h, "POST", "/p", b""),
                Err(ProofError::Missing(name.into()))
            );
        }
    }

    #[test]
    fn duplicated_header_is_refused_as_forged() {
        let mut h = headers_for("POST", "/p", b"");
        h.push((SEQ.into(), "7".into()));
        assert_eq!(
            check(&h, "POST", "/p", b""),
            Err(ProofError::Duplicate(SEQ.into()))
        );
    }

    #[test]
    fn underscore_alias_next_to_the_real_header_is_a_duplicate() {
        let mut h = headers_for("POST", "/p", b"");
        h.push(("x_replication_source".into(), "primary".into()));
        assert_eq!(
            check(&h, "POST", "/p", b""),
            Err(ProofError::Duplicate("x-replication-source".into()))
        );
    }

    #[test]
    fn underscore_alias_alone_is_refused() {
        let mut h = headers_for("POST", "/p", b"");
        h[0].0 = "x_replication_source".into();
        assert_eq!(
            check(&h, "POST", "/p", b""),
            Err(ProofError::NonCanonicalName("x_replication_source".into()))
        );
    }

    #[test]
    fn unknown_replication_header_is_refused() {
        let mut h = headers_for("POST", "/p", b"");
        h.push(("x-replication-extra".into(), "1".into()));
        assert_eq!(
            check(&h, "POST", "/p", b""),
            Err(ProofError::Unexpected("x-replication-extra".into()))
        );
    }

    #[test]
    fn source_other_than_primary_is_refused() {
        let mut h = headers_for("POST", "/p", b"");
        h[0].1 = "replica".into();
        assert_eq!(check(&h, "POST", "/p", b""), Err(ProofError::WrongSource));
    }

    #[test]
    fn malformed_values_are_refused() {
        for (i, bad) in [
            (1, "ABCDEF"),
            (2, "-1"),
            (2, "+7"),
            (3, "x"),
            (4, " 1"),
            (5, "zz"),
        ] {
            let mut h = headers_for("POST", "/p", b"");
            h[i].1 = bad.into();
            assert!(
                matches!(check(&h, "POST", "/p", b""), Err(ProofError::Malformed(_))),
                "{i} {bad}"
            );
        }
    }

    #[test]
    fn uppercase_signature_hex_is_refused() {
        let mut h = headers_for("POST", "/p", b"");
        h[5].1 = h[5].1.to_ascii_uppercase();
        assert_eq!(
            check(&h, "POST", "/p", b""),
            Err(ProofError::Malformed(SIGNATURE.into()))
        );
    }

    #[test]
    fn configured_source_header_is_used() {
        let mut h = headers_for("POST", "/p", b"");
        h[0].0 = "x-replication-origin".into();
        let proof = parse_proof(&h, "x-replication-origin", NOW, SKEW).unwrap();
        assert_eq!(proof.verify(SECRET, "POST", "/p", b""), Ok(()));
    }

    #[test]
    fn hex_round_trips() {
        let bytes: Vec<u8> = (0..=255).collect();
        let hex = hex_lower(&bytes);
        assert_eq!(&hex[..6], "000102");
        assert_eq!(&hex[hex.len() - 4..], "feff");
        assert!(parse_hex::<2>("0aff").is_some());
        assert!(parse_hex::<2>("0AFF").is_none());
    }

    #[test]
    fn replication_header_names_are_matched_loosely() {
        assert!(is_replication_header("X-Replication-Source"));
        assert!(is_replication_header("x_replication_seq"));
        assert!(!is_replication_header("x-replikv-seq"));
        assert!(!is_replication_header("x-replication"));
    }
}
