//! The `tbox-server` binary: parse the command line, run it, turn errors into exit codes.

use std::process::ExitCode;

use clap::Parser;
use tbox_server::cli::Cli;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tbox_server::logging::init();
    match tbox_server::cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tbox-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}
