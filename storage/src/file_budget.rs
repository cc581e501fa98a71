//! The budget of open sealed-segment files, shared by every log of a shard, and the handle a
//! segment holds its file through.
//!
//! An active segment's file stays open while it is active: appends, syncs and zeroing ahead
//! need it. A sealed segment's file is only read, so it is opened when a read needs it and
//! kept open within the shard's budget, least recently used closed first. A shard's open
//! files are then one per partition plus at most `limit`, however many segments its logs
//! hold (Kafka keeps every segment open and asks for a descriptor limit above their count).
//!
//! Closing takes the budget's handle away; a read that holds the file keeps it open until it
//! is done (glommio closes a dropped file on its next I/O cycle). What it must never do: close
//! an active segment's file, or keep more sealed files than `limit` (a file opened for one read
//! while every slot is taken still counts, and evicts another).
//!
//! Not thread-safe by design: one budget per shard, like the logs that use it.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};

use glommio::io::{DmaFile, OpenOptions};

use crate::error::StorageIoError;

/// Counters for `/metrics` and the benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileBudgetStats {
    pub limit: usize,
    /// Sealed segments' files open now.
    pub open: usize,
    /// Sealed segments' files opened again for a read.
    pub reopens: u64,
    /// Files closed to stay within the budget.
    pub evictions: u64,
}

#[derive(Default)]
struct State {
    limit: usize,
    tick: u64,
    next_id: u64,
    /// Open sealed files: id -> (slot, last use).
    open: HashMap<u64, (Weak<Slot>, u64)>,
    /// The same, by last use.
    by_use: BTreeMap<u64, u64>,
    stats: FileBudgetStats,
}

/// See the module documentation.
pub struct FileBudget {
    state: RefCell<State>,
}

impl std::fmt::Debug for FileBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBudget")
            .field("stats", &self.stats())
            .finish()
    }
}

impl FileBudget {
    /// At most `limit` sealed segments' files open at once (at least one).
    pub fn new(limit: usize) -> Rc<FileBudget> {
        Rc::new(FileBudget {
            state: RefCell::new(State {
                limit: limit.max(1),
                ..State::default()
            }),
        })
    }

    pub fn stats(&self) -> FileBudgetStats {
        let st = self.state.borrow();
        FileBudgetStats {
            limit: st.limit,
            open: st.open.len(),
            ..st.stats
        }
    }

    /// Counts `slot`'s open file, closing the least recently used others beyond the limit.
    fn admit(&self, slot: &Rc<Slot>) {
        let evicted = {
            let mut st = self.state.borrow_mut();
            st.tick += 1;
            let tick = st.tick;
            if let Some((_, last)) = st.open.insert(slot.id, (Rc::downgrade(slot), tick)) {
                st.by_use.remove(&last);
            }
            st.by_use.insert(tick, slot.id);
            let mut evicted = Vec::new();
            while st.open.len() > st.limit {
                let Some((_, id)) = st.by_use.pop_first() else {
                    break;
                };
                if let Some((victim, _)) = st.open.remove(&id) {
                    st.stats.evictions += 1;
                    evicted.push(victim);
                }
            }
            evicted
        };
        // Outside the borrow: dropping a slot's file may drop the slot's last user.
        for victim in evicted.into_iter().filter_map(|weak| weak.upgrade()) {
            victim.file.borrow_mut().take();
        }
    }

    fn touch(&self, id: u64) {
        let mut st = self.state.borrow_mut();
        st.tick += 1;
        let tick = st.tick;
        if let Some((_, last)) = st.open.get_mut(&id) {
            let before = std::mem::replace(last, tick);
            st.by_use.remove(&before);
            st.by_use.insert(tick, id);
        }
    }

    fn forget(&self, id: u64) {
        let mut st = self.state.borrow_mut();
        if let Some((_, last)) = st.open.remove(&id) {
            st.by_use.remove(&last);
        }
    }

    fn next_id(&self) -> u64 {
        let mut st = self.state.borrow_mut();
        st.next_id += 1;
        st.next_id
    }
}

struct Slot {
    id: u64,
    path: PathBuf,
    file: RefCell<Option<Rc<DmaFile>>>,
    /// An active segment's file: open, and not counted in (nor closed by) the budget.
    pinned: Cell<bool>,
    /// `close` ran: the segment is deleted or its log closed; never opened again.
    closed: Cell<bool>,
    budget: Rc<FileBudget>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.budget.forget(self.id);
    }
}

/// A segment's file, open or not (see the module documentation). Clones are the same file.
#[derive(Clone)]
pub(crate) struct SegmentFile(Rc<Slot>);

impl SegmentFile {
    fn with(path: &Path, file: Option<DmaFile>, budget: &Rc<FileBudget>) -> SegmentFile {
        SegmentFile(Rc::new(Slot {
            id: budget.next_id(),
            path: path.to_path_buf(),
            file: RefCell::new(file.map(Rc::new)),
            pinned: Cell::new(false),
            closed: Cell::new(false),
            budget: budget.clone(),
        }))
    }

    /// The active segment's file, open until `seal`.
    pub fn active(path: &Path, file: DmaFile, budget: &Rc<FileBudget>) -> SegmentFile {
        let handle = SegmentFile::with(path, Some(file), budget);
        handle.0.pinned.set(true);
        handle
    }

    /// A sealed segment's file, open (counted in the budget) or to be opened when read.
    pub fn sealed(path: &Path, file: Option<DmaFile>, budget: &Rc<FileBudget>) -> SegmentFile {
        let handle = SegmentFile::with(path, file, budget);
        if handle.0.file.borrow().is_some() {
            budget.admit(&handle.0);
        }
        handle
    }

    /// The file, opened again if the budget closed it; None once `close` ran (the segment
    /// was deleted or its log closed meanwhile: the caller looks at the log again).
    pub async fn open(&self) -> Result<Option<Rc<DmaFile>>, StorageIoError> {
        if self.0.closed.get() {
            return Ok(None);
        }
        let open = self.0.file.borrow().clone();
        if let Some(file) = open {
            if !self.0.pinned.get() {
                self.0.budget.touch(self.0.id);
            }
            return Ok(Some(file));
        }
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(&self.0.path)
            .await;
        if self.0.closed.get() {
            // Deleted while it opened (or failed to open because of that).
            if let Ok(file) = opened {
                let _ = file.close().await;
            }
            return Ok(None);
        }
        let file = opened
            .map_err(|e| StorageIoError::new(format!("opening {}", self.0.path.display()), e))?;
        // Another read may have opened it meanwhile: keep one.
        let file = {
            let mut slot = self.0.file.borrow_mut();
            slot.get_or_insert_with(|| Rc::new(file)).clone()
        };
        self.0.budget.state.borrow_mut().stats.reopens += 1;
        if !self.0.pinned.get() {
            self.0.budget.admit(&self.0);
        }
        Ok(Some(file))
    }

    /// The file if it is open now (always, for the active segment's), without touching the
    /// budget's order.
    pub fn if_open(&self) -> Option<Rc<DmaFile>> {
        self.0.file.borrow().clone()
    }

    /// `open`, for a segment the caller knows is still the log's (it holds the writer role,
    /// or the segment is the active one): a closed one is an error.
    pub async fn file(&self) -> Result<Rc<DmaFile>, StorageIoError> {
        self.open().await?.ok_or_else(|| {
            StorageIoError::new(
                format!("using {}", self.0.path.display()),
                std::io::Error::other("the segment's file was closed"),
            )
        })
    }

    /// The active segment became a sealed one: its file now counts in the budget.
    pub fn seal(&self) {
        if self.0.pinned.replace(false) && self.0.file.borrow().is_some() {
            self.0.budget.admit(&self.0);
        }
    }

    /// Opens the file if needed and keeps it open, outside the budget, until `close`: a sealed
    /// segment that becomes the active one again (a truncation cut into it), or one whose path
    /// is about to name another file (the cleaner's swap renames over it).
    pub async fn pin(&self) -> Result<Rc<DmaFile>, StorageIoError> {
        let file = self.file().await?;
        self.0.pinned.set(true);
        self.0.budget.forget(self.0.id);
        Ok(file)
    }

    /// Whether both handles are the same segment's file.
    pub fn same(&self, other: &SegmentFile) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }

    /// Closes the file (the segment is deleted or the log closed); a read still holding it
    /// keeps it open until that read ends.
    pub async fn close(self) {
        self.0.closed.set(true);
        self.0.budget.forget(self.0.id);
        let open = self.0.file.borrow_mut().take();
        if let Some(file) = open.and_then(|file| Rc::try_unwrap(file).ok()) {
            let _ = file.close().await;
        }
    }
}
