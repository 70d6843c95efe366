//! Replication bookkeeping (docs/protocol.md): the history id, the headers of
//! a shadow write, the rule that decides whether one is applied, and the
//! record of an applied write kept in the durable log.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::zone::{Effect, Entry, ZoneId};

/// Response header: this node's history id.
pub const HISTORY: &str = "x-replikv-history";
/// Response header: the write's seq (client writes) or the applied seq (shadow writes).
pub const SEQ: &str = "x-replikv-seq";
/// Response header: Unix ms at which the write was applied.
pub const APPLIED_AT: &str = "x-replikv-applied-at";

/// Request header that marks a shadow write.
pub const REPLICATION_SEQ: &str = "x-replication-seq";
/// Request header: the primary's history id.
pub const REPLICATION_HISTORY: &str = "x-replication-history";
/// Request header: the primary's `applied_at`.
pub const REPLICATION_APPLIED_AT: &str = "x-replication-applied-at";

/// What a shadow write says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowMeta {
    /// The primary's history id.
    pub history: String,
    /// The write's seq in that history.
    pub seq: u64,
    /// When the primary applied it (Unix ms); expiry instants derive from it.
    pub applied_at: u64,
}

/// A fresh history id: 16 random bytes as 32 lowercase hex.
pub fn new_history_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// Whether `text` is 32 lowercase hex digits, the shape of ids here.
pub fn is_id(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Reads the shadow-write headers: `None` when `x-replication-seq` is absent
/// (a client write), an error when it is present but the set is incomplete or malformed.
pub fn shadow_meta(headers: &HeaderMap) -> Result<Option<ShadowMeta>> {
    if !headers.contains_key(REPLICATION_SEQ) {
        return Ok(None);
    }
    let one = |name: &'static str| -> Result<&str> {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(value), None) => value.to_str().map_err(|_| Error::ReplicationHeader(name)),
            _ => Err(Error::ReplicationHeader(name)),
        }
    };
    let number = |name: &'static str| -> Result<u64> {
        let text = one(name)?;
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::ReplicationHeader(name));
        }
        text.parse().map_err(|_| Error::ReplicationHeader(name))
    };
    let seq = number(REPLICATION_SEQ)?;
    if seq == 0 {
        return Err(Error::ReplicationHeader(REPLICATION_SEQ));
    }
    let history = one(REPLICATION_HISTORY)?;
    if !is_id(history) {
        return Err(Error::ReplicationHeader(REPLICATION_HISTORY));
    }
    Ok(Some(ShadowMeta {
        history: history.to_owned(),
        seq,
        applied_at: number(REPLICATION_APPLIED_AT)?,
    }))
}

/// What to do with a shadow write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Apply it as the next write (`adopt`: take its history first).
    Apply { adopt: bool },
    /// Already applied: answer 200, change nothing.
    Duplicate,
}

/// The rule of docs/protocol.md: apply only `seq == applied + 1` of the same
/// history; a node that has applied nothing adopts the history of seq 1.
pub fn decide(local_history: &str, applied: u64, shadow: &ShadowMeta) -> Result<Decision> {
    if applied == 0 && shadow.history != local_history {
        return if shadow.seq == 1 {
            Ok(Decision::Apply { adopt: true })
        } else {
            Err(Error::ReplicationGap {
                applied,
                received: shadow.seq,
            })
        };
    }
    if shadow.history != local_history {
        return Err(Error::ReplicationHistoryMismatch {
            local: local_history.to_owned(),
            received: shadow.history.clone(),
        });
    }
    match shadow.seq {
        seq if seq <= applied => Ok(Decision::Duplicate),
        seq if seq == applied + 1 => Ok(Decision::Apply { adopt: false }),
        seq => Err(Error::ReplicationGap {
            applied,
            received: seq,
        }),
    }
}

/// One applied write as kept in the durable replication log, keyed by its seq.
/// Catch-up replays these effects; they carry absolute expiry instants, so a
/// replay needs no clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// When the primary applied the write.
    pub applied_at: u64,
    /// The zone written.
    pub zone: ZoneId,
    /// What the write did.
    pub effects: Vec<Effect>,
}

/// A log record with its seq, as `GET /replikv/log` serves it and
/// `POST /replikv/apply` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The write's seq.
    pub seq: u64,
    /// What it did.
    #[serde(flatten)]
    pub record: LogRecord,
}

/// A run of consecutive log entries of one history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBatch {
    /// The history the seqs count in.
    pub history: String,
    /// Entries in seq order.
    pub entries: Vec<LogEntry>,
}

/// Every zone's live entries (with their expiry instants) at one seq, as
/// `GET /replikv/snapshot` serves it and `PUT /replikv/snapshot` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The history the seq counts in.
    pub history: String,
    /// The last write the snapshot contains.
    pub seq: u64,
    /// When that write was applied.
    pub applied_at: u64,
    /// Zone (`NAME` or `stream:NAME`) → key → entry.
    pub zones: BTreeMap<String, BTreeMap<String, Entry>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn meta(history: &str, seq: u64) -> ShadowMeta {
        ShadowMeta {
            history: history.into(),
            seq,
            applied_at: 1,
        }
    }

    #[test]
    fn history_ids_are_32_lowercase_hex() {
        let id = new_history_id().unwrap();
        assert!(is_id(&id), "{id}");
        assert_ne!(id, new_history_id().unwrap());
    }

    #[test]
    fn only_the_next_seq_of_the_same_history_applies() {
        assert_eq!(
            decide(A, 3, &meta(A, 4)),
            Ok(Decision::Apply { adopt: false })
        );
        assert_eq!(decide(A, 3, &meta(A, 3)), Ok(Decision::Duplicate));
        assert_eq!(decide(A, 3, &meta(A, 1)), Ok(Decision::Duplicate));
        assert_eq!(
            decide(A, 3, &meta(A, 5)),
            Err(Error::ReplicationGap {
                applied: 3,
                received: 5
            })
        );
        assert!(matches!(
            decide(A, 3, &meta(B, 4)),
            Err(Error::ReplicationHistoryMismatch { .. })
        ));
    }

    #[test]
    fn a_node_that_applied_nothing_adopts_the_history_of_seq_one() {
        assert_eq!(
            decide(A, 0, &meta(B, 1)),
            Ok(Decision::Apply { adopt: true })
        );
        assert_eq!(
            decide(A, 0, &meta(A, 1)),
            Ok(Decision::Apply { adopt: false })
        );
        assert!(matches!(
            decide(A, 0, &meta(B, 2)),
            Err(Error::ReplicationGap { .. })
        ));
    }

    #[test]
    fn shadow_headers_must_be_complete_and_well_formed() {
        let mut headers = HeaderMap::new();
        assert_eq!(shadow_meta(&headers), Ok(None));
        headers.insert(REPLICATION_SEQ, HeaderValue::from_static("7"));
        assert_eq!(
            shadow_meta(&headers),
            Err(Error::ReplicationHeader(REPLICATION_HISTORY))
        );
        headers.insert(REPLICATION_HISTORY, HeaderValue::from_static(A));
        headers.insert(REPLICATION_APPLIED_AT, HeaderValue::from_static("1000"));
        assert_eq!(
            shadow_meta(&headers),
            Ok(Some(ShadowMeta {
                history: A.into(),
                seq: 7,
                applied_at: 1000
            }))
        );
        headers.append(REPLICATION_SEQ, HeaderValue::from_static("8"));
        assert_eq!(
            shadow_meta(&headers),
            Err(Error::ReplicationHeader(REPLICATION_SEQ))
        );
        headers.insert(REPLICATION_SEQ, HeaderValue::from_static("+7"));
        assert_eq!(
            shadow_meta(&headers),
            Err(Error::ReplicationHeader(REPLICATION_SEQ))
        );
    }
}
