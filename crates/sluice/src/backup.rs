//! `sluice backup` and `sluice restore`: a consistent copy of an embedded deployment's data
//! directory, taken while the server runs, and its return into a new directory.
//!
//! What a backup holds and why it is consistent:
//!
//! - `events.sqlite` (the event log and the consumers' cursors) is copied first, then
//!   `state.sqlite` (retry queues, dead letters, delivery records, settings) and
//!   `profiles.sqlite`. Each copy is SQLite's `VACUUM INTO` on a read-only connection: one
//!   read transaction, so a consistent snapshot of that file, written compactly, while the
//!   server keeps writing (WAL readers do not block the writer). The log's snapshot is
//!   taken after the command starts, so every event acknowledged before it is in it.
//! - The cursors come from the log's snapshot, the earliest of the three: restored
//!   consumers resume there and send again whatever they had sent after it (at least
//!   once, never lost); profile filing after a cursor is idempotent.
//! - The dedupe index (`events.dedupe` and its runs) is not copied: the server rebuilds it
//!   from the restored log at its first start, so it knows exactly the restored events.
//!
//! A backup directory also holds `BACKUP.json` (format, version, time, files and sizes);
//! `restore` checks it and each file (`PRAGMA quick_check`) before writing anything.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rusqlite::{Connection, OpenFlags};

use crate::config::{self, FileConfig, LogKind, StoreKind};

/// The files of a backup, in the order they are copied.
const FILES: [&str; 3] = ["events.sqlite", "state.sqlite", "profiles.sqlite"];
const MANIFEST: &str = "BACKUP.json";
const FORMAT: u64 = 1;

#[derive(clap::Args)]
pub struct BackupArgs {
    /// The server's config file (for its `data_dir`).
    #[arg(long, short, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// The data directory to back up (overrides the config's).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where to write the backup: a new or empty directory.
    target: PathBuf,
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// A directory written by `sluice backup`.
    backup: PathBuf,
    /// The server's config file (for its `data_dir`).
    #[arg(long, short, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// The data directory to restore into: a new or empty directory (overrides the
    /// config's).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// The data directory the arguments name, and the config it comes from (if any).
fn data_dir(config: &Option<PathBuf>, given: &Option<PathBuf>) -> Result<PathBuf> {
    let cfg = match config {
        Some(path) => config::load(path)?,
        None => FileConfig::default(),
    };
    if cfg.log.kind == LogKind::Kafka || cfg.store.kind == StoreKind::Postgres {
        bail!(
            "the config runs the scale-out deployment ([log] kind = \"kafka\" or [store] kind = \
             \"postgres\"): back up Kafka and PostgreSQL with their own tools; `sluice backup` \
             copies the embedded deployment's data directory"
        );
    }
    Ok(given
        .clone()
        .or(cfg.data_dir)
        .unwrap_or_else(|| PathBuf::from("./sluice-data")))
}

/// A directory that is new or empty (created if missing).
fn empty_dir(dir: &Path, what: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if entries.next().is_some() {
        bail!(
            "{what} {} is not empty: give a new or empty directory",
            dir.display()
        );
    }
    Ok(())
}

/// Writes `path` by `write` into `path.part`, syncs it, then renames it into place.
fn write_whole(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let part = path.with_extension("part");
    let _ = std::fs::remove_file(&part);
    write(&part)?;
    std::fs::File::open(&part)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", part.display()))?;
    std::fs::rename(&part, path).with_context(|| format!("cannot rename {}", part.display()))?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

/// `VACUUM INTO` from a read-only connection: one consistent snapshot of `from`.
fn snapshot(from: &Path, to: &Path) -> Result<()> {
    let conn = Connection::open_with_flags(
        from,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {}", from.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(60))?;
    conn.execute("VACUUM INTO ?1", [to.to_string_lossy()])
        .with_context(|| format!("cannot copy {}", from.display()))?;
    Ok(())
}

pub fn backup(args: BackupArgs) -> Result<()> {
    let dir = data_dir(&args.config, &args.data_dir)?;
    if !dir.join(FILES[0]).is_file() {
        bail!(
            "{} holds no Sluice data (no {}): give the server's data directory (--data-dir or the config's data_dir)",
            dir.display(),
            FILES[0]
        );
    }
    empty_dir(&args.target, "the backup directory")?;
    let started = std::time::Instant::now();
    let mut files = Vec::new();
    for name in FILES {
        let from = dir.join(name);
        if !from.is_file() {
            continue;
        }
        let to = args.target.join(name);
        write_whole(&to, |part| snapshot(&from, part))?;
        let bytes = std::fs::metadata(&to)?.len();
        files.push(serde_json::json!({"name": name, "bytes": bytes}));
    }
    let manifest = serde_json::json!({
        "format": FORMAT,
        "sluice": env!("CARGO_PKG_VERSION"),
        "created_at": sluice_spec::time::format_timestamp(&chrono::Utc::now()),
        "data_dir": dir.display().to_string(),
        "files": files,
    });
    write_whole(&args.target.join(MANIFEST), |part| {
        std::fs::write(part, serde_json::to_vec_pretty(&manifest)?)
            .with_context(|| format!("cannot write {}", part.display()))
    })?;
    sync_dir(&args.target)?;
    println!(
        "backed up {} into {} in {:.1} s ({})",
        dir.display(),
        args.target.display(),
        started.elapsed().as_secs_f64(),
        manifest["files"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| format!("{} {} bytes", f["name"].as_str().unwrap_or(""), f["bytes"]))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

pub fn restore(args: RestoreArgs) -> Result<()> {
    let dir = data_dir(&args.config, &args.data_dir)?;
    let manifest_path = args.backup.join(MANIFEST);
    let text = std::fs::read(&manifest_path).with_context(|| {
        format!(
            "{} is not a Sluice backup (no {MANIFEST}): give a directory written by `sluice backup`",
            args.backup.display()
        )
    })?;
    let manifest: serde_json::Value = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not valid JSON", manifest_path.display()))?;
    if manifest["format"].as_u64() != Some(FORMAT) {
        bail!(
            "{} has format {}, which this Sluice ({}) does not read (it reads {FORMAT})",
            manifest_path.display(),
            manifest["format"],
            env!("CARGO_PKG_VERSION")
        );
    }
    let names: Vec<&str> = manifest["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["name"].as_str())
        .collect();
    if !names.contains(&FILES[0]) {
        bail!(
            "{} lists no {}: the backup is incomplete",
            manifest_path.display(),
            FILES[0]
        );
    }
    // Everything is checked before anything is written.
    for name in &names {
        if !FILES.contains(name) {
            bail!(
                "{} lists {name:?}, which is not a file of a backup",
                manifest_path.display()
            );
        }
        let file = args.backup.join(name);
        let conn = Connection::open_with_flags(&file, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("cannot open {}", file.display()))?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .with_context(|| format!("{} is not a readable SQLite file", file.display()))?;
        if check != "ok" {
            bail!("{} is damaged: {check}", file.display());
        }
    }
    empty_dir(&dir, "the data directory")?;
    for name in &names {
        let from = args.backup.join(name);
        write_whole(&dir.join(name), |part| {
            std::fs::copy(&from, part)
                .map(|_| ())
                .with_context(|| format!("cannot copy {}", from.display()))
        })?;
    }
    sync_dir(&dir)?;
    println!(
        "restored the backup of {} ({}) into {}: start the server on it. Events acknowledged \
         after the backup are not in it; consumers resume from the backup's cursors and send \
         again what they had sent after them; the dedupe index is rebuilt from the log at start.",
        manifest["data_dir"].as_str().unwrap_or("?"),
        manifest["created_at"].as_str().unwrap_or("?"),
        dir.display()
    );
    Ok(())
}
