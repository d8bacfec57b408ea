//! [`Backoff`]: retry delays that double from 50 ms up to a bound, reset after a success.

use std::time::Duration;

const FIRST: Duration = Duration::from_millis(50);

/// Grows a retry delay up to a bound.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        Backoff {
            next: FIRST,
            max: max.max(FIRST),
        }
    }

    pub fn reset(&mut self) {
        self.next = FIRST;
    }

    /// Sleeps for the current delay, then doubles it.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.max);
    }
}
