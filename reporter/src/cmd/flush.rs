//! `tbox-report flush`: send what waits in the spool, oldest first, each unchanged and with the
//! signature it was spooled with; a damaged one is set aside in `corrupt/`, never sent.

use crate::cli::Common;
use crate::{exit, spool};

pub fn run(common: &Common) -> anyhow::Result<u8> {
    let (_, sites) = super::load_sites(common)?;
    let mut code = exit::OK;
    for (site, client) in &sites {
        let dir = site.spool_dir();
        let done = spool::flush(&dir, client)?;
        if common.verbose || done.delivered > 0 {
            let to = if sites.len() > 1 { format!(" to {}", site.server) } else { String::new() };
            crate::say!(
                "delivered {} spooled report(s){to}, {} refused, {} damaged, {} still waiting",
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
        code = exit::worst(
            code,
            if done.corrupt > 0 {
                exit::ERROR
            } else if done.last_error.is_some() {
                exit::SPOOLED
            } else if done.rejected > 0 {
                exit::REJECTED
            } else {
                exit::OK
            },
        );
    }
    Ok(code)
}
