//! Which columns updates change, per table: for each update whose old row the source carried
//! in full (REPLICA IDENTITY FULL), the set of columns whose value differs, tallied by set. The
//! advisor judges from it how often a rule would fire with `ignore_changed` (the sets are the
//! joint distribution, so "fires unless only these changed" is counted exactly, not guessed from
//! per-column rates). Bounded: at most [`MAX_SETS`] distinct sets per table; the rest are
//! counted as `other`. Pure.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::source::{Change, Datum, Op, Relation};

/// Distinct column sets kept per table.
pub const MAX_SETS: usize = 64;

/// One table's tally.
#[derive(Debug, Clone)]
struct Table {
    /// The table as the source last described it (names and column order).
    relation: Arc<Relation>,
    compared: u64,
    /// Changed-column sets (indexes into the relation's columns, sorted) and how many updates changed
    /// exactly that set.
    sets: HashMap<Vec<u16>, u64>,
    other: u64,
}

/// Every table's tally, by the table's OID.
#[derive(Debug, Clone, Default)]
pub struct ColumnTally {
    tables: HashMap<u32, Table>,
}

/// One table's figures, as `/status` shows them and the advisor reads them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableColumns {
    /// Updates whose old row was carried in full.
    pub compared: u64,
    /// Each set of changed columns, with its count, most frequent first.
    pub sets: Vec<ColumnSet>,
    /// Updates whose set was not kept (beyond the distinct sets kept).
    pub other: u64,
}

/// A set of columns changed together by some updates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnSet {
    pub columns: Vec<String>,
    pub updates: u64,
}

impl ColumnTally {
    /// Counts one change (updates with a full old row only).
    pub fn add(&mut self, c: &Change) {
        if c.op != Op::Update {
            return;
        }
        let (Some(old), Some(new)) = (&c.old, &c.new) else {
            return;
        };
        if old.0.iter().any(|d| matches!(d, Datum::Unknown)) || old.0.len() != new.0.len() {
            return;
        }
        let mut set = Vec::new();
        for (i, (o, n)) in old.0.iter().zip(&new.0).enumerate() {
            if !matches!(n, Datum::UnchangedToast) && o != n {
                set.push(i as u16);
            }
        }
        let fresh = || Table {
            relation: c.relation.clone(),
            compared: 0,
            sets: HashMap::new(),
            other: 0,
        };
        let t = self.tables.entry(c.relation.oid).or_insert_with(fresh);
        // The same description (the common case) is the same Arc; a new one with other names or
        // columns (a rename, a schema change) starts the table over.
        if !Arc::ptr_eq(&t.relation, &c.relation) {
            let same = t.relation.schema == c.relation.schema
                && t.relation.name == c.relation.name
                && t.relation.columns.len() == c.relation.columns.len()
                && t.relation
                    .columns
                    .iter()
                    .zip(&c.relation.columns)
                    .all(|(a, b)| a.name == b.name);
            if same {
                t.relation = c.relation.clone();
            } else {
                *t = fresh();
            }
        }
        t.compared += 1;
        let kept = t.sets.len();
        match t.sets.get_mut(&set) {
            Some(n) => *n += 1,
            None if kept < MAX_SETS => {
                t.sets.insert(set, 1);
            }
            None => t.other += 1,
        }
    }

    /// Every table's figures.
    pub fn snapshot(&self) -> BTreeMap<String, TableColumns> {
        self.tables
            .values()
            .map(|t| {
                let mut sets: Vec<ColumnSet> = t
                    .sets
                    .iter()
                    .map(|(s, n)| ColumnSet {
                        columns: s
                            .iter()
                            .map(|i| t.relation.columns[*i as usize].name.clone())
                            .collect(),
                        updates: *n,
                    })
                    .collect();
                sets.sort_by(|a, b| b.updates.cmp(&a.updates).then(a.columns.cmp(&b.columns)));
                (
                    t.relation.qualified_name(),
                    TableColumns {
                        compared: t.compared,
                        sets,
                        other: t.other,
                    },
                )
            })
            .collect()
    }
}

impl TableColumns {
    /// Updates a rule with `ignore_changed = ignored` would fire on: those that changed some
    /// column outside `ignored` (and, conservatively, every update not kept in a set).
    pub fn firing_with_ignored(&self, ignored: &[String]) -> u64 {
        self.other
            + self
                .sets
                .iter()
                .filter(|s| s.columns.iter().any(|c| !ignored.contains(c)))
                .map(|s| s.updates)
                .sum::<u64>()
    }

    /// How many updates changed `column`.
    pub fn changed(&self, column: &str) -> u64 {
        self.sets
            .iter()
            .filter(|s| s.columns.iter().any(|c| c == column))
            .map(|s| s.updates)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Tuple;

    fn rel() -> Arc<Relation> {
        Relation::text_courses(&["id", "title", "view_count"])
    }

    fn update(old: [&str; 3], new: [&str; 3], full: bool) -> Change {
        let t = |v: [&str; 3]| Tuple(v.iter().map(|s| Datum::Text(s.to_string())).collect());
        let mut o = t(old);
        if !full {
            o.0[1] = Datum::Unknown;
            o.0[2] = Datum::Unknown;
        }
        Change {
            relation: rel(),
            op: Op::Update,
            old: Some(o),
            new: Some(t(new)),
            undecodable: None,
        }
    }

    #[test]
    fn updates_are_tallied_by_the_set_of_columns_they_change() {
        let mut t = ColumnTally::default();
        for i in 0..8 {
            t.add(&update(
                ["1", "a", &i.to_string()],
                ["1", "a", &(i + 1).to_string()],
                true,
            ));
        }
        t.add(&update(["1", "a", "9"], ["1", "b", "10"], true));
        t.add(&update(["1", "b", "10"], ["1", "c", "10"], true));
        t.add(&update(["1", "c", "10"], ["1", "d", "11"], false));
        let s = &t.snapshot()["public.courses"];
        assert_eq!(
            s.compared, 10,
            "the update without a full old row is not compared"
        );
        assert_eq!(
            s.sets[0],
            ColumnSet {
                columns: vec!["view_count".into()],
                updates: 8
            }
        );
        assert_eq!(s.changed("view_count"), 9);
        assert_eq!(s.changed("title"), 2);
        assert_eq!(s.firing_with_ignored(&[]), 10);
        assert_eq!(s.firing_with_ignored(&["view_count".into()]), 2);

        // The table described again with other columns (a schema change): counted anew.
        let mut c = update(["1", "d", "11"], ["1", "e", "11"], true);
        let mut r = (*c.relation).clone();
        r.columns[2].name = "views".into();
        c.relation = Arc::new(r);
        t.add(&c);
        let s = &t.snapshot()["public.courses"];
        assert_eq!(s.compared, 1);
        assert_eq!(s.sets[0].columns, ["title"]);
    }
}
