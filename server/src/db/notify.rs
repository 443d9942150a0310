//! Subscriptions, the status changes they are told about, and the queue of deliveries.

use chrono::{NaiveDateTime, TimeDelta};
use diesel::prelude::*;

use super::models::{Delivery, NewNotification, NewSubscription, Notification, Subscription};
use super::schema::{builders, deliveries, notifications, projects, subscriptions};
use super::{DbConn, write_transaction};

pub const PENDING: &str = "pending";
pub const DELIVERED: &str = "delivered";
/// Given up on after a day of failed attempts.
pub const FAILED: &str = "failed";

pub fn subscribe(conn: &mut DbConn, new: &NewSubscription<'_>) -> QueryResult<Subscription> {
    let id: i64 = crate::dispatch!(conn, |c| diesel::insert_into(subscriptions::table)
        .values(new)
        .returning(subscriptions::id)
        .get_result(c))?;
    subscriptions::table.find(id).select(Subscription::as_select()).first(conn)
}

/// Removes a subscription with its deliveries; false when there was none.
pub fn unsubscribe(conn: &mut DbConn, id: i64) -> QueryResult<bool> {
    write_transaction(conn, |c| {
        diesel::delete(deliveries::table.filter(deliveries::subscription_id.eq(id))).execute(c)?;
        Ok(diesel::delete(subscriptions::table.find(id)).execute(c)? > 0)
    })
}

/// A subscription with the names it refers to.
#[derive(Debug, Clone)]
pub struct Listed {
    pub subscription: Subscription,
    pub project: String,
    pub builder: Option<String>,
}

/// Subscriptions, of one project or of all, oldest first.
pub fn list(conn: &mut DbConn, project_id: Option<i64>) -> QueryResult<Vec<Listed>> {
    let mut q = subscriptions::table
        .inner_join(projects::table)
        .left_join(builders::table.on(subscriptions::builder_id.eq(builders::id.nullable())))
        .select((Subscription::as_select(), projects::name, builders::name.nullable()))
        .order(subscriptions::id)
        .into_boxed();
    if let Some(p) = project_id {
        q = q.filter(subscriptions::project_id.eq(p));
    }
    Ok(q.load::<(Subscription, String, Option<String>)>(conn)?
        .into_iter()
        .map(|(subscription, project, builder)| Listed { subscription, project, builder })
        .collect())
}

/// The kind of subscriber told of commit statuses, and of nothing else.
pub const FORGE: &str = "forge";

/// Whether anyone is told about this project's status changes (a webhook, an address): if
/// not, they are not even worked out.
pub fn has_subscribers(conn: &mut DbConn, project_id: i64) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        subscriptions::table.filter(subscriptions::project_id.eq(project_id)).filter(subscriptions::kind.ne(FORGE)),
    ))
    .get_result(conn)
}

/// Whether this project posts commit statuses to a forge.
pub fn has_forges(conn: &mut DbConn, project_id: i64) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        subscriptions::table.filter(subscriptions::project_id.eq(project_id)).filter(subscriptions::kind.eq(FORGE)),
    ))
    .get_result(conn)
}

/// Projects somebody is told about status changes of.
pub fn subscribed_projects(conn: &mut DbConn) -> QueryResult<Vec<i64>> {
    subscriptions::table.filter(subscriptions::kind.ne(FORGE)).select(subscriptions::project_id).distinct().load(conn)
}

/// Records a status change and queues a delivery to each subscriber it concerns, unless the
/// same change (same key) was recorded before: commit statuses to forges, everything else to
/// webhooks and addresses. Returns how many deliveries were queued.
pub fn record(conn: &mut DbConn, new: &NewNotification<'_>) -> QueryResult<usize> {
    let id: Option<i64> = crate::dispatch!(conn, |c| diesel::insert_into(notifications::table)
        .values(new)
        .on_conflict_do_nothing()
        .returning(notifications::id)
        .get_result(c)
        .optional())?;
    let Some(id) = id else { return Ok(0) };
    let mut subs = subscriptions::table
        .filter(subscriptions::project_id.eq(new.project_id))
        .filter(subscriptions::builder_id.is_null().or(subscriptions::builder_id.eq(new.builder_id)))
        .select(subscriptions::id)
        .into_boxed();
    subs = if new.event == crate::notify::forge::STATUS {
        subs.filter(subscriptions::kind.eq(FORGE))
    } else {
        subs.filter(subscriptions::kind.ne(FORGE))
    };
    // A change of a whole builder (gone stale) concerns every branch.
    if let Some(branch) = new.branch {
        subs = subs.filter(subscriptions::branch.is_null().or(subscriptions::branch.eq(branch.to_owned())));
    }
    let subs: Vec<i64> = subs.load(conn)?;
    for sub in &subs {
        diesel::insert_into(deliveries::table)
            .values((
                deliveries::notification_id.eq(id),
                deliveries::subscription_id.eq(sub),
                deliveries::uid.eq(uid()),
                deliveries::state.eq(PENDING),
                deliveries::attempts.eq(0),
                deliveries::next_attempt_at.eq(new.created_at),
                deliveries::created_at.eq(new.created_at),
            ))
            .execute(conn)?;
    }
    Ok(subs.len())
}

/// A random UUID (version 4): the delivery id receivers see.
fn uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Whether a delivery this sender could take is due (a read, so that an idle server does not
/// take the write lock every second just to find nothing).
pub fn any_due(conn: &mut DbConn, kinds: &[&str], serving: &[i64], now: NaiveDateTime) -> QueryResult<bool> {
    let kinds: Vec<String> = kinds.iter().map(|k| (*k).to_owned()).collect();
    diesel::select(diesel::dsl::exists(
        deliveries::table
            .filter(pending())
            .filter(deliveries::next_attempt_at.le(now))
            .filter(deliveries::subscription_id.ne_all(serving.to_vec()))
            .filter(
                deliveries::subscription_id
                    .eq_any(subscriptions::table.filter(subscriptions::kind.eq_any(kinds)).select(subscriptions::id)),
            ),
    ))
    .get_result(conn)
}

/// `state = 'pending'` written out, so that cached plans (PostgreSQL's generic ones, and
/// SQLite's, which do not look at bound values: `.cargo/config.toml`) use the `deliveries_due`
/// partial index, which holds only pending rows.
fn pending() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql::<diesel::sql_types::Bool>("deliveries.state = 'pending'")
}

/// A delivery taken by one sender, with what it needs to send it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub delivery: Delivery,
    pub notification: Notification,
    pub subscription: Subscription,
    pub project: String,
}

/// Takes due deliveries of these kinds (`webhook`, `email`) for this sender, at most `limit`
/// and at most one per subscriber — its oldest pending one, so that a subscriber hears of
/// changes in the order they happened (a chat never shows "fixed" before "broke") — leaving
/// out the subscribers this sender is `serving` already. Each attempt is counted now and the
/// next one is put off by `hold` (longer than one attempt can take), so no other sender takes
/// it meanwhile, and it is tried again if this process dies. On PostgreSQL, rows another
/// process is claiming are skipped (FOR UPDATE SKIP LOCKED); on SQLite the write lock does
/// the same.
pub fn claim(
    conn: &mut DbConn,
    kinds: &[&str],
    serving: &[i64],
    now: NaiveDateTime,
    hold: TimeDelta,
    limit: i64,
) -> QueryResult<Vec<Claimed>> {
    let kinds: Vec<String> = kinds.iter().map(|k| (*k).to_owned()).collect();
    write_transaction(conn, |c| {
        let older = diesel::alias!(deliveries as older);
        let due = || {
            deliveries::table
                .filter(pending())
                .filter(deliveries::next_attempt_at.le(now))
                .filter(deliveries::subscription_id.ne_all(serving.to_vec()))
                .filter(diesel::dsl::not(diesel::dsl::exists(
                    older
                        .filter(older.field(deliveries::subscription_id).eq(deliveries::subscription_id))
                        .filter(older.field(deliveries::state).eq(PENDING))
                        .filter(older.field(deliveries::id).lt(deliveries::id)),
                )))
                .filter(deliveries::subscription_id.eq_any(
                    subscriptions::table.filter(subscriptions::kind.eq_any(kinds.clone())).select(subscriptions::id),
                ))
                .order((deliveries::next_attempt_at, deliveries::id))
                .limit(limit)
                .select(deliveries::id)
        };
        let ids: Vec<i64> = match c {
            DbConn::Pg(pg) => due().for_update().skip_locked().load(pg)?,
            DbConn::Sqlite(s) => due().load(s)?,
        };
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        diesel::update(deliveries::table.filter(deliveries::id.eq_any(&ids)))
            .set((
                deliveries::attempts.eq(deliveries::attempts + 1),
                deliveries::last_attempt_at.eq(now),
                deliveries::next_attempt_at.eq(now + hold),
            ))
            .execute(c)?;
        let rows: Vec<(Delivery, Notification, String, Subscription)> = deliveries::table
            .inner_join(notifications::table.inner_join(projects::table))
            .inner_join(subscriptions::table)
            .filter(deliveries::id.eq_any(&ids))
            .order((deliveries::next_attempt_at, deliveries::id))
            .select((Delivery::as_select(), Notification::as_select(), projects::name, Subscription::as_select()))
            .load(c)?;
        Ok(rows
            .into_iter()
            .map(|(delivery, notification, project, subscription)| Claimed {
                delivery,
                notification,
                subscription,
                project,
            })
            .collect())
    })
}

type Pending =
    diesel::dsl::Filter<diesel::dsl::Find<deliveries::table, i64>, diesel::dsl::Eq<deliveries::state, &'static str>>;
type Mine = diesel::dsl::Filter<Pending, diesel::dsl::Eq<deliveries::attempts, i32>>;

/// The delivery as this sender claimed it: still pending, and not claimed again since (by a
/// sender that found it after `HOLD`), so a slow attempt never overwrites a later one.
fn mine(d: &Delivery) -> Mine {
    deliveries::table.find(d.id).filter(deliveries::state.eq(PENDING)).filter(deliveries::attempts.eq(d.attempts))
}

/// Records a successful attempt: the delivery is done and its subscription works.
pub fn delivered(conn: &mut DbConn, d: &Delivery, answer: &str, now: NaiveDateTime) -> QueryResult<()> {
    write_transaction(conn, |c| {
        diesel::update(mine(d))
            .set((deliveries::state.eq(DELIVERED), deliveries::done_at.eq(now), deliveries::last_answer.eq(answer)))
            .execute(c)?;
        diesel::update(subscriptions::table.find(d.subscription_id))
            .set(subscriptions::failing_since.eq(None::<NaiveDateTime>))
            .execute(c)?;
        Ok(())
    })
}

/// Records a failed attempt: tried again at `retry_at`, or given up on when that is `None`.
pub fn failed(
    conn: &mut DbConn,
    d: &Delivery,
    answer: &str,
    now: NaiveDateTime,
    retry_at: Option<NaiveDateTime>,
) -> QueryResult<()> {
    write_transaction(conn, |c| {
        let target = mine(d);
        match retry_at {
            Some(at) => diesel::update(target)
                .set((deliveries::next_attempt_at.eq(at), deliveries::last_answer.eq(answer)))
                .execute(c)?,
            None => diesel::update(target)
                .set((deliveries::state.eq(FAILED), deliveries::done_at.eq(now), deliveries::last_answer.eq(answer)))
                .execute(c)?,
        };
        diesel::update(subscriptions::table.find(d.subscription_id).filter(subscriptions::failing_since.is_null()))
            .set(subscriptions::failing_since.eq(now))
            .execute(c)?;
        Ok(())
    })
}

/// Gives up on deliveries queued before `before` that are still pending (no process could
/// send them, e.g. e-mail with no server running `--smtp`); returns how many.
pub fn expire(conn: &mut DbConn, before: NaiveDateTime, now: NaiveDateTime) -> QueryResult<usize> {
    diesel::update(
        deliveries::table
            .filter(pending())
            .filter(deliveries::created_at.lt(before))
            .filter(deliveries::next_attempt_at.le(now)),
    )
    .set((
        deliveries::state.eq(FAILED),
        deliveries::done_at.eq(now),
        deliveries::last_answer.eq(diesel::dsl::sql::<diesel::sql_types::Nullable<diesel::sql_types::Text>>(
            "COALESCE(last_answer, 'not sent within a day: no server process could send it (e-mail needs serve --smtp)')",
        )),
    ))
    .execute(conn)
}

/// One line of `notify log`.
#[derive(Debug, Clone)]
pub struct Logged {
    pub delivery: Delivery,
    pub notification: Notification,
    pub subscription: Subscription,
}

/// A project's newest deliveries (of one subscription, if given), newest first.
pub fn log(conn: &mut DbConn, project_id: i64, subscription_id: Option<i64>, limit: i64) -> QueryResult<Vec<Logged>> {
    let mut q = deliveries::table
        .inner_join(notifications::table)
        .inner_join(subscriptions::table)
        .filter(subscriptions::project_id.eq(project_id))
        .select((Delivery::as_select(), Notification::as_select(), Subscription::as_select()))
        .order((deliveries::created_at.desc(), deliveries::id.desc()))
        .limit(limit)
        .into_boxed();
    if let Some(s) = subscription_id {
        q = q.filter(deliveries::subscription_id.eq(s));
    }
    Ok(q.load::<(Delivery, Notification, Subscription)>(conn)?
        .into_iter()
        .map(|(delivery, notification, subscription)| Logged { delivery, notification, subscription })
        .collect())
}

/// A project's subscriptions whose every attempt has failed since before `before`.
pub fn failing(conn: &mut DbConn, project_id: i64, before: NaiveDateTime) -> QueryResult<Vec<Subscription>> {
    subscriptions::table
        .filter(subscriptions::project_id.eq(project_id))
        .filter(subscriptions::failing_since.lt(before))
        .order(subscriptions::id)
        .select(Subscription::as_select())
        .load(conn)
}

/// Deletes status changes recorded before `before`, with their deliveries (`prune`).
pub fn prune(conn: &mut DbConn, before: NaiveDateTime) -> QueryResult<usize> {
    let old = notifications::table.filter(notifications::created_at.lt(before)).select(notifications::id);
    diesel::delete(deliveries::table.filter(deliveries::notification_id.eq_any(old))).execute(conn)?;
    diesel::delete(notifications::table.filter(notifications::created_at.lt(before))).execute(conn)
}
