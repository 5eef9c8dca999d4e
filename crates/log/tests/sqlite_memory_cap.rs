//! The process-wide cap on SQLite's heap (`limit_sqlite_memory`). A test binary of its own:
//! the cap and `sqlite3_memory_used` cover every connection in the process, so no other
//! test may run beside this one.

use rusqlite::Connection;
use sluice_log::sqlite::{limit_sqlite_memory, sqlite_memory_limit, sqlite_memory_used};

const MB: i64 = 1 << 20;

/// Reads every row of a ~24 MB table through a connection whose own cache could hold it
/// all, and returns SQLite's heap afterwards (the connection still open).
fn heap_after_reading(path: &std::path::Path) -> i64 {
    let c = Connection::open(path).unwrap();
    c.pragma_update(None, "cache_size", -200_000).unwrap(); // 200 MB
    let n: i64 = c
        .query_row("SELECT sum(length(v)) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 6_000 * 4_000);
    sqlite_memory_used()
}

#[test]
fn the_cap_bounds_sqlite_heap_over_connections_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.sqlite");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
            .unwrap();
        let tx = c.unchecked_transaction().unwrap();
        for k in 0..6_000 {
            tx.execute("INSERT INTO t VALUES (?1, zeroblob(4000))", [k])
                .unwrap();
        }
        tx.commit().unwrap();
    }

    assert_eq!(limit_sqlite_memory(0), 0, "no cap to begin with");
    let uncapped = heap_after_reading(&path);
    assert!(
        uncapped > 20 * MB,
        "uncapped, the cache holds the table: {uncapped}"
    );

    assert_eq!(limit_sqlite_memory(8 * MB), 0);
    assert_eq!(sqlite_memory_limit(), 8 * MB);
    let capped = heap_after_reading(&path);
    assert!(
        capped <= 9 * MB,
        "capped at 8 MB, SQLite holds {capped} bytes"
    );

    assert_eq!(limit_sqlite_memory(0), 8 * MB, "returns the previous cap");
    assert_eq!(sqlite_memory_limit(), 0);
}
