//! The shard's budget for request bytes held in memory, across all its connections (Kafka's
//! `queued.max.request.bytes`).
//!
//! A request is charged before its buffer is allocated (see `frames` for when), so memory
//! follows the bytes that actually arrived, never a frame's declared size. When the budget is
//! spent, connections that need more wait (they stop being read: backpressure) while the rest
//! of the shard runs on. Small
//! requests (ApiVersions, Metadata, heartbeats, commits) may also draw on a reserve that
//! large requests cannot touch, so a spent budget never locks clients out of the control
//! plane. A charge is released when its request has been answered.

use std::cell::Cell;
use std::rc::Rc;

use glommio::sync::Semaphore;

use crate::limits;

pub struct RequestBudget {
    main: Semaphore,
    main_bytes: u64,
    reserve: Semaphore,
    waits: Cell<u64>,
}

/// Bytes charged to the budget; released when dropped.
pub struct Charge {
    budget: Rc<RequestBudget>,
    main: u64,
    reserve: u64,
}

impl RequestBudget {
    pub fn new(main_bytes: usize) -> Rc<RequestBudget> {
        Rc::new(RequestBudget {
            main: Semaphore::new(main_bytes as u64),
            main_bytes: main_bytes as u64,
            reserve: Semaphore::new(limits::SMALL_REQUEST_RESERVE_BYTES as u64),
            waits: Cell::new(0),
        })
    }

    /// Request bytes held now (a gauge).
    pub fn in_use(&self) -> u64 {
        let reserve_bytes = limits::SMALL_REQUEST_RESERVE_BYTES as u64;
        (self.main_bytes - self.main.available()) + (reserve_bytes - self.reserve.available())
    }

    /// Times a connection had to wait for the budget (a counter).
    pub fn waits(&self) -> u64 {
        self.waits.get()
    }

    /// An empty charge, grown as the request's buffer grows.
    pub fn charge(self: &Rc<Self>) -> Charge {
        Charge {
            budget: self.clone(),
            main: 0,
            reserve: 0,
        }
    }
}

impl Charge {
    /// Charges `bytes` more, waiting if the budget is spent. A small request that finds the
    /// main budget spent is charged to the reserve instead.
    pub async fn grow(&mut self, bytes: usize) {
        let bytes = bytes as u64;
        if bytes == 0 {
            return;
        }
        let budget = self.budget.clone();
        let small = self.main + self.reserve + bytes <= limits::SMALL_REQUEST_BYTES as u64;
        if budget.main.try_acquire(bytes).unwrap_or(false) {
            self.main += bytes;
        } else if small && budget.reserve.try_acquire(bytes).unwrap_or(false) {
            self.reserve += bytes;
        } else {
            budget.waits.set(budget.waits.get() + 1);
            let pool = if small { &budget.reserve } else { &budget.main };
            // The semaphores are never closed, so acquiring can only wait.
            if pool.acquire(bytes).await.is_err() {
                return;
            }
            if small {
                self.reserve += bytes;
            } else {
                self.main += bytes;
            }
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let budget = &self.budget;
        if self.main > 0 {
            budget.main.signal(self.main);
        }
        if self.reserve > 0 {
            budget.reserve.signal(self.reserve);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;

    fn run<F: std::future::Future<Output = ()> + 'static>(
        test: impl FnOnce() -> F + Send + 'static,
    ) {
        LocalExecutorBuilder::default()
            .spawn(test)
            .expect("executor")
            .join()
            .expect("join");
    }

    #[test]
    fn charges_are_released_on_drop() {
        run(|| async {
            let budget = RequestBudget::new(1 << 20);
            let mut a = budget.charge();
            a.grow(600 << 10).await;
            a.grow(100 << 10).await;
            assert_eq!(budget.in_use(), 700 << 10);
            drop(a);
            assert_eq!(budget.in_use(), 0);
        });
    }

    #[test]
    fn a_small_request_passes_a_spent_budget_through_the_reserve() {
        run(|| async {
            let budget = RequestBudget::new(64 << 10);
            let mut large = budget.charge();
            large.grow(64 << 10).await;
            let mut small = budget.charge();
            small.grow(512).await;
            assert_eq!(budget.in_use(), (64 << 10) + 512);
            assert_eq!(budget.waits(), 0);
        });
    }

    #[test]
    fn a_large_request_waits_until_the_budget_is_released() {
        run(|| async {
            let budget = RequestBudget::new(64 << 10);
            let mut first = budget.charge();
            first.grow(48 << 10).await;
            let waiter = {
                let budget = budget.clone();
                glommio::spawn_local(async move {
                    let mut second = budget.charge();
                    second.grow(32 << 10).await;
                    budget.in_use()
                })
            };
            glommio::yield_if_needed().await;
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
            assert_eq!(budget.in_use(), 48 << 10, "the second charge is waiting");
            drop(first);
            assert_eq!(waiter.await, 32 << 10);
            assert_eq!(budget.waits(), 1);
        });
    }
}
