//! The database's catalog of the rule tables: columns and their types, replica identity,
//! primary keys and identity (`pg_class.oid`), read with one query per call. The rule checks,
//! the sources (the Kafka source reads the tables' shapes when they live in `[postgres]`) and
//! warming use it; it depends on nothing of theirs.

use std::collections::{BTreeSet, HashMap};

/// What a rule check needs to know about one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// The table's identity (`pg_class.oid`): it survives a rename, not a drop.
    pub oid: u32,
    pub columns: Vec<String>,
    /// Type OID of each column, parallel to `columns`.
    pub types: Vec<u32>,
    /// `atttypmod` of each column (numeric scale, time precision; -1: none).
    pub typmods: Vec<i32>,
    /// Columns the WAL carries for the old row (all of them with REPLICA IDENTITY FULL).
    pub identity_columns: BTreeSet<String>,
    /// `d`, `n`, `f` or `i`.
    pub replica_identity: char,
    /// Primary key columns, in key order of appearance (empty without a primary key).
    pub primary_key: Vec<String>,
}

/// Reads the columns and replica identity of `tables` (`schema.table`). Missing tables are
/// simply absent from the result. A column of a domain type has its base type.
pub async fn load_catalog(
    client: &tokio_postgres::Client,
    tables: &[String],
) -> Result<HashMap<String, TableInfo>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT n.nspname || '.' || c.relname, c.relreplident::text, a.attname::text, \
                    coalesce(a.attnum = ANY(i.indkey::int2[]), false), \
                    coalesce(a.attnum = ANY(pk.indkey::int2[]), false), \
                    coalesce(nullif(bt.typbasetype, 0), nullif(t.typbasetype, 0), a.atttypid), c.oid, \
                    CASE WHEN t.typbasetype <> 0 THEN t.typtypmod ELSE a.atttypmod END \
             FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             JOIN pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_type bt ON bt.oid = t.typbasetype \
             LEFT JOIN pg_index i ON i.indrelid = c.oid AND \
                  ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident)) \
             LEFT JOIN pg_index pk ON pk.indrelid = c.oid AND pk.indisprimary \
             WHERE c.relkind IN ('r', 'p') AND n.nspname || '.' || c.relname = ANY($1) \
             ORDER BY 1, a.attnum",
            &[&tables],
        )
        .await?;
    let mut out: HashMap<String, TableInfo> = HashMap::new();
    for row in rows {
        let table: String = row.get(0);
        let ident: String = row.get(1);
        let column: String = row.get(2);
        let in_key: bool = row.get(3);
        let in_pk: bool = row.get(4);
        let type_oid: u32 = row.get(5);
        let oid: u32 = row.get(6);
        let typmod: i32 = row.get(7);
        let ident = ident.chars().next().unwrap_or('d');
        let info = out.entry(table).or_insert_with(|| TableInfo {
            oid,
            columns: Vec::new(),
            types: Vec::new(),
            typmods: Vec::new(),
            identity_columns: BTreeSet::new(),
            replica_identity: ident,
            primary_key: Vec::new(),
        });
        if in_pk {
            info.primary_key.push(column.clone());
        }
        if in_key || ident == 'f' {
            info.identity_columns.insert(column.clone());
        }
        info.columns.push(column);
        info.types.push(type_oid);
        info.typmods.push(typmod);
    }
    Ok(out)
}

/// The current `schema.table` name of each of `oids` that still exists (a table keeps its OID
/// across a rename, not across a drop).
pub async fn names_by_oid(
    client: &tokio_postgres::Client,
    oids: &[u32],
) -> Result<HashMap<u32, String>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT c.oid, n.nspname || '.' || c.relname FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ANY($1::oid[])",
            &[&oids],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Each table's name by its identity, so changes are matched to rules by OID as well as name
/// (a renamed table's changes arrive under the new name).
pub fn table_oids(catalog: &HashMap<String, TableInfo>) -> HashMap<u32, String> {
    catalog.iter().map(|(t, i)| (i.oid, t.clone())).collect()
}

/// Primary key columns by table, for journal reasons.
pub fn primary_keys(catalog: &HashMap<String, TableInfo>) -> HashMap<String, Vec<String>> {
    catalog
        .iter()
        .map(|(t, i)| (t.clone(), i.primary_key.clone()))
        .collect()
}

impl TableInfo {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }
}
