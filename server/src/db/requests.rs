//! Build requests and the leases that answer them.
//!
//! A request wants `builders` distinct builders to build a branch (at a revision). A builder
//! asking for work gets a lease on one open request: an attempt that it renews while it builds
//! and that its report closes. A lease not renewed in time is *lost*, and its slot goes to
//! another builder, up to three attempts per slot. Grants are made one at a time (SQLite's
//! write lock; an advisory lock on PostgreSQL, across server processes), so that no slot is
//! granted twice.

use std::collections::HashMap;

use chrono::{NaiveDateTime, TimeDelta};
use diesel::prelude::*;

use super::models::{BuildRequest, Lease, NewBuildRequest};
use super::schema::{build_requests, builders, leases, projects};
use super::{DbConn, write_transaction};
use crate::results::agreement;

/// How long a lease may be renewed without its build starting (a `started` report naming it).
pub const UNSTARTED_LIMIT: TimeDelta = TimeDelta::hours(1);

/// Attempts one slot may take before the request gives up on it.
pub const ATTEMPTS_PER_SLOT: i64 = 3;

/// Records a request; the same signed body again is the same request (`Ok((existing, false))`).
pub fn add(conn: &mut DbConn, new: &NewBuildRequest<'_>) -> QueryResult<(BuildRequest, bool)> {
    write_transaction(conn, |c| {
        if let Some(d) = new.digest
            && let Some(existing) = by_digest(c, d)?
        {
            return Ok((existing, false));
        }
        diesel::insert_into(build_requests::table).values(new).execute(c)?;
        let created = build_requests::table
            .filter(build_requests::project_id.eq(new.project_id))
            .order(build_requests::id.desc())
            .select(BuildRequest::as_select())
            .first(c)?;
        // A pull request shows "pending" from the moment its revision is asked for.
        if let Some(rev) = &created.revision {
            crate::notify::forge::sync(c, created.project_id, rev, created.created_at)?;
        }
        Ok((created, true))
    })
}

fn by_digest(conn: &mut DbConn, digest: &str) -> QueryResult<Option<BuildRequest>> {
    build_requests::table
        .filter(build_requests::digest.eq(digest))
        .select(BuildRequest::as_select())
        .first(conn)
        .optional()
}

/// One request.
pub fn by_id(conn: &mut DbConn, id: i64) -> QueryResult<Option<BuildRequest>> {
    build_requests::table.find(id).select(BuildRequest::as_select()).first(conn).optional()
}

/// A project's newest requests.
pub fn list(conn: &mut DbConn, project_id: i64, limit: i64) -> QueryResult<Vec<BuildRequest>> {
    build_requests::table
        .filter(build_requests::project_id.eq(project_id))
        .order((build_requests::created_at.desc(), build_requests::id.desc()))
        .limit(limit)
        .select(BuildRequest::as_select())
        .load(conn)
}

/// The attempts at these requests, oldest first, with their builders' names.
pub fn attempts(conn: &mut DbConn, request_ids: &[i64]) -> QueryResult<Vec<(Lease, String)>> {
    leases::table
        .inner_join(builders::table)
        .filter(leases::request_id.eq_any(request_ids))
        .order(leases::id)
        .select((Lease::as_select(), builders::name))
        .load(conn)
}

/// Cancels an open request and ends its leases; false when it was not open.
pub fn cancel(conn: &mut DbConn, id: i64, now: NaiveDateTime) -> QueryResult<bool> {
    write_transaction(conn, |c| {
        let was_open = by_id(c, id)?.is_some_and(|r| r.state == "open");
        close(c, &[id], "cancelled", Some("cancelled by an administrator"), now)?;
        Ok(was_open)
    })
}

/// Counts of a request's attempts: (leased, done, lost). Only attempts lost after their build
/// started count as lost here: a lease granted to a long poll whose builder had gone away (it
/// never started) is a no-show, and must not use up the slot's attempts. A declined attempt
/// uses none either: that builder is never offered the request again.
fn counts(conn: &mut DbConn, request_id: i64) -> QueryResult<(i64, i64, i64)> {
    let rows: Vec<(String, Option<i64>)> =
        leases::table.filter(leases::request_id.eq(request_id)).select((leases::state, leases::build_id)).load(conn)?;
    let n = |s: &str| rows.iter().filter(|(x, _)| x == s).count() as i64;
    let lost = rows.iter().filter(|(x, b)| (x == "lost" && b.is_some()) || x == "cancelled").count() as i64;
    Ok((n("leased"), n("done"), lost))
}

/// Slots a request has: the builders it asked for and those disputes opened.
fn slots(r: &BuildRequest) -> i64 {
    i64::from(r.builders) + i64::from(r.extra_slots)
}

/// Closes a request that can take no more attempts: done when enough builds came, expired
/// when its attempts are used up. Reads the request afresh (an answer may just have opened a
/// slot).
fn settle(conn: &mut DbConn, id: i64, now: NaiveDateTime) -> QueryResult<()> {
    let Some(r) = by_id(conn, id)? else { return Ok(()) };
    let (leased, done, lost) = counts(conn, r.id)?;
    let wanted = slots(&r);
    let (state, reason) = if done >= wanted {
        ("done", None)
    } else if leased == 0 && leased + done + lost >= wanted * ATTEMPTS_PER_SLOT {
        (
            "expired",
            Some(format!("{lost} attempts were lost or cancelled, all {} it could take", wanted * ATTEMPTS_PER_SLOT)),
        )
    } else {
        return Ok(());
    };
    close(conn, &[r.id], state, reason.as_deref(), now)
}

/// Ends open requests: the state, why, when, and `inconclusive` for those asking for agreement
/// that none reached; their revisions' commit statuses follow.
fn close(conn: &mut DbConn, ids: &[i64], state: &str, reason: Option<&str>, now: NaiveDateTime) -> QueryResult<()> {
    let n = diesel::update(build_requests::table.filter(build_requests::id.eq_any(ids)).filter(open()))
        .set((build_requests::state.eq(state), build_requests::reason.eq(reason), build_requests::closed_at.eq(now)))
        .execute(conn)?;
    if n > 0 {
        diesel::update(
            build_requests::table
                .filter(build_requests::id.eq_any(ids))
                .filter(build_requests::verdict.eq_any(["pending", "disputed"])),
        )
        .set(build_requests::verdict.eq("inconclusive"))
        .execute(conn)?;
        // A revision no longer waited for may stop being "pending" on its forge.
        let revisions: Vec<(i64, Option<String>)> = build_requests::table
            .filter(build_requests::id.eq_any(ids))
            .select((build_requests::project_id, build_requests::revision))
            .load(conn)?;
        for (project_id, revision) in revisions {
            if let Some(rev) = revision {
                crate::notify::forge::sync(conn, project_id, &rev, now)?;
            }
        }
    }
    Ok(())
}

/// Leases not renewed in time become lost attempts, and the builds they had started lost builds
/// (at once, not after `serve --lost-after`: nobody builds them any more); requests past their
/// deadline expire. `builds_lost` runs in the same transaction with the ids of the builds it
/// marked (for notifications). Returns how many leases were lost. Idempotent: every server
/// process may run it.
pub fn sweep(
    conn: &mut DbConn,
    now: NaiveDateTime,
    builds_lost: impl FnOnce(&mut DbConn, &[i64]) -> QueryResult<()>,
) -> QueryResult<usize> {
    write_transaction(conn, |c| {
        let expired: Vec<(i64, Option<i64>)> = leases::table
            .filter(leased())
            .filter(leases::expires_at.lt(now))
            .select((leases::request_id, leases::build_id))
            .load(c)?;
        let n = diesel::update(leases::table.filter(leased()).filter(leases::expires_at.lt(now)))
            .set((leases::state.eq("lost"), leases::ended_at.eq(now)))
            .execute(c)?;
        let started: Vec<i64> = expired.iter().filter_map(|(_, b)| *b).collect();
        if !started.is_empty() {
            let marked = super::builds::mark_lost_ids(c, &started)?;
            builds_lost(c, &marked)?;
        }
        for id in expired.into_iter().map(|(r, _)| r) {
            settle(c, id, now)?;
        }
        let late: Vec<i64> = build_requests::table
            .filter(open())
            .filter(build_requests::deadline.lt(now))
            .select(build_requests::id)
            .load(c)?;
        if !late.is_empty() {
            close(c, &late, "expired", Some("its deadline passed"), now)?;
        }
        use super::schema::lease_nonces;
        diesel::delete(lease_nonces::table.filter(lease_nonces::seen_at.lt(now - NONCE_MEMORY))).execute(c)?;
        Ok(n)
    })
}

/// Remembers a signed lease or renew body's nonce; false when this builder used it before (a
/// replayed body). Nonces older than the freshness window are swept by [`sweep`].
pub fn remember_nonce(conn: &mut DbConn, builder_id: i64, nonce: &str, now: NaiveDateTime) -> QueryResult<bool> {
    use super::schema::lease_nonces;
    let inserted = write_transaction(conn, |c| {
        diesel::insert_into(lease_nonces::table)
            .values((
                lease_nonces::builder_id.eq(builder_id),
                lease_nonces::nonce.eq(nonce),
                lease_nonces::seen_at.eq(now),
            ))
            .execute(c)
    });
    match inserted {
        Ok(_) => Ok(true),
        Err(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// How long a nonce is remembered: longer than a signed body stays fresh (60 s either way).
pub const NONCE_MEMORY: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// What changes when there may be new work for a waiting builder: a new request (the highest
/// id) or a slot given back (fewer leases held). Cheap, so that every server process can ask
/// every second and wake its long polls when it moves.
pub fn generation(conn: &mut DbConn) -> QueryResult<(i64, i64)> {
    let newest: Option<i64> = build_requests::table.select(diesel::dsl::max(build_requests::id)).first(conn)?;
    let held: i64 = leases::table.filter(leased()).count().get_result(conn)?;
    Ok((newest.unwrap_or(0), held))
}

/// What a builder asks for.
#[derive(Debug, Clone)]
pub struct Asking<'a> {
    pub builder_id: i64,
    /// The projects it builds and may report for: (id, name).
    pub projects: &'a [(i64, String)],
    pub capabilities: &'a [String],
}

/// A lease granted, with what to build.
#[derive(Debug, Clone)]
pub struct Granted {
    pub lease: Lease,
    pub request: BuildRequest,
    pub project: String,
}

/// Whether some open request of these projects has a free slot and no attempt from this
/// builder yet: the cheap look (no lock) before trying to grant.
pub fn has_work(conn: &mut DbConn, asking: &Asking<'_>, now: NaiveDateTime) -> QueryResult<bool> {
    // A lease this builder holds and never started is given up by asking again, and [`grant`]
    // may give it straight back: work to look at. (Seen as none, because the builder "tried"
    // that request and its slot is busy, the volunteer who paused during a poll, or restarted
    // `serve`, waited out the whole lease time for a slot that was theirs.)
    let abandoned: i64 = leases::table
        .filter(leases::builder_id.eq(asking.builder_id))
        .filter(leased())
        .filter(leases::build_id.is_null())
        .count()
        .get_result(conn)?;
    if abandoned > 0 {
        return Ok(true);
    }
    let ids: Vec<i64> = asking.projects.iter().map(|p| p.0).collect();
    let tried = leases::table
        .filter(leases::builder_id.eq(asking.builder_id))
        .filter(not_a_no_show())
        .select(leases::request_id);
    let open: Vec<(i64, i32, String)> = build_requests::table
        .filter(open())
        .filter(build_requests::project_id.eq_any(ids))
        .filter(build_requests::deadline.is_null().or(build_requests::deadline.gt(now)))
        .filter(build_requests::id.ne_all(tried))
        .limit(200)
        .select((build_requests::id, build_requests::builders + build_requests::extra_slots, build_requests::requires))
        .load(conn)?;
    let open: Vec<(i64, i32, String)> = open
        .into_iter()
        .filter(|(_, _, requires)| {
            serde_json::from_str::<Vec<String>>(requires)
                .unwrap_or_default()
                .iter()
                .all(|c| asking.capabilities.contains(c))
        })
        .collect();
    if open.is_empty() {
        return Ok(false);
    }
    let busy: Vec<(i64, i64)> = leases::table
        .filter(leases::request_id.eq_any(open.iter().map(|r| r.0)))
        .filter(leases::state.eq_any(["leased", "done"]))
        .group_by(leases::request_id)
        .select((leases::request_id, diesel::dsl::count_star()))
        .load(conn)?;
    let busy: HashMap<i64, i64> = busy.into_iter().collect();
    Ok(open.iter().any(|(id, builders, _)| busy.get(id).copied().unwrap_or(0) < i64::from(*builders)))
}

/// Grants one lease, or none: the oldest open request the builder can take, preferring the
/// project with the fewest leases held now (fair across projects). Exactly once: grants are
/// serialised, also across server processes.
pub fn grant(
    conn: &mut DbConn,
    asking: &Asking<'_>,
    ttl: TimeDelta,
    now: NaiveDateTime,
) -> QueryResult<Option<Granted>> {
    write_transaction(conn, |c| {
        if let DbConn::Pg(pg) = c {
            // Held until the transaction ends; every server process takes the same one.
            diesel::sql_query("SELECT pg_advisory_xact_lock(7415001)").execute(pg)?;
        }
        // One lease at a time per builder (a volunteer's machine builds one thing at a time): a
        // builder building one gets no other, and one asking again while it holds a lease it
        // never started has given that one up (a poll it abandoned; its `serve` restarted), so
        // that one builder cannot sit on many requests.
        let held: Vec<Lease> = leases::table
            .filter(leases::builder_id.eq(asking.builder_id))
            .filter(leased())
            .select(Lease::as_select())
            .load(c)?;
        if held.iter().any(|l| l.build_id.is_some()) {
            return Ok(None);
        }
        if !held.is_empty() {
            diesel::update(leases::table.filter(leases::id.eq_any(held.iter().map(|l| l.id))))
                .set((leases::state.eq("lost"), leases::ended_at.eq(now)))
                .execute(c)?;
        }
        let ids: Vec<i64> = asking.projects.iter().map(|p| p.0).collect();
        let tried: Vec<i64> = leases::table
            .filter(leases::builder_id.eq(asking.builder_id))
            .filter(not_a_no_show())
            .select(leases::request_id)
            .load(c)?;
        let open: Vec<BuildRequest> = build_requests::table
            .filter(open())
            .filter(build_requests::project_id.eq_any(&ids))
            .filter(build_requests::deadline.is_null().or(build_requests::deadline.gt(now)))
            .order((build_requests::created_at, build_requests::id))
            .limit(500)
            .select(BuildRequest::as_select())
            .load(c)?;
        let held: Vec<(i64, i64)> = leases::table
            .inner_join(build_requests::table)
            .filter(leased())
            .filter(build_requests::project_id.eq_any(&ids))
            .group_by(build_requests::project_id)
            .select((build_requests::project_id, diesel::dsl::count_star()))
            .load(c)?;
        let held: HashMap<i64, i64> = held.into_iter().collect();
        let mut candidates: Vec<&BuildRequest> = open
            .iter()
            .filter(|r| !tried.contains(&r.id))
            .filter(|r| {
                let requires: Vec<String> = serde_json::from_str(&r.requires).unwrap_or_default();
                requires.iter().all(|cap| asking.capabilities.contains(cap))
            })
            .collect();
        // Stable: within a project, oldest first.
        candidates.sort_by_key(|r| held.get(&r.project_id).copied().unwrap_or(0));
        let mut owner: Option<Option<String>> = None;
        for r in candidates {
            let (leased, done, lost) = counts(c, r.id)?;
            let wanted = slots(r);
            if leased + done >= wanted || leased + done + lost >= wanted * ATTEMPTS_PER_SLOT {
                continue;
            }
            // A request asking for agreement between owners takes one answer per owner: another
            // machine of an owner already answering would only use up a slot.
            if (r.quorum.is_some() || r.spot_check) && r.distinct_by == "owner" {
                let mine = match &owner {
                    Some(o) => o.clone(),
                    None => {
                        let o: Option<String> =
                            builders::table.find(asking.builder_id).select(builders::owner).first(c)?;
                        owner = Some(o.clone());
                        o
                    }
                };
                if let Some(mine) = mine.map(|o| agreement::owner_key(&o)).filter(|o| !o.is_empty()) {
                    // Any attempt of theirs, whatever became of it: else an owner's machines could
                    // take turns cancelling until the request ran out of attempts.
                    let taken: Vec<Option<String>> = leases::table
                        .inner_join(builders::table)
                        .filter(leases::request_id.eq(r.id))
                        .select(builders::owner)
                        .load(c)?;
                    if taken.into_iter().flatten().any(|o| agreement::owner_key(&o) == mine) {
                        continue;
                    }
                }
            }
            // A no-show of this builder's (a lease granted to a poll it had given up, or while
            // it paused) is taken up again, once: it built nothing, so it keeps its place, but
            // a builder that keeps taking and dropping a slot cannot hold it for ever.
            let again = diesel::update(
                leases::table.filter(leases::request_id.eq(r.id)).filter(leases::builder_id.eq(asking.builder_id)),
            )
            .set((
                leases::state.eq("leased"),
                leases::granted_at.eq(now),
                leases::expires_at.eq(now + ttl),
                leases::ended_at.eq(None::<NaiveDateTime>),
                leases::reason.eq(TAKEN_AGAIN),
            ))
            .execute(c)?;
            if again == 0 {
                diesel::insert_into(leases::table)
                    .values((
                        leases::request_id.eq(r.id),
                        leases::builder_id.eq(asking.builder_id),
                        leases::state.eq("leased"),
                        leases::granted_at.eq(now),
                        leases::expires_at.eq(now + ttl),
                    ))
                    .execute(c)?;
            }
            let lease = leases::table
                .filter(leases::request_id.eq(r.id))
                .filter(leases::builder_id.eq(asking.builder_id))
                .select(Lease::as_select())
                .first(c)?;
            let project = asking.projects.iter().find(|p| p.0 == r.project_id).map(|p| p.1.clone()).unwrap_or_default();
            return Ok(Some(Granted { lease, request: r.clone(), project }));
        }
        Ok(None)
    })
}

/// Why a lease cannot be renewed or closed.
#[derive(Debug, PartialEq, Eq)]
pub enum LeaseError {
    /// No such lease of this builder.
    Unknown,
    /// It expired (its attempt is lost) or is done.
    Over(String),
    /// The report is not of what the request asked for: this says what was asked.
    Mismatch(String),
    /// Another report already answered it (or it was cancelled or declined): an answer, once
    /// given, is not changed (else a volunteer caught lying could swap its answer).
    Answered(String),
}

/// Renews a lease for another `ttl`.
pub fn renew(
    conn: &mut DbConn,
    id: i64,
    builder_id: i64,
    ttl: TimeDelta,
    now: NaiveDateTime,
) -> QueryResult<Result<Lease, LeaseError>> {
    write_transaction(conn, |c| {
        let Some(lease) = mine(c, id, builder_id)? else { return Ok(Err(LeaseError::Unknown)) };
        if lease.state != "leased" || lease.expires_at < now {
            let state = if lease.state == "leased" { "lost" } else { lease.state.as_str() };
            return Ok(Err(LeaseError::Over(state.to_owned())));
        }
        // Renewed for an hour and nothing started: a lease held, not built (a slot sat on).
        if lease.build_id.is_none() && now - lease.granted_at > UNSTARTED_LIMIT {
            diesel::update(leases::table.find(id))
                .set((leases::state.eq("lost"), leases::ended_at.eq(now)))
                .execute(c)?;
            return Ok(Err(LeaseError::Over("lost: no build started within an hour of the grant".to_owned())));
        }
        diesel::update(leases::table.find(id)).set(leases::expires_at.eq(now + ttl)).execute(c)?;
        Ok(Ok(Lease { expires_at: now + ttl, ..lease }))
    })
}

fn mine(conn: &mut DbConn, id: i64, builder_id: i64) -> QueryResult<Option<Lease>> {
    leases::table.find(id).filter(leases::builder_id.eq(builder_id)).select(Lease::as_select()).first(conn).optional()
}

/// A report names its lease: link the build to the attempt and, once finished (`result`),
/// close it (also an attempt given up for lost: the build did happen), and judge the request's
/// answers when it asks for agreement. Runs inside the report's transaction; returns what the
/// agreement found to notify.
pub fn report(
    conn: &mut DbConn,
    id: i64,
    builder_id: i64,
    (project_id, branch, revision): (i64, &str, &str),
    build_id: i64,
    (result, reason): (Option<&str>, Option<&str>),
    now: NaiveDateTime,
) -> QueryResult<Result<Vec<agreement::Event>, LeaseError>> {
    let Some(lease) = mine(conn, id, builder_id)? else { return Ok(Err(LeaseError::Unknown)) };
    let Some(request) = by_id(conn, lease.request_id)? else { return Ok(Err(LeaseError::Unknown)) };
    if request.project_id != project_id {
        return Ok(Err(LeaseError::Unknown));
    }
    // Open (or lost: the build may still come) and not linked to another build: `started`
    // then `finished` of one build share its id.
    if !matches!(lease.state.as_str(), "leased" | "lost") {
        return Ok(Err(LeaseError::Answered(format!(
            "lease {id} was already {} (build {})",
            lease.state,
            lease.build_id.map_or_else(|| "none".to_owned(), |b| b.to_string())
        ))));
    }
    if let Some(other) = lease.build_id.filter(|b| *b != build_id) {
        return Ok(Err(LeaseError::Answered(format!("lease {id} is being answered by build {other}"))));
    }
    // Only a build of what was asked answers the request: its branch, and its revision when the
    // request named one.
    let revision_ok = request.revision.as_deref().is_none_or(|r| r.eq_ignore_ascii_case(revision));
    if request.branch != branch || !revision_ok {
        let at = request.revision.as_deref().map(|r| format!(" at revision {r}")).unwrap_or_default();
        return Ok(Err(LeaseError::Mismatch(format!("request {} asks for branch {}{at}", request.id, request.branch))));
    }
    if let Some(result) = result {
        // Only a green or red build answers the request. One its volunteer stopped is no answer,
        // and an exception (a refusal, a source it could not fetch) is a declined attempt: either
        // way the slot goes to another builder.
        let (state, reason) = match result {
            "cancelled" => ("cancelled", None),
            "exception" => ("declined", Some(reason.unwrap_or("the build did not run"))),
            _ => ("done", None),
        };
        diesel::update(leases::table.find(id))
            .set((
                leases::build_id.eq(build_id),
                leases::state.eq(state),
                leases::ended_at.eq(now),
                leases::reason.eq(reason),
            ))
            .execute(conn)?;
        let events = if state == "done" { agreement::after_answer(conn, request.id, builder_id)? } else { Vec::new() };
        settle(conn, request.id, now)?;
        return Ok(Ok(events));
    }
    diesel::update(leases::table.find(id)).set(leases::build_id.eq(build_id)).execute(conn)?;
    Ok(Ok(Vec::new()))
}

/// The projects (id, name) among `names` that this builder may report for.
pub fn allowed_projects(conn: &mut DbConn, builder_id: i64, names: &[String]) -> QueryResult<Vec<(i64, String)>> {
    use super::schema::builder_projects;
    builder_projects::table
        .inner_join(projects::table)
        .filter(builder_projects::builder_id.eq(builder_id))
        .filter(projects::name.eq_any(names))
        .select((projects::id, projects::name))
        .load(conn)
}

/// `state = 'leased'` written out, so that cached plans (SQLite's, which do not look at bound
/// values, see `.cargo/config.toml`, and PostgreSQL's generic ones) use the `leases_leased`
/// partial index, which holds only the leases in flight.
pub(crate) fn leased() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql::<diesel::sql_types::Bool>("leases.state = 'leased'")
}

/// Every attempt but a first no-show (lost before any build started): a builder is not
/// offered a request again once it tried it, unless it never really had it (once).
fn not_a_no_show() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql::<diesel::sql_types::Bool>(
        "NOT (leases.state = 'lost' AND leases.build_id IS NULL AND leases.reason IS NULL)",
    )
}

/// The `reason` of a lease given again to its builder after a no-show.
const TAKEN_AGAIN: &str = "taken again after a no-show";

/// `state = 'open'` written out, for the `build_requests_open` partial index (as `leased`).
fn open() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql::<diesel::sql_types::Bool>("build_requests.state = 'open'")
}
