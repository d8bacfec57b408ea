//! The worker's concurrency vocabulary as named types: [`Shutdown`] (one signal, many
//! listeners), [`TaskSet`] (helpers that are drained at stop, never silently aborted) and
//! [`Backoff`] (bounded exponential retry delays), [`Numbered`] (a queue whose consumer reports
//! how far it got). Nothing here knows about sources, caches or the journal.

mod backoff;
mod numbered;
mod shutdown;
mod tasks;

pub use backoff::Backoff;
pub use numbered::{numbered, Finished, Numbered};
pub use shutdown::{Shutdown, ShutdownSender};
pub use tasks::TaskSet;
