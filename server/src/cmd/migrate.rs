//! `tbox-server migrate`.

use crate::cli::DbArgs;
use crate::db;

pub fn run(args: &DbArgs) -> anyhow::Result<()> {
    use diesel::r2d2::ManageConnection as _;
    let url = db::DatabaseUrl::parse(&args.database)?;
    let mut conn = db::Manager::new(url.clone())
        .connect()
        .map_err(|e| anyhow::anyhow!("cannot open database {}: {e}", url.redacted()))?;
    let applied = db::migrate(&mut conn)?;
    if applied.is_empty() {
        crate::say!("{}: schema is up to date", url.redacted());
    } else {
        for m in applied {
            crate::say!("{}: applied {m}", url.redacted());
        }
    }
    Ok(())
}
