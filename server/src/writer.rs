//! The SQLite writer: one thread, one connection, group commit.
//!
//! SQLite lets one connection write at a time. With every pooled connection writing in turn,
//! each report paid for its own commit (the WAL frames of every page it touched, the shared
//! index and `heads` pages again and again), and every connection's page cache went stale
//! after each other connection's write. Here one connection with a large page cache writes
//! everything: request threads verify, parse and compress in parallel ([`ingest::prepare`]),
//! then queue the report here. The writer takes whatever has queued up (up to [`BATCH`]
//! reports) into one transaction, each report in a savepoint of its own, so a report that
//! fails is rolled back alone and the others still commit. Every report is answered only after
//! the commit that made it durable.
//!
//! PostgreSQL has no such single-writer limit and keeps one transaction per report.

use std::sync::mpsc;

use diesel::connection::{AnsiTransactionManager, SimpleConnection as _, TransactionManager};
use diesel::r2d2::ManageConnection as _;

use crate::db::{DbConn, Manager};
use crate::error::AppError;
use crate::ingest::{self, Outcome, Prepared};

/// Most reports committed together. Past a few dozen the commit no longer gets cheaper per
/// report, and the first report of a batch waits for the others.
pub const BATCH: usize = 64;

/// Reports waiting for the writer at most; past this, request threads wait (back-pressure).
const QUEUE: usize = 256;

type Reply = mpsc::SyncSender<Result<Outcome, AppError>>;

/// A handle to the writer thread; cheap to share.
#[derive(Debug, Clone)]
pub struct Writer {
    queue: mpsc::SyncSender<(Box<Prepared>, Reply)>,
}

impl Writer {
    /// Opens the writer's connection and starts its thread.
    pub fn start(manager: Manager) -> anyhow::Result<Writer> {
        let conn = open(&manager)?;
        let (queue, jobs) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new().name("sqlite-writer".into()).spawn(move || run(&manager, conn, jobs))?;
        Ok(Writer { queue })
    }

    /// Writes a prepared report; returns once it is committed (or has failed).
    pub fn write(&self, report: Box<Prepared>) -> Result<Outcome, AppError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let gone = || AppError::Internal(anyhow::anyhow!("the SQLite writer thread has stopped"));
        self.queue.send((report, reply)).map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

/// The writer's connection.
fn open(manager: &Manager) -> anyhow::Result<DbConn> {
    let mut conn = manager.connect()?;
    // 64 MiB of page cache: the indexes every report touches stay in memory. A checkpoint
    // every 16,384 pages (64 MiB of WAL) instead of SQLite's 1,000: the pages every report
    // touches (index ends, heads, builders) are copied back to the database once per
    // checkpoint, whatever number of reports rewrote them in between.
    //
    // synchronous = FULL: the WAL is synced at every commit, so a report answered 201 survives a
    // power cut too (with NORMAL, only a crash of this process). One sync per batch, not per
    // report, is what group commit buys.
    //
    // temp_store = MEMORY: each report's savepoint keeps the pages it changed in a statement
    // journal, which SQLite otherwise spills to a temporary file past 64 KiB (most reports): one
    // write system call per page, 6% of the writer's time. In memory it is a report's worth.
    conn.batch_execute(
        "PRAGMA cache_size = -65536; PRAGMA wal_autocheckpoint = 16384; PRAGMA synchronous = FULL; \
         PRAGMA temp_store = MEMORY;",
    )?;
    Ok(conn)
}

fn run(manager: &Manager, conn: DbConn, jobs: mpsc::Receiver<(Box<Prepared>, Reply)>) {
    let mut conn = Some(conn);
    let mut batch = Vec::with_capacity(BATCH);
    // Blocks for the first report, then takes what else is already waiting.
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        while batch.len() < BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let failed = |why: &str| -> Vec<Result<Outcome, AppError>> {
            batch.iter().map(|_| Err(AppError::Internal(anyhow::anyhow!("the SQLite writer {why}")))).collect()
        };
        if conn.is_none() {
            conn = open(manager).map_err(|e| log::error!("the SQLite writer cannot open the database: {e:#}")).ok();
        }
        let results = match conn.as_mut() {
            None => failed("has no database connection"),
            // A bug that panics in one batch must not stop every later report from being stored.
            Some(c) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| commit_batch(c, &batch))) {
                Ok(results) => results,
                Err(_) => {
                    log::error!("the SQLite writer panicked; its batch of {} report(s) was rolled back", batch.len());
                    // Closing the connection rolls back what it had begun; the next batch
                    // opens a fresh one.
                    conn = None;
                    failed("failed")
                }
            },
        };
        log::debug!("wrote {} report(s) in one transaction in {:?}", batch.len(), started.elapsed());
        for ((_, reply), result) in batch.drain(..).zip(results) {
            // The request may have gone away (client disconnected); its report is stored anyway.
            let _ = reply.try_send(result);
        }
    }
}

/// Writes a batch in one transaction, each report in its own savepoint.
fn commit_batch(conn: &mut DbConn, batch: &[(Box<Prepared>, Reply)]) -> Vec<Result<Outcome, AppError>> {
    // What the savepoints and the commit go through: the enum's manager hands them to the
    // connection's own, which knows a transaction is open and nests.
    type Tm = <DbConn as diesel::Connection>::TransactionManager;
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        (0..batch.len()).map(|_| Err(AppError::Internal(anyhow::anyhow!("{what}: {e}")))).collect()
    };
    // Writers elsewhere in this process (registrations, admin work) queue on the same mutex.
    let _writer = crate::db::sqlite_writer_lock();
    let begun = match conn {
        DbConn::Sqlite(c) => AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE"),
        DbConn::Pg(_) => return failed("the writer", &"is for SQLite only"),
    };
    if let Err(e) = begun {
        return failed("cannot begin a transaction", &e);
    }
    let mut results: Vec<Result<Outcome, AppError>> = Vec::with_capacity(batch.len());
    for (report, _) in batch {
        if let Err(e) = Tm::begin_transaction(conn) {
            results.push(Err(e.into()));
            continue;
        }
        let result = ingest::store(conn, report);
        let closed = match &result {
            Ok(_) => Tm::commit_transaction(conn),
            Err(_) => Tm::rollback_transaction(conn),
        };
        results.push(closed.map_err(AppError::from).and(result));
    }
    if let Err(e) = Tm::commit_transaction(conn) {
        let _ = Tm::rollback_transaction(conn);
        return failed("commit failed", &e);
    }
    results
}
