//! The `sluice` binary: `serve`, `check`, `catalog`, `preview`, `replay`. The load
//! generators are the separate `sluice-bench` (tools/bench).

mod backup;
mod catalog_cmd;
mod config;
mod preview;
mod replay;
mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

// mimalloc: ingest allocates and frees many small JSON nodes per event across threads;
// glibc malloc spent ~10% of server time in consolidation under the batch benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's options, set before any work starts.
mod allocator {
    use std::ffi::{c_int, c_long};

    extern "C" {
        // From the mimalloc library the `mimalloc` crate links (mimalloc.h).
        #[cfg(test)]
        fn mi_option_get(option: c_int) -> c_long;
        fn mi_option_set(option: c_int, value: c_long);
    }

    /// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (the crate's default build).
    const PURGE_DELAY: c_int = 15;

    /// mimalloc v3 keeps freed memory 1 s before returning it to the OS (v2: 10 ms), which
    /// under batch ingest with the profile consumer holds tens of MB of RSS that is not in
    /// use; return it after 10 ms, as v2 did — unless the operator set
    /// `MIMALLOC_PURGE_DELAY`, which mimalloc has read already.
    pub fn tune() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: mimalloc's documented option API; any value is valid for it.
            unsafe { mi_option_set(PURGE_DELAY, 10) }
        }
    }

    #[cfg(test)]
    pub fn purge_delay() -> c_long {
        // SAFETY: as above.
        unsafe { mi_option_get(PURGE_DELAY) }
    }

    #[cfg(test)]
    mod tests {
        /// The option index is the purge delay: v3's default is 1000 ms (no other option
        /// defaults to that), and `tune` sets it.
        #[test]
        fn the_purge_delay_option_is_the_one_set() {
            assert_eq!(super::purge_delay(), 1000);
            super::tune();
            assert_eq!(super::purge_delay(), 10);
        }
    }
}

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A Segment-compatible customer data platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded default when no config is given).
    Serve(serve::ServeArgs),
    /// Validate a config file and exit.
    Check {
        /// The config file to check.
        #[arg(long, short, default_value = "sluice.toml", env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
    /// The built-in destination types; `catalog show NAME` for one type's details.
    Catalog {
        #[command(subcommand)]
        which: Option<catalog_cmd::CatalogCommand>,
    },
    /// What an event would become at a destination of a config file (offline, sends nothing).
    Preview(preview::PreviewArgs),
    /// Re-deliver to one destination: its dead letters, or a window of the event log.
    Replay(replay::ReplayArgs),
    /// Copy a data directory (log, state, profiles) consistently, also while the server runs.
    Backup(backup::BackupArgs),
    /// Bring a backup back into a new or empty data directory.
    Restore(backup::RestoreArgs),
}

fn main() -> std::process::ExitCode {
    allocator::tune();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Check { config } => config::load(&config).map(|cfg| {
            let plural = |n: usize| if n == 1 { "" } else { "s" };
            println!(
                "{}: ok ({} source{}, {} destination{})",
                config.display(),
                cfg.sources.len(),
                plural(cfg.sources.len()),
                cfg.destinations.len(),
                plural(cfg.destinations.len()),
            );
        }),
        Command::Replay(args) => replay::run(args),
        Command::Backup(args) => backup::backup(args),
        Command::Restore(args) => backup::restore(args),
        Command::Catalog { which } => catalog_cmd::run(which),
        Command::Preview(args) => preview::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
