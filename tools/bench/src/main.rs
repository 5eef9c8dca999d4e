//! `sluice-bench`: the load generators and the baseline server, outside the product
//! binary. Figures are recorded in bench/README.md, never asserted in tests.
//!
//! Module map:
//! - [`ingest`]: loads a running server's Tracking API against the baseline server.
//! - [`deliver`]: ingest → webhook delivery → a receiver in this process.
//! - [`profiles`]: the profile consumer and the Profile API on scratch stores.
//! - [`kafka`]: a bare Kafka producer, the bound for the Kafka deployment's ingest.
//! - [`warehouse`]: ingest → rows committed in PostgreSQL, against a bare `COPY`.

mod deliver;
mod ingest;
mod kafka;
mod profiles;
mod warehouse;

use clap::{Parser, Subcommand};

// The same allocator as the product binary, so the baseline server measured in each run
// allocates as the server under test does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sluice-bench",
    about = "Benchmarks of Sluice against a baseline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the Tracking API of a running server.
    Ingest(ingest::IngestArgs),
    /// Ingest → webhook delivery → a local receiver: end-to-end events/s and latency.
    Deliver(deliver::DeliverArgs),
    /// The profile consumer's events/s and the Profile API's traits lookup latency, on
    /// scratch stores (no running server needed).
    Profiles(profiles::ProfilesArgs),
    /// Ingest → warehouse → rows committed in PostgreSQL: events/s against a bare COPY of
    /// the same rows, and the latency from an event's 200 to its row being queryable.
    Warehouse(warehouse::WarehouseArgs),
    /// A bare Kafka producer sending the generator's events (the Kafka deployment's bound).
    KafkaProduce(kafka::ProduceArgs),
    /// A server that only reads the body and answers 200 (the ingest benchmark's baseline).
    Baseline {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| {
            runtime.block_on(async {
                match cli.command {
                    Command::Ingest(args) => ingest::ingest(args).await,
                    Command::Deliver(args) => deliver::deliver(args).await,
                    Command::Warehouse(args) => warehouse::warehouse(args).await,
                    Command::Profiles(args) => profiles::profiles(args).await,
                    Command::KafkaProduce(args) => kafka::produce(args).await,
                    Command::Baseline { listen } => ingest::baseline(listen).await,
                }
            })
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
