//! The `tbox-server` binary: parse the command line, run it, turn errors into exit codes.

use std::process::ExitCode;

use clap::Parser;
use tbox_server::cli::Cli;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tbox_server::logging::init(cli.log_format());
    match tbox_server::cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tbox-server: {e:#}");
            // A command line that cannot be carried out as given is a usage error, as clap's own.
            if e.downcast_ref::<tbox_server::cmd::Usage>().is_some() { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}
