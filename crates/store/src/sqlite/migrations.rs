//! The SQLite schemas as numbered migrations. A file's `PRAGMA user_version` is the number
//! of migrations applied to it; opening it applies the ones after that, each in the same
//! transaction as the version it sets. A migration is never edited once released: a
//! change to the schema is a new one at the end of its list.

use rusqlite::Connection;

use crate::StoreError;

/// `state.sqlite`: settings, refused items, destinations, retry queues, dead letters,
/// delivery records, replay jobs, regulations and suppressions; then (2) console users,
/// sessions and the audit trail.
pub(super) const STATE: &[&str] = &[
    r"
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    message_id TEXT,
    code TEXT NOT NULL,
    field TEXT,
    reason TEXT NOT NULL,
    raw TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_by_source ON rejected(source, id);
CREATE TABLE IF NOT EXISTS destinations (name TEXT PRIMARY KEY, config TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
    destination TEXT NOT NULL,
    log_offset INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    user_key TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    payload BLOB NOT NULL,
    attempts TEXT NOT NULL,
    first_attempt INTEGER NOT NULL,
    next_at INTEGER NOT NULL,
    PRIMARY KEY (destination, log_offset)
);
CREATE INDEX IF NOT EXISTS pending_due ON pending(destination, next_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    log_offset INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    user_key TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    payload BLOB NOT NULL,
    attempts TEXT NOT NULL,
    reason TEXT NOT NULL,
    status INTEGER,
    failed_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_destination ON dead_letters(destination, id);
CREATE TABLE IF NOT EXISTS deliveries (
    destination TEXT NOT NULL,
    log_offset INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    latency_ms INTEGER,
    status INTEGER,
    detail TEXT,
    PRIMARY KEY (log_offset, destination)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS replay_jobs (id TEXT PRIMARY KEY, job TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS regulations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS suppressions (subject TEXT PRIMARY KEY, regulation TEXT NOT NULL) WITHOUT ROWID;
",
    r"
CREATE TABLE console_users (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL,
    version INTEGER NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE console_sessions (
    id_hash TEXT PRIMARY KEY, username TEXT NOT NULL, csrf TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX console_sessions_by_user ON console_sessions(username);
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, before TEXT, after TEXT
);
",
];

/// `profiles.sqlite`: the profile tables (see `crate::profiles`).
pub(super) const PROFILES: &[&str] = &[r"
CREATE TABLE IF NOT EXISTS id_obs (
    hash INTEGER PRIMARY KEY,
    idents TEXT NOT NULL,
    ts INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    source TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS obs_idents (
    ident TEXT NOT NULL,
    hash INTEGER NOT NULL,
    PRIMARY KEY (ident, hash)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS identities (
    ident TEXT PRIMARY KEY,
    profile TEXT NOT NULL,
    ts INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    source TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS identities_by_profile ON identities(profile);
CREATE TABLE IF NOT EXISTS profiles (id TEXT PRIMARY KEY, merged TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS traits (
    ident TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    ts INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (ident, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS profile_events (
    id INTEGER PRIMARY KEY,
    ident_hash INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    msg_hash INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS links (
    user_ident TEXT NOT NULL,
    account_ident TEXT NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (user_ident, account_ident)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS links_by_account ON links(account_ident);
CREATE INDEX IF NOT EXISTS profile_events_by_key ON profile_events(ident_hash, ts, msg_hash);
"];

/// Brings the file to the last of `migrations`; refuses a file written by a newer Sluice.
pub(super) fn migrate(
    c: &mut Connection,
    file: &str,
    migrations: &[&str],
) -> Result<(), StoreError> {
    let tx = c.transaction()?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = migrations.len() as i64;
    if version > known {
        return Err(StoreError::Incompatible(format!(
            "{file} has schema version {version}, and this Sluice knows versions up to {known}: it was written by a newer Sluice"
        )));
    }
    for (done, sql) in migrations.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", done as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(c: &Connection) -> i64 {
        c.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn migrations_apply_once_in_order_and_newer_files_are_refused() {
        let mut c = Connection::open_in_memory().unwrap();
        let steps = [
            "CREATE TABLE a (x INTEGER)",
            "ALTER TABLE a ADD COLUMN y INTEGER",
        ];
        migrate(&mut c, "test.sqlite", &steps[..1]).unwrap();
        assert_eq!(version(&c), 1);
        // Applying again changes nothing; the next migration applies alone.
        migrate(&mut c, "test.sqlite", &steps[..1]).unwrap();
        migrate(&mut c, "test.sqlite", &steps).unwrap();
        assert_eq!(version(&c), 2);
        c.execute("INSERT INTO a (x, y) VALUES (1, 2)", []).unwrap();
        let e = migrate(&mut c, "test.sqlite", &steps[..1]).unwrap_err();
        assert!(
            e.to_string().contains("test.sqlite has schema version 2"),
            "{e}"
        );
        // A failing migration leaves the file at the version before it.
        let bad = [steps[0], steps[1], "NOT SQL"];
        assert!(migrate(&mut c, "test.sqlite", &bad).is_err());
        assert_eq!(version(&c), 2);
    }

    #[test]
    fn the_schemas_apply_to_empty_files() {
        for (file, migrations) in [("state", STATE), ("profiles", PROFILES)] {
            let mut c = Connection::open_in_memory().unwrap();
            migrate(&mut c, file, migrations).unwrap();
            assert_eq!(version(&c), migrations.len() as i64, "{file}");
        }
    }
}
