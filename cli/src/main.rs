//! The `lameduck` command.
//!
//! `lameduck demo` runs a small real service built only on lameduck's public
//! API, to watch a graceful end of life: send it SIGTERM (or press Ctrl-C)
//! and it drains, closes and exits with a one-line summary.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;
mod jobs;
mod run;

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
    /// Supervise a server in any language: hold its listening sockets,
    /// restart it with zero downtime on SIGHUP, stop it within a budget.
    Run(run::Args),
    /// Ask a running service to restart with zero downtime, through its
    /// control socket; prints `done: new pid N` or `failed: reason`.
    Restart {
        /// The service's control socket (`lameduck demo --control PATH`).
        #[arg(long)]
        control: std::path::PathBuf,
        /// How long to wait for the answer.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Ask a running service for its status through its control socket.
    Status {
        /// The service's control socket.
        #[arg(long)]
        control: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    // The supervisor's exec shim: before anything else runs (no runtime,
    // no threads), set `LISTEN_PID` and become the command.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == run::child::SHIM) {
        return run::child::exec_shim(&args[2..]);
    }
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
        Command::Run(args) => {
            drop(runtime);
            run::main(args)
        }
        Command::Demo(args) => runtime.block_on(demo::run(args)),
        Command::Restart { control, timeout } => {
            runtime.block_on(ask(&control, "restart", timeout))
        }
        Command::Status { control } => {
            runtime.block_on(ask(&control, "status", std::time::Duration::from_secs(5)))
        }
    }
}

/// Send one command to a control socket and print the answer; exit 0 for
/// `done:` and `ok:` answers.
async fn ask(control: &std::path::Path, command: &str, timeout: std::time::Duration) -> ExitCode {
    match lameduck::restart::control(control, command, timeout).await {
        Ok(answer) => {
            println!("{answer}");
            if answer.starts_with("done:") || answer.starts_with("ok:") {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("lameduck: {}: {e}", control.display());
            ExitCode::FAILURE
        }
    }
}
