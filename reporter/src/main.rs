//! `tbox-report`: the volunteer's cron command. It updates the source, runs the configured
//! steps, collects logs and JUnit results, signs the report with the volunteer's key and
//! pushes it; what cannot be delivered waits in a spool until the server is back.
//!
//! Flow: `main.rs` → `cli.rs` → `cmd/<subcommand>.rs`; a build is `cmd/run.rs` using
//! `runner.rs` (steps), `junit.rs` (test results), `client.rs` (HTTP) and `spool.rs`.

mod budget;
mod cli;
mod client;
mod cmd;
mod config;
mod junit;
mod keyfile;
mod props;
mod runner;
mod spool;

use std::process::ExitCode;

use clap::Parser;

/// This program and version, as written into reports.
pub const REPORTER: &str = concat!("tbox-report ", env!("CARGO_PKG_VERSION"));

/// Exit codes; documented in `--help`.
pub mod exit {
    /// Everything went to the server (a failing *build* is still a success for the reporter).
    pub const OK: u8 = 0;
    /// Something is wrong here: config, key, workdir, …
    pub const ERROR: u8 = 1;
    /// The command line is wrong.
    pub const USAGE: u8 = 2;
    /// The server could not be reached: the report waits in the spool.
    pub const SPOOLED: u8 = 3;
    /// The server refused the report (4xx); it will not be retried.
    pub const REJECTED: u8 = 4;
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cmd::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("tbox-report: {e:#}");
            ExitCode::from(exit::ERROR)
        }
    }
}
