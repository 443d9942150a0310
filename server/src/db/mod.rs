//! Storage: one connection type over SQLite and PostgreSQL, the pool, migrations and queries.
//!
//! [`DbConn`] derives diesel's `MultiConnection`, so plain queries are written once and run
//! on either backend. What the derived enum cannot express (multi-row inserts,
//! `ON CONFLICT`, SQLite's `BEGIN IMMEDIATE`) goes through [`dispatch!`](crate::dispatch), which expands the
//! same code once per concrete connection so each is type-checked against its own backend.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{self, ManageConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

pub mod builders;
pub mod builds;
pub mod fixed;
pub mod models;
pub mod notify;
pub mod projects;
pub mod recipes;
pub mod requests;
pub mod schema;
pub mod status;

/// A connection to either backend.
#[derive(diesel::MultiConnection)]
pub enum DbConn {
    /// The embedded default.
    Sqlite(diesel::SqliteConnection),
    /// For scale-out: many server processes sharing one database.
    Pg(diesel::PgConnection),
}

/// Runs `$body` with `$c` bound to the concrete connection inside `$conn`.
#[macro_export]
macro_rules! dispatch {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::db::DbConn::Sqlite($c) => $body,
            $crate::db::DbConn::Pg($c) => $body,
        }
    };
}

/// A write transaction. On SQLite it takes the write lock up front (`BEGIN IMMEDIATE`), so two
/// writers queue on the busy timeout instead of failing when a read lock would need upgrading.
///
/// A panic inside rolls back before it goes on unwinding: a transaction left open on a pooled
/// SQLite connection would keep the database's write lock until the process ends.
pub fn write_transaction<T, E>(conn: &mut DbConn, f: impl FnOnce(&mut DbConn) -> Result<T, E>) -> Result<T, E>
where
    E: From<diesel::result::Error>,
{
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    let _writer = match conn {
        DbConn::Sqlite(_) => Some(sqlite_writer_lock()),
        DbConn::Pg(_) => None,
    };
    match conn {
        // Through diesel's transaction manager, so that what runs inside (diesel wraps some
        // SQLite batch inserts in a transaction of their own) nests as savepoints.
        DbConn::Sqlite(c) => AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")?,
        DbConn::Pg(_) => {
            type Tm = <DbConn as Connection>::TransactionManager;
            Tm::begin_transaction(conn)?;
        }
    }
    let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn))) {
        Ok(result) => result,
        Err(panic) => {
            type Tm = <DbConn as Connection>::TransactionManager;
            let _ = Tm::rollback_transaction(conn);
            std::panic::resume_unwind(panic)
        }
    };
    if let DbConn::Pg(_) = conn {
        type Tm = <DbConn as Connection>::TransactionManager;
        return match result {
            Ok(v) => Tm::commit_transaction(conn).map(|()| v).map_err(E::from),
            Err(e) => {
                let _ = Tm::rollback_transaction(conn);
                Err(e)
            }
        };
    }
    if let DbConn::Sqlite(c) = conn {
        match &result {
            Ok(_) => AnsiTransactionManager::commit_transaction(c)?,
            // The error that made us roll back is the one worth reporting.
            Err(_) => {
                let _ = AnsiTransactionManager::rollback_transaction(c);
            }
        }
    }
    result
}

/// Held while writing to SQLite from this process.
///
/// SQLite has one writer at a time anyway. Queueing writers on a mutex in this process hands
/// the lock over at once, where SQLite's busy handler would make them sleep and poll (which
/// showed as a p99 of 130+ ms with four concurrent reporters).
pub fn sqlite_writer_lock() -> std::sync::MutexGuard<'static, ()> {
    static SQLITE_WRITER: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SQLITE_WRITER.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Which backend a `--database` URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// A file path (or `:memory:`), as SQLite opens it.
    Sqlite(String),
    /// A libpq connection URL.
    Postgres(String),
}

impl DatabaseUrl {
    /// Reads `sqlite://PATH`, `sqlite:PATH`, `postgres://…` or `postgresql://…`.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(url.to_owned()));
        }
        let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"));
        match path {
            Some("") => anyhow::bail!("database URL {url:?} names no file (try sqlite://tbox.db)"),
            Some(path) => Ok(DatabaseUrl::Sqlite(path.to_owned())),
            None => anyhow::bail!("database URL {url:?} is neither sqlite://PATH nor postgres://USER@HOST/DB"),
        }
    }

    /// The URL with any password hidden, for log lines.
    pub fn redacted(&self) -> String {
        match self {
            DatabaseUrl::Sqlite(path) => format!("sqlite://{path}"),
            DatabaseUrl::Postgres(url) => match (url.find("://"), url.rfind('@')) {
                (Some(s), Some(at)) if at > s => match url[s + 3..at].find(':') {
                    Some(colon) => format!("{}:***{}", &url[..s + 3 + colon], &url[at..]),
                    None => url.clone(),
                },
                _ => url.clone(),
            },
        }
    }
}

/// Opens connections of the backend the URL names. (diesel's own manager would try each
/// backend in turn with the same string; this one knows which to use.)
#[derive(Debug)]
pub struct Manager(DatabaseUrl);

impl Manager {
    /// A manager for the database the URL names.
    pub fn new(url: DatabaseUrl) -> Self {
        Manager(url)
    }
}

impl ManageConnection for Manager {
    type Connection = DbConn;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<DbConn, r2d2::Error> {
        match &self.0 {
            DatabaseUrl::Sqlite(path) => {
                let mut c = diesel::SqliteConnection::establish(path).map_err(r2d2::Error::ConnectionError)?;
                // The busy timeout makes concurrent writers wait their turn instead of failing.
                // (WAL is set once, by `migrate`: it is a property of the file.)
                // Reads through a memory map: after another connection writes, this one's page
                // cache is stale, and re-reading it by read() calls was a large part of the
                // kernel time per report.
                c.batch_execute(
                    "PRAGMA busy_timeout = 15000; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                     PRAGMA mmap_size = 1073741824;",
                )
                .map_err(r2d2::Error::QueryError)?;
                Ok(DbConn::Sqlite(c))
            }
            DatabaseUrl::Postgres(url) => {
                diesel::PgConnection::establish(url).map(DbConn::Pg).map_err(r2d2::Error::ConnectionError)
            }
        }
    }

    fn is_valid(&self, conn: &mut DbConn) -> Result<(), r2d2::Error> {
        conn.batch_execute("SELECT 1").map_err(r2d2::Error::QueryError)
    }

    /// A connection given back while its thread panics, or with a transaction still open (or
    /// failed), is closed rather than reused: it would hand its half-done transaction, and on
    /// SQLite the database's write lock, to whoever takes it next.
    fn has_broken(&self, conn: &mut DbConn) -> bool {
        use diesel::connection::TransactionManager as _;
        std::thread::panicking() || <DbConn as Connection>::TransactionManager::is_broken_transaction_manager(conn)
    }
}

/// The shared connection pool.
pub type Pool = r2d2::Pool<Manager>;

/// Builds the pool and checks that one connection can be made.
pub fn pool(url: &DatabaseUrl, max_size: u32) -> anyhow::Result<Pool> {
    use anyhow::Context as _;
    r2d2::Pool::builder()
        .max_size(max_size)
        .connection_timeout(std::time::Duration::from_secs(10))
        .build(Manager(url.clone()))
        .with_context(|| format!("cannot open database {}", url.redacted()))
}

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/postgres");

/// Brings the schema up to date; returns the names of the migrations applied.
pub fn migrate(conn: &mut DbConn) -> anyhow::Result<Vec<String>> {
    let names = |v: Vec<diesel::migration::MigrationVersion<'_>>| v.iter().map(ToString::to_string).collect();
    match conn {
        DbConn::Sqlite(c) => {
            // WAL lets readers go on while one report is written; it sticks to the file.
            c.batch_execute("PRAGMA journal_mode = WAL")?;
            c.run_pending_migrations(SQLITE_MIGRATIONS).map(names).map_err(|e| anyhow::anyhow!(e))
        }
        DbConn::Pg(c) => {
            // Several servers may start at once against one database: let one migrate.
            c.batch_execute("SELECT pg_advisory_lock(7366120)")?;
            let result: anyhow::Result<Vec<String>> =
                c.run_pending_migrations(POSTGRES_MIGRATIONS).map(names).map_err(|e| anyhow::anyhow!(e));
            c.batch_execute("SELECT pg_advisory_unlock(7366120)")?;
            result
        }
    }
}

/// Reverts and re-applies every migration, exercising each `down.sql`.
pub fn redo_all(conn: &mut DbConn) -> anyhow::Result<()> {
    let err = |e| anyhow::anyhow!("{e}");
    match conn {
        DbConn::Sqlite(c) => {
            c.revert_all_migrations(SQLITE_MIGRATIONS).map_err(err)?;
            c.run_pending_migrations(SQLITE_MIGRATIONS).map_err(err)?;
        }
        DbConn::Pg(c) => {
            c.revert_all_migrations(POSTGRES_MIGRATIONS).map_err(err)?;
            c.run_pending_migrations(POSTGRES_MIGRATIONS).map_err(err)?;
        }
    }
    Ok(())
}

/// Whether the database answers: one trivial query (the health check's).
pub fn ping(conn: &mut DbConn) -> diesel::QueryResult<()> {
    dispatch!(conn, |c| diesel::sql_query("SELECT 1").execute(c)).map(drop)?;
    if let DbConn::Sqlite(c) = conn {
        sqlite_file_in_place(c)?;
    }
    Ok(())
}

/// Whether the SQLite file this server opened is still the one at its path.
///
/// A connection keeps working on a file removed or replaced under it (its descriptor holds the
/// old inode), so `SELECT 1` still answers while every report goes into a file nobody will
/// read again: an operator's `rm`, or a restore copied over with `mv`, must show as unhealthy.
/// The file's identity (device, inode) is remembered the first time it is seen.
fn sqlite_file_in_place(c: &mut diesel::SqliteConnection) -> diesel::QueryResult<()> {
    use std::os::unix::fs::MetadataExt as _;
    use std::sync::{Mutex, OnceLock};

    #[derive(diesel::QueryableByName)]
    struct Attached {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        file: String,
    }
    static SEEN: OnceLock<Mutex<std::collections::HashMap<String, (u64, u64)>>> = OnceLock::new();
    let attached: Vec<Attached> = diesel::sql_query("PRAGMA database_list").load(c)?;
    let Some(main) = attached.into_iter().find(|a| a.name == "main") else { return Ok(()) };
    if main.file.is_empty() {
        return Ok(()); // in memory
    }
    let gone = |why: String| diesel::result::Error::QueryBuilderError(why.into());
    let meta =
        std::fs::metadata(&main.file).map_err(|e| gone(format!("the database file {} is gone: {e}", main.file)))?;
    let now = (meta.dev(), meta.ino());
    let mut seen = SEEN.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    let first = *seen.entry(main.file.clone()).or_insert(now);
    if first != now {
        return Err(gone(format!(
            "the database file {} was replaced while the server had it open; restart the server to use the new one",
            main.file
        )));
    }
    Ok(())
}

/// The current time as stored: UTC, microsecond precision (PostgreSQL's), so a value read
/// back compares equal to the one written on both backends.
pub fn now() -> chrono::NaiveDateTime {
    to_db_time(chrono::Utc::now())
}

/// Converts a report's time for storage.
///
/// A leap second (`23:59:60`, which RFC 3339 allows) is stored as the last microsecond of its
/// minute, `23:59:59.999999`: SQLite kept the `:60` as text while PostgreSQL rolled it over to
/// the next minute, so one report read back differently per backend. This way both keep it in
/// its minute and in order.
pub fn to_db_time<Tz: chrono::TimeZone>(t: chrono::DateTime<Tz>) -> chrono::NaiveDateTime {
    use chrono::{SubsecRound as _, Timelike as _};
    let t = t.to_utc().naive_utc();
    let t = if t.nanosecond() >= 1_000_000_000 { t.with_nanosecond(999_999_000).unwrap_or(t) } else { t };
    t.trunc_subsecs(6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_choose_the_backend() -> anyhow::Result<()> {
        assert_eq!(DatabaseUrl::parse("sqlite://tbox.db")?, DatabaseUrl::Sqlite("tbox.db".into()));
        assert_eq!(DatabaseUrl::parse("sqlite:///var/lib/t.db")?, DatabaseUrl::Sqlite("/var/lib/t.db".into()));
        assert!(matches!(DatabaseUrl::parse("postgresql://u@h/db")?, DatabaseUrl::Postgres(_)));
        assert!(DatabaseUrl::parse("mysql://x").is_err());
        assert!(DatabaseUrl::parse("sqlite://").is_err());
        assert_eq!(DatabaseUrl::parse("postgres://u:secret@h:5432/db")?.redacted(), "postgres://u:***@h:5432/db");
        Ok(())
    }

    #[test]
    fn a_panic_inside_a_write_leaves_no_lock_behind() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("tbox-db-panic-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let url = DatabaseUrl::Sqlite(dir.join("t.db").display().to_string());
        let pool = pool(&url, 2)?;
        migrate(&mut *pool.get()?)?;
        // A write that panics half-way, on a pooled connection, in a thread of its own (as a
        // request handler would), the connection going back to the pool as it unwinds.
        let p = pool.clone();
        let panicked = std::thread::spawn(move || {
            let mut conn = p.get().unwrap_or_else(|e| panic!("{e}"));
            let _: Result<(), diesel::result::Error> = write_transaction(&mut conn, |c| {
                c.batch_execute("INSERT INTO projects (name, title, created_at) VALUES ('x', 'x', '2026-01-01')")?;
                panic!("a bug in a write path");
            });
        })
        .join();
        assert!(panicked.is_err());
        // Another writer gets the lock at once, and the half-done write is not there.
        let mut other = pool.get()?;
        let started = std::time::Instant::now();
        write_transaction(&mut other, |c| {
            c.batch_execute("INSERT INTO projects (name, title, created_at) VALUES ('y', 'y', '2026-01-01')")
        })?;
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "waited {:?}", started.elapsed());
        let n: i64 = crate::db::schema::projects::table.count().get_result(&mut other)?;
        assert_eq!(n, 1);
        drop(other);
        drop(pool);
        std::fs::remove_dir_all(dir)?;
        Ok(())
    }

    #[test]
    fn leap_seconds_stay_in_their_minute() -> anyhow::Result<()> {
        let leap = chrono::DateTime::parse_from_rfc3339("2016-12-31T23:59:60.5Z")?;
        assert_eq!(to_db_time(leap).to_string(), "2016-12-31 23:59:59.999999");
        let plain = chrono::DateTime::parse_from_rfc3339("2016-12-31T23:59:59.1234567Z")?;
        assert_eq!(to_db_time(plain).to_string(), "2016-12-31 23:59:59.123456");
        Ok(())
    }
}
