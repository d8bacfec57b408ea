//! Whole-family plans for invalidations that are not caused by a decoded change: a table
//! that rejoined the publication, a new rule, a table newly watched at start. Pure.

use chrono::{DateTime, Utc};

use super::{build, Context, Plan};
use crate::rules::RuleSet;
use crate::source::{Change, Op, Transaction};

/// The whole key families of every rule on `tables` (`schema.table`, each with why), as a
/// plan at version `at`. Pure (the caller supplies the time).
pub fn families(
    rules: &RuleSet,
    cx: &Context,
    tables: &[(String, &str)],
    at: crate::source::Lsn,
    now: DateTime<Utc>,
) -> Plan {
    let changes = tables
        .iter()
        .map(|(t, why)| {
            let (schema, name) = crate::sql::split_table(t);
            Change {
                relation: std::sync::Arc::new(crate::source::Relation {
                    oid: 0,
                    schema: schema.to_string(),
                    name: name.to_string(),
                    replica_identity: b'd',
                    columns: Vec::new(),
                }),
                op: Op::Truncate,
                old: None,
                new: None,
                undecodable: Some(why.to_string()),
            }
        })
        .collect();
    let tx = Transaction {
        xid: 0,
        commit_lsn: at,
        end_lsn: at,
        commit_time: now,
        changes,
    };
    build(rules, cx, std::slice::from_ref(&tx))
}
