//! Catch-up: the primary's log is the source of truth, and this state machine
//! makes every replica reach it. Pure: the root context (of the one VM that
//! holds the catch-up lease) feeds it the clock and the replies, and dispatches
//! the [`Call`]s it hands out.
//!
//! Every `probe_interval_ms` it reads this node's own position
//! (`GET /replikv/status` on the backend cluster) and, on a primary, each
//! replica's (`GET /replikv/status` through the replica's Envoy). A replica that
//! is still behind the position the primary had at the previous probe (so not
//! merely racing the live shadow writes), that another history holds while it
//! is empty, or that a shadow write found with a gap, is caught up:
//!
//! 1. `GET /replikv/log?after=<replica seq>&limit=N` on the backend, then
//!    `POST /replikv/apply` of that batch to the replica (signed by the root),
//!    repeated until a batch comes back empty;
//! 2. when the log no longer reaches back (410) or the replica holds another
//!    history: `GET /replikv/snapshot`, then `PUT /replikv/snapshot` to the
//!    replica, then step 1 from the snapshot's seq.
//!
//! A replica of another history holding more writes than the primary is left
//! alone (`diverged`): a primary that came back empty must not wipe it.

use serde::Deserialize;
use std::rc::Rc;

/// Extra time past the callout timeout after which a call whose reply never
/// came is treated as failed.
const LOST_REPLY_GRACE_MS: u64 = 1_000;

/// A node's replication position, as `GET /replikv/status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Position {
    pub history: String,
    pub seq: u64,
    #[serde(default)]
    pub applied_at: u64,
}

/// What the root must send. Every call is answered with [`Catchup::on_reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `GET /replikv/status` on this node's backend.
    LocalStatus,
    /// `GET /replikv/status` on the replica.
    ReplicaStatus { replica: usize },
    /// `GET /replikv/log?after={after}&limit={limit}` on this node's backend.
    FetchLog {
        replica: usize,
        after: u64,
        limit: u32,
    },
    /// `POST /replikv/apply` to the replica, body as fetched, signed with
    /// `history` and `seq` (the batch's last seq) and `applied_at` 0.
    PushLog {
        replica: usize,
        history: String,
        seq: u64,
        body: Rc<[u8]>,
    },
    /// `GET /replikv/snapshot` on this node's backend.
    FetchSnapshot { replica: usize },
    /// `PUT /replikv/snapshot` to the replica, signed like a batch.
    PushSnapshot {
        replica: usize,
        history: String,
        seq: u64,
        body: Rc<[u8]>,
    },
}

impl Call {
    /// The replica this call is about, if any.
    pub fn replica(&self) -> Option<usize> {
        match self {
            Call::LocalStatus => None,
            Call::ReplicaStatus { replica }
            | Call::FetchLog { replica, .. }
            | Call::PushLog { replica, .. }
            | Call::FetchSnapshot { replica }
            | Call::PushSnapshot { replica, .. } => Some(*replica),
        }
    }
}

/// A reply to a [`Call`], reduced to what catch-up needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// `None`: no reply (not dispatched, reset, timeout).
    pub status: Option<u32>,
    /// `x-replikv-history` of the answer.
    pub history: Option<String>,
    /// `x-replikv-seq` of the answer.
    pub seq: Option<u64>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn none() -> Self {
        Reply {
            status: None,
            history: None,
            seq: None,
            body: Vec::new(),
        }
    }

    fn error_code(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Body {
            error: Inner,
        }
        #[derive(Deserialize)]
        struct Inner {
            code: String,
        }
        serde_json::from_slice::<Body>(&self.body)
            .ok()
            .map(|b| b.error.code)
    }
}

/// How a replica stands, as the status endpoint shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not probed yet.
    Unknown,
    /// Reachable and within one probe of the primary.
    Streaming,
    /// Being sent log batches.
    CatchingUp,
    /// Being sent a full snapshot.
    Snapshot,
    /// Its status could not be read.
    Unreachable,
    /// Holds more writes of another history: left alone for the operator.
    Diverged,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Streaming => "streaming",
            Health::CatchingUp => "catching_up",
            Health::Snapshot => "snapshot",
            Health::Unreachable => "unreachable",
            Health::Diverged => "diverged",
        }
    }
}

/// What happened, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A log batch was applied: the replica went from `from` to `to`.
    BatchApplied { replica: usize, from: u64, to: u64 },
    /// A snapshot at `seq` replaced the replica's data.
    SnapshotInstalled { replica: usize, seq: u64 },
    /// A catch-up began for a replica at `from` (`snapshot`: with a snapshot).
    Started {
        replica: usize,
        from: u64,
        snapshot: bool,
    },
    /// The replica holds more writes of another history than the primary.
    Diverged { replica: usize },
    /// A catch-up step failed; it is tried again after the next probe.
    Failed {
        replica: usize,
        step: &'static str,
        status: Option<u32>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Probing,
    FetchingLog,
    PushingLog,
    FetchingSnapshot,
    PushingSnapshot,
}

#[derive(Debug)]
struct Replica {
    phase: Phase,
    call: Option<(u64, u64)>,
    next_probe_at: u64,
    /// Last position read or learnt.
    position: Option<Position>,
    /// When it last answered anything.
    last_contact_ms: Option<u64>,
    health: Health,
    /// The primary's seq at the previous probe of this replica.
    target: u64,
    /// A shadow write found a hole: catch up at the next probe.
    hinted: bool,
    limit: u32,
    /// Set when the current catch-up has already installed a snapshot, so a
    /// second 410 in the same round waits for the next probe.
    snapshot_done: bool,
}

/// The catch-up machine of one VM.
#[derive(Debug)]
pub struct Catchup {
    replicas: Vec<Replica>,
    local: Option<Position>,
    local_call: Option<(u64, u64)>,
    next_local_at: u64,
    probe_ms: u64,
    timeout_ms: u64,
    batch: u32,
    next_id: u64,
}

/// One replica's state for the status endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaView {
    pub position: Option<Position>,
    pub health: Health,
    pub last_contact_ms: Option<u64>,
}

impl Catchup {
    pub fn new(replicas: usize, probe_ms: u64, timeout_ms: u64, batch: u32) -> Self {
        Catchup {
            replicas: (0..replicas)
                .map(|_| Replica {
                    phase: Phase::Idle,
                    call: None,
                    next_probe_at: 0,
                    position: None,
                    last_contact_ms: None,
                    health: Health::Unknown,
                    target: 0,
                    hinted: false,
                    limit: batch,
                    snapshot_done: false,
                })
                .collect(),
            local: None,
            local_call: None,
            next_local_at: 0,
            probe_ms,
            timeout_ms,
            batch,
            next_id: 1,
        }
    }

    /// This node's own position, from the last local probe.
    pub fn local(&self) -> Option<&Position> {
        self.local.as_ref()
    }

    pub fn replica(&self, i: usize) -> Option<ReplicaView> {
        self.replicas.get(i).map(|r| ReplicaView {
            position: r.position.clone(),
            health: r.health,
            last_contact_ms: r.last_contact_ms,
        })
    }

    /// A shadow write to `replica` was answered with a gap or another history
    /// (`replica_seq` its applied seq): probe it now and catch it up.
    pub fn hint(&mut self, replica: usize, now_ms: u64) {
        if let Some(r) = self.replicas.get_mut(replica) {
            r.hinted = true;
            r.next_probe_at = r.next_probe_at.min(now_ms);
        }
    }

    /// The replica (by index) is known to hold `seq` of `history` (e.g. a live
    /// shadow write's reply).
    pub fn note_position(&mut self, replica: usize, history: &str, seq: u64) {
        if let Some(r) = self.replicas.get_mut(replica) {
            match &mut r.position {
                Some(p) if p.history == history => p.seq = p.seq.max(seq),
                _ => {
                    r.position = Some(Position {
                        history: history.to_owned(),
                        seq,
                        applied_at: 0,
                    })
                }
            }
        }
    }

    /// Whether calls are in flight (the root then ticks fast).
    pub fn is_busy(&self) -> bool {
        self.local_call.is_some() || self.replicas.iter().any(|r| r.call.is_some())
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn deadline(&self, now_ms: u64) -> u64 {
        now_ms
            .saturating_add(self.timeout_ms)
            .saturating_add(LOST_REPLY_GRACE_MS)
    }

    /// The calls due now, each with its id; plus the events of calls whose
    /// reply is overdue.
    pub fn poll(&mut self, now_ms: u64) -> (Vec<(u64, Call)>, Vec<Event>) {
        let mut events = Vec::new();
        // Overdue calls count as no reply.
        if self.local_call.is_some_and(|(_, d)| now_ms >= d) {
            if let Some((id, _)) = self.local_call {
                self.on_reply(id, Reply::none(), now_ms);
            }
        }
        for i in 0..self.replicas.len() {
            if let Some((id, d)) = self.replicas[i].call {
                if now_ms >= d {
                    events.extend(self.on_reply(id, Reply::none(), now_ms).1);
                }
            }
        }
        let mut calls = Vec::new();
        if self.local_call.is_none() && now_ms >= self.next_local_at {
            let id = self.id();
            self.local_call = Some((id, self.deadline(now_ms)));
            self.next_local_at = now_ms.saturating_add(self.probe_ms);
            calls.push((id, Call::LocalStatus));
        }
        for i in 0..self.replicas.len() {
            let r = &self.replicas[i];
            if r.call.is_none() && r.phase == Phase::Idle && now_ms >= r.next_probe_at {
                let id = self.id();
                let deadline = self.deadline(now_ms);
                let r = &mut self.replicas[i];
                r.phase = Phase::Probing;
                r.call = Some((id, deadline));
                r.next_probe_at = now_ms.saturating_add(self.probe_ms);
                calls.push((id, Call::ReplicaStatus { replica: i }));
            }
        }
        (calls, events)
    }

    /// Applies the reply to call `id`; returns the next calls (already in
    /// flight) and what happened.
    pub fn on_reply(
        &mut self,
        id: u64,
        reply: Reply,
        now_ms: u64,
    ) -> (Vec<(u64, Call)>, Vec<Event>) {
        if self.local_call.is_some_and(|(c, _)| c == id) {
            self.local_call = None;
            if reply.status == Some(200) {
                if let Ok(p) = serde_json::from_slice::<Position>(&reply.body) {
                    self.local = Some(p);
                }
            }
            return (Vec::new(), Vec::new());
        }
        let Some(i) = self
            .replicas
            .iter()
            .position(|r| r.call.is_some_and(|(c, _)| c == id))
        else {
            return (Vec::new(), Vec::new());
        };
        self.replicas[i].call = None;
        let phase = self.replicas[i].phase;
        let mut events = Vec::new();
        let next = match phase {
            Phase::Idle => None,
            Phase::Probing => self.after_probe(i, &reply, now_ms, &mut events),
            Phase::FetchingLog => self.after_fetch_log(i, reply, &mut events),
            Phase::PushingLog => self.after_push(i, &reply, now_ms, false, &mut events),
            Phase::FetchingSnapshot => self.after_fetch_snapshot(i, reply, &mut events),
            Phase::PushingSnapshot => self.after_push(i, &reply, now_ms, true, &mut events),
        };
        let r = &mut self.replicas[i];
        match next {
            Some(call) => {
                r.phase = match call {
                    Call::FetchLog { .. } => Phase::FetchingLog,
                    Call::PushLog { .. } => Phase::PushingLog,
                    Call::FetchSnapshot { .. } => Phase::FetchingSnapshot,
                    Call::PushSnapshot { .. } => Phase::PushingSnapshot,
                    Call::ReplicaStatus { .. } | Call::LocalStatus => Phase::Probing,
                };
                let id = self.next_id;
                self.next_id += 1;
                let deadline = now_ms
                    .saturating_add(self.timeout_ms)
                    .saturating_add(LOST_REPLY_GRACE_MS);
                let r = &mut self.replicas[i];
                r.call = Some((id, deadline));
                (vec![(id, call)], events)
            }
            None => {
                r.phase = Phase::Idle;
                r.snapshot_done = false;
                (Vec::new(), events)
            }
        }
    }

    fn fail(&mut self, i: usize, step: &'static str, status: Option<u32>, events: &mut Vec<Event>) {
        let r = &mut self.replicas[i];
        if status.is_none() && step == "probe" {
            r.health = Health::Unreachable;
        }
        // After any failure (the replica was away, or a step broke) the next
        // probe catches up as soon as the replica is behind at all.
        r.hinted = true;
        events.push(Event::Failed {
            replica: i,
            step,
            status,
        });
    }

    fn after_probe(
        &mut self,
        i: usize,
        reply: &Reply,
        now_ms: u64,
        events: &mut Vec<Event>,
    ) -> Option<Call> {
        let position = match reply.status {
            Some(200) => serde_json::from_slice::<Position>(&reply.body).ok(),
            _ => None,
        };
        let Some(position) = position else {
            self.fail(i, "probe", reply.status, events);
            self.replicas[i].health = Health::Unreachable;
            return None;
        };
        let local = self.local.clone();
        let r = &mut self.replicas[i];
        r.last_contact_ms = Some(now_ms);
        r.position = Some(position.clone());
        let Some(local) = local else {
            r.health = Health::Streaming;
            return None;
        };
        let target = std::mem::replace(&mut r.target, local.seq);
        let hinted = std::mem::take(&mut r.hinted);
        if position.seq == 0 && local.seq == 0 {
            // Both empty: the first shadow write gives the replica the history.
            r.health = Health::Streaming;
            return None;
        }
        if position.history != local.history {
            if position.seq == 0 {
                // Empty: the log from seq 1 if it still has it, else a snapshot.
                r.health = Health::CatchingUp;
                events.push(Event::Started {
                    replica: i,
                    from: 0,
                    snapshot: false,
                });
                return Some(self.fetch_log(i, 0));
            }
            if position.seq > local.seq {
                r.health = Health::Diverged;
                events.push(Event::Diverged { replica: i });
                return None;
            }
            r.health = Health::Snapshot;
            events.push(Event::Started {
                replica: i,
                from: position.seq,
                snapshot: true,
            });
            return Some(Call::FetchSnapshot { replica: i });
        }
        let behind = position.seq < local.seq;
        if behind && (position.seq < target || hinted) {
            r.health = Health::CatchingUp;
            events.push(Event::Started {
                replica: i,
                from: position.seq,
                snapshot: false,
            });
            return Some(self.fetch_log(i, position.seq));
        }
        r.health = Health::Streaming;
        None
    }

    fn fetch_log(&self, i: usize, after: u64) -> Call {
        Call::FetchLog {
            replica: i,
            after,
            limit: self.replicas.get(i).map_or(self.batch, |r| r.limit),
        }
    }

    fn after_fetch_log(&mut self, i: usize, reply: Reply, events: &mut Vec<Event>) -> Option<Call> {
        #[derive(Deserialize)]
        struct Batch {
            history: String,
            entries: Vec<Seq>,
        }
        #[derive(Deserialize)]
        struct Seq {
            seq: u64,
        }
        match reply.status {
            Some(200) => {
                let Ok(batch) = serde_json::from_slice::<Batch>(&reply.body) else {
                    self.fail(i, "log", Some(200), events);
                    return None;
                };
                let Some(last) = batch.entries.last().map(|e| e.seq) else {
                    // Nothing after the replica's seq: caught up.
                    self.replicas[i].health = Health::Streaming;
                    return None;
                };
                Some(Call::PushLog {
                    replica: i,
                    history: batch.history,
                    seq: last,
                    body: Rc::from(reply.body),
                })
            }
            Some(410) if !self.replicas[i].snapshot_done => {
                self.replicas[i].health = Health::Snapshot;
                events.push(Event::Started {
                    replica: i,
                    from: self.replicas[i].position.as_ref().map_or(0, |p| p.seq),
                    snapshot: true,
                });
                Some(Call::FetchSnapshot { replica: i })
            }
            status => {
                self.fail(i, "log", status, events);
                None
            }
        }
    }

    fn after_fetch_snapshot(
        &mut self,
        i: usize,
        reply: Reply,
        events: &mut Vec<Event>,
    ) -> Option<Call> {
        if reply.status == Some(200) {
            if let Ok(head) = serde_json::from_slice::<Position>(&reply.body) {
                return Some(Call::PushSnapshot {
                    replica: i,
                    history: head.history,
                    seq: head.seq,
                    body: Rc::from(reply.body),
                });
            }
        }
        self.fail(i, "snapshot", reply.status, events);
        None
    }

    fn after_push(
        &mut self,
        i: usize,
        reply: &Reply,
        now_ms: u64,
        snapshot: bool,
        events: &mut Vec<Event>,
    ) -> Option<Call> {
        let step = if snapshot {
            "push snapshot"
        } else {
            "push log"
        };
        let Some(status) = reply.status else {
            self.fail(i, step, None, events);
            return None;
        };
        let from = self.replicas[i].position.as_ref().map_or(0, |p| p.seq);
        self.replicas[i].last_contact_ms = Some(now_ms);
        if let (Some(history), Some(seq)) = (&reply.history, reply.seq) {
            self.replicas[i].position = Some(Position {
                history: history.clone(),
                seq,
                applied_at: 0,
            });
        }
        let seq = reply.seq.unwrap_or(from);
        if (200..300).contains(&status) {
            if snapshot {
                self.replicas[i].snapshot_done = true;
                events.push(Event::SnapshotInstalled { replica: i, seq });
            } else if seq > from {
                events.push(Event::BatchApplied {
                    replica: i,
                    from,
                    to: seq,
                });
            }
            self.replicas[i].health = Health::CatchingUp;
            return Some(self.fetch_log(i, seq));
        }
        if status == 413 && !snapshot {
            let r = &mut self.replicas[i];
            r.limit = (r.limit / 2).max(1);
            return Some(self.fetch_log(i, from));
        }
        if status == 409 {
            match reply.error_code().as_deref() {
                Some("ReplicationGap") => return Some(self.fetch_log(i, seq)),
                Some("ReplicationHistoryMismatch") if !snapshot => {
                    // The next probe applies the divergence guard first.
                    self.replicas[i].hinted = true;
                    self.replicas[i].next_probe_at = now_ms;
                    return None;
                }
                _ => {}
            }
        }
        self.fail(i, step, Some(status), events);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "00112233445566778899aabbccddeeff";
    const OTHER: &str = "ffeeddccbbaa99887766554433221100";

    fn status(history: &str, seq: u64) -> Reply {
        Reply {
            status: Some(200),
            history: None,
            seq: None,
            body: format!(r#"{{"history":"{history}","seq":{seq},"applied_at":5,"zones":{{}}}}"#)
                .into_bytes(),
        }
    }

    fn batch(first: u64, last: u64) -> Reply {
        let entries: Vec<String> = (first..=last)
            .map(|s| format!(r#"{{"seq":{s},"applied_at":1,"zone":{{}},"effects":[]}}"#))
            .collect();
        Reply {
            status: Some(200),
            history: None,
            seq: None,
            body: format!(r#"{{"history":"{H}","entries":[{}]}}"#, entries.join(",")).into_bytes(),
        }
    }

    fn answer(code: u32, history: &str, seq: u64, body: &str) -> Reply {
        Reply {
            status: Some(code),
            history: Some(history.into()),
            seq: Some(seq),
            body: body.as_bytes().to_vec(),
        }
    }

    /// Probes the local node and replica 0 at `now`, answering with the given seqs.
    fn probe(c: &mut Catchup, now: u64, local: u64, replica: Reply) -> Vec<(u64, Call)> {
        let (calls, _) = c.poll(now);
        let mut next = Vec::new();
        for (id, call) in calls {
            match call {
                Call::LocalStatus => {
                    c.on_reply(id, status(H, local), now);
                }
                Call::ReplicaStatus { .. } => next.push((id, call)),
                other => panic!("unexpected {other:?}"),
            }
        }
        let mut out = Vec::new();
        for (id, _) in next {
            out.extend(c.on_reply(id, replica.clone(), now).0);
        }
        out
    }

    fn only(calls: Vec<(u64, Call)>) -> (u64, Call) {
        assert_eq!(calls.len(), 1, "{calls:?}");
        calls.into_iter().next().unwrap()
    }

    #[test]
    fn replica_racing_the_live_stream_is_left_alone() {
        let mut c = Catchup::new(1, 1_000, 5_000, 100);
        assert!(probe(&mut c, 0, 10, status(H, 9)).is_empty());
        // Next probe: the replica passed the previous target (10).
        assert!(probe(&mut c, 1_000, 20, status(H, 19)).is_empty());
        assert_eq!(c.replica(0).unwrap().health, Health::Streaming);
    }

    #[test]
    fn replica_stuck_behind_is_caught_up_from_the_log_until_empty() {
        let mut c = Catchup::new(1, 1_000, 5_000, 100);
        probe(&mut c, 0, 10, status(H, 4));
        let (id, call) = only(probe(&mut c, 1_000, 12, status(H, 4)));
        assert_eq!(
            call,
            Call::FetchLog {
                replica: 0,
                after: 4,
                limit: 100
            }
        );
        let (id, call) = only(c.on_reply(id, batch(5, 12), 1_001).0);
        let Call::PushLog { seq, history, .. } = call else {
            panic!("{call:?}")
        };
        assert_eq!((seq, history.as_str()), (12, H));
        let (calls, events) = c.on_reply(id, answer(204, H, 12, ""), 1_002);
        assert_eq!(
            events,
            [Event::BatchApplied {
                replica: 0,
                from: 4,
                to: 12
            }]
        );
        let (id, call) = only(calls);
        assert!(matches!(call, Call::FetchLog { after: 12, .. }));
        let empty = Reply {
            body: format!(r#"{{"history":"{H}","entries":[]}}"#).into_bytes(),
            ..batch(1, 1)
        };
        assert!(c.on_reply(id, empty, 1_003).0.is_empty());
        assert_eq!(c.replica(0).unwrap().health, Health::Streaming);
        assert!(!c.is_busy());
    }

    #[test]
    fn a_hint_catches_up_at_once() {
        let mut c = Catchup::new(1, 1_000, 5_000, 100);
        probe(&mut c, 0, 10, status(H, 10));
        c.hint(0, 500);
        let (calls, _) = c.poll(500);
        let (id, call) = only(calls);
        assert_eq!(call, Call::ReplicaStatus { replica: 0 });
        let (id, call) = only(c.on_reply(id, status(H, 7), 500).0);
        assert!(matches!(call, Call::FetchLog { after: 7, .. }), "{id}");
    }

    #[test]
    fn truncated_log_means_one_snapshot_then_the_log() {
        let mut c = Catchup::new(1, 1_000, 5_000, 100);
        probe(&mut c, 0, 100, status(H, 3));
        let (id, _) = only(probe(&mut c, 1_000, 100, status(H, 3)));
        let gone = answer(
            410,
            H,
            100,
            r#"{"error":{"code":"ReplicationLogTruncated"}}"#,
        );
        let (calls, events) = c.on_reply(id, gone, 1_001);
        assert!(matches!(
            events[..],
            [Event::Started { snapshot: true, .. }]
        ));
        let (id, call) = only(calls);
        assert_eq!(call, Call::FetchSnapshot { replica: 0 });
        let (id, call) = only(c.on_reply(id, status(H, 100), 1_002).0);
        assert!(matches!(call, Call::PushSnapshot { seq: 100, .. }));
        let (calls, events) = c.on_reply(id, answer(204, H, 100, ""), 1_003);
        assert_eq!(
            events,
            [Event::SnapshotInstalled {
                replica: 0,
                seq: 100
            }]
        );
        let (id, call) = only(calls);
        assert!(matches!(call, Call::FetchLog { after: 100, .. }));
        // A second 410 in the same round does not take a second snapshot.
        let gone = answer(410, H, 100, "");
        assert!(c.on_reply(id, gone, 1_004).0.is_empty());
    }

    #[test]
    fn empty_replica_starts_from_the_log_and_other_history_gets_a_snapshot() {
        let mut c = Catchup::new(1, 1_000, 5_000, 100);
        let (_, call) = only(probe(&mut c, 0, 10, status(OTHER, 0)));
        assert!(matches!(call, Call::FetchLog { after: 0, .. }));

        let mut c = Catchup::new(1, 1_000, 5_000, 100);
        let (_, call) = only(probe(&mut c, 0, 10, status(OTHER, 4)));
        assert_eq!(call, Call::FetchSnapshot { replica: 0 });
    }

    #[test]
    fn empty_replica_of_an_empty_primary_needs_nothing() {
        let mut c = Catchup::new(1, 1_000, 5_000, 100);
        assert!(probe(&mut c, 0, 0, status(OTHER, 0)).is_empty());
        assert_eq!(c.replica(0).unwrap().health, Health::Streaming);
    }

    #[test]
    fn replica_with_more_writes_of_another_history_is_not_wiped() {
        let mut c = Catchup::new(1, 1_000, 5_000, 100);
        assert!(probe(&mut c, 0, 3, status(OTHER, 50)).is_empty());
        assert_eq!(c.replica(0).unwrap().health, Health::Diverged);
    }

    #[test]
    fn gap_on_push_refetches_from_the_replicas_seq() {
        let mut c = Catchup::new(1, 1_000, 5_000, 100);
        probe(&mut c, 0, 10, status(H, 4));
        let (id, _) = only(probe(&mut c, 1_000, 10, status(H, 4)));
        let (id, _) = only(c.on_reply(id, batch(5, 10), 1_001).0);
        let gap = answer(409, H, 2, r#"{"error":{"code":"ReplicationGap"}}"#);
        let (_, call) = only(c.on_reply(id, gap, 1_002).0);
        assert!(matches!(call, Call::FetchLog { after: 2, .. }));
    }

    #[test]
    fn too_large_batch_is_halved() {
        let mut c = Catchup::new(1, 1_000, 5_000, 100);
        probe(&mut c, 0, 10, status(H, 4));
        let (id, _) = only(probe(&mut c, 1_000, 10, status(H, 4)));
        let (id, _) = only(c.on_reply(id, batch(5, 10), 1_001).0);
        let (_, call) = only(c.on_reply(id, answer(413, H, 4, ""), 1_002).0);
        assert_eq!(
            call,
            Call::FetchLog {
                replica: 0,
                after: 4,
                limit: 50
            }
        );
    }

    #[test]
    fn unreachable_replica_is_reported_and_probed_again() {
        let mut c = Catchup::new(1, 1_000, 5_000, 100);
        assert!(probe(&mut c, 0, 10, Reply::none()).is_empty());
        assert_eq!(c.replica(0).unwrap().health, Health::Unreachable);
        let (calls, _) = c.poll(999);
        assert!(calls.iter().all(|(_, c)| *c == Call::LocalStatus) || calls.is_empty());
        let (calls, _) = c.poll(1_000);
        assert!(calls.contains(&(calls[calls.len() - 1].0, Call::ReplicaStatus { replica: 0 })));
    }

    #[test]
    fn lost_reply_is_failed_after_the_timeout() {
        let mut c = Catchup::new(1, 1_000, 100, 100);
        let (calls, _) = c.poll(0);
        assert_eq!(calls.len(), 2);
        assert!(c.is_busy());
        let (_, events) = c.poll(1_100);
        assert!(matches!(events[..], [Event::Failed { step: "probe", .. }]));
        assert_eq!(c.replica(0).unwrap().health, Health::Unreachable);
    }

    #[test]
    fn local_position_comes_from_the_local_probe() {
        let mut c = Catchup::new(0, 1_000, 5_000, 100);
        let (id, call) = only(c.poll(0).0);
        assert_eq!(call, Call::LocalStatus);
        c.on_reply(id, status(H, 7), 0);
        assert_eq!(c.local().map(|p| p.seq), Some(7));
        assert!(c.poll(500).0.is_empty());
    }
}
