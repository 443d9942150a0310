//! One file per subcommand.

mod builder;
mod forge;
mod migrate;
mod notify;
mod project;
mod prune;
mod request;
pub mod serve;

use crate::cli::{Cli, Command, DbArgs};
use crate::db::{self, DatabaseUrl, DbConn};

/// A command line that cannot be carried out as given: the binary exits 2, as for clap's own
/// usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Migrate(args) => migrate::run(&args),
        Command::Project(cmd) => project::run(cmd),
        Command::Builder(cmd) => builder::run(cmd),
        Command::Request(cmd) => request::run(cmd),
        Command::Notify(cmd) => notify::run(cmd),
        Command::Forge(cmd) => forge::run(cmd),
        Command::Prune(args) => prune::run(&args),
        Command::Completions(a) => {
            let mut cli = <crate::cli::Cli as clap::CommandFactory>::command();
            clap_complete::generate(a.shell, &mut cli, "tbox-server", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpage(a) => {
            let cli = <crate::cli::Cli as clap::CommandFactory>::command();
            match &a.dir {
                Some(dir) => clap_mangen::generate_to(cli, dir)?,
                None => clap_mangen::Man::new(cli).render(&mut std::io::stdout())?,
            }
            Ok(())
        }
    }
}

/// Opens the database for an admin command, migrating it first so a fresh file just works.
fn connect(args: &DbArgs) -> anyhow::Result<DbConn> {
    use diesel::r2d2::ManageConnection as _;
    let url = DatabaseUrl::parse(&args.database)?;
    let mut conn = db::Manager::new(url.clone())
        .connect()
        .map_err(|e| anyhow::anyhow!("cannot open database {}: {e}", url.redacted()))?;
    db::migrate(&mut conn)?;
    Ok(conn)
}
