//! The durable store: the redb tables, loading them at startup, and [`Store`],
//! the cheap clonable handle through which handlers read the in-memory view
//! and queue writes for the writer (`writer.rs`).
//!
//! Reads never touch redb: the whole data set lives in memory behind a
//! `RwLock`, published by the writer after each durable commit. redb holds the
//! same data plus the seq counter, the history id and the replication log, all
//! changed in the writer's transactions.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{mpsc, Arc, PoisonError, RwLock};
use std::thread::JoinHandle;

use redb::backends::InMemoryBackend;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::oneshot;

use crate::apply::WriteOp;
use crate::config::Config;
use crate::error::Error;
use crate::replication::{self, LogBatch, LogEntry, LogRecord, Snapshot};
use crate::writer::{Job, Reply, Writer};
use crate::zone::{Entry, Zone, ZoneConfig, ZoneId};

/// The file inside `--data-dir` that holds everything.
pub const DB_FILE: &str = "replikv.redb";

/// Rows: (zone storage key, key) → (expiry instant, value).
pub(crate) const ENTRIES: TableDefinition<(&str, &str), (Option<u64>, &str)> =
    TableDefinition::new("entries");
/// Counters: `seq` (last applied seq) and `applied_at` (its Unix ms).
pub(crate) const META_U64: TableDefinition<&str, u64> = TableDefinition::new("meta_u64");
/// Strings: `history` (the history id this node's seq counts in).
pub(crate) const META_STR: TableDefinition<&str, &str> = TableDefinition::new("meta_str");
/// The replication log: seq → JSON [`replication::LogRecord`].
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

/// A redb failure, boxed because `redb::Error` is large and travels through
/// every step of a batch. It never reaches a client: the writer logs it once
/// and answers the batch with [`Error::Storage`].
#[derive(Debug)]
pub(crate) struct StorageError(Box<redb::Error>);

impl<E: Into<redb::Error>> From<E> for StorageError {
    fn from(error: E) -> StorageError {
        StorageError(Box::new(error.into()))
    }
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for StorageError {}

/// Replication state, stored in redb and mirrored in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// The history this node's seq counts in.
    pub history: String,
    /// The last applied seq (0: nothing applied yet).
    pub seq: u64,
    /// Unix ms of the last applied write.
    pub applied_at: u64,
    /// The oldest seq still in the log (0 when the log is empty).
    pub log_first: u64,
    /// Records in the log.
    pub log_len: u64,
}

/// The in-memory view of the store: every configured zone and the meta.
#[derive(Debug, Clone)]
pub struct Data {
    /// Entries per configured zone (present even when empty).
    pub zones: HashMap<ZoneId, Zone>,
    /// Replication state.
    pub meta: Meta,
    /// Durable commits since startup (not stored): with group commit, fewer
    /// than the writes they carried.
    pub commits: u64,
}

/// A handle on the store; clones share one writer and one view.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// Shared with the writer; read directly only for the replication log.
    db: Arc<Database>,
    view: Arc<RwLock<Data>>,
    zones: Vec<ZoneConfig>,
    queue: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    /// Closing the queue ends the writer after its current batch; joining it
    /// releases the database file, so it can be opened again right away.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!("the writer thread panicked");
            }
        }
    }
}

impl Store {
    /// Opens (or creates) the store in `config.data_dir` and starts its writer.
    pub fn open(config: &Config) -> io::Result<Store> {
        std::fs::create_dir_all(&config.data_dir)?;
        let path = config.data_dir.join(DB_FILE);
        let db = Database::create(&path).map_err(|e| storage_error(&path, e))?;
        Store::start(db, config)
    }

    /// A store in memory only (nothing survives it), for tests.
    pub fn open_in_memory(config: &Config) -> io::Result<Store> {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .map_err(|e| storage_error(Path::new(":memory:"), e))?;
        Store::start(db, config)
    }

    fn start(db: Database, config: &Config) -> io::Result<Store> {
        let data = load(&db, config).map_err(io::Error::other)?;
        tracing::info!(
            history = %data.meta.history,
            seq = data.meta.seq,
            zones = data.zones.len(),
            "store loaded"
        );
        let db = Arc::new(db);
        let view = Arc::new(RwLock::new(data.clone()));
        let (queue, jobs) = mpsc::channel();
        let writer = Writer::new(Arc::clone(&db), data, Arc::clone(&view), config, jobs);
        let writer = std::thread::Builder::new()
            .name("replikv-writer".into())
            .spawn(move || writer.run())?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                view,
                zones: config.zones.clone(),
                queue: Some(queue),
                writer: Some(writer),
            }),
        })
    }

    /// Queues a write and waits until it is durable (or refused).
    pub async fn write(&self, op: WriteOp) -> Reply {
        let (reply, answer) = oneshot::channel();
        let queued = self
            .inner
            .queue
            .as_ref()
            .is_some_and(|queue| queue.send(Job { op, reply }).is_ok());
        if queued {
            if let Ok(reply) = answer.await {
                return reply;
            }
        }
        let meta = self.read(|data| data.meta.clone());
        Reply {
            result: Err(Error::Unavailable),
            history: meta.history,
            seq: meta.seq,
        }
    }

    /// Runs `f` on the current committed view.
    pub fn read<R>(&self, f: impl FnOnce(&Data) -> R) -> R {
        let data = self
            .inner
            .view
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        f(&data)
    }

    /// Up to `limit` log entries after seq `after`, read from one consistent
    /// snapshot of the database. Blocking: call it off the async workers.
    pub fn read_log(&self, after: u64, limit: usize) -> Result<LogBatch, Error> {
        self.try_read_log(after, limit).unwrap_or_else(|error| {
            tracing::error!(%error, "reading the replication log failed");
            Err(Error::Storage)
        })
    }

    fn try_read_log(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Result<LogBatch, Error>, StorageError> {
        let txn = self.inner.db.begin_read()?;
        let history = txn
            .open_table(META_STR)?
            .get("history")?
            .map(|v| v.value().to_owned())
            .unwrap_or_default();
        let seq = txn
            .open_table(META_U64)?
            .get("seq")?
            .map(|v| v.value())
            .unwrap_or(0);
        let log = txn.open_table(LOG)?;
        let mut entries = Vec::new();
        if after < seq {
            let first = log.first()?.map(|(k, _)| k.value()).unwrap_or(0);
            if first == 0 || first > after + 1 {
                return Ok(Err(Error::LogTruncated { after, first }));
            }
            for row in log.range(after + 1..)?.take(limit) {
                let (seq, bytes) = row?;
                let record: LogRecord = serde_json::from_slice(bytes.value())
                    .map_err(|e| redb::Error::Io(io::Error::other(e)))?;
                entries.push(LogEntry {
                    seq: seq.value(),
                    record,
                });
            }
        }
        Ok(Ok(LogBatch { history, entries }))
    }

    /// Every zone's live entries at `now_ms`, with the seq they reflect.
    pub fn snapshot(&self, now_ms: u64) -> Snapshot {
        self.read(|data| Snapshot {
            history: data.meta.history.clone(),
            seq: data.meta.seq,
            applied_at: data.meta.applied_at,
            zones: self
                .zones()
                .iter()
                .map(|config| {
                    let entries = data
                        .zones
                        .get(&config.id)
                        .map(|zone| {
                            zone.live(now_ms)
                                .map(|(k, e)| (k.clone(), e.clone()))
                                .collect()
                        })
                        .unwrap_or_default();
                    (config.id.to_string(), entries)
                })
                .collect(),
        })
    }

    /// The configuration of zone `id`, if configured.
    pub fn zone(&self, id: &ZoneId) -> Option<&ZoneConfig> {
        self.inner.zones.iter().find(|z| &z.id == id)
    }

    /// Every configured zone, in configuration order.
    pub fn zones(&self) -> &[ZoneConfig] {
        &self.inner.zones
    }
}

fn storage_error(path: &Path, error: impl Into<redb::Error>) -> io::Error {
    io::Error::other(format!("{}: {}", path.display(), error.into()))
}

/// Creates missing tables and the history id, trims the log to capacity, and
/// reads everything into memory. Rows of zones no longer configured stay on
/// disk untouched and are not served.
pub(crate) fn load(db: &Database, config: &Config) -> Result<Data, StorageError> {
    let txn = db.begin_write()?;
    {
        let mut meta_str = txn.open_table(META_STR)?;
        if meta_str.get("history")?.is_none() {
            let id = replication::new_history_id()
                .map_err(|e| redb::Error::Io(io::Error::other(e.to_string())))?;
            meta_str.insert("history", id.as_str())?;
        }
        txn.open_table(META_U64)?;
        txn.open_table(ENTRIES)?;
        let mut log = txn.open_table(LOG)?;
        let mut len = log.len()?;
        while len > config.log_capacity {
            if log.pop_first()?.is_none() {
                break;
            }
            len -= 1;
        }
    }
    txn.commit()?;

    let txn = db.begin_read()?;
    let meta_str = txn.open_table(META_STR)?;
    let meta_u64 = txn.open_table(META_U64)?;
    let log = txn.open_table(LOG)?;
    let history = meta_str
        .get("history")?
        .map(|v| v.value().to_owned())
        .unwrap_or_default();
    let meta = Meta {
        history,
        seq: meta_u64.get("seq")?.map(|v| v.value()).unwrap_or(0),
        applied_at: meta_u64.get("applied_at")?.map(|v| v.value()).unwrap_or(0),
        log_first: log.first()?.map(|(k, _)| k.value()).unwrap_or(0),
        log_len: log.len()?,
    };
    let mut zones: HashMap<ZoneId, Zone> = config
        .zones
        .iter()
        .map(|z| (z.id.clone(), Zone::default()))
        .collect();
    let mut unconfigured = 0u64;
    for row in txn.open_table(ENTRIES)?.iter()? {
        let (key, value) = row?;
        let (zone, key) = key.value();
        let (expires_at, value) = value.value();
        match ZoneId::from_storage_key(zone).and_then(|id| zones.get_mut(&id)) {
            Some(zone) => zone.insert(
                key.to_owned(),
                Entry {
                    value: value.to_owned(),
                    expires_at,
                },
            ),
            None => unconfigured += 1,
        }
    }
    if unconfigured > 0 {
        tracing::warn!(
            rows = unconfigured,
            "rows of zones that are not configured are kept on disk but not served"
        );
    }
    Ok(Data {
        zones,
        meta,
        commits: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::{Origin, WriteKind};
    use crate::request::ValueSpec;
    use crate::writer::Applied;

    fn post(key: &str, value: &str) -> WriteOp {
        WriteOp::Zone {
            zone: ZoneId::http("default"),
            kind: WriteKind::Post(vec![(key.into(), ValueSpec::plain(value))]),
            origin: Origin::Client,
        }
    }

    fn value_of(store: &Store, key: &str) -> Option<String> {
        store.read(|d| {
            d.zones[&ZoneId::http("default")]
                .get_live(key, 0)
                .map(|e| e.value.clone())
        })
    }

    /// Data, seq and history written before a close are all there after a reopen.
    #[tokio::test]
    async fn writes_seq_and_history_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::new(dir.path());
        let store = Store::open(&config).unwrap();
        let history = store.read(|d| d.meta.history.clone());
        assert!(replication::is_id(&history));
        for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
            let reply = store.write(post(key, "v")).await;
            assert!(
                matches!(reply.result, Ok(Applied::Written { seq, .. }) if seq == i as u64 + 1),
                "{:?}",
                reply.result
            );
        }
        drop(store);

        let store = Store::open(&config).unwrap();
        assert_eq!(value_of(&store, "a").as_deref(), Some("v"));
        assert_eq!(value_of(&store, "c").as_deref(), Some("v"));
        let meta = store.read(|d| d.meta.clone());
        assert_eq!(meta.history, history);
        assert_eq!(meta.seq, 3);
        assert_eq!((meta.log_first, meta.log_len), (1, 3));
        let reply = store.write(post("d", "v")).await;
        assert!(matches!(reply.result, Ok(Applied::Written { seq: 4, .. })));
    }

    /// A refused write leaves no trace on disk and takes no seq.
    #[tokio::test]
    async fn a_refused_write_changes_nothing_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::new(dir.path());
        let store = Store::open(&config).unwrap();
        store.write(post("a", "1")).await.result.unwrap();
        let reply = store.write(post("a", "2")).await;
        assert_eq!(reply.result, Err(Error::KeyExists("a".into())));
        assert_eq!(reply.seq, 1);
        drop(store);
        let store = Store::open(&config).unwrap();
        assert_eq!(value_of(&store, "a").as_deref(), Some("1"));
        assert_eq!(store.read(|d| d.meta.seq), 1);
    }

    /// The log keeps the newest `log_capacity` records, also across a reopen with a smaller capacity.
    #[tokio::test]
    async fn the_replication_log_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path());
        config.log_capacity = 3;
        let store = Store::open(&config).unwrap();
        for key in ["a", "b", "c", "d", "e"] {
            store.write(post(key, "v")).await.result.unwrap();
        }
        let meta = store.read(|d| d.meta.clone());
        assert_eq!((meta.log_first, meta.log_len, meta.seq), (3, 3, 5));
        drop(store);
        config.log_capacity = 2;
        let store = Store::open(&config).unwrap();
        let meta = store.read(|d| d.meta.clone());
        assert_eq!((meta.log_first, meta.log_len, meta.seq), (4, 2, 5));
    }

    /// Zones removed from the configuration keep their rows for when they come back.
    #[tokio::test]
    async fn rows_of_unconfigured_zones_survive_until_the_zone_returns() {
        let dir = tempfile::tempdir().unwrap();
        let one = crate::config::parse_zone_spec("one:1m").unwrap();
        let config = Config::new(dir.path()).with_zone(one);
        let store = Store::open(&config).unwrap();
        let op = WriteOp::Zone {
            zone: ZoneId::http("one"),
            kind: WriteKind::Post(vec![("k".into(), ValueSpec::plain("v"))]),
            origin: Origin::Client,
        };
        store.write(op).await.result.unwrap();
        drop(store);
        let store = Store::open(&Config::new(dir.path())).unwrap();
        assert!(store.zone(&ZoneId::http("one")).is_none());
        drop(store);
        let store = Store::open(&config).unwrap();
        let value = store.read(|d| d.zones[&ZoneId::http("one")].get_live("k", 0).cloned());
        assert_eq!(value.map(|e| e.value).as_deref(), Some("v"));
    }

    /// Expired entries leave memory and disk within about a purge interval.
    #[tokio::test]
    async fn expired_entries_are_purged_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let short = crate::config::parse_zone_spec("short:1m:timeout=100ms").unwrap();
        let config = Config::new(dir.path()).with_zone(short);
        let store = Store::open(&config).unwrap();
        let op = WriteOp::Zone {
            zone: ZoneId::http("short"),
            kind: WriteKind::Post(vec![("k".into(), ValueSpec::plain("v"))]),
            origin: Origin::Client,
        };
        store.write(op).await.result.unwrap();
        let stored =
            |store: &Store| store.read(|d| d.zones[&ZoneId::http("short")].entries().len());
        assert_eq!(stored(&store), 1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while stored(&store) > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(stored(&store), 0, "purged from memory");
        assert_eq!(store.read(|d| d.meta.seq), 1, "a purge takes no seq");
        drop(store);
        let store = Store::open(&config).unwrap();
        assert_eq!(stored(&store), 0, "purged from disk");
    }

    /// The expiry instant is stored, not recomputed: after a reopen (later, with
    /// another zone timeout) an entry keeps the instant decided at its write.
    #[tokio::test]
    async fn expiry_instants_survive_a_reopen_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let zone = |spec: &str| crate::config::parse_zone_spec(spec).unwrap();
        let config = Config::new(dir.path()).with_zone(zone("one:1m:timeout=1h"));
        let store = Store::open(&config).unwrap();
        let op = |key: &str, expire_ms: Option<u64>| WriteOp::Zone {
            zone: ZoneId::http("one"),
            kind: WriteKind::Post(vec![(
                key.into(),
                ValueSpec {
                    value: "v".into(),
                    expire_ms,
                },
            )]),
            origin: Origin::Client,
        };
        let Ok(Applied::Written { applied_at, .. }) =
            store.write(op("a", Some(5_000))).await.result
        else {
            panic!("write refused");
        };
        store.write(op("b", None)).await.result.unwrap();
        let instants = |store: &Store| {
            store.read(|d| {
                let zone = &d.zones[&ZoneId::http("one")];
                (
                    zone.entries()["a"].expires_at,
                    zone.entries()["b"].expires_at,
                )
            })
        };
        let before = instants(&store);
        assert_eq!(before.0, Some(applied_at + 5_000));
        assert!(before.1.unwrap() >= applied_at + 3_600_000);
        drop(store);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let config = Config::new(dir.path()).with_zone(zone("one:1m:timeout=2h"));
        let store = Store::open(&config).unwrap();
        assert_eq!(instants(&store), before);
    }

    /// A snapshot restore is durable: data, history and seq survive a reopen.
    #[tokio::test]
    async fn a_restored_snapshot_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::new(dir.path());
        let store = Store::open(&config).unwrap();
        store.write(post("mine", "1")).await.result.unwrap();
        let history = "0123456789abcdef0123456789abcdef".to_owned();
        let entry = Entry {
            value: "theirs".into(),
            expires_at: None,
        };
        let snapshot = Snapshot {
            history: history.clone(),
            seq: 42,
            applied_at: 7,
            zones: [(
                "default".to_owned(),
                [("k".to_owned(), entry)].into_iter().collect(),
            )]
            .into_iter()
            .collect(),
        };
        let reply = store.write(WriteOp::Restore(snapshot)).await;
        assert!(matches!(reply.result, Ok(Applied::Written { seq: 42, .. })));
        drop(store);
        let store = Store::open(&config).unwrap();
        assert_eq!(value_of(&store, "mine"), None);
        assert_eq!(value_of(&store, "k").as_deref(), Some("theirs"));
        let meta = store.read(|d| d.meta.clone());
        assert_eq!((meta.history, meta.seq, meta.log_len), (history, 42, 0));
    }
}
