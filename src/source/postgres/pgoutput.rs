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

use crate::source::{pg_time, Change, Column, Datum, Lsn, Op, Relation, Transaction, Tuple};

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

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                what,
                needed: n - self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(self.i32(what)? as u32)
    }
    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(self.i64(what)? as u64))
    }
    fn cstr(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Unterminated(what))?;
        let s =
            std::str::from_utf8(&self.buf[..end]).map_err(|_| DecodeError::InvalidUtf8(what))?;
        let s = s.to_string();
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }
    fn len(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.i32(what)?;
        usize::try_from(n).map_err(|_| DecodeError::NegativeLength(n))
    }
    fn tuple(&mut self) -> Result<RawTuple, DecodeError> {
        let n = self.i16("tuple column count")?;
        let n = usize::try_from(n).map_err(|_| DecodeError::NegativeLength(i32::from(n)))?;
        // Each column needs at least one byte: never pre-allocate beyond what the buffer holds.
        let mut cols = Vec::with_capacity(n.min(self.buf.len()));
        for _ in 0..n {
            let datum = match self.u8("column kind")? {
                b'n' => Datum::Null,
                b'u' => Datum::UnchangedToast,
                b't' | b'b' => {
                    let len = self.len("column length")?;
                    let bytes = self.take(len, "column value")?;
                    let s = std::str::from_utf8(bytes)
                        .map_err(|_| DecodeError::InvalidUtf8("column value"))?;
                    Datum::Text(s.to_string())
                }
                other => return Err(DecodeError::UnknownColumnKind(other)),
            };
            cols.push(datum);
        }
        Ok(RawTuple(cols))
    }
    fn old_tuple(&mut self, marker: u8) -> Result<(OldKind, RawTuple), DecodeError> {
        let kind = match marker {
            b'K' => OldKind::Key,
            b'O' => OldKind::Full,
            other => return Err(DecodeError::UnknownTupleMarker(other)),
        };
        Ok((kind, self.tuple()?))
    }
    fn finish(self, msg: Message) -> Result<Message, DecodeError> {
        if self.buf.is_empty() {
            Ok(msg)
        } else {
            Err(DecodeError::Trailing(self.buf.len()))
        }
    }
}

/// Decodes one `pgoutput` message (the payload of an XLogData frame).
pub fn decode(payload: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { buf: payload };
    let msg = match r.u8("message type")? {
        b'B' => Message::Begin {
            final_lsn: r.lsn("begin lsn")?,
            commit_time: r.i64("begin timestamp")?,
            xid: r.u32("xid")?,
        },
        b'C' => Message::Commit {
            flags: r.u8("commit flags")?,
            commit_lsn: r.lsn("commit lsn")?,
            end_lsn: r.lsn("end lsn")?,
            commit_time: r.i64("commit timestamp")?,
        },
        b'O' => Message::Origin {
            lsn: r.lsn("origin lsn")?,
            name: r.cstr("origin name")?,
        },
        b'R' => {
            let oid = r.u32("relation oid")?;
            let schema = r.cstr("relation namespace")?;
            let name = r.cstr("relation name")?;
            let replica_identity = r.u8("replica identity")?;
            let n = r.i16("relation column count")?;
            let n = usize::try_from(n).map_err(|_| DecodeError::NegativeLength(i32::from(n)))?;
            let mut columns = Vec::with_capacity(n.min(r.buf.len()));
            for _ in 0..n {
                let flags = r.u8("column flags")?;
                let name = r.cstr("column name")?;
                let type_oid = r.u32("column type")?;
                let _typmod = r.i32("column typmod")?;
                columns.push(Column {
                    name,
                    type_oid,
                    is_key: flags & 1 == 1,
                });
            }
            Message::Relation(Relation {
                oid,
                schema,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: r.u32("type oid")?,
            schema: r.cstr("type namespace")?,
            name: r.cstr("type name")?,
        },
        b'I' => {
            let rel = r.u32("relation id")?;
            match r.u8("new tuple marker")? {
                b'N' => Message::Insert {
                    rel,
                    new: r.tuple()?,
                },
                other => return Err(DecodeError::UnknownTupleMarker(other)),
            }
        }
        b'U' => {
            let rel = r.u32("relation id")?;
            let mut marker = r.u8("tuple marker")?;
            let mut old = None;
            if marker != b'N' {
                old = Some(r.old_tuple(marker)?);
                marker = r.u8("new tuple marker")?;
            }
            if marker != b'N' {
                return Err(DecodeError::UnknownTupleMarker(marker));
            }
            Message::Update {
                rel,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let rel = r.u32("relation id")?;
            let marker = r.u8("old tuple marker")?;
            Message::Delete {
                rel,
                old: r.old_tuple(marker)?,
            }
        }
        b'T' => {
            let n = r.len("truncate relation count")?;
            let options = r.u8("truncate options")?;
            let mut rels = Vec::with_capacity(n.min(r.buf.len() / 4));
            for _ in 0..n {
                rels.push(r.u32("truncated relation id")?);
            }
            Message::Truncate { options, rels }
        }
        b'M' => {
            let flags = r.u8("message flags")?;
            let lsn = r.lsn("message lsn")?;
            let prefix = r.cstr("message prefix")?;
            let len = r.len("message length")?;
            let content = r.take(len, "message content")?.to_vec();
            Message::LogicalMessage {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content,
            }
        }
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    r.finish(msg)
}

/// What feeding one message to the [`Assembler`] produced.
#[derive(Debug)]
pub enum Assembled {
    /// Nothing complete yet.
    Pending,
    /// A transaction committed.
    Committed(Transaction),
}

/// Turns a `pgoutput` message sequence into transactions, keeping the relation cache.
#[derive(Debug, Default)]
pub struct Assembler {
    relations: HashMap<u32, Arc<Relation>>,
    open: Option<Transaction>,
}

/// A protocol-level inconsistency in the message sequence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    #[error("{0} outside a transaction")]
    OutsideTransaction(&'static str),
    #[error("BEGIN inside an open transaction")]
    NestedBegin,
}

impl Assembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a transaction has begun but not yet committed.
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// The number of changes in the open transaction.
    pub fn open_len(&self) -> usize {
        self.open.as_ref().map_or(0, |t| t.changes.len())
    }

    /// Forgets any open transaction (after a reconnect the server resends it whole).
    pub fn reset_transaction(&mut self) {
        self.open = None;
    }

    /// Takes the changes of the open transaction accumulated so far, leaving it open. Used to
    /// invalidate a huge transaction in bounded chunks; its position is confirmed only at commit.
    pub fn drain_open(&mut self) -> Option<Transaction> {
        let open = self.open.as_mut()?;
        Some(Transaction {
            changes: std::mem::take(&mut open.changes),
            ..open.clone()
        })
    }

    /// Feeds one XLogData payload. A payload that does not decode inside an open transaction
    /// becomes an undecodable change (of its relation when the relation id could be read).
    pub fn feed(&mut self, payload: &[u8]) -> Result<Assembled, SequenceError> {
        match decode(payload) {
            Ok(msg) => self.apply(msg),
            Err(err) => {
                let Some(open) = self.open.as_mut() else {
                    return Err(SequenceError::OutsideTransaction("undecodable message"));
                };
                let rel = payload
                    .get(1..5)
                    .filter(|_| matches!(payload.first(), Some(b'I' | b'U' | b'D')))
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .and_then(|oid| self.relations.get(&oid).cloned());
                let relation = rel.unwrap_or_else(|| Arc::new(unknown_relation()));
                open.changes.push(Change {
                    relation,
                    op: Op::Truncate,
                    old: None,
                    new: None,
                    undecodable: Some(err.to_string()),
                });
                Ok(Assembled::Pending)
            }
        }
    }

    /// Applies one decoded message.
    pub fn apply(&mut self, msg: Message) -> Result<Assembled, SequenceError> {
        match msg {
            Message::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                if self.open.is_some() {
                    return Err(SequenceError::NestedBegin);
                }
                self.open = Some(Transaction {
                    xid,
                    commit_lsn: final_lsn,
                    end_lsn: final_lsn,
                    commit_time: pg_time(commit_time),
                    changes: Vec::new(),
                });
            }
            Message::Commit {
                commit_lsn,
                end_lsn,
                commit_time,
                ..
            } => {
                let mut tx = self
                    .open
                    .take()
                    .ok_or(SequenceError::OutsideTransaction("COMMIT"))?;
                tx.commit_lsn = commit_lsn;
                tx.end_lsn = end_lsn;
                tx.commit_time = pg_time(commit_time);
                return Ok(Assembled::Committed(tx));
            }
            Message::Relation(rel) => {
                self.relations.insert(rel.oid, Arc::new(rel));
            }
            Message::Origin { .. } | Message::Type { .. } | Message::LogicalMessage { .. } => {}
            Message::Insert { rel, new } => {
                let relation = self.relation(rel);
                let new = resolve_new(&relation, new, None);
                self.push("INSERT", relation, Op::Insert, None, Some(new))?;
            }
            Message::Update { rel, old, new } => {
                let relation = self.relation(rel);
                let old = old.map(|(kind, t)| resolve_old(&relation, kind, t));
                let new = resolve_new(&relation, new, old.as_ref());
                // Without an old tuple the key did not change: its columns equal the new ones.
                let old = old.unwrap_or_else(|| key_only_from(&relation, &new));
                self.push("UPDATE", relation, Op::Update, Some(old), Some(new))?;
            }
            Message::Delete {
                rel,
                old: (kind, t),
            } => {
                let relation = self.relation(rel);
                let old = resolve_old(&relation, kind, t);
                self.push("DELETE", relation, Op::Delete, Some(old), None)?;
            }
            Message::Truncate { rels, .. } => {
                for rel in rels {
                    let relation = self.relation(rel);
                    self.push("TRUNCATE", relation, Op::Truncate, None, None)?;
                }
            }
        }
        Ok(Assembled::Pending)
    }

    fn relation(&self, oid: u32) -> Arc<Relation> {
        self.relations.get(&oid).cloned().unwrap_or_else(|| {
            Arc::new(Relation {
                oid,
                ..unknown_relation()
            })
        })
    }

    fn push(
        &mut self,
        what: &'static str,
        relation: Arc<Relation>,
        op: Op,
        old: Option<Tuple>,
        new: Option<Tuple>,
    ) -> Result<(), SequenceError> {
        let open = self
            .open
            .as_mut()
            .ok_or(SequenceError::OutsideTransaction(what))?;
        let undecodable = if relation.schema.is_empty() {
            Some(format!("relation {} was never described", relation.oid))
        } else if [&old, &new]
            .into_iter()
            .flatten()
            .any(|t| t.0.len() != relation.columns.len())
        {
            Some(format!(
                "tuple width does not match relation {}",
                relation.qualified_name()
            ))
        } else {
            None
        };
        let (op, old, new) = if undecodable.is_some() {
            (Op::Truncate, None, None)
        } else {
            (op, old, new)
        };
        open.changes.push(Change {
            relation,
            op,
            old,
            new,
            undecodable,
        });
        Ok(())
    }
}

fn unknown_relation() -> Relation {
    Relation {
        oid: 0,
        schema: String::new(),
        name: String::new(),
        replica_identity: b'd',
        columns: Vec::new(),
    }
}

/// Puts every text value of a tuple into its canonical form (see [`super::canonical_text`]).
fn canonical(relation: &Relation, raw: RawTuple) -> RawTuple {
    RawTuple(
        raw.0
            .into_iter()
            .enumerate()
            .map(|(i, d)| match (d, relation.columns.get(i)) {
                (Datum::Text(v), Some(c)) => {
                    Datum::Text(crate::source::canonical_text(c.type_oid, v))
                }
                (d, _) => d,
            })
            .collect(),
    )
}

/// A key-only old tuple: non-key columns are unknown, not NULL.
fn resolve_old(relation: &Relation, kind: OldKind, raw: RawTuple) -> Tuple {
    let raw = canonical(relation, raw);
    match kind {
        OldKind::Full => Tuple(raw.0),
        OldKind::Key => Tuple(
            raw.0
                .into_iter()
                .enumerate()
                .map(|(i, d)| match relation.columns.get(i) {
                    Some(c) if c.is_key => d,
                    _ => Datum::Unknown,
                })
                .collect(),
        ),
    }
}

/// Fills unchanged-TOAST columns of a new tuple from the old tuple where it has them.
fn resolve_new(relation: &Relation, raw: RawTuple, old: Option<&Tuple>) -> Tuple {
    Tuple(
        canonical(relation, raw)
            .0
            .into_iter()
            .enumerate()
            .map(|(i, d)| match (d, old.and_then(|o| o.0.get(i))) {
                (Datum::UnchangedToast, Some(Datum::Text(v))) => Datum::Text(v.clone()),
                (d, _) => d,
            })
            .collect(),
    )
}

fn key_only_from(relation: &Relation, new: &Tuple) -> Tuple {
    Tuple(
        new.0
            .iter()
            .enumerate()
            .map(|(i, d)| match relation.columns.get(i) {
                Some(c) if c.is_key && relation.replica_identity != b'n' => d.clone(),
                _ => Datum::Unknown,
            })
            .collect(),
    )
}

/// Encoders for building pgoutput payloads in tests, benchmarks and fuzz seeds.
pub mod encode {
    use super::*;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    pub fn begin(final_lsn: u64, time: i64, xid: u32) -> Vec<u8> {
        let mut o = vec![b'B'];
        o.extend_from_slice(&final_lsn.to_be_bytes());
        o.extend_from_slice(&time.to_be_bytes());
        o.extend_from_slice(&xid.to_be_bytes());
        o
    }

    pub fn commit(commit_lsn: u64, end_lsn: u64, time: i64) -> Vec<u8> {
        let mut o = vec![b'C', 0];
        o.extend_from_slice(&commit_lsn.to_be_bytes());
        o.extend_from_slice(&end_lsn.to_be_bytes());
        o.extend_from_slice(&time.to_be_bytes());
        o
    }

    pub fn relation(rel: &Relation) -> Vec<u8> {
        let mut o = vec![b'R'];
        o.extend_from_slice(&rel.oid.to_be_bytes());
        cstr(&mut o, &rel.schema);
        cstr(&mut o, &rel.name);
        o.push(rel.replica_identity);
        o.extend_from_slice(&(rel.columns.len() as i16).to_be_bytes());
        for c in &rel.columns {
            o.push(u8::from(c.is_key));
            cstr(&mut o, &c.name);
            o.extend_from_slice(&c.type_oid.to_be_bytes());
            o.extend_from_slice(&(-1i32).to_be_bytes());
        }
        o
    }

    pub fn tuple(out: &mut Vec<u8>, t: &[Datum]) {
        out.extend_from_slice(&(t.len() as i16).to_be_bytes());
        for d in t {
            match d {
                Datum::Null | Datum::Unknown => out.push(b'n'),
                Datum::UnchangedToast => out.push(b'u'),
                Datum::Text(s) => {
                    out.push(b't');
                    out.extend_from_slice(&(s.len() as i32).to_be_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
    }

    pub fn insert(rel: u32, new: &[Datum]) -> Vec<u8> {
        let mut o = vec![b'I'];
        o.extend_from_slice(&rel.to_be_bytes());
        o.push(b'N');
        tuple(&mut o, new);
        o
    }

    pub fn update(rel: u32, old: Option<(OldKind, &[Datum])>, new: &[Datum]) -> Vec<u8> {
        let mut o = vec![b'U'];
        o.extend_from_slice(&rel.to_be_bytes());
        if let Some((kind, t)) = old {
            o.push(if kind == OldKind::Key { b'K' } else { b'O' });
            tuple(&mut o, t);
        }
        o.push(b'N');
        tuple(&mut o, new);
        o
    }

    pub fn delete(rel: u32, kind: OldKind, old: &[Datum]) -> Vec<u8> {
        let mut o = vec![b'D'];
        o.extend_from_slice(&rel.to_be_bytes());
        o.push(if kind == OldKind::Key { b'K' } else { b'O' });
        tuple(&mut o, old);
        o
    }

    pub fn truncate(rels: &[u32]) -> Vec<u8> {
        let mut o = vec![b'T'];
        o.extend_from_slice(&(rels.len() as i32).to_be_bytes());
        o.push(0);
        for r in rels {
            o.extend_from_slice(&r.to_be_bytes());
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::encode::*;
    use super::*;
    use proptest::prelude::*;

    fn courses() -> Relation {
        Relation {
            oid: 16400,
            schema: "public".into(),
            name: "courses".into(),
            replica_identity: b'd',
            columns: vec![
                Column {
                    name: "id".into(),
                    type_oid: 23,
                    is_key: true,
                },
                Column {
                    name: "slug".into(),
                    type_oid: 25,
                    is_key: false,
                },
                Column {
                    name: "body".into(),
                    type_oid: 25,
                    is_key: false,
                },
            ],
        }
    }

    fn t(s: &str) -> Datum {
        Datum::Text(s.into())
    }

    fn run(msgs: &[Vec<u8>]) -> Vec<Transaction> {
        let mut a = Assembler::new();
        let mut out = Vec::new();
        for m in msgs {
            if let Assembled::Committed(tx) = a.feed(m).unwrap() {
                out.push(tx);
            }
        }
        out
    }

    #[test]
    fn decodes_relation_round_trip() {
        let rel = courses();
        assert_eq!(decode(&relation(&rel)).unwrap(), Message::Relation(rel));
    }

    #[test]
    fn assembles_a_transaction() {
        let rel = courses();
        let txs = run(&[
            relation(&rel),
            begin(100, 0, 7),
            insert(16400, &[t("1"), t("a"), Datum::Null]),
            update(16400, None, &[t("1"), t("b"), Datum::UnchangedToast]),
            delete(16400, OldKind::Key, &[t("1"), Datum::Null, Datum::Null]),
            commit(100, 120, 5),
        ]);
        assert_eq!(txs.len(), 1);
        let tx = &txs[0];
        assert_eq!((tx.xid, tx.commit_lsn, tx.end_lsn), (7, Lsn(100), Lsn(120)));
        assert_eq!(tx.changes.len(), 3);
        // Update without old tuple: key known from the new row, other columns unknown.
        let up = &tx.changes[1];
        assert_eq!(
            up.old.as_ref().unwrap().0,
            vec![t("1"), Datum::Unknown, Datum::Unknown]
        );
        assert_eq!(up.new.as_ref().unwrap().0[2], Datum::UnchangedToast);
        // Key-only delete: non-key columns are unknown, never NULL.
        let del = &tx.changes[2];
        assert_eq!(
            del.old.as_ref().unwrap().0,
            vec![t("1"), Datum::Unknown, Datum::Unknown]
        );
    }

    #[test]
    fn unchanged_toast_is_filled_from_full_old_tuple() {
        let mut rel = courses();
        rel.replica_identity = b'f';
        let txs = run(&[
            relation(&rel),
            begin(1, 0, 1),
            update(
                16400,
                Some((OldKind::Full, &[t("1"), t("a"), t("long")])),
                &[t("1"), t("b"), Datum::UnchangedToast],
            ),
            commit(1, 2, 0),
        ]);
        assert_eq!(
            txs[0].changes[0].new.as_ref().unwrap().0,
            vec![t("1"), t("b"), t("long")]
        );
    }

    #[test]
    fn truncate_yields_one_change_per_table() {
        let rel = courses();
        let txs = run(&[
            relation(&rel),
            begin(1, 0, 1),
            truncate(&[16400]),
            commit(1, 2, 0),
        ]);
        assert_eq!(txs[0].changes[0].op, Op::Truncate);
        assert!(txs[0].changes[0].undecodable.is_none());
    }

    #[test]
    fn garbage_inside_a_transaction_becomes_undecodable_change() {
        let rel = courses();
        let mut bad = insert(16400, &[t("1")]);
        bad.push(0xff); // trailing byte
        let txs = run(&[relation(&rel), begin(1, 0, 1), bad, commit(1, 2, 0)]);
        let c = &txs[0].changes[0];
        assert!(c.undecodable.is_some());
        assert_eq!(c.relation.name, "courses");
    }

    #[test]
    fn unknown_relation_is_undecodable_not_a_panic() {
        let txs = run(&[begin(1, 0, 1), insert(999, &[t("1")]), commit(1, 2, 0)]);
        assert!(txs[0].changes[0].undecodable.is_some());
    }

    #[test]
    fn ignores_origin_type_and_messages() {
        let mut origin = vec![b'O'];
        origin.extend_from_slice(&5u64.to_be_bytes());
        origin.extend_from_slice(b"node\0");
        let mut ty = vec![b'Y'];
        ty.extend_from_slice(&77u32.to_be_bytes());
        ty.extend_from_slice(b"public\0mood\0");
        let txs = run(&[begin(1, 0, 1), origin, ty, commit(1, 2, 0)]);
        assert!(txs[0].changes.is_empty());
    }

    fn datum() -> impl Strategy<Value = Datum> {
        prop_oneof![
            Just(Datum::Null),
            Just(Datum::UnchangedToast),
            ".{0,20}".prop_map(Datum::Text),
        ]
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
            let mut a = Assembler::new();
            let _ = a.feed(&bytes);
        }

        #[test]
        fn insert_round_trips(rel: u32, cols in proptest::collection::vec(datum(), 0..12)) {
            let msg = decode(&insert(rel, &cols)).unwrap();
            prop_assert_eq!(msg, Message::Insert { rel, new: RawTuple(cols) });
        }

        #[test]
        fn truncated_payloads_are_errors(cols in proptest::collection::vec(datum(), 1..8), cut in 1usize..50) {
            let full = update(1, Some((OldKind::Full, &cols)), &cols);
            let cut = cut.min(full.len() - 1);
            prop_assert!(decode(&full[..full.len() - cut]).is_err());
        }
    }
}
