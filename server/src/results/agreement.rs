//! Agreement between builders (DESIGN, "Results a project can trust from strangers"): no
//! builder's word overrules another's.
//!
//! A request asking for a `quorum` k is **agreed** when k of its answers (finished builds that
//! closed one of its leases) from distinct owners, or distinct builders, say the same thing:
//! the same result, the same set of failing tests, and the same digest for every artifact both
//! list. It is **disputed** while answers differ and no k agree; each dispute that the slots
//! left cannot settle opens one more slot (at most 3 beyond `builders`). The verdict, whether
//! each answer matches it, and each builder's record of agreements and disputes are written in
//! the transaction of the report that changed them, under a lock on the request, so that two
//! server processes on one PostgreSQL database never both open the same extra slot.
//!
//! `serve --spot-check F` gives a second slot to a share of the requests that ask for no
//! quorum, when their first answer arrives: F for a builder with a good record, more for one
//! with a short or disputed record (BOINC's adaptive replication: trusted after
//! [`TRUSTED_AFTER`] agreements).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use diesel::prelude::*;
use serde::Serialize;

use crate::db::DbConn;
use crate::db::models::BuildRequest;
use crate::db::schema::{build_requests, builders, builds, leases, test_results};

/// Slots a request may gain from disputes, beyond the `builders` it asked for.
pub const MAX_EXTRA_SLOTS: i32 = 3;
/// Agreements after which a builder is trusted (checked at the base spot-check rate); each
/// dispute takes back this many.
pub const TRUSTED_AFTER: i64 = 10;

/// The spot-check fraction of this process (`serve --spot-check`), as f64 bits: set once at
/// start, read in every report's transaction, where the server's settings are not at hand.
static SPOT_CHECK: AtomicU64 = AtomicU64::new(0);

/// Sets the share of quorum-less requests given a second slot (0 turns spot checks off).
pub fn set_spot_check(fraction: f64) {
    SPOT_CHECK.store(fraction.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
}

fn spot_check() -> f64 {
    f64::from_bits(SPOT_CHECK.load(Ordering::Relaxed))
}

/// How likely a quorum-less request answered by a builder with this record is checked: the
/// base `fraction` for a trusted builder, up to every time for a new or disputed one (1/n of
/// the way, BOINC-style). Zero when spot checks are off.
pub fn check_probability(fraction: f64, agreed: i64, disputed: i64) -> f64 {
    if fraction <= 0.0 {
        return 0.0;
    }
    let trust = agreed - TRUSTED_AFTER * disputed;
    if trust >= TRUSTED_AFTER {
        fraction
    } else {
        (fraction * TRUSTED_AFTER as f64 / (1 + trust.max(0)) as f64).clamp(fraction, 1.0)
    }
}

/// What one finished build answered.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    #[serde(skip)]
    pub lease_id: i64,
    pub build: i64,
    #[serde(skip)]
    pub builder_id: i64,
    pub builder: String,
    pub owner: Option<String>,
    /// The revision it built (a request for a branch head may get answers at several).
    pub revision: String,
    pub result: String,
    /// Failing tests (failed or errored), as `suite::name`, sorted.
    pub failing_tests: Vec<String>,
    /// Those of them flaky on that builder: a dispute about one of these may be the test, not
    /// the builder.
    pub flaky_tests: Vec<String>,
    /// Path to SHA-256.
    pub artifacts: BTreeMap<String, String>,
    /// Whether it matches the verdict, once there is one.
    pub agrees: Option<bool>,
}

impl Answer {
    /// Whether two answers say the same: result, failing tests, and the digests of the
    /// artifacts both list (one listed by only one of them is not compared).
    pub fn same(&self, other: &Answer) -> bool {
        self.revision == other.revision
            && self.result == other.result
            && self.failing_tests == other.failing_tests
            && self.artifacts.iter().all(|(path, sha)| other.artifacts.get(path).is_none_or(|o| o == sha))
    }

    /// Who it counts as for a quorum: its owner (a builder without one is its own owner), or
    /// its builder.
    fn voter(&self, by_builder: bool) -> String {
        match (&self.owner, by_builder) {
            (Some(owner), false) if !owner_key(owner).is_empty() => format!("owner:{}", owner_key(owner)),
            _ => format!("builder:{}", self.builder_id),
        }
    }

    /// What it differs from `other` in, in words ("result success, not failure; failing tests
    /// …").
    pub fn differences(&self, other: &Answer) -> Vec<String> {
        let mut out = Vec::new();
        if self.revision != other.revision {
            out.push(format!("built revision {} (not {})", short(&self.revision), short(&other.revision)));
            return out;
        }
        if self.result != other.result {
            out.push(format!("result {} (not {})", self.result, other.result));
        }
        let mine: BTreeSet<&String> = self.failing_tests.iter().collect();
        let theirs: BTreeSet<&String> = other.failing_tests.iter().collect();
        let only_mine: Vec<&str> = mine.difference(&theirs).map(|s| s.as_str()).take(5).collect();
        let only_theirs: Vec<&str> = theirs.difference(&mine).map(|s| s.as_str()).take(5).collect();
        if !only_mine.is_empty() {
            out.push(format!("also fails {}", only_mine.join(", ")));
        }
        if !only_theirs.is_empty() {
            out.push(format!("passes {}", only_theirs.join(", ")));
        }
        for (path, sha) in &self.artifacts {
            if other.artifacts.get(path).is_some_and(|o| o != sha) {
                out.push(format!("artifact {path} differs"));
            }
        }
        out
    }
}

fn short(rev: &str) -> &str {
    rev.get(..12).unwrap_or(rev)
}

/// What makes two owners the same owner: case, spaces, punctuation and invisible characters
/// aside, and fullwidth letters read as the ASCII ones they look like. Owners are what
/// volunteers declare, so this stops accidents and look-alikes, not a volunteer who declares
/// another name (README: what agreement cannot catch).
pub fn owner_key(owner: &str) -> String {
    owner
        .chars()
        .map(|c| match c {
            // Fullwidth forms of ASCII (U+FF01..U+FF5E).
            '\u{ff01}'..='\u{ff5e}' => char::from_u32(c as u32 - 0xfee0).unwrap_or(c),
            _ => c,
        })
        .flat_map(char::to_lowercase)
        .filter(|c| c.is_alphanumeric())
        .collect()
}

/// Where a set of answers stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Not enough answers yet, none differing.
    Pending,
    /// `quorum` voters agree: the indices of every answer that says the same as the first of
    /// them.
    Agreed(Vec<usize>),
    /// Answers of one revision differ and no `quorum` agree.
    Disputed,
}

/// Judges answers (oldest first) against a quorum. `settled`: the index of an answer an
/// earlier agreement went with, which stands (a later pair agreeing on something else does
/// not overturn a verdict).
pub fn judge(answers: &[Answer], quorum: usize, by_builder: bool, settled: Option<usize>) -> Standing {
    if let Some(i) = settled {
        return Standing::Agreed(group(answers, i));
    }
    for i in 0..answers.len() {
        let g = group(answers, i);
        if voters(answers, &g, by_builder) >= quorum {
            return Standing::Agreed(g);
        }
    }
    // Answers at different revisions (a request for a branch head) are not compared: only a
    // difference at one revision is a dispute.
    let differ = answers
        .iter()
        .enumerate()
        .any(|(i, a)| answers[i + 1..].iter().any(|b| a.revision == b.revision && !a.same(b)));
    if differ { Standing::Disputed } else { Standing::Pending }
}

/// The answers that say the same as answer `i`, each agreeing with every other: "same"
/// compares only the artifacts both list, so it is not transitive, and an answer listing none
/// must not join two that list different digests.
fn group(answers: &[Answer], i: usize) -> Vec<usize> {
    let mut g = vec![i];
    for j in (0..answers.len()).filter(|&j| j != i) {
        if g.iter().all(|&k| answers[j].same(&answers[k])) {
            g.push(j);
        }
    }
    g.sort_unstable();
    g
}

fn voters(answers: &[Answer], g: &[usize], by_builder: bool) -> usize {
    g.iter().map(|&j| answers[j].voter(by_builder)).collect::<HashSet<_>>().len()
}

/// The most voters that agree on one answer.
fn best(answers: &[Answer], by_builder: bool) -> usize {
    (0..answers.len()).map(|i| voters(answers, &group(answers, i), by_builder)).max().unwrap_or(0)
}

/// The quorum a request is judged by: its own, or 2 when spot-checked; none: not judged.
pub fn quorum_of(r: &BuildRequest) -> Option<usize> {
    r.quorum.map(|q| usize::try_from(q).unwrap_or(usize::MAX)).or(r.spot_check.then_some(2))
}

/// (request, lease, build, builder id, agrees, builder, owner, revision, result, artifacts)
type AnswerRow = (i64, i64, i64, i64, Option<bool>, String, Option<String>, String, Option<String>, Option<String>);

/// A request's answers: its finished builds that closed one of its leases, oldest first.
pub fn answers(conn: &mut DbConn, request_ids: &[i64]) -> QueryResult<Vec<(i64, Answer)>> {
    let rows: Vec<AnswerRow> = leases::table
        .inner_join(builds::table.on(builds::id.nullable().eq(leases::build_id)))
        .inner_join(builders::table.on(builders::id.eq(leases::builder_id)))
        .filter(leases::request_id.eq_any(request_ids))
        .filter(done())
        .order(leases::id)
        .select((
            leases::request_id,
            leases::id,
            builds::id,
            builders::id,
            leases::agrees,
            builders::name,
            builders::owner,
            builds::revision,
            builds::result,
            builds::artifacts,
        ))
        .load(conn)?;
    let ids: Vec<i64> = rows.iter().map(|r| r.2).collect();
    let mut failing: HashMap<i64, Vec<(String, bool)>> = HashMap::new();
    for chunk in ids.chunks(500) {
        let tests: Vec<(i64, String, String, bool)> = test_results::table
            .filter(test_results::build_id.eq_any(chunk))
            .filter(test_results::result.eq_any(["failed", "error"]))
            .select((test_results::build_id, test_results::suite, test_results::name, test_results::flaky))
            .load(conn)?;
        for (b, suite, name, flaky) in tests {
            failing.entry(b).or_default().push((format!("{suite}::{name}"), flaky));
        }
    }
    Ok(rows
        .into_iter()
        .map(|(request, lease_id, build, builder_id, agrees, builder, owner, revision, result, artifacts)| {
            let mut tests = failing.remove(&build).unwrap_or_default();
            tests.sort();
            tests.dedup();
            let artifacts: Vec<tbox_protocol::Artifact> =
                artifacts.as_deref().and_then(|a| serde_json::from_str(a).ok()).unwrap_or_default();
            let answer = Answer {
                lease_id,
                build,
                builder_id,
                builder,
                owner,
                // A lease takes its revision in either case: compare them alike.
                revision: revision.to_ascii_lowercase(),
                result: result.unwrap_or_default(),
                flaky_tests: tests.iter().filter(|t| t.1).map(|t| t.0.clone()).collect(),
                failing_tests: tests.into_iter().map(|t| t.0).collect(),
                artifacts: artifacts.into_iter().map(|a| (a.path, a.sha256)).collect(),
                agrees,
            };
            (request, answer)
        })
        .collect())
}

/// The request a build answered, when it asks for agreement (or was spot-checked), with all
/// its answers: what the build page shows.
pub fn of_build(conn: &mut DbConn, build_id: i64) -> QueryResult<Option<(BuildRequest, Vec<Answer>)>> {
    let request: Option<i64> = leases::table
        .filter(leases::build_id.eq(build_id))
        .filter(done())
        .select(leases::request_id)
        .first(conn)
        .optional()?;
    let Some(r) = request.map(|id| crate::db::requests::by_id(conn, id)).transpose()?.flatten() else {
        return Ok(None);
    };
    if quorum_of(&r).is_none() {
        return Ok(None);
    }
    let answers = answers(conn, &[r.id])?.into_iter().map(|(_, a)| a).collect();
    Ok(Some((r, answers)))
}

/// `state = 'done'` written out: a bound value on a column a partial index names makes SQLite
/// plan the statement again on every run (see `db::requests::leased`).
fn done() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql::<diesel::sql_types::Bool>("leases.state = 'done'")
}

/// Something to tell subscribers about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The request's answers disagree (for the first time): the newest answer's build.
    Disputed { request_id: i64, build_id: i64, builder_id: i64 },
    /// A builder with a long clean record was found in disagreement for the first time.
    FirstDispute { request_id: i64, build_id: i64, builder_id: i64, agreed: i64 },
}

/// After an answer to request `id` arrived (its lease is `done`, in this transaction): spot
/// check, judge, and write down the verdict, each answer's standing, the builders' records and
/// an extra slot when a dispute needs one. Returns what to notify.
pub fn after_answer(conn: &mut DbConn, id: i64, answering_builder: i64) -> QueryResult<Vec<Event>> {
    if let DbConn::Pg(pg) = conn {
        // Serialises the answers to one request across server processes: the second waits,
        // then reads the first's answer (READ COMMITTED reads afresh per statement).
        diesel::sql_query("SELECT id FROM build_requests WHERE id = $1 FOR UPDATE")
            .bind::<diesel::sql_types::BigInt, _>(id)
            .execute(pg)?;
    }
    let Some(mut r) = crate::db::requests::by_id(conn, id)? else { return Ok(Vec::new()) };
    // A request that ended keeps the verdict it ended with; a late answer (on a lease given up
    // for lost) is still held to an agreement reached, else it is recorded, not judged.
    if r.state != "open" && r.verdict.as_deref() != Some("agreed") {
        return Ok(Vec::new());
    }
    let answers: Vec<Answer> = answers(conn, &[id])?.into_iter().map(|(_, a)| a).collect();
    if r.state == "open" && r.quorum.is_none() && !r.spot_check && maybe_spot_check(conn, answering_builder)? {
        // An answer to a quorum-less request, chosen for a check by its builder's record (each
        // answer draws, so a builder with a poor record is not safe answering second): one more
        // slot when only its answer is there, else the answers there are compared.
        let extra = i32::from(answers.len() == 1 && r.builders == 1);
        diesel::update(build_requests::table.find(id))
            .set((
                build_requests::spot_check.eq(true),
                build_requests::extra_slots.eq(build_requests::extra_slots + extra),
                build_requests::verdict.eq("pending"),
            ))
            .execute(conn)?;
        r.spot_check = true;
        r.extra_slots += extra;
        r.verdict = Some("pending".into());
    }
    let Some(quorum) = quorum_of(&r) else { return Ok(Vec::new()) };
    let by_builder = r.distinct_by == "builder";
    let settled = answers.iter().position(|a| a.agrees == Some(true));
    let standing = judge(&answers, quorum, by_builder, settled);
    let mut events = Vec::new();
    let newest = answers.last();
    let (verdict, build_standing) = match &standing {
        Standing::Pending => ("pending", None),
        Standing::Disputed => ("disputed", Some("disputed")),
        Standing::Agreed(_) => ("agreed", None),
    };
    if verdict == "disputed"
        && r.verdict.as_deref() != Some("disputed")
        && let Some(a) = newest
    {
        events.push(Event::Disputed { request_id: id, build_id: a.build, builder_id: a.builder_id });
    }
    match &standing {
        Standing::Agreed(group) => {
            let revision = group.first().map(|&i| answers[i].revision.clone()).unwrap_or_default();
            for (i, a) in answers.iter().enumerate().filter(|(_, a)| a.agrees.is_none()) {
                if a.revision != revision {
                    // Built another head of the branch: not compared, so neither agreed nor
                    // disputed, on the build or on its builder's record.
                    diesel::update(builds::table.find(a.build))
                        .set(builds::agreement.eq(None::<String>))
                        .execute(conn)?;
                    continue;
                }
                let agrees = group.contains(&i);
                diesel::update(leases::table.find(a.lease_id)).set(leases::agrees.eq(agrees)).execute(conn)?;
                diesel::update(builds::table.find(a.build))
                    .set(builds::agreement.eq(if agrees { "agreed" } else { "disputed" }))
                    .execute(conn)?;
                let (agreed, disputed): (i64, i64) =
                    builders::table.find(a.builder_id).select((builders::agreed, builders::disputed)).first(conn)?;
                if agrees {
                    diesel::update(builders::table.find(a.builder_id))
                        .set(builders::agreed.eq(builders::agreed + 1))
                        .execute(conn)?;
                } else {
                    diesel::update(builders::table.find(a.builder_id))
                        .set(builders::disputed.eq(builders::disputed + 1))
                        .execute(conn)?;
                    if disputed == 0 && agreed >= TRUSTED_AFTER {
                        events.push(Event::FirstDispute {
                            request_id: id,
                            build_id: a.build,
                            builder_id: a.builder_id,
                            agreed,
                        });
                    }
                }
            }
        }
        _ => {
            let ids: Vec<i64> = answers.iter().map(|a| a.build).collect();
            diesel::update(builds::table.filter(builds::id.eq_any(ids)))
                .set(builds::agreement.eq(build_standing.unwrap_or("pending")))
                .execute(conn)?;
        }
    }
    if r.verdict.as_deref() != Some(verdict) {
        diesel::update(build_requests::table.find(id)).set(build_requests::verdict.eq(verdict)).execute(conn)?;
    }
    // Agreed: slots opened by disputes and not taken are no longer wanted.
    if matches!(standing, Standing::Agreed(_)) && r.extra_slots > 0 {
        let leased: i64 = leases::table
            .filter(leases::request_id.eq(id))
            .filter(crate::db::requests::leased())
            .count()
            .get_result(conn)?;
        let taken = i32::try_from(answers.len() as i64 + leased).unwrap_or(i32::MAX);
        let wanted = (taken - r.builders).clamp(0, r.extra_slots);
        if wanted < r.extra_slots {
            diesel::update(build_requests::table.find(id)).set(build_requests::extra_slots.eq(wanted)).execute(conn)?;
        }
    }
    // Answers the slots left cannot bring to a quorum (a dispute, or answers at different
    // revisions of a branch head) open one more slot, once: compare-and-set on the count read
    // under the lock.
    if !matches!(standing, Standing::Agreed(_)) {
        let slots = i64::from(r.builders + r.extra_slots);
        let pending = slots - answers.len() as i64;
        if (best(&answers, by_builder) as i64) + pending < quorum as i64 && r.extra_slots < MAX_EXTRA_SLOTS {
            diesel::update(build_requests::table.find(id).filter(build_requests::extra_slots.eq(r.extra_slots)))
                .set(build_requests::extra_slots.eq(r.extra_slots + 1))
                .execute(conn)?;
        }
    }
    Ok(events)
}

/// Whether to spot-check the request the builder answered first: by the builder's record.
fn maybe_spot_check(conn: &mut DbConn, builder_id: i64) -> QueryResult<bool> {
    let fraction = spot_check();
    if fraction <= 0.0 {
        return Ok(false);
    }
    let (agreed, disputed): (i64, i64) =
        builders::table.find(builder_id).select((builders::agreed, builders::disputed)).first(conn)?;
    let p = check_probability(fraction, agreed, disputed);
    let mut bytes = [0u8; 8];
    // OpenSSL's CSPRNG: a volunteer must not be able to predict which answers are checked.
    openssl::rand::rand_bytes(&mut bytes).map_err(|e| diesel::result::Error::QueryBuilderError(e.into()))?;
    let draw = (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64;
    Ok(draw < p)
}

/// A request that ended (done, expired, cancelled) without k agreeing is inconclusive.
pub fn ended_verdict(verdict: Option<&str>) -> Option<&'static str> {
    match verdict {
        Some("pending" | "disputed") => Some("inconclusive"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(
        builder_id: i64,
        owner: Option<&str>,
        result: &str,
        failing: &[&str],
        artifacts: &[(&str, &str)],
    ) -> Answer {
        Answer {
            lease_id: builder_id,
            build: builder_id,
            builder_id,
            builder: format!("b{builder_id}"),
            owner: owner.map(str::to_owned),
            revision: "r1".to_owned(),
            result: result.to_owned(),
            failing_tests: failing.iter().map(|s| (*s).to_owned()).collect(),
            flaky_tests: Vec::new(),
            artifacts: artifacts.iter().map(|(p, s)| ((*p).to_owned(), (*s).to_owned())).collect(),
            agrees: None,
        }
    }

    #[test]
    fn k_distinct_owners_saying_the_same_agree() {
        let a = answer(1, Some("alice"), "failure", &["s::t"], &[]);
        let b = answer(2, Some("bob"), "failure", &["s::t"], &[]);
        let liar = answer(3, Some("mallory"), "success", &[], &[]);
        assert_eq!(judge(std::slice::from_ref(&a), 2, false, None), Standing::Pending);
        assert_eq!(judge(&[a.clone(), liar.clone()], 2, false, None), Standing::Disputed);
        assert_eq!(judge(&[a.clone(), liar.clone(), b.clone()], 2, false, None), Standing::Agreed(vec![0, 2]));
        // A verdict stands: a later pair agreeing on something else does not overturn it.
        let liar2 = answer(4, Some("trudy"), "success", &[], &[]);
        assert_eq!(judge(&[a, liar, b, liar2], 2, false, Some(0)), Standing::Agreed(vec![0, 2]));
    }

    #[test]
    fn one_owners_machines_count_once_unless_builders_are_asked_for() {
        let a = answer(1, Some("Alice"), "success", &[], &[]);
        let b = answer(2, Some(" alice "), "success", &[], &[]);
        assert_eq!(judge(&[a.clone(), b.clone()], 2, false, None), Standing::Pending);
        assert_eq!(judge(&[a.clone(), b.clone()], 2, true, None), Standing::Agreed(vec![0, 1]));
        // Builders without an owner are their own owners.
        let c = answer(3, None, "success", &[], &[]);
        let d = answer(4, None, "success", &[], &[]);
        assert_eq!(judge(&[c, d], 2, false, None), Standing::Agreed(vec![0, 1]));
    }

    #[test]
    fn failing_tests_and_shared_artifacts_must_match() {
        let a = answer(1, None, "failure", &["s::t"], &[("bin/demo", "aa"), ("only-a", "11")]);
        let same = answer(2, None, "failure", &["s::t"], &[("bin/demo", "aa")]);
        let other_test = answer(3, None, "failure", &["s::u"], &[]);
        let other_binary = answer(4, None, "failure", &["s::t"], &[("bin/demo", "bb")]);
        assert!(a.same(&same), "an artifact listed by one only is not compared");
        assert!(!a.same(&other_test));
        assert!(!a.same(&other_binary));
        assert_eq!(a.differences(&other_binary), vec!["artifact bin/demo differs".to_owned()]);
        assert_eq!(other_test.differences(&a), vec!["also fails s::u".to_owned(), "passes s::t".to_owned()]);
    }

    #[test]
    fn an_answer_without_artifacts_does_not_join_two_that_differ() {
        let a = answer(1, None, "success", &[], &[("bin/demo", "11")]);
        let c = answer(2, None, "success", &[], &[("bin/demo", "22")]);
        let liar = answer(3, None, "success", &[], &[]);
        assert_eq!(judge(&[a, c, liar], 3, false, None), Standing::Disputed);
    }

    #[test]
    fn answers_at_different_revisions_are_not_compared() {
        let a = answer(1, None, "success", &[], &[]);
        let mut b = answer(2, None, "failure", &["s::t"], &[]);
        b.revision = "r2".into();
        assert_eq!(judge(&[a.clone(), b.clone()], 2, false, None), Standing::Pending);
        assert_eq!(b.differences(&a), vec!["built revision r2 (not r1)".to_owned()]);
    }

    #[test]
    fn look_alike_owners_are_one_owner() {
        assert_eq!(owner_key("zed@example.org"), owner_key("ZED@example.org\u{200b} "));
        assert_eq!(owner_key("zed@example.org"), owner_key("\u{ff5a}ed@example.org"));
        assert_ne!(owner_key("zed@example.org"), owner_key("bob@example.org"));
        let a = answer(1, Some("zed@example.org"), "success", &[], &[]);
        let b = answer(2, Some("zed@example.org\u{200b}"), "success", &[], &[]);
        assert_eq!(judge(&[a, b], 2, false, None), Standing::Pending);
    }

    #[test]
    fn new_and_disputed_builders_are_checked_more() {
        assert_eq!(check_probability(0.0, 0, 0), 0.0);
        assert_eq!(check_probability(0.1, 0, 0), 1.0);
        assert!((check_probability(0.1, 4, 0) - 0.2).abs() < 1e-9);
        assert_eq!(check_probability(0.1, 50, 0), 0.1);
        // Each dispute takes back ten agreements.
        assert_eq!(check_probability(0.1, 50, 1), 0.1);
        assert!((check_probability(0.1, 15, 1) - 0.1 * 10.0 / 6.0).abs() < 1e-9);
        assert_eq!(check_probability(0.1, 5, 1), 1.0);
    }
}
