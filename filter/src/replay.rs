//! Replay detection on a replica. A verified shadow write, log batch or
//! snapshot is identified by (kind, seq); the timestamp a proof was accepted
//! with is kept in Envoy's process-wide shared data, in one of [`SLOTS`] slots
//! per kind (seq modulo `SLOTS`), so every worker of the replica's Envoy sees it.
//!
//! - The same seq again with a timestamp not newer than the accepted one is the
//!   same signed request replayed: refused (403 `ReplicationReplay`).
//! - A newer timestamp is a retry the primary re-signed: accepted (the backend
//!   answers it as a harmless duplicate).
//!
//! Limits: a slot remembers only the newest seq that used it, so a replay of a
//! seq at least `SLOTS` writes older than the newest is not recognised here; and
//! shared data dies with the Envoy process. Both reach the backend as a
//! duplicate (`seq <= applied`): 200, nothing changes.

/// Slots per kind of request.
pub const SLOTS: u64 = 4096;

/// Which kind of replication request, so a batch ending at seq N and the
/// shadow write N do not collide. The live shipper's batches
/// (`/replikv/apply?live`) have their own kind, so a catch-up batch and a live
/// one that end at the same seq, signed in the same ms, are not taken for a
/// replay of each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Write,
    Batch,
    LiveBatch,
    Snapshot,
}

/// The path (and query) the live shipper pushes its batches to.
pub const LIVE_BATCH_PATH: &str = "/replikv/apply?live";

impl Kind {
    /// The kind of a replication request by its path.
    pub fn of_path(path: &str) -> Kind {
        let path_only = path.split(['?', '#']).next().unwrap_or_default();
        match path_only {
            "/replikv/apply" if path == LIVE_BATCH_PATH => Kind::LiveBatch,
            "/replikv/apply" => Kind::Batch,
            "/replikv/snapshot" => Kind::Snapshot,
            _ => Kind::Write,
        }
    }

    fn tag(self) -> char {
        match self {
            Kind::Write => 'w',
            Kind::Batch => 'b',
            Kind::LiveBatch => 'l',
            Kind::Snapshot => 's',
        }
    }
}

/// The shared-data key of the slot for (`kind`, `seq`).
pub fn slot_key(kind: Kind, seq: u64) -> String {
    format!("replikv.replay.{}.{}", kind.tag(), seq % SLOTS)
}

/// What to do with a verified request, given its slot's current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accept it and store `value` in the slot (compare-and-swap).
    Accept { value: Vec<u8> },
    /// Accept it; the slot already belongs to a newer seq and stays as it is.
    AcceptUntracked,
    /// The same signed request again: refuse.
    Replay { accepted_ms: u64 },
}

fn decode(value: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (seq, ts) = text.split_once(':')?;
    Some((seq.parse().ok()?, ts.parse().ok()?))
}

fn encode(seq: u64, timestamp: u64) -> Vec<u8> {
    format!("{seq}:{timestamp}").into_bytes()
}

/// Judges a request of `seq` signed at `timestamp` against its slot.
pub fn judge(slot: Option<&[u8]>, seq: u64, timestamp: u64) -> Verdict {
    match slot.and_then(decode) {
        Some((stored_seq, accepted_ms)) if stored_seq == seq && timestamp <= accepted_ms => {
            Verdict::Replay { accepted_ms }
        }
        Some((stored_seq, _)) if stored_seq > seq => Verdict::AcceptUntracked,
        _ => Verdict::Accept {
            value: encode(seq, timestamp),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sight_is_accepted_and_stored() {
        assert_eq!(
            judge(None, 7, 1_000),
            Verdict::Accept {
                value: b"7:1000".to_vec()
            }
        );
    }

    #[test]
    fn same_or_older_timestamp_for_the_same_seq_is_a_replay() {
        assert_eq!(
            judge(Some(b"7:1000"), 7, 1_000),
            Verdict::Replay { accepted_ms: 1_000 }
        );
        assert_eq!(
            judge(Some(b"7:1000"), 7, 999),
            Verdict::Replay { accepted_ms: 1_000 }
        );
    }

    #[test]
    fn resigned_retry_is_accepted_and_moves_the_mark() {
        assert_eq!(
            judge(Some(b"7:1000"), 7, 1_010),
            Verdict::Accept {
                value: b"7:1010".to_vec()
            }
        );
    }

    #[test]
    fn slot_reuse_by_newer_and_older_seqs() {
        let newer = 7 + SLOTS;
        assert!(matches!(
            judge(Some(b"7:1000"), newer, 5),
            Verdict::Accept { .. }
        ));
        assert_eq!(
            judge(format!("{newer}:5").as_bytes().into(), 7, 1_000),
            Verdict::AcceptUntracked
        );
    }

    #[test]
    fn garbage_in_a_slot_is_overwritten() {
        assert!(matches!(judge(Some(b"junk"), 1, 1), Verdict::Accept { .. }));
    }

    #[test]
    fn kinds_have_their_own_slots() {
        assert_eq!(Kind::of_path("/replikv/apply"), Kind::Batch);
        assert_eq!(Kind::of_path(LIVE_BATCH_PATH), Kind::LiveBatch);
        assert_eq!(Kind::of_path("/replikv/apply?live&x"), Kind::Batch);
        assert_ne!(slot_key(Kind::Batch, 3), slot_key(Kind::LiveBatch, 3));
        assert_eq!(Kind::of_path("/replikv/snapshot?x"), Kind::Snapshot);
        assert_eq!(Kind::of_path("/api/9/http/keyvals/a"), Kind::Write);
        assert_ne!(slot_key(Kind::Write, 3), slot_key(Kind::Batch, 3));
        assert_eq!(slot_key(Kind::Write, 3), slot_key(Kind::Write, 3 + SLOTS));
    }
}
