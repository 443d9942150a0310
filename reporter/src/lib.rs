//! `tbox-report`: the volunteer's cron command. It updates the source, runs the configured
//! steps, collects logs and JUnit results, signs the report with the volunteer's key and
//! pushes it; what cannot be delivered waits in a spool until the server is back.
//!
//! Flow: `main.rs` → `lib.rs` → `cli.rs` → `cmd/<subcommand>.rs`; a build is `cmd/run.rs` using
//! `runner.rs` (steps), `junit.rs` (test results), `client.rs` (HTTP) and `spool.rs`.

// The library is this binary's insides, opened up for its tests and fuzz targets; it is not
// an API for other programs, so its items are documented where that helps a reader, not all.
#![allow(missing_docs)]

/// `println!` that does not panic when stdout is closed early (`tbox-report check | head`): the
/// reader has gone, which is not an error of ours.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub mod artifacts;
pub mod budget;
pub mod cli;
pub mod client;
pub mod cmd;
pub mod config;
pub mod history;
pub mod junit;
pub mod keyfile;
pub mod props;
pub mod runner;
pub mod sandbox;
pub mod schedule;
pub mod spool;
pub mod trust;

/// This program and version, as written into reports.
pub const REPORTER: &str = concat!("tbox-report ", env!("CARGO_PKG_VERSION"));

/// Exit codes; documented in `--help`.
pub mod exit {
    /// Everything went to the server (a failing *build* is still a success for the reporter).
    pub const OK: u8 = 0;
    /// Something is wrong here: config, key, workdir, …; or a report could be neither sent
    /// nor spooled (lost, and the message says which); or a damaged spooled report was set
    /// aside in `corrupt/` instead of being sent.
    pub const ERROR: u8 = 1;
    /// The command line is wrong.
    pub const USAGE: u8 = 2;
    /// The server could not be reached, or what answered was not a tbox server (a captive
    /// portal): the report waits in the spool.
    pub const SPOOLED: u8 = 3;
    /// The server refused the report (4xx); it will not be retried.
    pub const REJECTED: u8 = 4;
    /// A recipe was refused (not signed by the pinned key, expired, a rollback, another
    /// project's, a branch or repo it does not allow) or no sandbox could be made: nothing ran.
    pub const REFUSED: u8 = 5;

    /// The code for two outcomes together (several projects, a backlog and a new build): an
    /// error here wins, since it may mean a report lost or damaged; then the highest.
    pub fn worst(a: u8, b: u8) -> u8 {
        if a == ERROR || b == ERROR { ERROR } else { a.max(b) }
    }
}

#[cfg(test)]
mod tests {
    use super::exit::*;

    #[test]
    fn a_lost_report_is_not_hidden_behind_a_backlog() {
        // A backlog waits (3) while this run's report is lost on a full disk (1): say 1.
        assert_eq!(worst(SPOOLED, ERROR), ERROR);
        assert_eq!(worst(REJECTED, ERROR), ERROR);
        assert_eq!(worst(SPOOLED, REJECTED), REJECTED);
        assert_eq!(worst(OK, SPOOLED), SPOOLED);
        assert_eq!(worst(OK, OK), OK);
    }
}
