//! `tbox-report flush`: send what waits in the spool, oldest first, each unchanged and with the
//! signature it was spooled with; a damaged one is set aside in `corrupt/`, never sent.

use crate::cli::Common;
use crate::{exit, spool};

pub fn run(common: &Common) -> anyhow::Result<u8> {
    let (config, client) = super::load(common)?;
    let dir = config.spool_dir();
    let done = spool::flush(&dir, &client)?;
    if common.verbose || done.delivered > 0 {
        crate::say!(
            "delivered {} spooled report(s), {} refused, {} damaged, {} still waiting",
            done.delivered,
            done.rejected,
            done.corrupt,
            done.waiting
        );
    }
    if let Some(e) = &done.last_error {
        eprintln!("tbox-report: {e}: {} report(s) kept in the spool, in {}", done.waiting, dir.display());
    }
    // A damaged report was told about as it was set aside; it is "an error here", and that
    // matters more than a wait.
    Ok(if done.corrupt > 0 {
        exit::ERROR
    } else if done.last_error.is_some() {
        exit::SPOOLED
    } else if done.rejected > 0 {
        exit::REJECTED
    } else {
        exit::OK
    })
}
