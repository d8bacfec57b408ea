//! [`TaskSet`]: the helper tasks running beside the worker (rule control, Redis health,
//! delayed passes, warming), named so that stopping can wait for each by name.
//!
//! Every task is expected to watch its [`super::Shutdown`] (or its input channel closing) and
//! finish on its own; [`TaskSet::drain`] waits for them. Only a task still running past the
//! drain deadline is aborted, and that is logged with its name: an abort is a bug to look at,
//! not the way things stop.

use std::time::Duration;

use tokio::task::JoinHandle;

/// Named helper tasks, drained together.
#[derive(Debug, Default)]
pub struct TaskSet {
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl TaskSet {
    pub fn new() -> Self {
        TaskSet::default()
    }

    /// Spawns a named task.
    pub fn spawn(
        &mut self,
        name: &'static str,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        self.tasks.push((name, tokio::spawn(task)));
    }

    /// Waits for every task to finish, in the order they were spawned, sharing one deadline.
    /// Returns the names of tasks that had to be aborted (and logs them).
    pub async fn drain(self, within: Duration) -> Vec<&'static str> {
        let deadline = tokio::time::Instant::now() + within;
        let mut aborted = Vec::new();
        for (name, mut handle) in self.tasks {
            match tokio::time::timeout_at(deadline, &mut handle).await {
                Ok(Ok(())) => tracing::debug!(task = name, "task finished"),
                Ok(Err(e)) => tracing::error!(task = name, error = %e, "task panicked"),
                Err(_) => {
                    tracing::warn!(task = name, "task did not stop in time; aborting it");
                    handle.abort();
                    aborted.push(name);
                }
            }
        }
        aborted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ShutdownSender;

    #[tokio::test(start_paused = true)]
    async fn drains_cooperative_tasks_and_aborts_only_stragglers() {
        let stop = ShutdownSender::new();
        let mut set = TaskSet::new();
        let mut s = stop.subscribe();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        set.spawn("polite", async move {
            s.recv().await;
            let _ = done_tx.send(());
        });
        set.spawn("stubborn", async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        stop.trigger();
        let aborted = set.drain(Duration::from_secs(5)).await;
        assert_eq!(aborted, ["stubborn"]);
        assert!(done_rx.await.is_ok(), "the polite task ran to its end");
    }
}
