//! The proxy workers' timeouts: hyper's request-head timeout and the upstream answer's read
//! timeout, kept by each worker thread without a lock.
//!
//! Every proxied request arms two timeouts that almost never fire: hyper's `client_header_timeout`
//! while a keep-alive connection waits for its next request, and the service's `read_timeout`
//! while the upstream prepares its answer. tokio's timer serves every thread of a runtime: each
//! sleep that waits is registered with the time driver under its mutex, with atomic state, and
//! taken out again the same way — about a thousand instructions and four locked operations per
//! request under callgrind, plus hyper's clock read and allocation for the head timeout.
//!
//! Here a worker thread keeps its pending deadlines in one list per timeout length. Deadlines of
//! one length are armed in the order they fall due, so adding one is a push at the back and
//! removing one an unlink, both without a lock, a clock read or an allocation once the slab has
//! grown. One tokio sleep per worker ([`drive`]), armed at the earliest deadline, wakes what is
//! due: it fires at the same millisecond a tokio sleep would. Threads without [`drive`] (tests,
//! the admin API) get tokio's sleeps, through the same types.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::clock::instant_coarse as coarse_now;

/// Lengths closer than this share a list (hyper hands over deadlines, not lengths: a length
/// recovered from one can be off by a tick of the coarse clock).
const SAME_LENGTH: Duration = Duration::from_millis(10);

/// Marks a slot that links to nothing.
const NONE: u32 = u32::MAX;

/// Numbers the threads that run [`drive`], so that a deadline dropped on another thread (which
/// the proxy never does) leaves that thread's lists alone.
static NEXT_THREAD: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static TIMERS: RefCell<Option<Timers>> = const { RefCell::new(None) };
}

/// One worker thread's pending deadlines.
struct Timers {
    thread: u64,
    slots: Vec<Slot>,
    /// First free slot (the free ones are linked through `next`).
    free: u32,
    lists: Vec<List>,
    /// When [`drive`]'s sleep fires (`None`: not armed).
    armed: Option<Instant>,
    /// [`drive`]'s task, woken when a deadline falls due before `armed`.
    driver: Option<Waker>,
}

/// The deadlines of one timeout length, earliest first.
struct List {
    length: Duration,
    head: u32,
    tail: u32,
}

struct Slot {
    at: Instant,
    state: SlotState,
    list: u32,
    prev: u32,
    next: u32,
}

enum SlotState {
    Free,
    Waiting(Option<Waker>),
    Due,
}

impl Timers {
    fn new(thread: u64) -> Self {
        Self {
            thread,
            slots: Vec::new(),
            free: NONE,
            lists: Vec::new(),
            armed: None,
            driver: None,
        }
    }

    fn list_for(&mut self, length: Duration) -> u32 {
        let found = self
            .lists
            .iter()
            .position(|l| l.length.abs_diff(length) <= SAME_LENGTH);
        let at = found.unwrap_or_else(|| {
            self.lists.push(List {
                length,
                head: NONE,
                tail: NONE,
            });
            self.lists.len() - 1
        });
        u32::try_from(at).unwrap_or(NONE)
    }

    /// Adds a deadline; wakes [`drive`] when it falls due before the sleep is armed for.
    fn insert(&mut self, at: Instant, length: Duration, waker: Waker) -> u32 {
        let list = self.list_for(length);
        let slot = Slot {
            at,
            state: SlotState::Waiting(Some(waker)),
            list,
            prev: NONE,
            next: NONE,
        };
        let id = if self.free == NONE {
            self.slots.push(slot);
            u32::try_from(self.slots.len() - 1).unwrap_or(NONE)
        } else {
            let id = self.free;
            self.free = self.slots[id as usize].next;
            self.slots[id as usize] = slot;
            id
        };
        // Nearly always at the back; an earlier one (a tick of the coarse clock, a shorter
        // length sharing the list) walks back to its place.
        let l = &self.lists[list as usize];
        let mut after = l.tail;
        while after != NONE && self.slots[after as usize].at > at {
            after = self.slots[after as usize].prev;
        }
        self.link_after(list, after, id);
        if self.armed.is_none_or(|armed| at < armed) {
            if let Some(driver) = &self.driver {
                driver.wake_by_ref();
            }
        }
        id
    }

    fn link_after(&mut self, list: u32, after: u32, id: u32) {
        let next = if after == NONE {
            self.lists[list as usize].head
        } else {
            self.slots[after as usize].next
        };
        self.slots[id as usize].prev = after;
        self.slots[id as usize].next = next;
        if after == NONE {
            self.lists[list as usize].head = id;
        } else {
            self.slots[after as usize].next = id;
        }
        if next == NONE {
            self.lists[list as usize].tail = id;
        } else {
            self.slots[next as usize].prev = id;
        }
    }

    fn unlink(&mut self, id: u32) {
        let Slot {
            list, prev, next, ..
        } = self.slots[id as usize];
        if prev == NONE {
            self.lists[list as usize].head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NONE {
            self.lists[list as usize].tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
    }

    /// The owner is done with the slot, due or not.
    fn remove(&mut self, id: u32) {
        if matches!(self.slots[id as usize].state, SlotState::Waiting(_)) {
            self.unlink(id);
        }
        self.slots[id as usize].state = SlotState::Free;
        self.slots[id as usize].next = self.free;
        self.free = id;
    }

    /// Marks what is due at `now` and wakes its owners; the earliest deadline still waiting.
    fn fire(&mut self, now: Instant) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        for list in 0..self.lists.len() {
            loop {
                let head = self.lists[list].head;
                if head == NONE {
                    break;
                }
                let at = self.slots[head as usize].at;
                if at > now {
                    earliest = Some(earliest.map_or(at, |e| e.min(at)));
                    break;
                }
                self.unlink(head);
                let state = std::mem::replace(&mut self.slots[head as usize].state, SlotState::Due);
                if let SlotState::Waiting(Some(waker)) = state {
                    waker.wake();
                }
            }
        }
        earliest
    }
}

/// Runs this thread's timeouts until the thread's runtime stops: spawn it once on each proxy
/// worker (a `LocalSet`), before the worker serves connections.
pub async fn drive() {
    let thread = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
    TIMERS.with(|t| *t.borrow_mut() = Some(Timers::new(thread)));
    let _uninstall = Uninstall;
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    poll_fn(|cx| loop {
        let next = TIMERS.with(|t| {
            let mut t = t.borrow_mut();
            let timers = t.as_mut()?;
            if !timers
                .driver
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                timers.driver = Some(cx.waker().clone());
            }
            let next = timers.fire(Instant::now());
            timers.armed = next;
            next
        });
        // Nothing waits: sleep until a deadline is added (which wakes this task).
        let Some(next) = next else {
            return Poll::<()>::Pending;
        };
        sleep.as_mut().reset(next.into());
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
    })
    .await;
}

/// Takes the thread's timers away when [`drive`] ends (its runtime is shutting down): later
/// deadlines on this thread fall back to tokio's.
struct Uninstall;

impl Drop for Uninstall {
    fn drop(&mut self) {
        // The thread-local may already be gone if the thread itself is exiting.
        let _ = TIMERS.try_with(|t| t.borrow_mut().take());
    }
}

/// A deadline that one future waits for: in this worker's lists, or a tokio sleep on a thread
/// without [`drive`].
pub struct Deadline {
    kind: Kind,
}

enum Kind {
    /// Not yet in the lists: added at the first poll that has to wait.
    Unarmed {
        at: Instant,
        length: Duration,
    },
    Armed {
        thread: u64,
        slot: u32,
    },
    Done,
    Tokio(Pin<Box<tokio::time::Sleep>>),
}

impl Deadline {
    /// Falls due `length` after `start`.
    pub fn after(start: Instant, length: Duration) -> Self {
        let at = start.checked_add(length).unwrap_or(start + FAR);
        let installed = TIMERS.with(|t| t.borrow().is_some());
        Self {
            kind: if installed {
                Kind::Unarmed { at, length }
            } else {
                Kind::Tokio(Box::pin(tokio::time::sleep_until(at.into())))
            },
        }
    }

    /// Falls due `length` from now (on a thread without [`drive`], now by tokio's clock, which a
    /// test may have paused).
    pub fn after_now(length: Duration) -> Self {
        if TIMERS.with(|t| t.borrow().is_some()) {
            return Self::after(Instant::now(), length);
        }
        Self {
            kind: Kind::Tokio(Box::pin(tokio::time::sleep(length))),
        }
    }

    /// Falls due at `at` (the length it is filed under is reckoned from the coarse clock).
    pub fn at(at: Instant) -> Self {
        let now = coarse_now();
        Self::after(now, at.saturating_duration_since(now))
    }

    /// `Ready` once the deadline has passed.
    pub fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.kind {
            Kind::Done => Poll::Ready(()),
            Kind::Tokio(sleep) => sleep.as_mut().poll(cx),
            Kind::Unarmed { at, length } => {
                let (at, length) = (*at, *length);
                let armed = TIMERS.with(|t| {
                    let mut t = t.borrow_mut();
                    let timers = t.as_mut()?;
                    Some((timers.thread, timers.insert(at, length, cx.waker().clone())))
                });
                self.kind = match armed {
                    Some((thread, slot)) => Kind::Armed { thread, slot },
                    // The worker's timers went away (shutdown): tokio keeps this one.
                    None => Kind::Tokio(Box::pin(tokio::time::sleep_until(at.into()))),
                };
                if let Kind::Tokio(sleep) = &mut self.kind {
                    return sleep.as_mut().poll(cx);
                }
                Poll::Pending
            }
            Kind::Armed { thread, slot } => {
                let (thread, slot) = (*thread, *slot);
                let due = TIMERS.with(|t| {
                    let mut t = t.borrow_mut();
                    let timers = t.as_mut().filter(|t| t.thread == thread)?;
                    match &mut timers.slots[slot as usize].state {
                        SlotState::Waiting(waker) => {
                            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                                *waker = Some(cx.waker().clone());
                            }
                            Some(false)
                        }
                        SlotState::Due | SlotState::Free => Some(true),
                    }
                });
                match due {
                    Some(false) => Poll::Pending,
                    // Due, or its thread's timers are gone: nothing will wake it any more.
                    Some(true) | None => {
                        self.release();
                        self.kind = Kind::Done;
                        Poll::Ready(())
                    }
                }
            }
        }
    }

    fn release(&mut self) {
        if let Kind::Armed { thread, slot } = self.kind {
            let _ = TIMERS.try_with(|t| {
                if let Some(timers) = t.borrow_mut().as_mut().filter(|t| t.thread == thread) {
                    timers.remove(slot);
                }
            });
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.release();
    }
}

/// Further than any timeout the gateway accepts: where a deadline that would overflow goes.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// What [`within`] answers when the deadline came first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// Runs `fut` until `deadline`: its output, or [`Elapsed`]. The future is polled first, so one
/// that is ready never arms the deadline.
pub async fn within<F: Future>(mut deadline: Deadline, fut: F) -> Result<F::Output, Elapsed> {
    tokio::pin!(fut);
    poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        deadline.poll_due(cx).map(|()| Err(Elapsed))
    })
    .await
}

/// hyper's timer on the proxy workers: the request-head timeout in the worker's lists, read
/// from the coarse clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct WorkerTimer;

/// A [`Deadline`] as hyper's `Sleep`.
struct HyperSleep(Deadline);

impl Future for HyperSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().0.poll_due(cx)
    }
}

impl hyper::rt::Sleep for HyperSleep {}

impl hyper::rt::Timer for WorkerTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HyperSleep(Deadline::after(coarse_now(), duration)))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HyperSleep(Deadline::at(deadline)))
    }

    fn now(&self) -> Instant {
        coarse_now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `body` on a worker-like thread: a current-thread runtime, a `LocalSet`, [`drive`].
    fn on_worker<F: Future<Output = ()>>(body: F) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async move {
            tokio::task::spawn_local(drive());
            tokio::task::yield_now().await;
            assert!(
                TIMERS.with(|t| t.borrow().is_some()),
                "drive installs the timers"
            );
            body.await;
        });
    }

    #[test]
    fn deadlines_fire_on_time_in_order_and_not_before() {
        on_worker(async {
            let start = Instant::now();
            let short = within(
                Deadline::after(start, Duration::from_millis(100)),
                std::future::pending::<()>(),
            );
            let long = within(
                Deadline::after(start, Duration::from_millis(300)),
                std::future::pending::<()>(),
            );
            let (short_done, long_done) = tokio::join!(
                async {
                    assert_eq!(short.await, Err(Elapsed));
                    start.elapsed()
                },
                async {
                    assert_eq!(long.await, Err(Elapsed));
                    start.elapsed()
                }
            );
            assert!(short_done >= Duration::from_millis(100), "{short_done:?}");
            assert!(short_done < Duration::from_millis(250), "{short_done:?}");
            assert!(long_done >= Duration::from_millis(300), "{long_done:?}");
            assert!(long_done < Duration::from_millis(450), "{long_done:?}");
        });
    }

    #[test]
    fn a_ready_future_wins_and_a_dropped_deadline_leaves_the_lists() {
        on_worker(async {
            let now = Instant::now();
            let out = within(Deadline::after(now, Duration::from_secs(60)), async { 7 }).await;
            assert_eq!(out, Ok(7));
            // One that waited, then finished before its deadline.
            let out = within(Deadline::after(now, Duration::from_secs(60)), async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                8
            })
            .await;
            assert_eq!(out, Ok(8));
            TIMERS.with(|t| {
                let t = t.borrow();
                let timers = t.as_ref().expect("installed");
                assert!(timers
                    .lists
                    .iter()
                    .all(|l| l.head == NONE && l.tail == NONE));
                assert!(timers
                    .slots
                    .iter()
                    .all(|s| matches!(s.state, SlotState::Free)));
            });
        });
    }

    #[test]
    fn an_earlier_deadline_added_later_wakes_the_driver_and_fires_first() {
        on_worker(async {
            let start = Instant::now();
            // Armed first, for late: the driver sleeps until then.
            let late = tokio::task::spawn_local(within(
                Deadline::after(start, Duration::from_secs(30)),
                std::future::pending::<()>(),
            ));
            tokio::time::sleep(Duration::from_millis(10)).await;
            // Then a much shorter one, in another list and at the front of its own.
            let early = within(
                Deadline::after(Instant::now(), Duration::from_millis(50)),
                std::future::pending::<()>(),
            )
            .await;
            assert_eq!(early, Err(Elapsed));
            assert!(start.elapsed() < Duration::from_secs(1));
            assert!(!late.is_finished());
            late.abort();
        });
    }

    #[test]
    fn deadlines_of_one_length_out_of_order_still_fire_in_order() {
        let mut timers = Timers::new(0);
        let base = Instant::now();
        let waker = Waker::noop().clone();
        let length = Duration::from_secs(5);
        let b = timers.insert(base + Duration::from_millis(20), length, waker.clone());
        let a = timers.insert(base + Duration::from_millis(10), length, waker.clone());
        let c = timers.insert(base + Duration::from_millis(30), length, waker.clone());
        assert_eq!(timers.lists.len(), 1);
        assert_eq!(
            timers.fire(base + Duration::from_millis(15)),
            Some(base + Duration::from_millis(20))
        );
        assert!(matches!(timers.slots[a as usize].state, SlotState::Due));
        assert!(matches!(
            timers.slots[b as usize].state,
            SlotState::Waiting(_)
        ));
        timers.remove(b);
        assert_eq!(
            timers.fire(base + Duration::from_millis(25)),
            Some(base + Duration::from_millis(30))
        );
        timers.remove(a);
        timers.remove(c);
        assert_eq!(timers.fire(base + Duration::from_secs(1)), None);
        assert_eq!(timers.lists[0].head, NONE);
    }

    #[test]
    fn without_a_driver_deadlines_are_tokio_sleeps() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let start = Instant::now();
            let out = within(
                Deadline::after(start, Duration::from_millis(50)),
                std::future::pending::<()>(),
            )
            .await;
            assert_eq!(out, Err(Elapsed));
            assert!(start.elapsed() >= Duration::from_millis(50));
        });
    }
}
