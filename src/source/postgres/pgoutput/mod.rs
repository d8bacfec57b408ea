//! Pure decoding of PostgreSQL's `pgoutput` logical replication messages (protocol version 1).
//!
//! [`decode`] turns one XLogData payload into a [`Message`] without any I/O or state, so it can
//! be unit-tested, property-tested and fuzzed. [`Assembler`] keeps the relation cache and the
//! open transaction and turns a message sequence into [`Transaction`]s. It promises never to
//! panic on hostile input: a malformed payload is an error, and a malformed row change inside a
//! transaction becomes a [`Change`] marked `undecodable`, which planning answers with the widest
//! invalidation of its table rather than with silence.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::source::{pg_time, Change, Column, Datum, Lsn, Op, Relation, Transaction, Tuple};

mod assemble;
mod decode;
pub mod encode;
#[cfg(test)]
mod tests;

pub use assemble::{Assembled, Assembler, SequenceError};
pub use decode::decode;

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message truncated: needed {needed} more bytes for {what}")]
    Truncated { what: &'static str, needed: usize },
    #[error("unknown pgoutput message type {0:#04x}")]
    UnknownMessage(u8),
    #[error("unknown tuple marker {0:#04x}")]
    UnknownTupleMarker(u8),
    #[error("unknown column kind {0:#04x}")]
    UnknownColumnKind(u8),
    #[error("string is not valid UTF-8 in {0}")]
    InvalidUtf8(&'static str),
    #[error("string in {0} is not NUL-terminated")]
    Unterminated(&'static str),
    #[error("negative length {0}")]
    NegativeLength(i32),
    #[error("{0} trailing bytes after message")]
    Trailing(usize),
}

/// A tuple as sent on the wire, before it is resolved against its relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTuple(pub Vec<Datum>);

/// Which old tuple an update or delete carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    /// `K`: only the replica identity's key columns are meaningful.
    Key,
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full,
}

/// One decoded `pgoutput` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: Lsn,
        commit_time: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    Origin {
        lsn: Lsn,
        name: String,
    },
    Relation(Relation),
    Type {
        oid: u32,
        schema: String,
        name: String,
    },
    Insert {
        rel: u32,
        new: RawTuple,
    },
    Update {
        rel: u32,
        old: Option<(OldKind, RawTuple)>,
        new: RawTuple,
    },
    Delete {
        rel: u32,
        old: (OldKind, RawTuple),
    },
    Truncate {
        options: u8,
        rels: Vec<u32>,
    },
    /// A logical decoding message (`pg_logical_emit_message`); carried through, never acted on.
    LogicalMessage {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Vec<u8>,
    },
}
