//! Token lookups made on one proxy worker sent to Redis together. Under load a worker wakes for
//! several connections at once, and each request carrying a token the node has not cached asks
//! Redis for it: sent one `GET` each, every lookup paid the client's per-command work (its queue to
//! the connection's driver, the reply's parse and hand-back) and Redis its own per-command work
//! (a read, a write and a turn of its event loop: about 9 µs of its CPU on the 2-vCPU VM, against
//! about 0.15 µs per further key of an `MGET`), on the cores the proxy shares.
//!
//! Here the first lookup opens a batch and spawns the task that sends it; the lookups made before
//! that task runs (the connections woken in the same turn, queued ahead of it) join the batch,
//! which goes as one `MGET` (a `GET` when it holds one key). While it is in flight, new lookups
//! gather in the next batch, which the same task sends as soon as the answer is back: one command
//! at a time per worker and cache, so the busier the worker, the more keys each command carries,
//! and an idle worker's lookup goes at once. A lookup waits at most for the command in flight.
//!
//! Only on proxy workers ([`crate::serve_from_this_worker_thread`]): the sending task is spawned
//! on the thread's `LocalSet`. Elsewhere every lookup is its own `GET`.

use std::cell::{Cell, RefCell};

use tokio::sync::oneshot;

use crate::StoreError;

/// What Redis holds under one key.
pub(crate) type Raw = Option<Vec<u8>>;

/// One lookup's answer.
pub(crate) type Reply = Result<Raw, StoreError>;

/// The keys of one batch and, in the same order, who waits for each.
#[derive(Default)]
pub(crate) struct Batch {
    pub(crate) keys: Vec<String>,
    pub(crate) waiters: Vec<oneshot::Sender<Reply>>,
}

thread_local! {
    /// Whether lookups on this thread are batched ([`batch_token_lookups`]).
    static BATCHING: Cell<bool> = const { Cell::new(false) };
    /// The caches (by [`join`]'s `cache` identity) that have a sending task on this thread, each
    /// with the batch gathering for that task's next command (empty while nobody waits).
    static OPEN: RefCell<Vec<(usize, Batch)>> = const { RefCell::new(Vec::new()) };
}

/// From now on, token lookups made on this thread go to Redis in batches. Call it from a task of
/// the `LocalSet` that runs the thread's work for as long as the thread lives (the proxy workers):
/// each batch is sent by a task spawned there.
pub(crate) fn batch_token_lookups() {
    BATCHING.with(|b| b.set(true));
}

/// How a lookup joined.
pub(crate) enum Joined {
    /// It joined the batch of the cache's sending task: wait for the answer.
    Waiting(oneshot::Receiver<Reply>),
    /// The cache had no sending task on this thread: spawn it (it sends while [`take`] gives it
    /// batches), then wait for the answer.
    Opened(oneshot::Receiver<Reply>),
    /// This thread does not batch: send the key on its own.
    NotHere(String),
}

/// Adds `key` to the open batch of the cache identified by `cache` (an address that stays its
/// own while the batch is open: the sending task holds the cache).
pub(crate) fn join(cache: usize, key: String) -> Joined {
    if !BATCHING.with(Cell::get) {
        return Joined::NotHere(key);
    }
    let (tx, rx) = oneshot::channel();
    OPEN.with(|open| {
        let mut open = open.borrow_mut();
        if let Some((_, batch)) = open.iter_mut().find(|(c, _)| *c == cache) {
            batch.keys.push(key);
            batch.waiters.push(tx);
            return Joined::Waiting(rx);
        }
        open.push((
            cache,
            Batch {
                keys: vec![key],
                waiters: vec![tx],
            },
        ));
        Joined::Opened(rx)
    })
}

/// The batch gathered for the sending task of `cache`, emptied for the next; `None` when nobody
/// waits, and then the task's duty ends: the next lookup spawns another.
pub(crate) fn take(cache: usize) -> Option<Batch> {
    OPEN.with(|open| {
        let mut open = open.borrow_mut();
        let i = open.iter().position(|(c, _)| *c == cache)?;
        if open[i].1.keys.is_empty() {
            open.swap_remove(i);
            return None;
        }
        Some(std::mem::take(&mut open[i].1))
    })
}

/// Held by a sending task: should it end before [`take`] ends its duty (its runtime shutting
/// down), the lookups gathered for it are dropped, which answers them as unavailable, and the
/// next lookup spawns another sender instead of waiting for this one.
pub(crate) struct OnDuty(pub(crate) usize);

impl Drop for OnDuty {
    fn drop(&mut self) {
        // `try_with`: a thread's locals may already be gone when its last tasks are dropped.
        let _ = OPEN.try_with(|open| {
            if let Ok(mut open) = open.try_borrow_mut() {
                open.retain(|(c, _)| *c != self.0);
            }
        });
    }
}

/// Hands each waiter of `waiters` its answer: the values in order, or the failure to all.
pub(crate) fn answer(waiters: Vec<oneshot::Sender<Reply>>, values: Result<Vec<Raw>, StoreError>) {
    let failure = match values {
        Ok(values) if values.len() == waiters.len() => {
            for (waiter, value) in waiters.into_iter().zip(values) {
                // A lookup no longer waited for has dropped its end: nothing to tell it.
                let _ = waiter.send(Ok(value));
            }
            return;
        }
        Ok(values) => format!("redis: {} values for {} keys", values.len(), waiters.len()),
        Err(StoreError::Unavailable(why)) => why,
        Err(e) => e.to_string(),
    };
    for waiter in waiters {
        let _ = waiter.send(Err(StoreError::Unavailable(failure.clone())));
    }
}
