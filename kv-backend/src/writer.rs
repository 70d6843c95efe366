//! The writer: the one thread that changes the store, with group commit.
//!
//! Handlers queue [`Job`]s. The writer takes every job waiting (up to
//! [`MAX_BATCH`]), validates them in order against its own copy of the data
//! (committed state plus the effects of earlier jobs of the same batch), writes
//! all effects, the log records and the new seq in ONE redb transaction,
//! commits it durably (fsync), then publishes the effects to the readers' view
//! and only then answers each job. If the commit fails, nothing is published,
//! every job of the batch gets 500 and the writer's copy is reset from the view.
//!
//! It runs on a plain thread because redb's commit blocks on fsync.

use std::collections::HashMap;
use std::sync::{mpsc, Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, Durability, ReadableTable, Table};
use tokio::sync::oneshot;

use crate::apply::{plan_client, plan_shadow, Origin, WriteOp};
use crate::config::{Config, DEFAULT_MAX_BATCH};
use crate::error::{Error, Result};
use crate::replication::{decide, Decision, LogBatch, LogEntry, LogRecord, Snapshot};
use crate::store::{Data, StorageError, ENTRIES, LOG, META_STR, META_U64};
use crate::zone::{Effect, Zone, ZoneConfig, ZoneId};

/// How often the writer looks for expired entries to purge.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(1);

/// Most jobs one commit takes.
pub const MAX_BATCH: usize = DEFAULT_MAX_BATCH;

/// A queued write and where to send its answer.
pub struct Job {
    /// The write.
    pub op: WriteOp,
    /// Its answer, sent once the batch is durable (or refused).
    pub reply: oneshot::Sender<Reply>,
}

/// The answer to one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// What happened.
    pub result: Result<Applied>,
    /// The history id right after this write.
    pub history: String,
    /// The applied seq right after this write.
    pub seq: u64,
}

/// A successful write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Applied and durable as `seq`.
    Written { seq: u64, applied_at: u64 },
    /// A shadow write already applied before: nothing changed.
    Duplicate,
    /// Expired entries removed.
    Purged,
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One job of a batch; housekeeping jobs have no one to answer.
struct Pending {
    op: WriteOp,
    reply: Option<oneshot::Sender<Reply>>,
}

/// Owns the database and the writer's copy of the data.
pub(crate) struct Writer {
    db: Arc<Database>,
    /// Committed data plus the effects of the batch in progress.
    data: Data,
    view: Arc<RwLock<Data>>,
    configs: HashMap<ZoneId, ZoneConfig>,
    jobs: mpsc::Receiver<Job>,
    max_batch: usize,
    log_capacity: u64,
}

/// The tables one batch writes.
struct Tables<'t> {
    entries: Table<'t, (&'static str, &'static str), (Option<u64>, &'static str)>,
    log: Table<'t, u64, &'static [u8]>,
}

impl Writer {
    pub(crate) fn new(
        db: Arc<Database>,
        data: Data,
        view: Arc<RwLock<Data>>,
        config: &Config,
        jobs: mpsc::Receiver<Job>,
    ) -> Writer {
        Writer {
            db,
            data,
            view,
            configs: config
                .zones
                .iter()
                .map(|z| (z.id.clone(), z.clone()))
                .collect(),
            jobs,
            max_batch: if config.group_commit { MAX_BATCH } else { 1 },
            log_capacity: config.log_capacity,
        }
    }

    /// Serves jobs until every sender is gone.
    pub(crate) fn run(mut self) {
        let mut last_purge = Instant::now();
        loop {
            let first = match self.jobs.recv_timeout(PURGE_INTERVAL) {
                Ok(job) => Some(job),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            if let Some(first) = first {
                let mut batch = vec![Pending::from(first)];
                while batch.len() < self.max_batch {
                    match self.jobs.try_recv() {
                        Ok(job) => batch.push(Pending::from(job)),
                        Err(_) => break,
                    }
                }
                self.commit(batch);
            }
            if last_purge.elapsed() >= PURGE_INTERVAL {
                last_purge = Instant::now();
                let now = now_ms();
                if self
                    .data
                    .zones
                    .values()
                    .any(|z| z.entries().values().any(|e| !e.is_live(now)))
                {
                    self.commit(vec![Pending {
                        op: WriteOp::Purge,
                        reply: None,
                    }]);
                }
            }
        }
        tracing::debug!("writer stopped");
    }

    /// Applies a batch in one durable transaction, publishes it, answers it.
    fn commit(&mut self, batch: Vec<Pending>) {
        let now = now_ms();
        let mut published: Vec<(ZoneId, Vec<Effect>)> = Vec::new();
        match self.apply_batch(&batch, now, &mut published) {
            Ok(outcomes) => {
                {
                    let mut view = self.view.write().unwrap_or_else(PoisonError::into_inner);
                    for (zone, effects) in &published {
                        view.zones.entry(zone.clone()).or_default().apply(effects);
                    }
                    view.meta = self.data.meta.clone();
                    view.commits = self.data.commits;
                }
                for (pending, reply) in batch.into_iter().zip(outcomes) {
                    if let Some(answer) = pending.reply {
                        // The client may have gone away; its write stands regardless.
                        let _ = answer.send(reply);
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, jobs = batch.len(), "commit failed; the batch is refused");
                self.data = self
                    .view
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                for pending in batch {
                    if let Some(answer) = pending.reply {
                        let _ = answer.send(Reply {
                            result: Err(Error::Storage),
                            history: self.data.meta.history.clone(),
                            seq: self.data.meta.seq,
                        });
                    }
                }
            }
        }
    }

    fn apply_batch(
        &mut self,
        batch: &[Pending],
        now: u64,
        published: &mut Vec<(ZoneId, Vec<Effect>)>,
    ) -> Result<Vec<Reply>, StorageError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        let before = self.data.meta.clone();
        let mut replies = Vec::with_capacity(batch.len());
        {
            let mut tables = Tables {
                entries: txn.open_table(ENTRIES)?,
                log: txn.open_table(LOG)?,
            };
            for pending in batch {
                let result = self.apply_one(&pending.op, now, &mut tables, published)?;
                replies.push(Reply {
                    result,
                    history: self.data.meta.history.clone(),
                    seq: self.data.meta.seq,
                });
            }
            let meta = &self.data.meta;
            if meta.seq != before.seq || meta.applied_at != before.applied_at {
                let mut counters = txn.open_table(META_U64)?;
                counters.insert("seq", meta.seq)?;
                counters.insert("applied_at", meta.applied_at)?;
            }
            if meta.history != before.history {
                txn.open_table(META_STR)?
                    .insert("history", meta.history.as_str())?;
            }
        }
        if published.is_empty() && self.data.meta == before {
            // Only refusals and duplicates: nothing to make durable.
            txn.abort()?;
        } else {
            txn.commit()?;
            self.data.commits += 1;
        }
        Ok(replies)
    }

    /// Validates and applies one job to the writer's copy and the transaction.
    /// The outer error is a storage failure (the batch fails); the inner one is
    /// this job's refusal (the batch goes on).
    fn apply_one(
        &mut self,
        op: &WriteOp,
        now: u64,
        tx: &mut Tables<'_>,
        published: &mut Vec<(ZoneId, Vec<Effect>)>,
    ) -> Result<Result<Applied>, StorageError> {
        match op {
            WriteOp::Zone { zone, kind, origin } => {
                let Some(config) = self.configs.get(zone) else {
                    return Ok(Err(Error::ZoneNotFound(zone.name.clone())));
                };
                let meta = &mut self.data.meta;
                let (effects, seq, applied_at) = match origin {
                    Origin::Client => {
                        let applied_at = now.max(meta.applied_at);
                        let current = self.data.zones.entry(zone.clone()).or_default();
                        match plan_client(config, current, kind, applied_at) {
                            Ok(effects) => (effects, meta.seq + 1, applied_at),
                            Err(refused) => return Ok(Err(refused)),
                        }
                    }
                    Origin::Shadow(shadow) => match decide(&meta.history, meta.seq, shadow) {
                        Ok(Decision::Duplicate) => return Ok(Ok(Applied::Duplicate)),
                        Err(refused) => return Ok(Err(refused)),
                        Ok(Decision::Apply { adopt }) => {
                            if adopt {
                                meta.history = shadow.history.clone();
                            }
                            let effects = plan_shadow(config, kind, shadow.applied_at);
                            (effects, shadow.seq, shadow.applied_at)
                        }
                    },
                };
                self.record(zone, effects, Some((seq, applied_at)), tx, published)?;
                Ok(Ok(Applied::Written { seq, applied_at }))
            }
            WriteOp::Replay(batch) => self.replay(batch, tx, published),
            WriteOp::Restore(snapshot) => self.restore(snapshot, tx, published),
            WriteOp::Purge => {
                let expired: Vec<(ZoneId, Vec<Effect>)> = self
                    .data
                    .zones
                    .iter()
                    .map(|(id, zone)| {
                        let effects = zone
                            .expired_keys(now)
                            .into_iter()
                            .map(|key| Effect::Remove { key })
                            .collect::<Vec<_>>();
                        (id.clone(), effects)
                    })
                    .filter(|(_, effects)| !effects.is_empty())
                    .collect();
                for (zone, effects) in expired {
                    self.record(&zone, effects, None, tx, published)?;
                }
                Ok(Ok(Applied::Purged))
            }
        }
    }

    /// Applies effects to the transaction and the writer's copy, queues them
    /// for publishing, and, for a replicated write `(seq, applied_at)`, moves
    /// the seq and appends to the bounded log.
    fn record(
        &mut self,
        zone: &ZoneId,
        effects: Vec<Effect>,
        write: Option<(u64, u64)>,
        tx: &mut Tables<'_>,
        published: &mut Vec<(ZoneId, Vec<Effect>)>,
    ) -> Result<(), StorageError> {
        let current = self.data.zones.entry(zone.clone()).or_default();
        write_effects(&mut tx.entries, zone, current, &effects)?;
        current.apply(&effects);
        if let Some((seq, applied_at)) = write {
            let meta = &mut self.data.meta;
            meta.seq = seq;
            meta.applied_at = meta.applied_at.max(applied_at);
            if self.log_capacity > 0 {
                let record = LogRecord {
                    applied_at,
                    zone: zone.clone(),
                    effects: effects.clone(),
                };
                let bytes = serde_json::to_vec(&record)
                    .map_err(|e| redb::Error::Io(std::io::Error::other(e)))?;
                tx.log.insert(seq, bytes.as_slice())?;
                meta.log_len += 1;
                while meta.log_len > self.log_capacity {
                    if tx.log.pop_first()?.is_none() {
                        break;
                    }
                    meta.log_len -= 1;
                }
                meta.log_first = tx.log.first()?.map(|(k, _)| k.value()).unwrap_or(0);
            }
        }
        published.push((zone.clone(), effects));
        Ok(())
    }

    /// Catch-up from the primary's log: the entries after the applied seq,
    /// which must start at `applied + 1` and be consecutive, all or nothing.
    fn replay(
        &mut self,
        batch: &LogBatch,
        tx: &mut Tables<'_>,
        published: &mut Vec<(ZoneId, Vec<Effect>)>,
    ) -> Result<Result<Applied>, StorageError> {
        let meta = &self.data.meta;
        let applied = meta.seq;
        let adopt = applied == 0 && batch.history != meta.history;
        if !adopt && batch.history != meta.history {
            return Ok(Err(Error::ReplicationHistoryMismatch {
                local: meta.history.clone(),
                received: batch.history.clone(),
            }));
        }
        let fresh: Vec<&LogEntry> = batch.entries.iter().filter(|e| e.seq > applied).collect();
        let Some(first) = fresh.first() else {
            return Ok(Ok(Applied::Duplicate));
        };
        if first.seq != applied + 1 {
            return Ok(Err(Error::ReplicationGap {
                applied,
                received: first.seq,
            }));
        }
        if fresh.windows(2).any(|w| w[1].seq != w[0].seq + 1) {
            return Ok(Err(Error::Catchup("log entries are not consecutive")));
        }
        if let Some(entry) = fresh
            .iter()
            .find(|e| !self.configs.contains_key(&e.record.zone))
        {
            return Ok(Err(Error::ZoneNotFound(entry.record.zone.name.clone())));
        }
        if adopt {
            self.data.meta.history = batch.history.clone();
        }
        for entry in &fresh {
            let write = Some((entry.seq, entry.record.applied_at));
            self.record(
                &entry.record.zone,
                entry.record.effects.clone(),
                write,
                tx,
                published,
            )?;
        }
        Ok(Ok(Applied::Written {
            seq: self.data.meta.seq,
            applied_at: self.data.meta.applied_at,
        }))
    }

    /// Catch-up from a snapshot: every configured zone takes the snapshot's
    /// content, the history and seq become the snapshot's, and the log (of
    /// another past) is emptied. A snapshot not newer than the data of the
    /// same history is a duplicate.
    fn restore(
        &mut self,
        snapshot: &Snapshot,
        tx: &mut Tables<'_>,
        published: &mut Vec<(ZoneId, Vec<Effect>)>,
    ) -> Result<Result<Applied>, StorageError> {
        let meta = &self.data.meta;
        if snapshot.history == meta.history && snapshot.seq <= meta.seq {
            return Ok(Ok(Applied::Duplicate));
        }
        for name in snapshot.zones.keys() {
            if !self.configs.contains_key(&ZoneId::from_display(name)) {
                tracing::warn!(zone = %name, "snapshot zone is not configured here; skipped");
            }
        }
        let zones: Vec<ZoneId> = self.configs.keys().cloned().collect();
        for zone in zones {
            let mut effects = vec![Effect::Clear];
            if let Some(entries) = snapshot.zones.get(&zone.to_string()) {
                effects.extend(entries.iter().map(|(key, entry)| Effect::Put {
                    key: key.clone(),
                    value: entry.value.clone(),
                    expires_at: entry.expires_at,
                }));
            }
            self.record(&zone, effects, None, tx, published)?;
        }
        tx.log.retain(|_, _| false)?;
        let meta = &mut self.data.meta;
        meta.history = snapshot.history.clone();
        meta.seq = snapshot.seq;
        meta.applied_at = snapshot.applied_at;
        meta.log_first = 0;
        meta.log_len = 0;
        Ok(Ok(Applied::Written {
            seq: snapshot.seq,
            applied_at: snapshot.applied_at,
        }))
    }
}

impl From<Job> for Pending {
    fn from(job: Job) -> Pending {
        Pending {
            op: job.op,
            reply: Some(job.reply),
        }
    }
}

/// Writes effects on `zone` (as it is before them) into the entries table.
fn write_effects(
    entries: &mut Table<'_, (&'static str, &'static str), (Option<u64>, &'static str)>,
    id: &ZoneId,
    zone: &Zone,
    effects: &[Effect],
) -> Result<(), StorageError> {
    let zone_key = id.storage_key();
    let mut cleared: Vec<&str> = Vec::new();
    for effect in effects {
        match effect {
            Effect::Put {
                key,
                value,
                expires_at,
            } => {
                entries.insert(
                    (zone_key.as_str(), key.as_str()),
                    (*expires_at, value.as_str()),
                )?;
            }
            Effect::Remove { key } => {
                entries.remove((zone_key.as_str(), key.as_str()))?;
            }
            Effect::Clear => {
                cleared.extend(zone.entries().keys().map(String::as_str));
                for effect in effects {
                    if let Effect::Put { key, .. } = effect {
                        cleared.push(key);
                    }
                }
                for key in cleared.drain(..) {
                    entries.remove((zone_key.as_str(), key))?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::WriteKind;
    use crate::request::ValueSpec;
    use crate::store::load;
    use redb::backends::InMemoryBackend;

    fn post(key: &str) -> WriteOp {
        WriteOp::Zone {
            zone: ZoneId::http("default"),
            kind: WriteKind::Post(vec![(key.into(), ValueSpec::plain("v"))]),
            origin: Origin::Client,
        }
    }

    /// Queues `ops` before the writer starts, runs it to the end, and returns
    /// the replies and the number of commits it made.
    fn run_queued(group_commit: bool, ops: Vec<WriteOp>) -> (Vec<Reply>, u64) {
        let mut config = Config::new("unused-in-memory");
        config.group_commit = group_commit;
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap();
        let data = load(&db, &config).unwrap();
        let view = Arc::new(RwLock::new(data.clone()));
        let (queue, jobs) = mpsc::channel();
        let answers: Vec<_> = ops
            .into_iter()
            .map(|op| {
                let (reply, answer) = oneshot::channel();
                queue.send(Job { op, reply }).unwrap();
                answer
            })
            .collect();
        drop(queue);
        Writer::new(Arc::new(db), data, Arc::clone(&view), &config, jobs).run();
        let replies = answers
            .into_iter()
            .map(|mut answer| answer.try_recv().unwrap())
            .collect();
        let commits = view.read().unwrap().commits;
        (replies, commits)
    }

    /// Writes waiting together share one commit, each validated against the
    /// ones before it in the batch.
    #[test]
    fn queued_writes_share_one_commit_and_see_each_other() {
        let ops = vec![post("a"), post("b"), post("a"), post("c")];
        let (replies, commits) = run_queued(true, ops);
        assert_eq!(commits, 1);
        let results: Vec<_> = replies.iter().map(|r| r.result.clone()).collect();
        assert!(matches!(results[0], Ok(Applied::Written { seq: 1, .. })));
        assert!(matches!(results[1], Ok(Applied::Written { seq: 2, .. })));
        assert_eq!(results[2], Err(Error::KeyExists("a".into())));
        assert!(matches!(results[3], Ok(Applied::Written { seq: 3, .. })));
        assert_eq!(replies[2].seq, 2);
    }

    /// `--no-group-commit`: one commit per write.
    #[test]
    fn without_group_commit_every_write_commits_alone() {
        let (replies, commits) = run_queued(false, vec![post("a"), post("b"), post("c")]);
        assert_eq!(commits, 3);
        assert!(replies.iter().all(|r| r.result.is_ok()));
    }

    /// A batch of refusals only commits nothing.
    #[test]
    fn a_batch_of_refusals_commits_nothing() {
        let bad = WriteOp::Zone {
            zone: ZoneId::http("nozone"),
            kind: WriteKind::Clear,
            origin: Origin::Client,
        };
        let (replies, commits) = run_queued(true, vec![bad]);
        assert_eq!(commits, 0);
        assert_eq!(replies[0].result, Err(Error::ZoneNotFound("nozone".into())));
    }
}
