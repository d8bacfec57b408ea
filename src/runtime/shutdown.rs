//! Shutdown as a type, in the style of tokio's mini-redis: a [`ShutdownSender`] owned by whoever
//! decides to stop (the signal handler, a test), and cheap [`Shutdown`] listeners handed to every
//! task. A listener answers "has stop been asked?" without waiting ([`Shutdown::is_shutdown`])
//! and waits for it in a `select!` ([`Shutdown::recv`], cancellation-safe). Dropping the sender
//! counts as a request to stop, so no task can outlive its owner waiting for a signal that will
//! never come.

use tokio::sync::watch;

/// Asks every [`Shutdown`] listener to stop.
#[derive(Debug)]
pub struct ShutdownSender {
    tx: watch::Sender<bool>,
}

impl Default for ShutdownSender {
    fn default() -> Self {
        ShutdownSender::new()
    }
}

impl ShutdownSender {
    pub fn new() -> Self {
        ShutdownSender {
            tx: watch::channel(false).0,
        }
    }

    /// A new listener.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }

    /// Signals every listener, present and future.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

/// Listens for shutdown.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// Whether stop has been asked (or the sender is gone).
    pub fn is_shutdown(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }

    /// Waits until stop is asked; returns at once if it already was. Cancellation-safe.
    pub async fn recv(&mut self) {
        // An error means the sender was dropped: that is a stop too.
        let _ = self.rx.wait_for(|stop| *stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listeners_see_the_signal_and_a_dropped_sender() {
        let tx = ShutdownSender::new();
        let mut a = tx.subscribe();
        assert!(!a.is_shutdown());
        tx.trigger();
        a.recv().await;
        assert!(a.is_shutdown());
        assert!(tx.subscribe().is_shutdown(), "late listeners see it too");
        let tx = ShutdownSender::new();
        let mut b = tx.subscribe();
        drop(tx);
        b.recv().await;
        assert!(b.is_shutdown());
    }
}
