//! Zeroing ahead: a busy active segment's blocks past its end are written with zeros before
//! the appends reach them, so an append is a direct write over blocks that are already written
//! inside the file's size.
//!
//! Why: a direct write past the end of file, or into preallocated (unwritten) extents, changes
//! metadata (the file size, the extent's written flag). On ext4 such a write cannot be issued
//! inline from an io_uring submission (it is punted to an io-wq worker thread: a context switch
//! or two per write), and the fdatasync after it must commit the journal (a journal write and a
//! second cache flush). A write over written blocks inside the file's size changes neither: it
//! is issued inline, and fdatasync is one device cache flush. The price is writing every byte
//! twice; the zeros are written in the background, one chunk at a time per shard, about a
//! second of the segment's write rate ahead, only for segments that hold
//! `limits::ZERO_AHEAD_FROM_BYTES` or more, and never when the appends keep catching up with
//! them (`limits::ZERO_AHEAD_BACKOFF`).
//!
//! The rules that keep it safe:
//! - A zeroing write covers `[start, end)` with `start` at or past both the aligned end of the
//!   segment's data and the end of the writer's write in flight, so it never overwrites data.
//!   While it is in flight (`State::zeroing` holds its start), the writer does not write past
//!   that start: it waits for the zeroing to complete.
//! - `roll`, `truncate_to` and `close` change or seal the active file's size: they hold off
//!   zeroing (`hold_zeroing`) and wait for the one in flight, so no zero lands past a sealed
//!   segment's end (a sealed segment's size is its file's).
//! - Zeros past the logical end are what recovery already expects after a crash (the scan
//!   stops at the first byte that is not a valid batch; see `segment::scan`), and `close` and
//!   `roll` truncate the file to its data.
//! - After a zeroing write the zeroer fdatasyncs the file (its metadata changes are committed
//!   off the appends' path). An error there fails the log: the file's error state is shared by
//!   every descriptor-level sync, and the appends' own fdatasync might not see it again.

use std::rc::Rc;
use std::time::Instant;

use glommio::sync::Semaphore;

use crate::limits;
use crate::segment::align_up;

use super::{active, active_mut, io_ctx, Inner, State};

thread_local! {
    /// One zeroing write at a time per shard (per executor thread): the bound on the disk
    /// bandwidth zeroing takes from the appends.
    static ZEROING_SLOTS: Rc<Semaphore> = Rc::new(Semaphore::new(1));
}

/// A planned zeroing write.
struct ZeroPlan {
    file: Rc<glommio::io::DmaFile>,
    base: tern_protocol::types::Offset,
    start: u64,
    end: u64,
    /// Preallocate to here first, when the zeroing goes past the preallocated extent.
    preallocate_to: Option<u64>,
    truncations: u64,
}

impl State {
    /// The zeroing write due now for the active segment, if any.
    fn zero_plan(&self) -> Option<(u64, u64, Option<u64>)> {
        if self.closed
            || self.failed.is_some()
            || self.truncating
            || self.zeroing_holds > 0
            || self.zeroing.is_some()
            || self.zero_paused_until.is_some_and(|t| Instant::now() < t)
        {
            return None;
        }
        let active = active(&self.segments);
        if active.size_bytes < limits::ZERO_AHEAD_FROM_BYTES {
            return None;
        }
        let data_end = align_up(active.size_bytes).max(self.write_in_flight_end);
        // The segment's write rate so far, counted over at least a second.
        let elapsed_ms = active
            .first_append_ms
            .map_or(0, |first| self.last_write_ms.saturating_sub(first))
            .max(1000) as u64;
        let window = limits::zero_ahead_window(active.size_bytes * 1000 / elapsed_ms);
        let want = (data_end + window).min(align_up(self.config.segment_bytes));
        // Refilled once half the window is used, in chunks.
        if active.zeroed_bytes >= want.min(data_end + window / 2) {
            return None;
        }
        let start = active.zeroed_bytes.max(data_end);
        let end = want.min(start + limits::ZERO_CHUNK_BYTES_MAX);
        if end <= start {
            return None;
        }
        let preallocate_to =
            (end > active.preallocated_bytes).then(|| end + limits::preallocate_extent(end));
        Some((start, end, preallocate_to))
    }
}

/// Holds off zeroing while alive; see `Inner::hold_zeroing`.
pub(super) struct ZeroingHold<'a> {
    inner: &'a Inner,
}

impl Drop for ZeroingHold<'_> {
    fn drop(&mut self) {
        self.inner.state.borrow_mut().zeroing_holds -= 1;
        self.inner.zero_ahead_if_due();
    }
}

impl super::Log {
    /// Failure injection for tests: every zeroing write waits `delay` before it is issued, so
    /// a roll or a truncation meets one in flight.
    #[doc(hidden)]
    pub fn inject_zeroing_delay(&self, delay: std::time::Duration) {
        self.inner.state.borrow_mut().zeroing_delay = Some(delay);
    }
}

impl Inner {
    /// Starts a background zeroing write if the active segment is due one. Called after every
    /// write to the active segment and when a zeroing completes. Cheap when nothing is due.
    pub(super) fn zero_ahead_if_due(&self) {
        let Some(this) = self.this.upgrade() else {
            return;
        };
        {
            let mut st = self.state.borrow_mut();
            if st.zero_scheduled || st.zero_plan().is_none() {
                return;
            }
            st.zero_scheduled = true;
        }
        glommio::spawn_local(async move {
            let slots = ZEROING_SLOTS.with(Rc::clone);
            // The semaphore is never closed, so acquiring cannot fail.
            let _slot = slots.acquire_permit(1).await;
            this.zero_once().await;
            this.state.borrow_mut().zero_scheduled = false;
            this.zero_ahead_if_due();
        })
        .detach();
    }

    /// One zeroing write (plan, preallocate, write zeros, fdatasync).
    async fn zero_once(&self) {
        let plan = {
            let mut st = self.state.borrow_mut();
            let Some((start, end, preallocate_to)) = st.zero_plan() else {
                return;
            };
            let active = active(&st.segments);
            let Some(file) = active.file.if_open() else {
                return;
            };
            let base = active.base();
            st.zeroing = Some(start);
            ZeroPlan {
                file,
                base,
                start,
                end,
                preallocate_to,
                truncations: st.truncations,
            }
        };
        let written = self.write_zeros(&plan).await;
        {
            let mut st = self.state.borrow_mut();
            st.zeroing = None;
            let same_segment =
                st.truncations == plan.truncations && active(&st.segments).base() == plan.base;
            match &written {
                Ok(()) if same_segment => {
                    let active = active_mut(&mut st.segments);
                    active.zeroed_bytes = active.zeroed_bytes.max(plan.end);
                    if let Some(to) = plan.preallocate_to {
                        active.preallocated_bytes = active.preallocated_bytes.max(to);
                    }
                    st.stats.zeroed_bytes += plan.end - plan.start;
                }
                Ok(()) => {}
                Err(error) => {
                    // Out of space, most likely: the appends will meet the same and fail the
                    // log; zeroing only stops for a while.
                    tracing::warn!(dir = %self.dir.display(), %error, "zeroing ahead failed");
                    st.zero_paused_until = Some(Instant::now() + limits::ZERO_AHEAD_BACKOFF);
                }
            }
        }
        self.notify.notify_all();
        if written.is_ok() {
            if let Err(error) = plan.file.fdatasync().await.map_err(io_ctx(format!(
                "fdatasync after zeroing in {}",
                self.dir.display()
            ))) {
                self.fail(&error);
            }
        }
    }

    async fn write_zeros(&self, plan: &ZeroPlan) -> Result<(), crate::error::StorageIoError> {
        let delay = self.state.borrow().zeroing_delay;
        if let Some(delay) = delay {
            glommio::timer::sleep(delay).await;
        }
        let what = || self.dir.display().to_string();
        if let Some(to) = plan.preallocate_to {
            plan.file
                .pre_allocate(to, true)
                .await
                .map_err(io_ctx(format!("preallocating in {}", what())))?;
        }
        let len = (plan.end - plan.start) as usize;
        let mut zeros = plan.file.alloc_dma_buffer(len);
        zeros.as_bytes_mut().fill(0);
        let written = plan
            .file
            .write_at(zeros, plan.start)
            .await
            .map_err(io_ctx(format!("zeroing in {}", what())))?;
        if written != len {
            return Err(crate::error::StorageIoError::new(
                format!("short zeroing write in {}", what()),
                std::io::Error::from(std::io::ErrorKind::WriteZero),
            ));
        }
        Ok(())
    }

    /// Stops zeroing until the returned hold is dropped, and waits for a zeroing write in
    /// flight to complete. For operations that change the active file's size.
    pub(super) async fn hold_zeroing(&self) -> ZeroingHold<'_> {
        self.state.borrow_mut().zeroing_holds += 1;
        let hold = ZeroingHold { inner: self };
        self.wait_zeroing(None).await;
        hold
    }

    /// Waits until no zeroing write in flight starts below `end` (None: until none is in
    /// flight). The writer calls it before writing up to `end`; when it has to wait, the
    /// appends caught up with zeroing, which then pauses for a while.
    pub(super) async fn wait_zeroing(&self, end: Option<u64>) {
        let mut waited = false;
        loop {
            let listen = {
                let mut st = self.state.borrow_mut();
                match (st.zeroing, end) {
                    (Some(start), Some(end)) if end > start => {
                        if !waited {
                            st.stats.zeroing_waits += 1;
                            st.zero_paused_until =
                                Some(Instant::now() + limits::ZERO_AHEAD_BACKOFF);
                        }
                    }
                    (Some(_), None) => {}
                    _ => return,
                }
                self.notify.listen()
            };
            waited = true;
            listen.await;
        }
    }
}
