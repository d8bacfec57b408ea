//! Whether a rule set can run against the database: loading and checking rule files against
//! the live schema (for start and every reload), noticing edits to the rules directory, and the
//! server's WAL position used to fence operator requests.

use std::collections::HashMap;
use std::path::Path;

use tokio_postgres::Client;

use crate::rules::{self, check, RuleErrors, RuleSet, Severity};
use crate::source::Lsn;

/// A fingerprint of the rule files' names and contents (FNV-1a), to notice edits.
pub fn fingerprint(dir: &Path) -> u64 {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for f in files {
        eat(f.to_string_lossy().as_bytes());
        eat(&std::fs::read(&f).unwrap_or_default());
        eat(&[0xff]);
    }
    h
}

/// Loads and checks a rule set against the schema; `Ok` only when it can run.
pub async fn load_checked(
    client: &Client,
    dir: &Path,
    key_prefix: &str,
    tables_elsewhere: bool,
) -> Result<(RuleSet, HashMap<String, check::TableInfo>), RuleErrors> {
    let rules = rules::load_dir(dir)?;
    let catalog = check_against_database(client, &rules, key_prefix, tables_elsewhere)
        .await
        .map_err(|e| match e {
            CheckError::Rules(e) => e,
            CheckError::Postgres(e) => RuleErrors(vec![rules::Diagnostic {
                at: rules::Location {
                    file: dir.to_path_buf(),
                    line: 0,
                    col: 0,
                },
                severity: Severity::Error,
                message: format!("cannot read the schema: {e}"),
            }]),
        })?;
    Ok((rules, catalog))
}

/// Why a rule set cannot run against a database.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    Rules(RuleErrors),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

/// Every check of a rule set before it runs — key families against `key_prefix`, then schema,
/// replica identity, conditions, warm queries — for the worker's start and every reload.
/// Returns the catalog the rules were checked against.
pub async fn check_against_database(
    client: &Client,
    rules: &RuleSet,
    key_prefix: &str,
    tables_elsewhere: bool,
) -> Result<HashMap<String, check::TableInfo>, CheckError> {
    let families = rules::check_families(rules, key_prefix);
    if !families.is_empty() {
        return Err(CheckError::Rules(RuleErrors(families)));
    }
    let catalog = check::load_catalog(client, &rules.tables()).await?;
    check_schema(rules, &catalog, tables_elsewhere).map_err(CheckError::Rules)?;
    let queries = check::check_queries(client, rules).await;
    if !queries.is_empty() {
        return Err(CheckError::Rules(RuleErrors(queries)));
    }
    Ok(catalog)
}

/// Checks rules against a catalog: logs warnings, returns the errors.
pub fn check_schema(
    rules: &RuleSet,
    catalog: &HashMap<String, check::TableInfo>,
    tables_elsewhere: bool,
) -> Result<(), RuleErrors> {
    let diags = check::check_with(rules, catalog, tables_elsewhere);
    for d in diags.iter().filter(|d| d.severity == Severity::Warning) {
        tracing::warn!("{d}");
    }
    let errors: Vec<_> = diags
        .into_iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(RuleErrors(errors))
    }
}

/// The server's current WAL position.
pub async fn current_lsn(client: &Client) -> Result<Lsn, tokio_postgres::Error> {
    let v: String = client
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::text", &[])
        .await?
        .get(0);
    Ok(Lsn(v.parse().unwrap_or(u64::MAX)))
}
