//! Long-poll fetches parked on a partition, and the per-shard cap on how many may be parked.
//!
//! A parked fetch registers `(seen, sender)` under an id; the partition wakes every
//! registration whose `seen` the high watermark has passed. A `Parked` handle removes its
//! registration and returns its share of the shard's `ParkBudget` when dropped, so a fetch that
//! is answered (or whose client left) releases its waiters at once instead of at its deadline.
//! Everything here lives on one shard's thread.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};

use futures::channel::oneshot;
use tern_protocol::types::Offset;

/// The fetches parked on one partition, by registration id.
#[derive(Debug, Default)]
pub struct Waiters {
    next_id: u64,
    parked: BTreeMap<u64, (Offset, oneshot::Sender<()>)>,
}

impl Waiters {
    /// Wakes every fetch that has seen less than `high_watermark`.
    pub fn wake_below(&mut self, high_watermark: Offset) {
        let due: Vec<u64> = self
            .parked
            .iter()
            .filter(|(_, (seen, _))| *seen < high_watermark)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some((_, waiter)) = self.parked.remove(&id) {
                let _ = waiter.send(());
            }
        }
    }

    /// Wakes every parked fetch (the partition is going away).
    pub fn wake_all(&mut self) {
        for (_, (_, waiter)) in std::mem::take(&mut self.parked) {
            let _ = waiter.send(());
        }
    }

    pub fn len(&self) -> usize {
        self.parked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parked.is_empty()
    }
}

/// How many registrations one shard's partitions may hold at once (`--max-parked-fetches`).
#[derive(Debug)]
pub struct ParkBudget {
    cap: usize,
    used: Cell<usize>,
    /// Registrations ever made (a metric).
    parks_total: Cell<u64>,
}

impl ParkBudget {
    pub fn new(cap: usize) -> Rc<ParkBudget> {
        Rc::new(ParkBudget {
            cap,
            used: Cell::new(0),
            parks_total: Cell::new(0),
        })
    }

    pub fn used(&self) -> usize {
        self.used.get()
    }

    pub fn parks_total(&self) -> u64 {
        self.parks_total.get()
    }
}

/// One fetch's registration on one partition.
pub struct Parked {
    receiver: Option<oneshot::Receiver<()>>,
    registration: Option<Registration>,
}

struct Registration {
    waiters: Weak<RefCell<Waiters>>,
    id: u64,
    budget: Rc<ParkBudget>,
}

impl Parked {
    /// A registration that is due at once (the partition already moved, or is going away).
    pub fn ready() -> Parked {
        Parked {
            receiver: None,
            registration: None,
        }
    }

    /// Resolves when the partition wakes this fetch (or drops its registration).
    pub async fn wait(&mut self) {
        if let Some(receiver) = self.receiver.as_mut() {
            let _ = receiver.await;
        }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        if let Some(registration) = self.registration.take() {
            if let Some(waiters) = registration.waiters.upgrade() {
                waiters.borrow_mut().parked.remove(&registration.id);
            }
            let budget = &registration.budget;
            budget.used.set(budget.used.get() - 1);
        }
    }
}

/// Registers a fetch that has seen `seen` on `waiters`; `None` when `budget` is spent.
pub fn park(
    waiters: &Rc<RefCell<Waiters>>,
    seen: Offset,
    budget: &Rc<ParkBudget>,
) -> Option<Parked> {
    if budget.used.get() >= budget.cap {
        return None;
    }
    budget.used.set(budget.used.get() + 1);
    budget.parks_total.set(budget.parks_total.get() + 1);
    let (sender, receiver) = oneshot::channel();
    let mut list = waiters.borrow_mut();
    let id = list.next_id;
    list.next_id += 1;
    list.parked.insert(id, (seen, sender));
    Some(Parked {
        receiver: Some(receiver),
        registration: Some(Registration {
            waiters: Rc::downgrade(waiters),
            id,
            budget: budget.clone(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn waiters_wake_once_the_watermark_passes_what_they_saw() {
        let waiters = Rc::new(RefCell::new(Waiters::default()));
        let budget = ParkBudget::new(10);
        let mut at_5 = park(&waiters, Offset(5), &budget).unwrap();
        let mut at_9 = park(&waiters, Offset(9), &budget).unwrap();
        waiters.borrow_mut().wake_below(Offset(5));
        assert!(at_5.wait().now_or_never().is_none(), "5 is not past 5");
        waiters.borrow_mut().wake_below(Offset(6));
        assert!(at_5.wait().now_or_never().is_some());
        assert!(at_9.wait().now_or_never().is_none());
        assert_eq!(waiters.borrow().len(), 1);
    }

    #[test]
    fn the_cap_refuses_more_registrations_and_dropping_returns_them() {
        let waiters = Rc::new(RefCell::new(Waiters::default()));
        let budget = ParkBudget::new(2);
        let a = park(&waiters, Offset(0), &budget).unwrap();
        let _b = park(&waiters, Offset(0), &budget).unwrap();
        assert!(park(&waiters, Offset(0), &budget).is_none());
        assert_eq!(budget.used(), 2);
        drop(a);
        assert_eq!(budget.used(), 1);
        assert_eq!(
            waiters.borrow().len(),
            1,
            "a dropped fetch leaves no registration"
        );
        assert!(park(&waiters, Offset(0), &budget).is_some());
    }

    #[test]
    fn a_woken_registration_still_returns_its_budget_when_dropped() {
        let waiters = Rc::new(RefCell::new(Waiters::default()));
        let budget = ParkBudget::new(1);
        let mut parked = park(&waiters, Offset(0), &budget).unwrap();
        waiters.borrow_mut().wake_all();
        assert!(parked.wait().now_or_never().is_some());
        assert!(waiters.borrow().is_empty());
        drop(parked);
        assert_eq!(budget.used(), 0);
    }
}
