//! [`Numbered`]: a bounded queue whose items are numbered in the order they are sent, and whose
//! consumer publishes the highest number it has finished ([`Finished`]). The sender can ask
//! how far the consumer got and wait for it to catch up. The stream's trailing journal and its
//! keyspace passes are both such queues: a source position waits for the numbers sent before it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};

/// The sending side.
#[derive(Debug)]
pub struct Numbered<T> {
    tx: mpsc::Sender<(u64, T)>,
    done: watch::Receiver<u64>,
    sent: u64,
}

/// The consumer's report of how far it got.
#[derive(Debug)]
pub struct Finished {
    done: watch::Sender<u64>,
    wake: Arc<Notify>,
}

/// A queue of `capacity` items; `wake` is notified each time the consumer publishes.
pub fn numbered<T>(
    capacity: usize,
    wake: Arc<Notify>,
) -> (Numbered<T>, mpsc::Receiver<(u64, T)>, Finished) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let (done_tx, done) = watch::channel(0);
    (
        Numbered { tx, done, sent: 0 },
        rx,
        Finished {
            done: done_tx,
            wake,
        },
    )
}

impl<T> Numbered<T> {
    /// Sends `item` and returns its number; waits only while the queue is full. `None` when the
    /// consumer is gone.
    pub async fn send(&mut self, item: T) -> Option<u64> {
        let n = self.sent + 1;
        self.tx.send((n, item)).await.ok()?;
        self.sent = n;
        Some(n)
    }

    /// The number of the last item sent.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Every item numbered up to this is finished.
    pub fn done(&self) -> u64 {
        *self.done.borrow()
    }

    /// Waits until every item sent is finished, or `limit` passes; true if it is.
    pub async fn wait_done(&mut self, limit: Duration) -> bool {
        let target = self.sent;
        let wait = self.done.wait_for(|d| *d >= target);
        matches!(tokio::time::timeout(limit, wait).await, Ok(Ok(_)))
    }
}

impl Finished {
    /// Every item numbered up to `n` is finished.
    pub fn publish(&self, n: u64) {
        self.done.send_replace(n);
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn numbers_follow_the_order_sent_and_waits_end_when_published() {
        let wake = Arc::new(Notify::new());
        let (mut q, mut rx, finished) = numbered::<&str>(4, wake.clone());
        assert_eq!(q.send("a").await, Some(1));
        assert_eq!(q.send("b").await, Some(2));
        assert_eq!((q.sent(), q.done()), (2, 0));
        assert!(!q.wait_done(Duration::from_millis(10)).await);
        assert_eq!(rx.recv().await, Some((1, "a")));
        assert_eq!(rx.recv().await, Some((2, "b")));
        finished.publish(2);
        wake.notified().await;
        assert!(q.wait_done(Duration::from_millis(10)).await);
        drop(rx);
        assert_eq!(q.send("c").await, None, "the consumer is gone");
        assert_eq!(q.sent(), 2);
    }
}
