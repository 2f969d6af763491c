//! Kong's plugin queue (`kong/tools/queue.lua`) for the log plugins: log entries go from the
//! proxy threads into a bounded channel, and a background thread per compiled plugin instance
//! batches them (`max_batch_size`, `max_coalescing_delay`) and hands each batch to the plugin's
//! sender, retrying a failed batch with exponential backoff (`initial_retry_delay` doubling up
//! to `max_retry_delay`) until `max_retry_time` has passed.
//!
//! A request never waits for the queue: [`LogQueue::push`] is a `try_send`. When the queue is
//! full (`max_entries`, or `max_bytes` of entries waiting) the new entry is dropped and counted
//! in the instance's [`QueueStats`], lock-free atomics a metrics endpoint can read through
//! [`stats_of`] / [`all_stats`]. (Kong drops the oldest waiting entry instead; dropping the
//! newest keeps the hot path a single non-blocking send.)

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use dashmap::DashMap;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::schema::{Field, FieldType, Schema};

/// Kong's `queue` record (`kong/tools/queue_schema.lua`), shared by the plugins that queue.
pub static QUEUE_SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    name: "queue",
    fields: vec![
        Field::new("max_batch_size", FieldType::Integer)
            .required()
            .default(|| json!(1))
            .between(1, 1_000_000),
        Field::new("max_coalescing_delay", FieldType::Number)
            .required()
            .default(|| json!(1))
            .check(|v| crate::schema::check_number_between(v, 0.0, 3600.0)),
        Field::new("max_entries", FieldType::Integer)
            .required()
            .default(|| json!(10_000))
            .between(1, 1_000_000),
        Field::new("max_bytes", FieldType::Integer).between(1, i64::MAX),
        Field::new("max_retry_time", FieldType::Number)
            .required()
            .default(|| json!(60)),
        Field::new("initial_retry_delay", FieldType::Number)
            .required()
            .default(|| json!(0.01))
            .check(|v| crate::schema::check_number_between(v, 0.001, 1_000_000.0)),
        Field::new("max_retry_delay", FieldType::Number)
            .required()
            .default(|| json!(60))
            .check(|v| crate::schema::check_number_between(v, 0.001, 1_000_000.0)),
        Field::new("concurrency_limit", FieldType::Integer)
            .required()
            .default(|| json!(1))
            .check(|v| match v.as_i64() {
                Some(-1 | 1) => Ok(()),
                _ => Err("expected one of: -1, 1".into()),
            }),
    ],
    entity_checks: vec![],
});

/// The `queue` record, typed.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Entries per batch handed to the sender.
    pub max_batch_size: usize,
    /// How long the first entry of a batch waits for more (only when `max_batch_size` > 1).
    pub max_coalescing_delay: Duration,
    /// Entries that may wait.
    pub max_entries: usize,
    /// Bytes of entries that may wait, when set.
    pub max_bytes: Option<usize>,
    /// How long a failing batch is retried; `None` (Kong's negative values): never.
    pub max_retry_time: Option<Duration>,
    /// First backoff between tries.
    pub initial_retry_delay: Duration,
    /// Largest backoff.
    pub max_retry_delay: Duration,
    /// `true` (Kong's `concurrency_limit = -1`): every entry is sent at once in its own task,
    /// without batching; `false` (1): one batch at a time, in order.
    pub unlimited_concurrency: bool,
}

impl QueueSettings {
    /// Reads a validated `queue` record.
    ///
    /// # Errors
    /// A description of a missing or mistyped member (the schema prevents both).
    pub fn from_config(queue: &Map<String, Value>) -> Result<Self, String> {
        let num = |k: &str| {
            queue
                .get(k)
                .and_then(Value::as_f64)
                .ok_or_else(|| format!("queue.{k} is missing"))
        };
        let secs = |k: &str| num(k).map(|n| Duration::from_secs_f64(n.max(0.0)));
        let count = |k: &str| num(k).map(|n| n as usize);
        let retry = num("max_retry_time")?;
        Ok(Self {
            max_batch_size: count("max_batch_size")?.max(1),
            max_coalescing_delay: secs("max_coalescing_delay")?,
            max_entries: count("max_entries")?.max(1),
            max_bytes: queue
                .get("max_bytes")
                .and_then(Value::as_u64)
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            max_retry_time: (retry >= 0.0).then(|| Duration::from_secs_f64(retry)),
            initial_retry_delay: secs("initial_retry_delay")?,
            max_retry_delay: secs("max_retry_delay")?,
            unlimited_concurrency: num("concurrency_limit")? < 0.0,
        })
    }

    /// The backoff before try `n + 1` (`n` from 0): `initial_retry_delay` doubled `n` times,
    /// at most `max_retry_delay`.
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 2f64.powi(i32::try_from(n.min(64)).unwrap_or(64));
        Duration::from_secs_f64(
            (self.initial_retry_delay.as_secs_f64() * factor)
                .min(self.max_retry_delay.as_secs_f64()),
        )
    }
}

/// Counters of one plugin instance's queue, bumped without a lock.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Entries taken into the queue.
    pub accepted: AtomicU64,
    /// Entries refused because the queue was full (`max_entries` / `max_bytes`).
    pub dropped: AtomicU64,
    /// Entries the sender accepted.
    pub sent: AtomicU64,
    /// Entries given up after `max_retry_time` of failing tries.
    pub lost: AtomicU64,
}

impl QueueStats {
    /// Entries taken and not yet sent or given up.
    pub fn pending(&self) -> u64 {
        self.accepted
            .load(Ordering::Relaxed)
            .saturating_sub(self.sent.load(Ordering::Relaxed) + self.lost.load(Ordering::Relaxed))
    }

    /// Dropped + sent + lost: every entry the queue has finished with.
    pub fn settled(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
            + self.sent.load(Ordering::Relaxed)
            + self.lost.load(Ordering::Relaxed)
    }
}

/// Every queue's counters by plugin id, kept across recompiles of the instance, so that a
/// metrics endpoint (and the tests) can read them without reaching a runtime.
static STATS: LazyLock<DashMap<uuid::Uuid, Arc<QueueStats>>> = LazyLock::new(DashMap::new);

/// The counters of the plugin instance `id`, if it ever queued.
pub fn stats_of(id: uuid::Uuid) -> Option<Arc<QueueStats>> {
    STATS.get(&id).map(|s| Arc::clone(&s))
}

/// The counters of every plugin instance that queued (for a metrics endpoint).
pub fn all_stats() -> Vec<(uuid::Uuid, Arc<QueueStats>)> {
    STATS
        .iter()
        .map(|e| (*e.key(), Arc::clone(e.value())))
        .collect()
}

/// Set once the process stops: batches no longer wait for `max_coalescing_delay`.
static FLUSHING: AtomicBool = AtomicBool::new(false);
/// Wakes the batches waiting for more entries when the process stops.
static FLUSH: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// On a graceful stop: sends what every queue holds without waiting for fuller batches, and
/// waits until nothing is pending or `within` has passed (a log server that keeps failing
/// loses what it had not taken). Returns the entries still pending.
pub async fn flush_all(within: Duration) -> u64 {
    FLUSHING.store(true, Ordering::Relaxed);
    FLUSH.notify_waiters();
    let deadline = std::time::Instant::now() + within;
    loop {
        let pending: u64 = STATS.iter().map(|s| s.pending()).sum();
        if pending == 0 || std::time::Instant::now() >= deadline {
            return pending;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What a sender's try returns: `Err` carries a description for the log (no secret in it).
pub type Sending = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Sends one batch (entries in queue order); called again with the same batch on retries.
pub type Sender = Arc<dyn Fn(Arc<[String]>) -> Sending + Send + Sync>;

/// The proxy threads' end of one instance's queue. Dropping it (the instance was recompiled
/// or removed) lets the background thread send what is waiting and stop.
pub struct LogQueue {
    tx: mpsc::Sender<String>,
    bytes: Arc<AtomicUsize>,
    max_bytes: Option<usize>,
    stats: Arc<QueueStats>,
}

impl LogQueue {
    /// Starts the background thread of the queue of plugin instance `id` (`label` names the
    /// thread and the log lines).
    ///
    /// # Errors
    /// The thread or its runtime could not be started.
    pub fn start(
        label: &'static str,
        id: uuid::Uuid,
        settings: QueueSettings,
        sender: Sender,
    ) -> Result<Self, String> {
        let (tx, rx) = mpsc::channel(settings.max_entries);
        let bytes = Arc::new(AtomicUsize::new(0));
        let stats = Arc::clone(STATS.entry(id).or_default().value());
        let worker = Worker {
            label,
            id,
            settings: settings.clone(),
            sender,
            bytes: Arc::clone(&bytes),
            stats: Arc::clone(&stats),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("{label} queue runtime: {e}"))?;
        std::thread::Builder::new()
            .name(format!("{label} queue"))
            .spawn(move || runtime.block_on(worker.run(rx)))
            .map_err(|e| format!("{label} queue thread: {e}"))?;
        Ok(Self {
            tx,
            bytes,
            max_bytes: settings.max_bytes,
            stats,
        })
    }

    /// Queues an entry, or drops and counts it when the queue is full. Never waits.
    pub fn push(&self, entry: String) {
        let len = entry.len();
        if let Some(max) = self.max_bytes {
            let before = self.bytes.fetch_add(len, Ordering::Relaxed);
            if before + len > max {
                self.bytes.fetch_sub(len, Ordering::Relaxed);
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        // Counted first: the queue's thread may send it before `try_send` returns.
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send(entry).is_err() {
            self.stats.accepted.fetch_sub(1, Ordering::Relaxed);
            if self.max_bytes.is_some() {
                self.bytes.fetch_sub(len, Ordering::Relaxed);
            }
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// This queue's counters.
    pub fn stats(&self) -> &Arc<QueueStats> {
        &self.stats
    }
}

/// The background end: batches, sends, retries.
struct Worker {
    label: &'static str,
    id: uuid::Uuid,
    settings: QueueSettings,
    sender: Sender,
    bytes: Arc<AtomicUsize>,
    stats: Arc<QueueStats>,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<String>) {
        let this = Arc::new(self);
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            let s = &this.settings;
            if s.max_batch_size > 1 && !s.unlimited_concurrency {
                let deadline = Instant::now() + s.max_coalescing_delay;
                while batch.len() < s.max_batch_size {
                    // Registered before the flag is read, so that a stop in between still wakes it.
                    let flush = FLUSH.notified();
                    tokio::pin!(flush);
                    flush.as_mut().enable();
                    if FLUSHING.load(Ordering::Relaxed) {
                        break;
                    }
                    tokio::select! {
                        more = tokio::time::timeout_at(deadline, rx.recv()) => match more {
                            Ok(Some(entry)) => batch.push(entry),
                            Ok(None) | Err(_) => break,
                        },
                        () = flush => break,
                    }
                }
                // Whatever already waits joins the batch.
                while batch.len() < s.max_batch_size {
                    match rx.try_recv() {
                        Ok(entry) => batch.push(entry),
                        Err(_) => break,
                    }
                }
            }
            if s.max_bytes.is_some() {
                let len = batch.iter().map(String::len).sum();
                this.bytes.fetch_sub(len, Ordering::Relaxed);
            }
            let batch: Arc<[String]> = batch.into();
            if s.unlimited_concurrency {
                tokio::spawn(Arc::clone(&this).deliver(batch));
            } else {
                Arc::clone(&this).deliver(batch).await;
            }
        }
    }

    /// Hands a batch to the sender until it is accepted or `max_retry_time` has passed.
    async fn deliver(self: Arc<Self>, batch: Arc<[String]>) {
        let started = Instant::now();
        let count = batch.len() as u64;
        let mut tries = 0u32;
        loop {
            match (self.sender)(Arc::clone(&batch)).await {
                Ok(()) => {
                    self.stats.sent.fetch_add(count, Ordering::Relaxed);
                    return;
                }
                Err(error) => {
                    tracing::warn!(plugin = self.label, id = %self.id, %error, "log entries could not be sent");
                    let give_up = self
                        .settings
                        .max_retry_time
                        .is_none_or(|max| started.elapsed() > max);
                    if give_up {
                        tracing::error!(plugin = self.label, id = %self.id, lost = count, "log entries lost: max_retry_time exceeded");
                        self.stats.lost.fetch_add(count, Ordering::Relaxed);
                        return;
                    }
                    tokio::time::sleep(self.settings.backoff(tries)).await;
                    tries += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::schema::{validate, Coerce};

    fn settings(patch: Value) -> QueueSettings {
        let Value::Object(input) = patch else {
            panic!("an object")
        };
        QueueSettings::from_config(&validate(&QUEUE_SCHEMA, &input, Coerce::No).unwrap()).unwrap()
    }

    #[test]
    fn kong_s_defaults() {
        let s = settings(json!({}));
        assert_eq!(s.max_batch_size, 1);
        assert_eq!(s.max_coalescing_delay, Duration::from_secs(1));
        assert_eq!(s.max_entries, 10_000);
        assert_eq!(s.max_bytes, None);
        assert_eq!(s.max_retry_time, Some(Duration::from_secs(60)));
        assert_eq!(s.initial_retry_delay, Duration::from_millis(10));
        assert_eq!(s.max_retry_delay, Duration::from_secs(60));
        assert!(!s.unlimited_concurrency);
    }

    #[test]
    fn the_backoff_doubles_up_to_max_retry_delay() {
        let s = settings(json!({ "initial_retry_delay": 1, "max_retry_delay": 5 }));
        let waits: Vec<u64> = (0..5).map(|n| s.backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
    }

    #[test]
    fn out_of_range_values_are_refused() {
        for bad in [
            json!({ "max_batch_size": 0 }),
            json!({ "concurrency_limit": 2 }),
            json!({ "max_coalescing_delay": 3601 }),
            json!({ "initial_retry_delay": 0 }),
        ] {
            let Value::Object(input) = bad else { panic!() };
            assert!(
                validate(&QUEUE_SCHEMA, &input, Coerce::No).is_err(),
                "{input:?}"
            );
        }
    }

    fn recording() -> (Sender, Arc<Mutex<Vec<Vec<String>>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let sender: Sender = Arc::new(move |batch: Arc<[String]>| {
            sink.lock().unwrap().push(batch.to_vec());
            Box::pin(async { Ok(()) })
        });
        (sender, seen)
    }

    fn wait_for(stats: &QueueStats, settled: u64) {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while stats.settled() < settled {
            assert!(std::time::Instant::now() < until, "queue never settled");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn entries_are_batched_up_to_max_batch_size() {
        let (sender, seen) = recording();
        let s = settings(json!({ "max_batch_size": 3, "max_coalescing_delay": 0.2 }));
        let queue = LogQueue::start("test", uuid::Uuid::new_v4(), s, sender).unwrap();
        for n in 0..5 {
            queue.push(n.to_string());
        }
        wait_for(queue.stats(), 5);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![vec!["0", "1", "2"], vec!["3", "4"]]
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Arc::new(Mutex::new(rx));
        let sender: Sender = Arc::new(move |_batch| {
            let rx = Arc::clone(&rx);
            Box::pin(async move {
                // Held until the test lets it go: the queue fills behind it.
                let _ = tokio::task::spawn_blocking(move || rx.lock().unwrap().recv()).await;
                Ok(())
            })
        });
        let s = settings(json!({ "max_entries": 2 }));
        let queue = LogQueue::start("test", uuid::Uuid::new_v4(), s, sender).unwrap();
        queue.push("first".into());
        // The worker takes `first` and blocks on it; two more fit, the rest are dropped.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while queue.tx.capacity() < 2 {
            assert!(std::time::Instant::now() < until);
            std::thread::sleep(Duration::from_millis(5));
        }
        for n in 0..5 {
            queue.push(n.to_string());
        }
        assert_eq!(queue.stats().dropped.load(Ordering::Relaxed), 3);
        for _ in 0..3 {
            tx.send(()).unwrap();
        }
        wait_for(queue.stats(), 6);
        assert_eq!(queue.stats().sent.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn max_bytes_bounds_what_waits() {
        let (sender, _seen) = recording();
        let s =
            settings(json!({ "max_bytes": 4, "max_batch_size": 10, "max_coalescing_delay": 0.3 }));
        let queue = LogQueue::start("test", uuid::Uuid::new_v4(), s, sender).unwrap();
        queue.push("abc".into());
        queue.push("de".into());
        queue.push("f".into());
        assert_eq!(queue.stats().dropped.load(Ordering::Relaxed), 1);
        wait_for(queue.stats(), 3);
        assert_eq!(queue.stats().sent.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_failing_batch_is_retried_then_lost_after_max_retry_time() {
        let calls = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&calls);
        let sender: Sender = Arc::new(move |_batch| {
            counted.fetch_add(1, Ordering::Relaxed);
            Box::pin(async { Err("down".to_string()) })
        });
        let s = settings(
            json!({ "max_retry_time": 0.2, "initial_retry_delay": 0.05, "max_retry_delay": 0.05 }),
        );
        let queue = LogQueue::start("test", uuid::Uuid::new_v4(), s, sender).unwrap();
        queue.push("x".into());
        wait_for(queue.stats(), 1);
        assert_eq!(queue.stats().lost.load(Ordering::Relaxed), 1);
        let tries = calls.load(Ordering::Relaxed);
        assert!(tries >= 2, "retried: {tries} tries");
    }
}
