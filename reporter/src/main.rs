//! `tbox-report`'s entry point; everything else is in the library (`lib.rs`), so that tests
//! and fuzz targets can reach the JUnit parser and the spool.

use std::process::ExitCode;

use clap::Parser;
use tbox_report::{cli, cmd, exit};

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
