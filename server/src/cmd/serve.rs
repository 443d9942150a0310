//! `tbox-server serve`: migrate, then serve HTTP until stopped.

use std::io::Write as _;

use actix_web::middleware::{DefaultHeaders, Logger};
use actix_web::{App, HttpServer, web};
use anyhow::Context as _;

use crate::cli::ServeArgs;
use crate::db::{self, DatabaseUrl};
use crate::writer::Writer;
use crate::{AppState, ratelimit, routes, web as pages};

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let redacted = DatabaseUrl::parse(&args.db.database)?.redacted();
    run_with(args, |addrs| {
        // Tests and scripts read this line to learn the port when binding to :0.
        for addr in addrs {
            crate::say!("tbox-server listening on http://{addr} (database {redacted})");
        }
        let _ = std::io::stdout().flush();
    })
}

/// Serves until stopped, telling `on_bound` the addresses once it listens (port 0 resolved).
/// Blocks the calling thread; other programs' tests run it on a thread of their own.
pub fn run_with(args: ServeArgs, on_bound: impl FnOnce(&[std::net::SocketAddr])) -> anyhow::Result<()> {
    let url = DatabaseUrl::parse(&args.db.database)?;
    if let Some(p) = &args.public_url {
        anyhow::ensure!(
            (p.starts_with("http://") || p.starts_with("https://")) && url::Url::parse(p).is_ok(),
            "--public-url must be an http(s) URL, e.g. https://ci.example.org or https://example.org/ci"
        );
        pages::templates::set_root(p)?;
    }
    pages::templates::init().context("loading templates")?;
    let mail = match (&args.smtp, &args.mail_from) {
        (Some(url), Some(from)) => Some(crate::notify::send::Mail::new(url, args.smtp_starttls, from)?),
        _ => None,
    };
    let pool = db::pool(&url, args.pool_size)?;
    let applied = db::migrate(&mut *pool.get()?)?;
    // Remembers which SQLite file this is, so the health check sees it removed or replaced.
    db::ping(&mut *pool.get()?)?;
    for m in applied {
        log::info!("applied migration {m}");
    }
    let subscriptions = db::notify::list(&mut *pool.get()?, None)?;
    if !subscriptions.is_empty() && args.public_url.is_none() {
        log::warn!(
            "links in notifications point at the address this server listens on ({}); \
             set --public-url to the address people reach it at",
            args.bind
        );
    }
    if mail.is_none() {
        let emails = subscriptions.iter().filter(|l| l.subscription.kind == "email").count();
        if emails > 0 {
            log::warn!(
                "{emails} e-mail subscription(s), but this process has no --smtp: their notifications wait for a \
                 server process that has one (and are given up after a day)"
            );
        }
    }
    let public_url = args.public_url.as_ref().map(|u| u.trim_end_matches('/').to_owned());
    let workers = args.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let max_connections = args.max_connections.unwrap_or_else(|| {
        let files = raise_open_files_limit();
        // Each connection is one descriptor; keep some for the pool, SQLite's files, logs.
        (files.saturating_sub(u64::from(args.pool_size) + 64) as usize).max(64)
    });
    log::info!("serving at most {max_connections} connections at once");
    let registrations = ratelimit::Limiter::new(
        ratelimit::Rate { burst: 5.0, per_hour: f64::from(args.registrations_per_address) },
        ratelimit::Rate { burst: 30.0, per_hour: f64::from(args.registrations_per_hour) },
    );
    let writer = match &url {
        DatabaseUrl::Sqlite(_) => Some(Writer::start(db::Manager::new(url.clone()))?),
        DatabaseUrl::Postgres(_) => None,
    };
    let work = crate::leases::Work::default();
    crate::results::agreement::set_spot_check(args.spot_check);
    let state = web::Data::new(AppState {
        pool,
        writer,
        max_body: args.max_body,
        min_body_rate: args.min_body_rate,
        body_grace: std::time::Duration::from_secs(args.body_grace),
        body_memory: args.body_memory,
        registrations: std::sync::Arc::new(registrations),
        max_pending: i64::from(args.max_pending),
        stale_after: args.stale_after,
        lost_after: args.lost_after,
        public_url,
        lease_ttl: args.lease_ttl,
        work: work.clone(),
        proxies: crate::proxy::TrustedProxies::new(args.trusted_proxies.clone()),
    });
    crate::leases::start(state.pool.clone(), work).context("starting the lease sweeper")?;
    let notify_pool = state.pool.clone();
    let public_url = state.public_url.clone();
    actix_web::rt::System::new().block_on(async move {
        // Ends with the server (a thread of its own would outlive `run_with` in other programs' tests).
        actix_web::rt::spawn(mark_lost_builds(
            state.pool.clone(),
            (args.lost_after, args.pending_expire),
            std::time::Duration::from_secs(args.lost_check_every),
        ));
        let per_address = crate::connections::PerAddress::new(
            usize::try_from(args.max_connections_per_address).unwrap_or(usize::MAX),
        );
        let proxies = state.proxies.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap(actix_web::middleware::from_fn(pages::manners::etag))
                .wrap(security_headers())
                .wrap(actix_web::middleware::Compress::default())
                .wrap(actix_web::middleware::from_fn(routes::reject_nul))
                // The client's address: the peer's, or through a trusted proxy the one it forwards.
                .wrap(Logger::new("%{client}xi \"%r\" %s %b %Dms").custom_request_replace("client", |req| {
                    let peer = req.peer_addr().map(|a| a.ip());
                    let client = match req.app_data::<web::Data<AppState>>() {
                        Some(s) => s.proxies.client(peer, req.headers()),
                        None => peer,
                    };
                    client.map_or_else(|| "-".to_owned(), |ip| ip.to_string())
                }))
                .wrap(actix_web::middleware::from_fn(crate::metrics::track))
                .wrap(actix_web::middleware::from_fn(crate::connections::share))
                .configure(routes::configure)
        })
        .on_connect(move |conn, ext| {
            // Compressed answers are streamed in pieces; without TCP_NODELAY, Nagle's algorithm
            // and the client's delayed ACK add ~40 ms to every small one (measured by bench-pages).
            if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                let _ = tcp.set_nodelay(true);
            }
            // A trusted proxy carries many clients' connections: not counted as one address's.
            let from_proxy = conn
                .downcast_ref::<actix_web::rt::net::TcpStream>()
                .and_then(|tcp| tcp.peer_addr().ok())
                .is_some_and(|p| proxies.trusts(p.ip()));
            if !from_proxy {
                per_address.on_connect(conn, ext);
            }
        });
        // The cap is per worker; a full server stops accepting until connections close, rather
        // than failing on "Too many open files" for everyone.
        server = server.workers(workers).max_connections(max_connections.div_ceil(workers).max(1));
        // Blocking work (queries, signature checks) needs a database connection: threads beyond
        // the pool's size only wait for one, each with its stack and allocator arena. Actix's
        // default (512 per machine) made 10,000 long polls arriving together cost 522 threads
        // and 900 MiB on PostgreSQL; queued work waits the same, without them.
        let pool_share = usize::try_from(args.pool_size).unwrap_or(16).div_ceil(workers);
        server = server.worker_max_blocking_threads(pool_share.max(2) + 2);
        let server = server.bind(&args.bind).with_context(|| format!("cannot listen on {}", args.bind))?;
        let addrs = server.addrs();
        // Links in notifications point at the public URL, or else at where this process listens.
        let base = public_url.clone().or_else(|| addrs.first().map(|a| format!("http://{a}"))).unwrap_or_default();
        let sender = crate::notify::send::Config {
            base,
            mail,
            stale_after: args.stale_after,
            first_retry: std::time::Duration::from_secs(args.notify_first_retry),
            scan_every: std::time::Duration::from_secs(args.lost_check_every),
        };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        crate::notify::send::start(notify_pool, sender, stop.clone()).context("starting the notification sender")?;
        on_bound(&addrs);
        let ran = server.run().await.context("server stopped with an error");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        ran
    })
}

/// Marks builds lost, and deletes registrations left pending too long, once at start, then every
/// `every` while the server runs. Each server process on a shared database does it too: the
/// updates are idempotent.
async fn mark_lost_builds(
    pool: db::Pool,
    (lost_after, pending_expire): (chrono::TimeDelta, chrono::TimeDelta),
    every: std::time::Duration,
) {
    loop {
        let pool = pool.clone();
        let marked = web::block(move || -> anyhow::Result<usize> {
            let mut conn = pool.get()?;
            let now = db::now();
            let expired = db::write_transaction(&mut conn, |c| {
                db::builders::reject_pending(c, None, Some(now - pending_expire))
            })?;
            if !expired.is_empty() {
                log::info!(
                    "{} registration(s) not approved within {} day(s) deleted: {}",
                    expired.len(),
                    pending_expire.num_days(),
                    expired.join(", ")
                );
            }
            Ok(db::write_transaction(&mut conn, |c| {
                let lost = db::builds::mark_lost(c, now - lost_after)?;
                crate::notify::after_lost(c, &lost, now)?;
                Ok::<_, diesel::result::Error>(lost.len())
            })?)
        })
        .await;
        match marked {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => log::info!("{n} build(s) sent no finished report in time: now shown as lost"),
            Ok(Err(e)) => log::warn!("marking lost builds: {e:#}"),
            Err(e) => log::warn!("marking lost builds: {e}"),
        }
        actix_web::rt::time::sleep(every).await;
    }
}

/// Raises the soft limit on open files to the hard limit (1,024 is a common soft default, far
/// too few for a server), and returns the limit in force.
fn raise_open_files_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        // An unlimited hard limit is still bounded by the kernel's nr_open; ask for a plenty.
        Ok((soft, hard)) if soft < hard.min(1 << 20) => {
            match setrlimit(Resource::RLIMIT_NOFILE, hard.min(1 << 20), hard) {
                Ok(()) => hard.min(1 << 20),
                Err(e) => {
                    log::warn!("cannot raise the open-files limit from {soft} to {hard}: {e}");
                    soft
                }
            }
        }
        Ok((soft, _)) => soft,
        Err(e) => {
            log::warn!("cannot read the open-files limit: {e}");
            1024
        }
    }
}

fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("Referrer-Policy", "same-origin"))
        .add(("X-Frame-Options", "DENY"))
        .add((
            "Content-Security-Policy",
            "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self'; connect-src 'self'; \
             base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ))
}
