//! A single-threaded "wake everyone" signal for tasks of one executor.
//!
//! Appenders waiting for the group commit, and tasks waiting to take the writer role, sleep on
//! it. It holds no data and never blocks a thread; it must only be used within one executor.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub(crate) struct Notify {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Notify {
    /// Wakes every task listening now. Listeners created after this call are not woken.
    pub(crate) fn notify_all(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers {
            waker.wake();
        }
    }

    /// A future that completes at the next `notify_all`. Create it before releasing the state
    /// borrow that decided to wait, so no notification falls in between.
    pub(crate) fn listen(&self) -> Listen<'_> {
        Listen {
            notify: self,
            generation: self.generation.get(),
        }
    }
}

pub(crate) struct Listen<'a> {
    notify: &'a Notify,
    generation: u64,
}

impl Future for Listen<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.generation.get() != self.generation {
            return Poll::Ready(());
        }
        self.notify.wakers.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

/// Appenders waiting for their offsets to be acknowledged, keyed by (target offset, ticket).
///
/// Why not `Notify`: waking every waiter at the end of every round costs O(waiters) per round,
/// and under a backlog that quadratic work starves the executor and the backlog grows. Here a
/// round's end wakes only the waiters it satisfied, plus the one next in line, which takes the
/// writer role for the following round.
#[derive(Default)]
pub(crate) struct AckWaiters {
    next_ticket: Cell<u64>,
    waiters: RefCell<std::collections::BTreeMap<(i64, u64), Waker>>,
}

impl AckWaiters {
    pub(crate) fn ticket(&self) -> u64 {
        let t = self.next_ticket.get();
        self.next_ticket.set(t.wrapping_add(1));
        t
    }

    pub(crate) fn register(&self, key: (i64, u64), waker: &Waker) {
        self.waiters.borrow_mut().insert(key, waker.clone());
    }

    /// Removes a waiter; returns whether it was still registered (not woken yet).
    pub(crate) fn remove(&self, key: (i64, u64)) -> bool {
        self.waiters.borrow_mut().remove(&key).is_some()
    }

    /// Wakes every waiter whose target is at or below `acked`, and, if `wake_next`, the waiter
    /// with the smallest remaining target.
    pub(crate) fn wake_satisfied(&self, acked: i64, wake_next: bool) {
        let ready = {
            let mut waiters = self.waiters.borrow_mut();
            let rest = waiters.split_off(&(acked.saturating_add(1), 0));
            let ready = std::mem::replace(&mut *waiters, rest);
            let next = if wake_next {
                waiters.pop_first().map(|(_, w)| w)
            } else {
                None
            };
            (ready, next)
        };
        for waker in ready.0.into_values() {
            waker.wake();
        }
        if let Some(waker) = ready.1 {
            waker.wake();
        }
    }

    pub(crate) fn wake_all(&self) {
        let all = std::mem::take(&mut *self.waiters.borrow_mut());
        for waker in all.into_values() {
            waker.wake();
        }
    }
}
