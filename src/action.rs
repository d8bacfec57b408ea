//! The action vocabulary shared by planning, the cache targets, the journal, warming and the
//! operator paths: what to do to a cache ([`Target`]), with its provenance ([`Action`]), and
//! what to fill afterwards ([`WarmJob`]). Pure data, no I/O.

use chrono::{DateTime, Utc};

use crate::version::Version;

/// What to do to Redis.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// `UNLINK` one key.
    Key(String),
    /// `SCAN MATCH` the pattern and `UNLINK` every key found.
    Pattern(String),
    /// Unlink every member of the tag set and the set itself, atomically.
    Tag(String),
    /// Invalidate every tag set whose name matches the pattern.
    TagPattern(String),
    /// `INCR` a namespace version key.
    Bump(String),
    /// `INCR` every existing version key matching the pattern.
    BumpPattern(String),
}

impl Target {
    pub fn text(&self) -> &str {
        match self {
            Target::Key(k)
            | Target::Pattern(k)
            | Target::Tag(k)
            | Target::TagPattern(k)
            | Target::Bump(k)
            | Target::BumpPattern(k) => k,
        }
    }

    /// The journal's `kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Key(_) => "key",
            Target::Pattern(_) => "pattern",
            Target::Tag(_) => "tag",
            Target::TagPattern(_) => "tag-pattern",
            Target::Bump(_) => "bump",
            Target::BumpPattern(_) => "bump-pattern",
        }
    }

    /// The inverse of [`Target::kind`], for journal rows.
    pub fn from_kind(kind: &str, text: String) -> Option<Target> {
        Some(match kind {
            "key" => Target::Key(text),
            "pattern" => Target::Pattern(text),
            "tag" => Target::Tag(text),
            "tag-pattern" => Target::TagPattern(text),
            "bump" => Target::Bump(text),
            "bump-pattern" => Target::BumpPattern(text),
            _ => return None,
        })
    }

    /// Whether the target is a glob over keys, tags or version keys.
    pub fn is_pattern(&self) -> bool {
        matches!(
            self,
            Target::Pattern(_) | Target::TagPattern(_) | Target::BumpPattern(_)
        )
    }
}

/// One planned action with its provenance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub target: Target,
    /// Why: table, operation, primary key, LSN and rule of the first change that asked for it.
    pub reason: String,
    pub rule: String,
    pub table: String,
    /// The commit position of the first change that asked for it: the order of fences.
    pub version: Version,
    /// The earliest commit time among the changes that asked for it.
    pub triggered_at: DateTime<Utc>,
    /// How many changes asked for it.
    pub causes: u32,
    /// Other rules that asked for the same target (each keeps its own `reinvalidate_after`).
    pub also: Vec<String>,
    /// The glob covering every key the producing template can render (for a pattern, the
    /// pattern itself). The journal groups a batch's keys by it.
    pub family: String,
}

/// How a warm job gets its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fill {
    /// `refresh`: run the rule's warm query with these arguments (NULL as `None`).
    Query { args: Vec<Option<String>> },
    /// `write-through`: this value, rendered from the change.
    Value(String),
}

/// A key to fill once its invalidation is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmJob {
    pub rule: String,
    /// The full key (prefix included).
    pub key: String,
    /// The position of the change that asked for it: the value's version.
    pub version: Version,
    /// The transaction whose commit must be visible before a refresh reads.
    pub xid: u32,
    pub ttl: Option<u64>,
    pub fill: Fill,
}
