//! Token lookups made on one proxy worker in the same turn of its event loop, sent to Redis as one
//! command. Under load a worker wakes for several connections at once, and each request carrying a
//! token the node has not cached asks Redis for it: sent one `GET` each, every lookup paid the
//! client's per-command work (its queue to the connection's driver, the reply's parse and
//! hand-back) and Redis its own per-command work, on the cores the proxy shares. Here the first
//! lookup of a turn opens a batch and spawns the task that sends it; the lookups made before that
//! task runs (the connections woken in the same turn, queued ahead of it) join the batch, which
//! goes as one `MGET` (a `GET` when it holds one key). A lookup waits at most one turn longer.
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
    /// The open batch of each cache (by [`join`]'s `cache` identity) on this thread.
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
    /// It joined an open batch: wait for the answer.
    Waiting(oneshot::Receiver<Reply>),
    /// It opened a batch: spawn the task that sends it ([`take`]), then wait for the answer.
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

/// Closes the open batch of `cache` and hands it to its sender; lookups from now on open another.
pub(crate) fn take(cache: usize) -> Batch {
    OPEN.with(|open| {
        let mut open = open.borrow_mut();
        match open.iter().position(|(c, _)| *c == cache) {
            Some(i) => open.swap_remove(i).1,
            None => Batch::default(),
        }
    })
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
