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
        Listen { notify: self, generation: self.generation.get() }
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
