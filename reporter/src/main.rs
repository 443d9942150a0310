//! `tbox-report`: the volunteer's cron command (build, sign, push).
//!
//! Only the workspace skeleton exists so far; the commands described in DESIGN.md
//! (`keygen`, `register`, `run`, `push`, `flush`, `check`) are the next piece of work.
//! Until then a report can be sent with `openssl` and `curl`, as README.md shows.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "tbox-report {}: the reporter commands are not written yet; \
         see README.md for sending a signed report with openssl and curl",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}
