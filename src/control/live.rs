//! [`Live`]: the rule set and planning context the worker uses, swapped whole. The pipeline
//! takes one [`Snapshot`] per batch, so a reload or a switch lands between batches, never
//! inside one.

use std::sync::{Arc, RwLock};

use crate::plan;
use crate::rules::RuleSet;

/// What one batch is planned with.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub rules: Arc<RuleSet>,
    pub cx: Arc<plan::Context>,
}

/// The worker's current rules, swapped whole.
#[derive(Debug)]
pub struct Live {
    inner: RwLock<Snapshot>,
}

impl Live {
    pub fn new(rules: RuleSet, cx: plan::Context) -> Self {
        Live {
            inner: RwLock::new(Snapshot {
                rules: Arc::new(rules),
                cx: Arc::new(cx),
            }),
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn replace(&self, f: impl FnOnce(&Snapshot) -> Snapshot) {
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        *guard = f(&guard);
    }
}
