//! The `adc` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// A proxy allocates and frees small buffers on every request, from every
// worker thread: mimalloc's per-thread heaps do that with less work and
// less lock traffic than the system allocator. It is built without
// transparent huge pages (the workspace's `no_thp`): with them an idle adc
// held 5-30 MiB more and each idle client 9 KiB more.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "adc",
    version,
    about = "A WebAssembly-programmable application delivery controller"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a configuration until SIGTERM or Ctrl-C (SIGHUP reloads it).
    Run {
        config: PathBuf,
        /// Worker threads (default: the config's `workers`, else every core).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Validate a configuration and load its policies, without serving.
    Check { config: PathBuf },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ADC_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match adc::serve::check(&config) {
            Ok(()) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Run { config, workers } => {
            // This thread accepts connections and runs admin, health checks
            // and reloads; the worker threads serve the connections.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the tokio runtime starts");
            let code = runtime.block_on(run(config, workers));
            // Blocking work still running (a policy compiling for a reload
            // or a changed file) has no use now: exit without waiting.
            runtime.shutdown_background();
            code
        }
    }
}

async fn run(config: PathBuf, workers: Option<usize>) -> ExitCode {
    if let Some(w) = workers.filter(|&w| w > adc::config::MAX_WORKERS) {
        eprintln!(
            "error: --workers {w}: at most {} (0 means one per core)",
            adc::config::MAX_WORKERS
        );
        return ExitCode::from(2);
    }
    let running = match adc::serve::start_with(&config, workers).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .expect("SIGHUP handler");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    loop {
        tokio::select! {
            // Beside the wait for SIGTERM, not in its way: a reload compiles
            // policies, which takes a while.
            _ = hup.recv() => {
                let shared = running.shared.clone();
                tokio::spawn(async move { adc::serve::reload(&shared).await });
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("draining in-flight requests");
    running.shutdown().await;
    ExitCode::SUCCESS
}
