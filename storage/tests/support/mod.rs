//! What the storage test files share: running a test body on a real glommio executor.

use std::future::Future;

use glommio::{LocalExecutorBuilder, Placement};

/// Runs `f`'s future to completion on a fresh glommio executor thread and returns its output.
pub fn run_async<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}
