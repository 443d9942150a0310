//! `tbox-server prune --older-than AGE`.

use crate::cli::PruneArgs;
use crate::db::{self, builds};

pub fn run(args: &PruneArgs) -> anyhow::Result<()> {
    let before = db::now() - args.older_than;
    let mut conn = super::connect(&args.db)?;
    let mut total = 0;
    // Small transactions: a live server keeps accepting reports in between.
    loop {
        let n = db::write_transaction(&mut conn, |c| builds::prune_batch(c, before, 500))?;
        if n == 0 {
            break;
        }
        total += n;
    }
    let logs = db::write_transaction(&mut conn, builds::prune_logs)?;
    let told = db::write_transaction(&mut conn, |c| db::notify::prune(c, before))?;
    crate::say!(
        "pruned {total} builds started before {} UTC, {logs} unused logs and {told} notifications",
        before.format("%Y-%m-%d %H:%M")
    );
    Ok(())
}
