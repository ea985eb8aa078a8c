//! `mcpmux`: parse the command line, set up logging, run, map the outcome to an exit code
//! (0 clean, 1 runtime failure, 64 bad usage or settings).

use std::process::ExitCode;

use clap::Parser;
use mcpmux::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { dir }) => mcpmux::check::run(&dir),
        Some(Command::HashToken) => mcpmux::check::hash_token(),
        Some(Command::Serve(args)) => mcpmux::daemon::main(args),
        None => mcpmux::daemon::main(cli.serve),
    }
}
