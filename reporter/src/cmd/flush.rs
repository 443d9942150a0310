//! `tbox-report flush`: send what waits in the spool, oldest first.

use crate::cli::Common;
use crate::{exit, spool};

pub fn run(common: &Common) -> anyhow::Result<u8> {
    let (config, client) = super::load(common)?;
    let dir = config.spool_dir();
    let done = spool::flush(&dir, &client)?;
    if common.verbose || done.delivered > 0 {
        println!(
            "delivered {} spooled report(s), {} refused, {} still waiting",
            done.delivered, done.rejected, done.waiting
        );
    }
    if let Some(e) = done.last_error {
        eprintln!(
            "tbox-report: cannot reach {} ({e}); {} report(s) still wait in {}",
            client.base(),
            done.waiting,
            dir.display()
        );
        return Ok(exit::SPOOLED);
    }
    Ok(if done.rejected > 0 { exit::REJECTED } else { exit::OK })
}
