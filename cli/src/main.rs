//! The `lameduck` command.
//!
//! `lameduck demo` runs a small real service built only on lameduck's public
//! API, to watch a graceful end of life: send it SIGTERM (or press Ctrl-C)
//! and it drains, closes and exits with a one-line summary.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;
mod jobs;

/// Graceful end of life and zero-downtime restarts for network services.
#[derive(Debug, Parser)]
#[command(name = "lameduck", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the demo service until SIGTERM or Ctrl-C; a second one forces.
    Demo(demo::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .compact()
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lameduck: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Demo(args) => runtime.block_on(demo::run(args)),
    }
}
