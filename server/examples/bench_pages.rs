//! Page benchmark: fills a database with BUILDERS × BUILDS builds through the storage layer
//! (batched inserts, not the API, so a million builds take a minute rather than hours), then
//! serves it and prints p50/p99 render times of the waterfall, console, builder and build pages.
//!
//! `bench_pages DATABASE_URL [BUILDERS] [BUILDS_PER_BUILDER] [REQUESTS]`, driven by
//! `scripts/bench-pages`. With REQUESTS 0 it only fills (project `bench`): `scripts/bench-ingest`
//! uses that to measure ingest with a million builds stored.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use chrono::{NaiveDateTime, TimeDelta};
use clap::Parser as _;
use diesel::prelude::*;
use tbox_server::cli::{Cli, Command};
use tbox_server::db::models::{BuildFields, NewBuilder, NewLog, NewProject, NewStep};
use tbox_server::db::schema::{builds, logs, steps};
use tbox_server::db::{self, DatabaseUrl, DbConn, Manager, builders, projects};
use tbox_server::dispatch;

const BATCH: usize = 400;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).cloned().unwrap_or_else(|| "sqlite://bench-pages.db".into());
    let n_builders: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(50);
    let per_builder: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let requests: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(50);

    let mut conn = diesel::r2d2::ManageConnection::connect(&Manager::new(DatabaseUrl::parse(&url).unwrap())).unwrap();
    db::migrate(&mut conn).unwrap();
    let t = Instant::now();
    let failing_build = fill(&mut conn, n_builders, per_builder);
    let total = n_builders * per_builder;
    println!(
        "filled {total} builds ({n_builders} builders × {per_builder}) in {:.1}s ({:.0} builds/s)",
        t.elapsed().as_secs_f64(),
        total as f64 / t.elapsed().as_secs_f64()
    );
    // As a live database's autovacuum would: planner statistics for the new rows.
    diesel::connection::SimpleConnection::batch_execute(&mut conn, "ANALYZE").unwrap();
    drop(conn);
    if requests == 0 {
        return;
    }

    let cli = Cli::try_parse_from(["tbox-server", "serve", "--bind", "127.0.0.1:0", "--database", &url]).unwrap();
    let Command::Serve(serve) = cli.command else { unreachable!() };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        tbox_server::cmd::serve::run_with(serve, |a| {
            let _ = tx.send(a[0]);
        })
    });
    let base = format!("http://{}", rx.recv_timeout(Duration::from_secs(30)).unwrap());
    let middle = db::now() - TimeDelta::hours(per_builder as i64 / 2);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    for (name, path) in [
        ("waterfall", "/projects/bench".to_owned()),
        ("waterfall, half-way back", format!("/projects/bench?before={}", middle.format("%Y-%m-%dT%H:%M:%SZ"))),
        ("console", "/projects/bench/console".to_owned()),
        ("builder", format!("/projects/bench/builders/builder-{:02}", n_builders / 2)),
        ("build (failed, brief log)", format!("/builds/{failing_build}")),
        ("front page", "/".to_owned()),
        ("API builds list", "/api/v1/projects/bench/builds?limit=100".to_owned()),
    ] {
        let mut times = Vec::with_capacity(requests);
        let mut bytes = 0;
        for _ in 0..requests {
            let t = Instant::now();
            let mut resp = agent.get(format!("{base}{path}")).call().unwrap();
            assert_eq!(resp.status().as_u16(), 200, "{path}");
            bytes = resp.body_mut().read_to_string().unwrap().len();
            times.push(t.elapsed());
        }
        times.sort();
        let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
        println!("{name:<28} p50 {:>7.1} ms   p99 {:>7.1} ms   ({} KiB)", p(0.5), p(0.99), bytes / 1024);
    }
}

/// Inserts the project, builders and builds; returns the id of a failed build with a log.
fn fill(conn: &mut DbConn, n_builders: usize, per_builder: usize) -> i64 {
    let now = db::now();
    let project = projects::add(
        conn,
        &NewProject {
            name: "bench",
            title: "Benchmark",
            repo_url: None,
            revision_url: Some("https://example.org/c/{rev}"),
            created_at: now,
            compare_url: None,
        },
    )
    .unwrap();
    let ok_log = "cc -c a.c\ncc -c b.c\nld -o x a.o b.o\n".repeat(200);
    let mut bad_log: String = (0..20_000).map(|i| format!("cc -O2 -c src/unit{i}.c -o build/unit{i}.o\n")).collect();
    bad_log.push_str("src/parser.c:42:7: error: expected ';' before '}' token\nmake: *** [Makefile:9] Error 1\n");
    let logs_to_store = [(&ok_log, digest(&ok_log)), (&bad_log, digest(&bad_log))];
    for (text, d) in &logs_to_store {
        let compressed = zstd::bulk::compress(text.as_bytes(), 3).unwrap();
        let row = NewLog { digest: d, size: text.len() as i64, compressed: &compressed };
        dispatch!(&mut *conn, |c| diesel::insert_into(logs::table).values(&row).execute(c)).unwrap();
    }
    let (ok_digest, bad_digest) = (&logs_to_store[0].1, &logs_to_store[1].1);
    let start: NaiveDateTime = now - TimeDelta::hours(per_builder as i64 + 1);
    let mut failing = 0;
    for b in 0..n_builders {
        let name = format!("builder-{b:02}");
        let builder = builders::add(
            conn,
            &NewBuilder {
                name: &name,
                status: builders::ACTIVE,
                owner: None,
                description: None,
                properties: r#"{"os":"linux","arch":"x86_64"}"#,
                created_at: now,
            },
        )
        .unwrap();
        builders::allow(conn, builder.id, project.id).unwrap();
        diesel::update(tbox_server::db::schema::builders::table.find(builder.id))
            .set(tbox_server::db::schema::builders::last_report_at.eq(Some(now)))
            .execute(conn)
            .unwrap();
        let uuids: Vec<String> = (0..per_builder).map(|i| format!("b{b}-{i}")).collect();
        let revisions: Vec<String> = (0..per_builder).map(|i| digest(&i.to_string())[..40].to_owned()).collect();
        for chunk_start in (0..per_builder).step_by(BATCH) {
            let range = chunk_start..(chunk_start + BATCH).min(per_builder);
            let result_of = |i: usize| if (i + b).is_multiple_of(17) { "failure" } else { "success" };
            let rows: Vec<BuildFields<'_>> = range
                .clone()
                .map(|i| {
                    let t = start + TimeDelta::hours(i as i64) + TimeDelta::minutes(b as i64);
                    BuildFields {
                        project_id: project.id,
                        builder_id: builder.id,
                        uuid: &uuids[i],
                        branch: "main",
                        revision: &revisions[i],
                        state: "finished",
                        result: Some(result_of(i)),
                        started_at: t,
                        finished_at: Some(t + TimeDelta::minutes(20)),
                        reporter: "bench",
                        properties: r#"{"os":"linux","arch":"x86_64"}"#,
                        received_at: t + TimeDelta::minutes(21),
                        recipe_version: None,
                        recipe_key: None,
                        sandbox: None,
                        artifacts: None,
                    }
                })
                .collect();
            db::write_transaction(conn, |c| -> QueryResult<()> {
                dispatch!(&mut *c, |cc| diesel::insert_into(builds::table).values(&rows).execute(cc))?;
                let last: i64 =
                    builds::table.select(diesel::dsl::max(builds::id)).first::<Option<i64>>(c)?.unwrap_or(0);
                let first = last - rows.len() as i64 + 1;
                let step_rows: Vec<NewStep<'_>> = range
                    .clone()
                    .enumerate()
                    .flat_map(|(k, i)| {
                        let id = first + k as i64;
                        let t = rows[k].started_at;
                        let failed = result_of(i) == "failure";
                        [
                            NewStep {
                                build_id: id,
                                position: 0,
                                name: "build",
                                kind: None,
                                result: if failed { "failure" } else { "success" },
                                started_at: t,
                                finished_at: t + TimeDelta::minutes(10),
                                exit_code: Some(if failed { 2 } else { 0 }),
                                log_digest: Some(if failed { bad_digest } else { ok_digest }),
                                log_truncated: false,
                            },
                            NewStep {
                                build_id: id,
                                position: 1,
                                name: "test",
                                kind: Some("test"),
                                result: if failed { "skipped" } else { "success" },
                                started_at: t + TimeDelta::minutes(10),
                                finished_at: t + TimeDelta::minutes(20),
                                exit_code: None,
                                log_digest: None,
                                log_truncated: false,
                            },
                        ]
                    })
                    .collect();
                dispatch!(&mut *c, |cc| diesel::insert_into(steps::table).values(&step_rows).execute(cc))?;
                if failing == 0 {
                    failing =
                        range.clone().position(|i| result_of(i) == "failure").map(|k| first + k as i64).unwrap_or(0);
                }
                Ok(())
            })
            .unwrap();
        }
        // Its newest build is its head (ingest keeps this table; the bulk load bypasses ingest).
        let (last_id, last_start): (i64, NaiveDateTime) = builds::table
            .filter(builds::builder_id.eq(builder.id))
            .order((builds::started_at.desc(), builds::id.desc()))
            .select((builds::id, builds::started_at))
            .first(conn)
            .unwrap();
        diesel::insert_into(tbox_server::db::schema::heads::table)
            .values((
                tbox_server::db::schema::heads::project_id.eq(project.id),
                tbox_server::db::schema::heads::builder_id.eq(builder.id),
                tbox_server::db::schema::heads::branch.eq("main"),
                tbox_server::db::schema::heads::build_id.eq(last_id),
                tbox_server::db::schema::heads::started_at.eq(last_start),
            ))
            .execute(conn)
            .unwrap();
    }
    failing
}

fn digest(text: &str) -> String {
    tbox_protocol::report_id(text.as_bytes())
}
