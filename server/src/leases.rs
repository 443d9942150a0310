//! Waking builders that wait for work, and ending what nobody renewed.
//!
//! One thread per server process looks at the database every second: it turns leases that ran
//! out into lost attempts (their slots go back to the requests), expires requests past their
//! deadline, and notices when there may be new work — a new request, or a slot given back —
//! also when another server process on the same PostgreSQL made it. Then it wakes every long
//! poll of this process, which try to take a lease; a request made through this process wakes
//! them at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::db::{self, Pool, requests};

/// How often the database is looked at.
const TICK: Duration = Duration::from_secs(1);

/// A counter that moves whenever there may be new work, the turn to look for it, and for each
/// builder how many long polls wait and the newest one's ticket.
#[derive(Debug, Clone)]
pub struct Work {
    changes: watch::Sender<u64>,
    turn: Arc<Semaphore>,
    waiting: Arc<Mutex<HashMap<i64, (usize, u64)>>>,
}

impl Default for Work {
    fn default() -> Self {
        Work { changes: watch::channel(0).0, turn: Arc::new(Semaphore::new(1)), waiting: Arc::default() }
    }
}

/// One long poll of a builder's, counted while it waits.
#[derive(Debug)]
pub struct Waiting {
    builder: i64,
    ticket: u64,
    waiting: Arc<Mutex<HashMap<i64, (usize, u64)>>>,
}

impl Waiting {
    /// Whether a newer poll of the same builder came since: a builder's `serve` asks on one
    /// connection, so a newer poll means this one was given up (the volunteer paused, or
    /// `serve` was killed and started again). A lease granted to it would go to nobody and
    /// cost the request a no-show, and this builder its chance at the request.
    pub fn superseded(&self) -> bool {
        let w = self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        w.get(&self.builder).is_some_and(|(_, newest)| *newest != self.ticket)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut w = self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((n, _)) = w.get_mut(&self.builder) {
            *n -= 1;
            if *n == 0 {
                w.remove(&self.builder);
            }
        }
    }
}

impl Work {
    /// Counts a long poll of `builder`'s while the returned guard lives; None when it already
    /// has `max` waiting.
    pub fn wait_slot(&self, builder: i64, max: usize) -> Option<Waiting> {
        let mut w = self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (n, newest) = w.entry(builder).or_insert((0, 0));
        if *n >= max {
            return None;
        }
        *n += 1;
        *newest += 1;
        Some(Waiting { builder, ticket: *newest, waiting: Arc::clone(&self.waiting) })
    }

    /// Something changed: wake everyone waiting.
    pub fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees the next change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Waits for this process's turn to look for work. A new request wakes every waiting
    /// builder at once; looking one after another (first come, first served) means the first
    /// few take the slots and the rest see at once that none are left, instead of all of them
    /// queueing for database connections and the write lock together (measured: a request's
    /// slots went at p50 234 ms with 1,000 builders waiting, before).
    pub async fn turn(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.turn).acquire_owned().await.ok()
    }
}

/// Starts the sweeping thread; it runs as long as the process.
pub fn start(pool: Pool, work: Work) -> std::io::Result<()> {
    std::thread::Builder::new().name("tbox-leases".into()).spawn(move || {
        let mut seen = None;
        loop {
            match tick(&pool) {
                Ok((lost, generation)) => {
                    if lost > 0 {
                        log::info!("{lost} lease(s) ran out; their slots go to other builders");
                    }
                    if seen != Some(generation) {
                        seen = Some(generation);
                        work.bump();
                    }
                }
                Err(e) => log::warn!("sweeping leases: {e:#}"),
            }
            crate::logging::tick();
            std::thread::sleep(TICK);
        }
    })?;
    Ok(())
}

fn tick(pool: &Pool) -> anyhow::Result<(usize, (i64, i64))> {
    let mut conn = pool.get()?;
    let now = db::now();
    let lost = requests::sweep(&mut conn, now, |c, builds| crate::notify::after_lost(c, builds, now))?;
    Ok((lost, requests::generation(&mut conn)?))
}
