//! The filter's Envoy stats. Defined once per VM by the root context; Envoy
//! shares each name between all workers' VMs and shows it in `/stats` as
//! `wasmcustom.replikv.…` (in `/stats/prometheus` as `wasmcustom_replikv_…`).

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// Metric ids of one VM. A metric Envoy refused to define has id `None` and is
/// silently skipped: stats must never break traffic.
#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics {
    /// Shadow-write attempts dispatched (first tries and retries).
    pub shadow_sent: Option<u32>,
    /// Of those, batches (`POST /replikv/apply` of the queued writes).
    pub shadow_batches: Option<u32>,
    /// Of those, batches read from the log while the attempt before them was
    /// in flight, and pushed the moment it succeeded.
    pub shadow_read_ahead: Option<u32>,
    /// Shadow writes a replica confirmed.
    pub shadow_ok: Option<u32>,
    /// Shadow-write attempts that failed (no reply, 5xx, 409 gap, ...).
    pub shadow_failed: Option<u32>,
    /// Attempts that were retries of a failed one.
    pub shadow_retried: Option<u32>,
    /// Shadow writes given up on to stay within `max_queue_bytes` (the log has them).
    pub shadow_dropped: Option<u32>,
    /// Shadow writes not buffered because their replica was detached.
    pub shadow_deferred: Option<u32>,
    /// Times a failing replica was detached from live shipping.
    pub shadow_detached: Option<u32>,
    /// Client writes a replica answered with 307.
    pub redirected: Option<u32>,
    /// Requests refused with 403 (invalid proof, replay, client write to an
    /// internal endpoint).
    pub forged_rejected: Option<u32>,
    /// Of those, replays of an accepted signed request.
    pub replay_rejected: Option<u32>,
    /// Client requests that had replication headers removed.
    pub stripped_headers: Option<u32>,
    /// Gauge: shadow writes waiting or in flight, over all workers and replicas.
    pub shadow_queued: Option<u32>,
    /// Catch-ups begun (log or snapshot).
    pub catchups: Option<u32>,
    /// Log batches a replica applied.
    pub catchup_batches: Option<u32>,
    /// Full snapshots a replica installed.
    pub snapshots: Option<u32>,
    /// Catch-up steps that failed (retried after the next probe).
    pub catchup_failed: Option<u32>,
    /// Writes answered after K replica acknowledgements.
    pub acks_ok: Option<u32>,
    /// Writes answered 504 `ReplicationTimeout`.
    pub acks_timeout: Option<u32>,
    /// Gauge: this node's applied seq.
    pub seq: Option<u32>,
    /// Gauge: writes behind (replica), or the largest replica lag (primary).
    pub lag_writes: Option<u32>,
    /// Gauge: as `lag_writes`, in ms.
    pub lag_ms: Option<u32>,
    /// Per replica (primary): (lag_writes, lag_ms) gauges, in `replicas` order.
    pub replica_lag: Vec<(Option<u32>, Option<u32>)>,
}

fn define(kind: MetricType, name: &str) -> Option<u32> {
    match hostcalls::define_metric(kind, name) {
        Ok(id) => Some(id),
        Err(status) => {
            log::warn!("replikv: cannot define metric {name}: {status:?}");
            None
        }
    }
}

/// Names of the counters, for the status endpoint.
pub(crate) const COUNTERS: [&str; 19] = [
    "replikv.shadow.sent",
    "replikv.shadow.batches",
    "replikv.shadow.read_ahead",
    "replikv.shadow.ok",
    "replikv.shadow.failed",
    "replikv.shadow.retried",
    "replikv.shadow.dropped",
    "replikv.shadow.deferred",
    "replikv.shadow.detached",
    "replikv.redirected",
    "replikv.forged_rejected",
    "replikv.replay_rejected",
    "replikv.stripped_headers",
    "replikv.catchup.started",
    "replikv.catchup.batches",
    "replikv.catchup.snapshots",
    "replikv.catchup.failed",
    "replikv.acks.ok",
    "replikv.acks.timeout",
];

impl Metrics {
    /// Defines every metric; call once per VM, from the root context.
    pub(crate) fn define(replicas: &[String]) -> Self {
        let counter = |name| define(MetricType::Counter, name);
        let gauge = |name: &str| define(MetricType::Gauge, name);
        Metrics {
            shadow_sent: counter("replikv.shadow.sent"),
            shadow_batches: counter("replikv.shadow.batches"),
            shadow_read_ahead: counter("replikv.shadow.read_ahead"),
            shadow_ok: counter("replikv.shadow.ok"),
            shadow_failed: counter("replikv.shadow.failed"),
            shadow_retried: counter("replikv.shadow.retried"),
            shadow_dropped: counter("replikv.shadow.dropped"),
            shadow_deferred: counter("replikv.shadow.deferred"),
            shadow_detached: counter("replikv.shadow.detached"),
            redirected: counter("replikv.redirected"),
            forged_rejected: counter("replikv.forged_rejected"),
            replay_rejected: counter("replikv.replay_rejected"),
            stripped_headers: counter("replikv.stripped_headers"),
            shadow_queued: gauge("replikv.shadow.queued"),
            catchups: counter("replikv.catchup.started"),
            catchup_batches: counter("replikv.catchup.batches"),
            snapshots: counter("replikv.catchup.snapshots"),
            catchup_failed: counter("replikv.catchup.failed"),
            acks_ok: counter("replikv.acks.ok"),
            acks_timeout: counter("replikv.acks.timeout"),
            seq: gauge("replikv.seq"),
            lag_writes: gauge("replikv.lag_writes"),
            lag_ms: gauge("replikv.lag_ms"),
            replica_lag: replicas
                .iter()
                .map(|r| {
                    (
                        gauge(&format!("replikv.replica.{r}.lag_writes")),
                        gauge(&format!("replikv.replica.{r}.lag_ms")),
                    )
                })
                .collect(),
        }
    }
}

/// Adds `by` (negative for gauges going down) to a metric, ignoring errors.
pub(crate) fn add(metric: Option<u32>, by: i64) {
    if let Some(id) = metric {
        if by != 0 {
            let _ = hostcalls::increment_metric(id, by);
        }
    }
}

/// Sets a gauge, ignoring errors.
pub(crate) fn set(metric: Option<u32>, value: u64) {
    if let Some(id) = metric {
        let _ = hostcalls::record_metric(id, value);
    }
}

/// Every counter's process-wide value, by name (for the status endpoint).
pub(crate) fn counter_values() -> std::collections::BTreeMap<String, u64> {
    COUNTERS
        .iter()
        .filter_map(|name| {
            let id = hostcalls::define_metric(MetricType::Counter, name).ok()?;
            Some(((*name).to_owned(), hostcalls::get_metric(id).ok()?))
        })
        .collect()
}
