//! The [`Assembler`]: keeps the relation cache and the open transaction, and turns a message
//! sequence into [`Transaction`]s with rows resolved against their relation (key-only old
//! tuples, unchanged TOAST, canonical values).

use super::*;

/// What feeding one message to the [`Assembler`] produced.
#[derive(Debug)]
pub enum Assembled {
    /// Nothing complete yet.
    Pending,
    /// A transaction committed.
    Committed(Transaction),
    /// A message that could not be placed in the stream (see [`Assembler::feed_lenient`]): to
    /// be kept as a dead letter, and answered by `conservative`, a transaction whose changes
    /// are undecodable so that planning invalidates whole key families.
    Poisoned {
        error: String,
        conservative: Transaction,
    },
}

/// Turns a `pgoutput` message sequence into transactions, keeping the relation cache.
#[derive(Debug, Default)]
pub struct Assembler {
    relations: HashMap<u32, Arc<Relation>>,
    open: Option<Transaction>,
    /// Domain type OIDs → their base types, so values render as the base type does.
    domains: HashMap<u32, u32>,
    /// Memory held by the open transaction's changes ([`Change::approx_bytes`]).
    open_bytes: usize,
    /// Which columns' values to keep.
    filter: Arc<crate::source::ColumnFilter>,
    /// Per relation, which columns are kept (computed from `filter`).
    keep: HashMap<u32, Vec<bool>>,
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

    /// An assembler that resolves columns of these domain types (OID → base type OID) to
    /// their base types: a domain over `boolean` renders `true`, not `t`.
    pub fn with_domains(domains: HashMap<u32, u32>) -> Self {
        Assembler {
            domains,
            ..Self::default()
        }
    }

    /// Whether a transaction has begun but not yet committed.
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// The number of changes in the open transaction.
    pub fn open_len(&self) -> usize {
        self.open.as_ref().map_or(0, |t| t.changes.len())
    }

    /// Keeps only the values of the columns `filter` names (key columns always), from the
    /// next change on.
    pub fn set_filter(&mut self, filter: Arc<crate::source::ColumnFilter>) {
        self.filter = filter;
        let masks: Vec<(u32, Vec<bool>)> = self
            .relations
            .values()
            .map(|r| (r.oid, self.mask(r)))
            .collect();
        self.keep = masks.into_iter().collect();
    }

    fn mask(&self, r: &Relation) -> Vec<bool> {
        let table = r.qualified_name();
        r.columns
            .iter()
            .map(|c| c.is_key || self.filter.keeps(&table, &c.name))
            .collect()
    }

    /// Drops the values of columns no rule reads (they become unknown: never read).
    fn prune(&self, relation: &Relation, mut t: Tuple) -> Tuple {
        if let Some(mask) = self.keep.get(&relation.oid) {
            for (d, keep) in t.0.iter_mut().zip(mask) {
                if !keep && matches!(d, Datum::Text(_)) {
                    *d = Datum::Unknown;
                }
            }
        }
        t
    }

    /// Memory held by the open transaction's changes so far.
    pub fn open_bytes(&self) -> usize {
        self.open_bytes
    }

    /// Forgets any open transaction (after a reconnect the server resends it whole).
    pub fn reset_transaction(&mut self) {
        self.open = None;
        self.open_bytes = 0;
    }

    /// Takes the changes of the open transaction accumulated so far, leaving it open. Used to
    /// invalidate a huge transaction in bounded chunks; its position is confirmed only at commit.
    pub fn drain_open(&mut self) -> Option<Transaction> {
        let open = self.open.as_mut()?;
        self.open_bytes = 0;
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

    /// Like [`Assembler::feed`], but never fails: a message that cannot be placed (it does not
    /// decode outside a transaction, or breaks the BEGIN/COMMIT sequence) becomes
    /// [`Assembled::Poisoned`] instead of an error, so the stream moves on rather than
    /// reconnecting and replaying the same bytes forever. The conservative transaction holds
    /// what is known to be affected: the changes of a transaction cut short by a second BEGIN,
    /// and an undecodable change of the relation the message names (every rule's families when
    /// that is unknown). It is placed at `at`, the message's WAL position. A malformed
    /// relation description is forgotten, so later changes of that relation are undecodable
    /// too rather than read against stale columns.
    pub fn feed_lenient(&mut self, payload: &[u8], at: Lsn, now: DateTime<Utc>) -> Assembled {
        let error = match self.feed(payload) {
            Ok(a) => return a,
            Err(e) => e,
        };
        let mut changes = Vec::new();
        if error == SequenceError::NestedBegin {
            self.open_bytes = 0;
            if let Some(open) = self.open.take() {
                changes = open.changes;
            }
            // The new BEGIN itself is sound: its transaction starts now.
            let _ = self.feed(payload);
        }
        let oid = payload
            .get(1..5)
            .filter(|_| matches!(payload.first(), Some(b'I' | b'U' | b'D' | b'R')))
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        let relation = match oid {
            Some(oid) if payload.first() == Some(&b'R') => self
                .relations
                .remove(&oid)
                .unwrap_or_else(|| Arc::new(unknown_relation())),
            Some(oid) => self
                .relations
                .get(&oid)
                .cloned()
                .unwrap_or_else(|| Arc::new(unknown_relation())),
            None => Arc::new(unknown_relation()),
        };
        changes.push(Change {
            relation,
            op: Op::Truncate,
            old: None,
            new: None,
            undecodable: Some(error.to_string()),
        });
        Assembled::Poisoned {
            error: error.to_string(),
            conservative: Transaction {
                xid: 0,
                commit_lsn: at,
                end_lsn: Lsn(at.0 + 1),
                commit_time: now,
                changes,
            },
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
                self.open_bytes = 0;
                tx.commit_lsn = commit_lsn;
                tx.end_lsn = end_lsn;
                tx.commit_time = pg_time(commit_time);
                return Ok(Assembled::Committed(tx));
            }
            Message::Relation(mut rel) => {
                for c in &mut rel.columns {
                    if let Some(base) = self.domains.get(&c.type_oid) {
                        c.type_oid = *base;
                    }
                }
                let mask = self.mask(&rel);
                self.keep.insert(rel.oid, mask);
                self.relations.insert(rel.oid, Arc::new(rel));
            }
            Message::Origin { .. } | Message::Type { .. } | Message::LogicalMessage { .. } => {}
            Message::Insert { rel, new } => {
                let relation = self.relation(rel);
                let new = self.prune(&relation, resolve_new(&relation, new, None));
                self.push("INSERT", relation, Op::Insert, None, Some(new))?;
            }
            Message::Update { rel, old, new } => {
                let relation = self.relation(rel);
                let old = old.map(|(kind, t)| resolve_old(&relation, kind, t));
                let new = resolve_new(&relation, new, old.as_ref());
                // Without an old tuple the key did not change: its columns equal the new ones.
                let old = old.unwrap_or_else(|| key_only_from(&relation, &new));
                let (old, new) = (self.prune(&relation, old), self.prune(&relation, new));
                self.push("UPDATE", relation, Op::Update, Some(old), Some(new))?;
            }
            Message::Delete {
                rel,
                old: (kind, t),
            } => {
                let relation = self.relation(rel);
                let old = self.prune(&relation, resolve_old(&relation, kind, t));
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
        let change = Change {
            relation,
            op,
            old,
            new,
            undecodable,
        };
        self.open_bytes += change.approx_bytes();
        open.changes.push(change);
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
