//! The `sluice` binary: `serve`, `check`, `catalog`, `preview`, `replay`, `bench`.

mod bench;
mod bench_deliver;
mod bench_profiles;
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
    /// Benchmarks against a running server.
    Bench {
        #[command(subcommand)]
        which: bench::BenchCommand,
    },
    /// A server that only reads the body and answers 200 (the benchmark's baseline).
    #[command(hide = true)]
    BenchBaseline {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
}

fn main() -> std::process::ExitCode {
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
        Command::Catalog { which } => catalog_cmd::run(which),
        Command::Preview(args) => preview::run(args),
        Command::Bench { which } => bench::run(which),
        Command::BenchBaseline { listen } => bench::baseline(listen),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
