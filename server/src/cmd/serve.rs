//! `tbox-server serve`: migrate, then serve HTTP until stopped.

use std::io::Write as _;

use actix_web::middleware::{DefaultHeaders, Logger};
use actix_web::{App, HttpServer, web};
use anyhow::Context as _;

use crate::cli::ServeArgs;
use crate::db::{self, DatabaseUrl};
use crate::{AppState, routes, web as pages};

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let redacted = DatabaseUrl::parse(&args.db.database)?.redacted();
    run_with(args, |addrs| {
        // Tests and scripts read this line to learn the port when binding to :0.
        for addr in addrs {
            println!("tbox-server listening on http://{addr} (database {redacted})");
        }
        let _ = std::io::stdout().flush();
    })
}

/// Serves until stopped, telling `on_bound` the addresses once it listens (port 0 resolved).
/// Blocks the calling thread; other programs' tests run it on a thread of their own.
pub fn run_with(args: ServeArgs, on_bound: impl FnOnce(&[std::net::SocketAddr])) -> anyhow::Result<()> {
    let url = DatabaseUrl::parse(&args.db.database)?;
    if let Some(p) = &args.public_url {
        anyhow::ensure!(p.starts_with("http://") || p.starts_with("https://"), "--public-url must be an http(s) URL");
    }
    pages::templates::init().context("loading templates")?;
    let pool = db::pool(&url, args.pool_size)?;
    let applied = db::migrate(&mut *pool.get()?)?;
    for m in applied {
        log::info!("applied migration {m}");
    }
    let public_url = args.public_url.as_ref().map(|u| u.trim_end_matches('/').to_owned());
    let state = web::Data::new(AppState { pool, max_body: args.max_body, stale_after: args.stale_after, public_url });
    actix_web::rt::System::new().block_on(async move {
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap(actix_web::middleware::from_fn(pages::manners::etag))
                .wrap(security_headers())
                .wrap(actix_web::middleware::Compress::default())
                .wrap(Logger::new("%a \"%r\" %s %b %Dms"))
                .configure(|cfg| routes::configure(cfg, state.max_body))
        })
        // Compressed answers are streamed in pieces; without TCP_NODELAY, Nagle's algorithm
        // and the client's delayed ACK add ~40 ms to every small one (measured by bench-pages).
        .on_connect(|conn, _| {
            if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                let _ = tcp.set_nodelay(true);
            }
        });
        if let Some(n) = args.workers {
            server = server.workers(n);
        }
        let server = server.bind(&args.bind).with_context(|| format!("cannot listen on {}", args.bind))?;
        on_bound(&server.addrs());
        server.run().await.context("server stopped with an error")
    })
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
