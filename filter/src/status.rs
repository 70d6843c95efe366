//! The node's replication state as `GET /replikv/replication` shows it (pure).
//!
//! The VM holding the catch-up lease builds a [`View`] after every probe and
//! publishes it in Envoy's shared data; whichever worker answers the request
//! serves the latest one, with the process-wide counters added.

use crate::catchup::{Position, ReplicaView};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One replica as the primary sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The replica's Envoy cluster.
    pub name: String,
    /// `streaming`, `catching_up`, `snapshot`, `unreachable`, `diverged`, `unknown`.
    pub state: String,
    pub history: Option<String>,
    /// Highest seq the replica is known to have applied.
    pub seq: Option<u64>,
    /// Writes the replica is behind the primary (at the last probe).
    pub lag_writes: Option<u64>,
    /// The primary's last applied instant minus the replica's, in ms (0 when equal).
    pub lag_ms: Option<u64>,
    /// Milliseconds since the replica last answered.
    pub last_contact_ms_ago: Option<u64>,
}

/// The node's replication state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// `primary` or `replica`.
    pub role: String,
    pub history: Option<String>,
    /// This node's applied seq.
    pub seq: Option<u64>,
    /// When this node's last write was applied on the primary (Unix ms).
    pub applied_at: Option<u64>,
    /// Replica: writes behind the highest seq the primary has sent it; primary:
    /// the largest lag of its replicas.
    pub lag_writes: Option<u64>,
    /// As `lag_writes`, in ms of the primary's clock.
    pub lag_ms: Option<u64>,
    /// Primary: each replica.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaStatus>,
    /// Replica: the highest seq (and its instant) it has seen from the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_seq_seen: Option<u64>,
    /// When this view was built (Unix ms).
    pub updated_at: u64,
}

fn lag(local: &Position, replica: &Position) -> (u64, u64) {
    if replica.history != local.history {
        return (
            local.seq,
            local.applied_at.saturating_sub(replica.applied_at),
        );
    }
    let writes = local.seq.saturating_sub(replica.seq);
    let ms = if writes == 0 || replica.applied_at == 0 {
        0
    } else {
        local.applied_at.saturating_sub(replica.applied_at)
    };
    (writes, ms)
}

/// The primary's view from its own position and each replica's.
pub fn primary_view(
    local: Option<&Position>,
    replicas: &[(String, ReplicaView)],
    now_ms: u64,
) -> View {
    let statuses: Vec<ReplicaStatus> = replicas
        .iter()
        .map(|(name, r)| {
            let (lag_writes, lag_ms) = match (local, &r.position) {
                (Some(l), Some(p)) => {
                    let (w, m) = lag(l, p);
                    (Some(w), Some(m))
                }
                _ => (None, None),
            };
            ReplicaStatus {
                name: name.clone(),
                state: r.health.as_str().to_owned(),
                history: r.position.as_ref().map(|p| p.history.clone()),
                seq: r.position.as_ref().map(|p| p.seq),
                lag_writes,
                lag_ms,
                last_contact_ms_ago: r.last_contact_ms.map(|t| now_ms.saturating_sub(t)),
            }
        })
        .collect();
    View {
        role: "primary".to_owned(),
        history: local.map(|p| p.history.clone()),
        seq: local.map(|p| p.seq),
        applied_at: local.map(|p| p.applied_at),
        lag_writes: statuses.iter().filter_map(|s| s.lag_writes).max(),
        lag_ms: statuses.iter().filter_map(|s| s.lag_ms).max(),
        replicas: statuses,
        primary_seq_seen: None,
        updated_at: now_ms,
    }
}

/// A replica's view from its own position and the highest (seq, applied_at)
/// it has seen in a verified request from the primary.
pub fn replica_view(local: Option<&Position>, seen: Option<(u64, u64)>, now_ms: u64) -> View {
    let (lag_writes, lag_ms) = match (local, seen) {
        (Some(l), Some((seq, at))) if seq > l.seq => {
            (Some(seq - l.seq), Some(at.saturating_sub(l.applied_at)))
        }
        (Some(_), _) => (Some(0), Some(0)),
        (None, _) => (None, None),
    };
    View {
        role: "replica".to_owned(),
        history: local.map(|p| p.history.clone()),
        seq: local.map(|p| p.seq),
        applied_at: local.map(|p| p.applied_at),
        lag_writes,
        lag_ms,
        replicas: Vec::new(),
        primary_seq_seen: seen.map(|(s, _)| s),
        updated_at: now_ms,
    }
}

/// The JSON body of `GET /replikv/replication`: the view (or a placeholder
/// before the first probe) with `counters` and `gauges` added.
pub fn render(
    view: Option<View>,
    role: &str,
    counters: &BTreeMap<String, u64>,
    now_ms: u64,
) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        #[serde(flatten)]
        view: View,
        view_age_ms: u64,
        counters: &'a BTreeMap<String, u64>,
    }
    let view = view.unwrap_or_else(|| View {
        role: role.to_owned(),
        history: None,
        seq: None,
        applied_at: None,
        lag_writes: None,
        lag_ms: None,
        replicas: Vec::new(),
        primary_seq_seen: None,
        updated_at: 0,
    });
    let view_age_ms = now_ms.saturating_sub(view.updated_at);
    serde_json::to_string_pretty(&Body {
        view,
        view_age_ms,
        counters,
    })
    .unwrap_or_else(|_| "{}".to_owned())
}

/// The (seq, applied_at) stored under the replica's "seen" key.
pub fn decode_seen(value: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (seq, at) = text.split_once(':')?;
    Some((seq.parse().ok()?, at.parse().ok()?))
}

/// The new "seen" value after a verified request of `seq` applied at
/// `applied_at` (0: unknown), or `None` when it is not newer.
pub fn raise_seen(current: Option<(u64, u64)>, seq: u64, applied_at: u64) -> Option<Vec<u8>> {
    match current {
        Some((s, _)) if s >= seq => None,
        Some((_, at)) if applied_at == 0 => Some(format!("{seq}:{at}").into_bytes()),
        _ => Some(format!("{seq}:{applied_at}").into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catchup::Health;

    const H: &str = "00112233445566778899aabbccddeeff";

    fn pos(seq: u64, applied_at: u64) -> Position {
        Position {
            history: H.into(),
            seq,
            applied_at,
        }
    }

    #[test]
    fn primary_view_computes_each_replicas_lag() {
        let replicas = vec![
            (
                "r1".to_owned(),
                ReplicaView {
                    position: Some(pos(7, 1_000)),
                    health: Health::CatchingUp,
                    last_contact_ms: Some(4_000),
                },
            ),
            (
                "r2".to_owned(),
                ReplicaView {
                    position: None,
                    health: Health::Unreachable,
                    last_contact_ms: None,
                },
            ),
        ];
        let v = primary_view(Some(&pos(10, 1_500)), &replicas, 5_000);
        assert_eq!(v.seq, Some(10));
        assert_eq!(v.replicas[0].lag_writes, Some(3));
        assert_eq!(v.replicas[0].lag_ms, Some(500));
        assert_eq!(v.replicas[0].state, "catching_up");
        assert_eq!(v.replicas[0].last_contact_ms_ago, Some(1_000));
        assert_eq!(v.replicas[1].lag_writes, None);
        assert_eq!(v.lag_writes, Some(3));
    }

    #[test]
    fn replica_in_sync_has_no_lag() {
        let v = primary_view(
            Some(&pos(10, 1_500)),
            &[(
                "r1".into(),
                ReplicaView {
                    position: Some(pos(10, 1_500)),
                    health: Health::Streaming,
                    last_contact_ms: Some(0),
                },
            )],
            0,
        );
        assert_eq!((v.lag_writes, v.lag_ms), (Some(0), Some(0)));
    }

    #[test]
    fn replica_view_lags_behind_what_it_has_seen() {
        let v = replica_view(Some(&pos(5, 100)), Some((8, 400)), 1_000);
        assert_eq!((v.lag_writes, v.lag_ms), (Some(3), Some(300)));
        let v = replica_view(Some(&pos(8, 400)), Some((8, 400)), 1_000);
        assert_eq!((v.lag_writes, v.lag_ms), (Some(0), Some(0)));
    }

    #[test]
    fn render_flattens_the_view_and_adds_counters() {
        let mut counters = BTreeMap::new();
        counters.insert("replikv.catchup.snapshots".to_owned(), 1);
        let body = render(
            Some(replica_view(Some(&pos(5, 100)), None, 900)),
            "replica",
            &counters,
            1_000,
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["role"], "replica");
        assert_eq!(v["seq"], 5);
        assert_eq!(v["view_age_ms"], 100);
        assert_eq!(v["counters"]["replikv.catchup.snapshots"], 1);
        let v: serde_json::Value =
            serde_json::from_str(&render(None, "primary", &counters, 5)).unwrap();
        assert_eq!(v["role"], "primary");
        assert!(v["seq"].is_null());
    }

    #[test]
    fn seen_only_moves_forward() {
        assert_eq!(raise_seen(None, 3, 10), Some(b"3:10".to_vec()));
        assert_eq!(raise_seen(Some((3, 10)), 3, 20), None);
        assert_eq!(raise_seen(Some((3, 10)), 5, 0), Some(b"5:10".to_vec()));
        assert_eq!(decode_seen(b"5:10"), Some((5, 10)));
        assert_eq!(decode_seen(b"x"), None);
    }
}
