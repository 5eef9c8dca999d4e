//! Loading rows into PostgreSQL, one transaction per table:
//!
//! 1. take the table's advisory lock (two nodes loading the same table take turns; the
//!    schema and `sluice_discards` are created before, under the schema's lock);
//! 2. create the schema and table when missing, add the columns the rows bring
//!    (a new column's type is its first value's), read the table's columns;
//! 3. fit every value to its column: the same type as is, an integer into a float
//!    column, anything into a text column; a value that cannot fit is written as NULL and
//!    recorded in `sluice_discards` with the reason, so nothing is lost unseen;
//! 4. `COPY` the rows into a staging table, then merge: event tables keep one row per `id`
//!    (the latest `received_at`; a row loaded before with the same `id` is replaced), and
//!    `users` and `accounts` keep one row per `id` whose every column is the latest
//!    non-null value the batch brings, else the value it had.
//!
//! Blocking (the synchronous `postgres` client): the consumer runs it on a blocking
//! thread, as the state store does.

use std::collections::BTreeMap;
use std::io::Write;

use postgres::{Client, Transaction};

use crate::shape::{Cell, ColumnType, Row};

/// Tables with one row per `id` whose columns are merged, not replaced.
const MERGED_TABLES: &[&str] = &["users", "accounts"];

/// Why a load failed. Nothing of the table's rows is kept: its transaction rolled back.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("warehouse error: {0}")]
    Postgres(#[from] postgres::Error),
    #[error("warehouse error: cannot write the staging rows: {0}")]
    Copy(#[from] std::io::Error),
}

/// What a load did, per table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Rows written (after merging repeats of an `id`).
    pub rows: BTreeMap<String, u64>,
    /// Values that could not fit their column (written as NULL, kept in `sluice_discards`).
    pub discarded: u64,
    /// Columns added.
    pub columns_added: u64,
}

impl ColumnType {
    /// The PostgreSQL type a new column of this type gets.
    pub fn sql(self) -> &'static str {
        match self {
            ColumnType::Boolean => "boolean",
            ColumnType::Integer => "bigint",
            ColumnType::Float => "double precision",
            ColumnType::Timestamp => "timestamptz",
            ColumnType::Text => "text",
        }
    }

    /// The type of an existing column from `information_schema.columns.data_type`;
    /// `None` for a type Sluice does not write (changed by hand): its values are discarded.
    fn of_sql(data_type: &str) -> Option<ColumnType> {
        Some(match data_type {
            "boolean" => ColumnType::Boolean,
            "bigint" | "integer" | "smallint" => ColumnType::Integer,
            "double precision" | "real" | "numeric" => ColumnType::Float,
            "timestamp with time zone" | "timestamp without time zone" => ColumnType::Timestamp,
            "text" | "character varying" | "character" => ColumnType::Text,
            _ => return None,
        })
    }
}

fn type_name(t: Option<ColumnType>) -> &'static str {
    match t {
        Some(ColumnType::Boolean) => "boolean",
        Some(ColumnType::Integer) => "integer",
        Some(ColumnType::Float) => "float",
        Some(ColumnType::Timestamp) => "timestamp",
        Some(ColumnType::Text) => "text",
        None => "another type",
    }
}

/// A value as its column can hold it, or why it cannot.
fn fit(cell: &Cell, column: Option<ColumnType>) -> Result<String, String> {
    let text = match cell {
        Cell::Boolean(b) => b.to_string(),
        Cell::Integer(i) => i.to_string(),
        Cell::Float(f) => f.to_string(),
        Cell::Timestamp(t) => sluice_spec::time::parse_timestamp(t)
            .map(|t| sluice_spec::time::format_timestamp(&t))
            .unwrap_or_else(|| t.clone()),
        Cell::Text(s) => s.clone(),
    };
    match (cell.column_type(), column) {
        (from, Some(to)) if from == to => Ok(text),
        (ColumnType::Integer, Some(ColumnType::Float)) | (_, Some(ColumnType::Text)) => Ok(text),
        (from, to) => Err(format!(
            "incompatible schema conversion from {} to {}",
            type_name(Some(from)),
            type_name(to)
        )),
    }
}

/// `"name"`: names are plain already (see `naming`); quoting keeps any name safe.
fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One CSV field: quoted, or NULL (an unquoted empty field).
fn csv(out: &mut Vec<u8>, value: Option<&str>) {
    if let Some(v) = value {
        out.push(b'"');
        out.extend_from_slice(v.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    }
}

/// Loads `rows` into `schema`, one transaction per table.
pub fn load(client: &mut Client, schema: &str, rows: &[Row]) -> Result<Loaded, LoadError> {
    let mut by_table: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        by_table.entry(r.table.as_str()).or_default().push(r);
    }
    // The schema and the discards table first, under the schema's lock: concurrent
    // `CREATE … IF NOT EXISTS` of one name can fail in PostgreSQL.
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 7331))",
        &[&schema],
    )?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.sluice_discards (
             table_name text NOT NULL, column_name text NOT NULL, row_id text,
             value text, reason text NOT NULL, received_at timestamptz,
             uuid_ts timestamptz NOT NULL DEFAULT now());",
        s = q(schema)
    ))?;
    tx.commit()?;
    let mut loaded = Loaded::default();
    for (table, rows) in by_table {
        let mut tx = client.transaction()?;
        load_table(&mut tx, schema, table, &rows, &mut loaded)?;
        tx.commit()?;
    }
    Ok(loaded)
}

fn load_table(
    tx: &mut Transaction<'_>,
    schema: &str,
    table: &str,
    rows: &[&Row],
    loaded: &mut Loaded,
) -> Result<(), LoadError> {
    let merged = MERGED_TABLES.contains(&table);
    let full = format!("{}.{}", q(schema), q(table));
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 7331))",
        &[&format!("{schema}.{table}")],
    )?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {full} (
             id text {key}, received_at timestamptz, uuid_ts timestamptz);
         CREATE INDEX IF NOT EXISTS {index} ON {full} (id);",
        key = if merged { "PRIMARY KEY" } else { "NOT NULL" },
        index = q(&format!("{table}_id")),
    ))?;
    // The table's columns as they are, then the ones the rows bring (first value's type).
    let mut columns: BTreeMap<String, Option<ColumnType>> = tx
        .query(
            "SELECT column_name, data_type FROM information_schema.columns
             WHERE table_schema = $1 AND table_name = $2",
            &[&schema, &table],
        )?
        .iter()
        .map(|r| {
            let data_type: String = r.get(1);
            (r.get::<_, String>(0), ColumnType::of_sql(&data_type))
        })
        .collect();
    let mut added: Vec<(String, ColumnType)> = Vec::new();
    for row in rows {
        for (name, cell) in &row.columns {
            if !columns.contains_key(name) {
                columns.insert(name.clone(), Some(cell.column_type()));
                added.push((name.clone(), cell.column_type()));
            }
        }
    }
    if !added.is_empty() {
        let adds: Vec<String> = added
            .iter()
            .map(|(n, t)| format!("ADD COLUMN IF NOT EXISTS {} {}", q(n), t.sql()))
            .collect();
        tx.batch_execute(&format!("ALTER TABLE {full} {}", adds.join(", ")))?;
        loaded.columns_added += added.len() as u64;
    }
    // The columns this load writes, in one order for the staging table and the merge.
    let written: Vec<&String> = columns
        .keys()
        .filter(|c| c.as_str() != "uuid_ts" && rows.iter().any(|r| r.columns.contains_key(*c)))
        .collect();
    let mut data = Vec::new();
    // (column, row id, the value as text, reason, the row's received_at)
    type Discard = (String, Option<String>, String, String, Option<String>);
    let mut discards: Vec<Discard> = Vec::new();
    for row in rows {
        let as_text = |name: &str| {
            row.columns
                .get(name)
                .and_then(|c| fit(c, Some(ColumnType::Text)).ok())
        };
        for (i, name) in written.iter().enumerate() {
            if i > 0 {
                data.push(b',');
            }
            let value = match row.columns.get(*name) {
                None => None,
                Some(cell) => match fit(cell, columns[*name]) {
                    Ok(v) => Some(v),
                    Err(reason) => {
                        let raw = fit(cell, Some(ColumnType::Text)).unwrap_or_default();
                        discards.push((
                            (*name).clone(),
                            as_text("id"),
                            raw,
                            reason,
                            as_text("received_at"),
                        ));
                        None
                    }
                },
            };
            csv(&mut data, value.as_deref());
        }
        data.push(b'\n');
    }
    let list: Vec<String> = written.iter().map(|c| q(c)).collect();
    let list = list.join(", ");
    tx.batch_execute(&format!(
        "CREATE TEMPORARY TABLE sluice_staging (LIKE {full}) ON COMMIT DROP"
    ))?;
    let mut copy = tx.copy_in(&format!(
        "COPY sluice_staging ({list}) FROM STDIN (FORMAT csv)"
    ))?;
    copy.write_all(&data)?;
    copy.finish()?;
    let n = if merged {
        // Per id, each column's latest non-null value in the batch, else the one it had.
        let select: Vec<String> = written
            .iter()
            .map(|c| match c.as_str() {
                "id" => "id".to_string(),
                _ => format!(
                    "(array_agg({c} ORDER BY received_at DESC NULLS LAST) FILTER (WHERE {c} IS NOT NULL))[1]",
                    c = q(c)
                ),
            })
            .collect();
        let mut keep: Vec<String> = written
            .iter()
            .filter(|c| c.as_str() != "id")
            .map(|c| format!("{c} = COALESCE(EXCLUDED.{c}, {full}.{c})", c = q(c)))
            .collect();
        keep.push("uuid_ts = EXCLUDED.uuid_ts".into());
        tx.execute(
            &format!(
                "INSERT INTO {full} ({list}, uuid_ts)
                 SELECT {select}, now() FROM sluice_staging WHERE id IS NOT NULL GROUP BY id
                 ON CONFLICT (id) DO UPDATE SET {keep}",
                select = select.join(", "),
                keep = keep.join(", "),
            ),
            &[],
        )?
    } else {
        tx.execute(
            &format!("DELETE FROM {full} t USING sluice_staging s WHERE t.id = s.id"),
            &[],
        )?;
        tx.execute(
            &format!(
                "INSERT INTO {full} ({list}, uuid_ts)
                 SELECT DISTINCT ON (id) {list}, now() FROM sluice_staging
                 ORDER BY id, received_at DESC NULLS LAST"
            ),
            &[],
        )?
    };
    *loaded.rows.entry(table.to_string()).or_default() += n;
    if !discards.is_empty() {
        for (column, row_id, value, reason, received_at) in &discards {
            tx.execute(
                &format!(
                    "INSERT INTO {}.sluice_discards (table_name, column_name, row_id, value, reason, received_at)
                     VALUES ($1, $2, $3, $4, $5, $6::text::timestamptz)",
                    q(schema)
                ),
                &[&table, column, row_id, value, reason, received_at],
            )?;
        }
        loaded.discarded += discards.len() as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_fit_their_columns_or_say_why_not() {
        let int = Cell::Integer(3);
        assert_eq!(fit(&int, Some(ColumnType::Integer)).unwrap(), "3");
        assert_eq!(fit(&int, Some(ColumnType::Float)).unwrap(), "3");
        assert_eq!(fit(&int, Some(ColumnType::Text)).unwrap(), "3");
        assert_eq!(
            fit(&Cell::Text("abc".into()), Some(ColumnType::Integer)).unwrap_err(),
            "incompatible schema conversion from text to integer"
        );
        assert_eq!(
            fit(&Cell::Float(1.5), Some(ColumnType::Integer)).unwrap_err(),
            "incompatible schema conversion from float to integer"
        );
        assert_eq!(
            fit(&Cell::Boolean(true), None).unwrap_err(),
            "incompatible schema conversion from boolean to another type"
        );
        // Timestamps are written in one form PostgreSQL reads.
        assert_eq!(
            fit(
                &Cell::Timestamp("2026-12-07T10:00:00+01:00".into()),
                Some(ColumnType::Timestamp)
            )
            .unwrap(),
            "2026-12-07T09:00:00.000Z"
        );
    }

    #[test]
    fn csv_fields_quote_everything_and_null_is_empty() {
        let mut out = Vec::new();
        csv(&mut out, Some("a \"b\", c\nd"));
        out.push(b',');
        csv(&mut out, None);
        out.push(b',');
        csv(&mut out, Some(""));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a \"\"b\"\", c\nd\",,\"\""
        );
    }
}
