//! [`Version`]: the order in which invalidations and warm writes happened, used by the fence
//! protocol ([`crate::fence`]) to refuse a warm write older than the newest invalidation of its
//! key. Pure.

use std::fmt;

use crate::source::Lsn;

/// The order of invalidations and warm writes: a commit position (PostgreSQL's commit LSN;
/// Debezium events carry the same LSN in `source.lsn`). Separate from the position a source
/// confirms, which need not be an LSN at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version(pub u64);

impl From<Lsn> for Version {
    fn from(l: Lsn) -> Self {
        Version(l.0)
    }
}

impl Version {
    /// The version as marks store it: 16 hex digits, so strings compare as numbers.
    pub fn text(self) -> String {
        format!("{:016X}", self.0)
    }

    /// The version as a WAL position (the journal's `lsn` column).
    pub fn lsn(self) -> Lsn {
        Lsn(self.0)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.lsn().fmt(f)
    }
}
