//! The PostgreSQL dialect: quoted names, Segment's types as PostgreSQL's, advisory
//! locks, `COPY` (CSV) into a temporary staging table, and the merge on `id`.
//!
//! Blocking (the synchronous `postgres` client): the consumer runs it on a blocking
//! thread, as the state store does.

use std::io::Write;

use postgres::{Client, Transaction};

use crate::load::{Columns, Dialect, Discard, LoadError, StoredDiscard, TableLoaded, TablePlan};
use crate::shape::ColumnType;

/// A PostgreSQL warehouse on one connection.
pub struct Postgres {
    pub client: Client,
}

impl Postgres {
    pub fn connect(url: &str) -> Result<Postgres, LoadError> {
        let client = Client::connect(url, postgres::NoTls)
            .map_err(|e| LoadError::Failed(format!("cannot connect: {}", with_cause(&e))))?;
        Ok(Postgres { client })
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// A client error with its cause: `postgres::Error` shows only its kind ("error
/// connecting to server"), the cause (refused, timed out) is its source.
fn with_cause(e: &postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

impl From<postgres::Error> for LoadError {
    /// What the rows hold (a data exception, SQLSTATE class 22; a row or value past a
    /// limit, class 54) is [`LoadError::Refused`]; the rest is [`LoadError::Failed`].
    fn from(e: postgres::Error) -> LoadError {
        let message = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => with_cause(&e),
        };
        match e.code().map(|c| &c.code()[..2]) {
            Some("22" | "54") => LoadError::Refused(message),
            _ => LoadError::Failed(message),
        }
    }
}

impl From<std::io::Error> for LoadError {
    fn from(e: std::io::Error) -> LoadError {
        LoadError::Failed(format!("cannot write the staging rows: {e}"))
    }
}

/// The PostgreSQL type a new column of this type gets.
pub fn sql_type(t: ColumnType) -> &'static str {
    match t {
        ColumnType::Boolean => "boolean",
        ColumnType::Integer => "bigint",
        ColumnType::Float => "double precision",
        ColumnType::Timestamp => "timestamptz",
        ColumnType::Text => "text",
    }
}

/// The type of an existing column from `format_type` (`pg_attribute`); `None`
/// for a type Sluice does not write (changed by hand): its values are discarded.
fn of_sql(data_type: &str) -> Option<ColumnType> {
    // `format_type` adds the type's modifier: `numeric(10,2)`, `character varying(20)`.
    let base = data_type.split('(').next().unwrap_or(data_type).trim();
    Some(match base {
        "boolean" => ColumnType::Boolean,
        "bigint" | "integer" | "smallint" => ColumnType::Integer,
        "double precision" | "real" | "numeric" => ColumnType::Float,
        "timestamp with time zone" | "timestamp without time zone" => ColumnType::Timestamp,
        "text" | "character varying" | "character" => ColumnType::Text,
        _ => return None,
    })
}

/// `"name"`: names are plain already (see `naming`); quoting keeps any name safe.
fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The name of a table's index on `id`. It ends in `$id`, which no table name has
/// (table names are snake case), so it never takes the name of a table created later;
/// a long table name is cut to leave room.
fn index_name(table: &str) -> String {
    let keep = table.len().min(crate::naming::MAX_NAME_BYTES - 3);
    format!("{}$id", &table[..keep])
}

/// One CSV field: quoted, or NULL (an unquoted empty field).
fn csv(out: &mut Vec<u8>, value: Option<&str>) {
    if let Some(v) = value {
        out.push(b'"');
        if v.as_bytes().contains(&b'"') {
            out.extend_from_slice(v.replace('"', "\"\"").as_bytes());
        } else {
            out.extend_from_slice(v.as_bytes());
        }
        out.push(b'"');
    }
}

/// Waits for the advisory lock of `name` until the transaction ends.
fn lock(tx: &mut Transaction<'_>, name: &str) -> Result<(), postgres::Error> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 7331))",
        &[&name],
    )?;
    Ok(())
}

fn insert_discards(
    tx: &mut Transaction<'_>,
    schema: &str,
    table: &str,
    discards: &[Discard],
) -> Result<(), postgres::Error> {
    let sql = format!(
        "INSERT INTO {}.sluice_discards (table_name, column_name, row_id, value, reason, received_at)
         VALUES ($1, $2, $3, $4, $5, $6::text::timestamptz)",
        q(schema)
    );
    for d in discards {
        tx.execute(
            &sql,
            &[
                &table,
                &d.column,
                &d.row_id,
                &d.value,
                &d.reason,
                &d.received_at,
            ],
        )?;
    }
    Ok(())
}

impl Dialect for Postgres {
    fn prepare(&mut self, schema: &str) -> Result<(), LoadError> {
        // Under the schema's lock: concurrent `CREATE … IF NOT EXISTS` of one name can
        // fail in PostgreSQL.
        let mut tx = self.client.transaction()?;
        lock(&mut tx, schema)?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.sluice_discards (
                 table_name text NOT NULL, column_name text NOT NULL, row_id text,
                 value text, reason text NOT NULL, received_at timestamptz,
                 uuid_ts timestamptz NOT NULL DEFAULT now());",
            s = q(schema)
        ))?;
        tx.commit()?;
        Ok(())
    }

    fn load_table<'r>(
        &mut self,
        schema: &str,
        table: &str,
        plan: &mut dyn FnMut(&Columns) -> TablePlan<'r>,
    ) -> Result<TableLoaded, LoadError> {
        let full = format!("{}.{}", q(schema), q(table));
        let mut tx = self.client.transaction()?;
        lock(&mut tx, &format!("{schema}.{table}"))?;
        let read = |tx: &mut Transaction<'_>| -> Result<Columns, postgres::Error> {
            Ok(tx
                .query(
                    "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
                     WHERE attrelid = to_regclass($1)::oid AND attnum > 0 AND NOT attisdropped",
                    &[&full],
                )?
                .iter()
                .map(|r| (r.get::<_, String>(0), of_sql(r.get(1))))
                .collect())
        };
        let mut columns = read(&mut tx)?;
        if columns.is_empty() {
            // Under the table's lock, so created once. The unique index on `id` is what
            // the merge (`ON CONFLICT (id)`) keeps each event once by.
            tx.batch_execute(&format!(
                "CREATE TABLE {full} (id text NOT NULL, received_at timestamptz, uuid_ts timestamptz);
                 CREATE UNIQUE INDEX {index} ON {full} (id);",
                index = q(&index_name(table)),
            ))?;
            columns = read(&mut tx)?;
        }
        let p = plan(&columns);
        if !p.add.is_empty() {
            let adds: Vec<String> = p
                .add
                .iter()
                .map(|(n, t)| format!("ADD COLUMN IF NOT EXISTS {} {}", q(n), sql_type(*t)))
                .collect();
            tx.batch_execute(&format!("ALTER TABLE {full} {}", adds.join(", ")))?;
        }
        // Every row's values, then `uuid_ts`: when this load ran.
        let loaded_at = sluice_spec::time::format_timestamp(&chrono::Utc::now());
        let mut data = Vec::with_capacity(p.values.len() * 24);
        for values in p.rows() {
            for v in values {
                csv(&mut data, v.as_deref());
                data.push(b',');
            }
            csv(&mut data, Some(&loaded_at));
            data.push(b'\n');
        }
        let list: Vec<String> = p.written.iter().map(|c| q(c)).collect();
        let list = list.join(", ");
        let rows = if p.merged {
            tx.batch_execute(&format!(
                "CREATE TEMPORARY TABLE sluice_staging (LIKE {full}) ON COMMIT DROP"
            ))?;
            let mut copy = tx.copy_in(&format!(
                "COPY sluice_staging ({list}, uuid_ts) FROM STDIN (FORMAT csv)"
            ))?;
            copy.write_all(&data)?;
            copy.finish()?;
            // Per id, each column's latest non-null value in the batch, else the one it had.
            let select: Vec<String> = p
                .written
                .iter()
                .map(|c| match c.as_str() {
                    "id" => "id".to_string(),
                    _ => format!(
                        "(array_agg({c} ORDER BY received_at DESC NULLS LAST) FILTER (WHERE {c} IS NOT NULL))[1]",
                        c = q(c)
                    ),
                })
                .collect();
            // Across loads: the batch's values win when its latest row is not older than
            // the stored one (a late, older identify only fills what the row lacks).
            let mut keep: Vec<String> = p
                .written
                .iter()
                .filter(|c| !matches!(c.as_str(), "id" | "received_at"))
                .map(|c| {
                    format!(
                        "{c} = CASE WHEN {full}.received_at IS NULL OR EXCLUDED.received_at >= {full}.received_at
                                    THEN COALESCE(EXCLUDED.{c}, {full}.{c}) ELSE COALESCE({full}.{c}, EXCLUDED.{c}) END",
                        c = q(c)
                    )
                })
                .collect();
            if p.written.iter().any(|c| c == "received_at") {
                keep.push(format!(
                    "received_at = GREATEST(EXCLUDED.received_at, {full}.received_at)"
                ));
            }
            keep.push("uuid_ts = EXCLUDED.uuid_ts".into());
            tx.execute(
                &format!(
                    "INSERT INTO {full} ({list}, uuid_ts)
                     SELECT {select}, max(uuid_ts) FROM sluice_staging WHERE id IS NOT NULL GROUP BY id
                     ON CONFLICT (id) DO UPDATE SET {keep}",
                    select = select.join(", "),
                    keep = keep.join(", "),
                ),
                &[],
            )?
        } else {
            // The plan holds one row per id (the latest); a row loaded before with the same
            // id (a retry, a replay) is replaced: deleted, then the batch is copied straight
            // into the table (under its lock, so no other load comes between).
            let at = p.written.iter().position(|c| c == "id");
            let ids: Vec<&str> = p
                .rows()
                .filter_map(|r| at.and_then(|i| r[i].as_deref()))
                .collect();
            tx.execute(&format!("DELETE FROM {full} WHERE id = ANY($1)"), &[&ids])?;
            let mut copy = tx.copy_in(&format!(
                "COPY {full} ({list}, uuid_ts) FROM STDIN (FORMAT csv)"
            ))?;
            copy.write_all(&data)?;
            copy.finish()?
        };
        insert_discards(&mut tx, schema, table, &p.discards)?;
        tx.commit()?;
        Ok(TableLoaded {
            rows,
            discarded: p.discards.len() as u64,
            columns_added: p.add.len() as u64,
        })
    }

    fn discard(
        &mut self,
        schema: &str,
        table: &str,
        discards: &[Discard],
    ) -> Result<(), LoadError> {
        let mut tx = self.client.transaction()?;
        insert_discards(&mut tx, schema, table, discards)?;
        tx.commit()?;
        Ok(())
    }

    fn erase(
        &mut self,
        schema: &str,
        user_ids: &[String],
        anonymous_ids: &[String],
    ) -> Result<u64, LoadError> {
        let mut tx = self.client.transaction()?;
        // The tables and which of the subject columns each has.
        let tables = tx.query(
            "SELECT table_name,
                    bool_or(column_name = 'user_id'), bool_or(column_name = 'anonymous_id'),
                    bool_or(column_name = 'previous_id')
             FROM information_schema.columns
             WHERE table_schema = $1 AND table_name <> 'sluice_discards'
             GROUP BY table_name ORDER BY table_name",
            &[&schema],
        )?;
        let users: Vec<&String> = user_ids.iter().collect();
        let anonymous: Vec<&String> = anonymous_ids.iter().collect();
        let all: Vec<&String> = user_ids.iter().chain(anonymous_ids).collect();
        let mut deleted = 0;
        let mut row_ids: Vec<String> = Vec::new();
        for t in &tables {
            let table: String = t.get(0);
            let full = format!("{}.{}", q(schema), q(&table));
            lock(&mut tx, &format!("{schema}.{table}"))?;
            // (column, the ids it may hold)
            let mut matches: Vec<(&str, &Vec<&String>)> = Vec::new();
            if table == "users" {
                matches.push(("id", &users));
            }
            for (i, (column, ids)) in [
                ("user_id", &users),
                ("anonymous_id", &anonymous),
                ("previous_id", &all),
            ]
            .into_iter()
            .enumerate()
            {
                if t.get::<_, bool>(i + 1) {
                    matches.push((column, ids));
                }
            }
            if matches.is_empty() {
                continue;
            }
            let condition: Vec<String> = (1..=matches.len())
                .map(|i| format!("{} = ANY(${i})", q(matches[i - 1].0)))
                .collect();
            let params: Vec<&(dyn postgres::types::ToSql + Sync)> = matches
                .iter()
                .map(|(_, ids)| *ids as &(dyn postgres::types::ToSql + Sync))
                .collect();
            let gone = tx.query(
                &format!(
                    "DELETE FROM {full} WHERE {} RETURNING id",
                    condition.join(" OR ")
                ),
                &params,
            )?;
            deleted += gone.len() as u64;
            row_ids.extend(gone.iter().map(|r| r.get::<_, String>(0)));
        }
        let exists: bool = tx
            .query_one(
                "SELECT to_regclass(format('%I.sluice_discards', $1::text)) IS NOT NULL",
                &[&schema],
            )?
            .get(0);
        if exists {
            tx.execute(
                &format!(
                    "DELETE FROM {}.sluice_discards WHERE row_id = ANY($1)",
                    q(schema)
                ),
                &[&row_ids],
            )?;
        }
        tx.commit()?;
        Ok(deleted)
    }

    fn latest_discards(
        &mut self,
        schema: &str,
        limit: u32,
    ) -> Result<Vec<StoredDiscard>, LoadError> {
        let exists: bool = self
            .client
            .query_one(
                "SELECT to_regclass(format('%I.sluice_discards', $1::text)) IS NOT NULL",
                &[&schema],
            )?
            .get(0);
        if !exists {
            return Ok(Vec::new());
        }
        let iso = "YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"";
        let rows = self.client.query(
            &format!(
                "SELECT table_name, column_name, row_id, value, reason,
                        to_char(received_at AT TIME ZONE 'UTC', '{iso}'),
                        to_char(uuid_ts AT TIME ZONE 'UTC', '{iso}')
                 FROM {}.sluice_discards ORDER BY uuid_ts DESC LIMIT $1",
                q(schema)
            ),
            &[&i64::from(limit)],
        )?;
        Ok(rows
            .iter()
            .map(|r| StoredDiscard {
                schema: schema.to_string(),
                table: r.get(0),
                column: r.get(1),
                row_id: r.get(2),
                value: r.get(3),
                reason: r.get(4),
                received_at: r.get(5),
                loaded_at: r.get(6),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn index_names_stay_within_63_bytes_and_apart_from_table_names() {
        assert_eq!(index_name("tracks"), "tracks$id");
        let long = "a".repeat(63);
        assert_eq!(index_name(&long).len(), 63);
        assert!(index_name(&long).ends_with("$id"));
    }
}
