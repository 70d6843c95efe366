//! The filter's Envoy stats. Defined once per VM by the root context; Envoy
//! shares each name between all workers' VMs and shows it in `/stats` without
//! its `wasmcustom.` prefix (e.g. `replikv.shadow.sent: 3`).

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// Metric ids of one VM. A metric Envoy refused to define has id `None` and is
/// silently skipped: stats must never break traffic.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Metrics {
    /// Shadow-write attempts dispatched (first tries and retries).
    pub shadow_sent: Option<u32>,
    /// Shadow writes a replica confirmed.
    pub shadow_ok: Option<u32>,
    /// Shadow-write attempts that failed (no reply, 5xx, 409 gap, ...).
    pub shadow_failed: Option<u32>,
    /// Attempts that were retries of a failed one.
    pub shadow_retried: Option<u32>,
    /// Shadow writes given up on to stay within `max_queue_bytes`.
    pub shadow_dropped: Option<u32>,
    /// Client writes a replica answered with 307.
    pub redirected: Option<u32>,
    /// Requests refused with 403 for an invalid replication proof.
    pub forged_rejected: Option<u32>,
    /// Client requests that had replication headers removed.
    pub stripped_headers: Option<u32>,
    /// Gauge: shadow writes waiting or in flight, over all workers and replicas.
    pub shadow_queued: Option<u32>,
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

impl Metrics {
    /// Defines every metric; call once per VM, from the root context.
    pub(crate) fn define() -> Self {
        let counter = |name| define(MetricType::Counter, name);
        Metrics {
            shadow_sent: counter("replikv.shadow.sent"),
            shadow_ok: counter("replikv.shadow.ok"),
            shadow_failed: counter("replikv.shadow.failed"),
            shadow_retried: counter("replikv.shadow.retried"),
            shadow_dropped: counter("replikv.shadow.dropped"),
            redirected: counter("replikv.redirected"),
            forged_rejected: counter("replikv.forged_rejected"),
            stripped_headers: counter("replikv.stripped_headers"),
            shadow_queued: define(MetricType::Gauge, "replikv.shadow.queued"),
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
