//! `mcpmux`: parse the command line, set up logging, run, map the outcome to an exit code
//! (0 clean, 1 runtime failure, 64 bad usage or settings).

use std::process::ExitCode;

use clap::Parser;
use mcpmux::cli::{Cli, Command};

/// Exit code for bad usage (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `--help` and `--version` are "errors" printed to stdout; they succeed.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // A bad flag or value is bad usage, like a bad setting: 64, not clap's 2.
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EX_USAGE);
        }
    };
    match cli.command {
        Some(Command::Check { dir }) => mcpmux::check::run(&dir),
        Some(Command::HashToken) => mcpmux::check::hash_token(),
        Some(Command::Completions { shell }) => mcpmux::manual::print_completions(shell),
        Some(Command::Man) => mcpmux::manual::print_man(),
        Some(Command::Serve(args)) => mcpmux::daemon::main(args),
        None => mcpmux::daemon::main(cli.serve),
    }
}
