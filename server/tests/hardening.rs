//! Regression tests for the attacks of the hardening review (issue 10), each named after its
//! attack, against a real server on 127.0.0.1, on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Backend, Server, TestResult, key, report, started};
use serde_json::{Value, json};

on_both_backends!(
    brotli_bomb_is_413_in_bounded_memory,
    gzip_bomb_is_413_in_bounded_memory,
    unsupported_encoding_is_415_not_read_as_json,
    slow_body_is_cut_off_with_408,
    slow_connections_do_not_take_the_server_down,
    registration_flood_is_rate_limited,
    pending_and_revoked_builders_stay_off_public_pages,
    pending_registrations_are_capped_per_project,
    registration_squatting_keeps_a_path_open,
    one_address_cannot_hold_every_connection,
    one_registration_naming_a_project_many_times_is_422,
    nul_byte_in_url_is_400,
    nul_byte_in_registration_is_422,
    same_logs_in_opposite_order_do_not_deadlock,
    trailing_bytes_after_the_report_are_400,
    branch_switch_keeps_the_old_branchs_head,
    leap_second_is_stored_alike,
    pending_builders_are_listed_rejected_and_pruned,
    unparseable_requests_are_not_logged_as_errors,
    uploads_share_a_memory_budget,
    health_check_and_json_logs_for_operators,
    forwarded_headers_count_only_from_trusted_proxies,
);

#[test]
fn postgres_lost_mid_ingest_is_503() -> TestResult {
    database_lost_mid_ingest_is_503()
}

/// A TCP proxy to PostgreSQL that can go away: while `down`, it cuts every connection.
struct Outage {
    addr: std::net::SocketAddr,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Outage {
    fn start(upstream: String) -> Outage {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let down = std::sync::Arc::new(AtomicBool::new(false));
        let flag = down.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if flag.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    let flag = flag.clone();
                    std::thread::spawn(move || {
                        let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
                        let mut buf = [0u8; 65536];
                        while !flag.load(Ordering::SeqCst) {
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) if to.write_all(&buf[..n]).is_ok() => {}
                                Ok(_) => break,
                                Err(e)
                                    if e.kind() == std::io::ErrorKind::WouldBlock
                                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                                Err(_) => break,
                            }
                        }
                        let _ = from.shutdown(std::net::Shutdown::Both);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Outage { addr, down }
    }
}

/// The database away for a while, clients knocking all along: each kind of trouble is said
/// once, then counted, not once per request and per background thread (106 identical lines
/// for a 10 s outage before).
#[test]
fn a_database_outage_is_said_once_then_counted() -> TestResult {
    use std::sync::atomic::Ordering;
    let Some(db) = common::TestDb::new(Backend::Postgres) else { return Ok(()) };
    let (prefix, rest) = db.url.split_once('@').unwrap();
    let (hostport, name) = rest.split_once('/').unwrap();
    let proxy = Outage::start(hostport.to_owned());
    let url = format!("{prefix}@{}/{name}?sslmode=disable", proxy.addr);
    let s = Server::start_on(db, &url, &[]);
    s.setup();
    assert_eq!(s.send(&report("before")).0, 201);
    assert_eq!(s.get_json("/healthz"), (200, serde_json::json!({"status": "ok"})));
    proxy.down.store(true, Ordering::SeqCst);
    // The health check says so at once (a load balancer takes this server out), cheaply.
    let t = std::time::Instant::now();
    let (status, v) = s.get_json("/healthz");
    assert_eq!((status, v["error"].as_str()), (503, Some("database_unavailable")), "{v}");
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    let until = std::time::Instant::now() + Duration::from_secs(8);
    let mut answered = Vec::new();
    let mut n = 0;
    while std::time::Instant::now() < until {
        n += 1;
        answered.push(s.send(&report(&format!("during-{n}"))).0);
        let _ = s.get("/projects/demo");
        std::thread::sleep(Duration::from_millis(100));
    }
    proxy.down.store(false, Ordering::SeqCst);
    assert!(answered.iter().all(|&c| c == 503), "{answered:?}");
    let mut back = false;
    for i in 0..100 {
        if s.send(&report(&format!("after-{i}"))).0 == 201 {
            back = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(back, "{}", s.log_text());
    assert_eq!(s.get_json("/healthz").0, 200, "back");
    let log = s.log_text();
    let trouble: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    // Each distinct line at most once per minute (timestamps and the level's padding aside).
    let mut seen = std::collections::HashSet::new();
    for line in &trouble {
        let text = line.split_once("] ").map_or(*line, |(_, t)| t);
        assert!(seen.insert(text), "said twice:\n{}", trouble.join("\n"));
    }
    assert!(trouble.len() <= 12, "{} lines for {n} requests:\n{}", trouble.len(), trouble.join("\n"));
    Ok(())
}

/// A TCP proxy to PostgreSQL that, once armed, cuts every connection that sends `trigger`.
struct CuttingProxy {
    addr: std::net::SocketAddr,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CuttingProxy {
    fn start(upstream: String, trigger: &'static [u8]) -> CuttingProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let armed = std::sync::Arc::new(AtomicBool::new(false));
        let flag = armed.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut s_in, mut c_out) = (server, client);
                let flag = flag.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = c_in.read(&mut buf) {
                        let seen = buf[..n].windows(trigger.len()).any(|w| w == trigger);
                        if n == 0 || (seen && flag.load(Ordering::SeqCst)) || s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_in.shutdown(std::net::Shutdown::Both);
                    let _ = s_out.shutdown(std::net::Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_in, &mut c_out);
                    let _ = c_out.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        CuttingProxy { addr, armed }
    }
}

/// PostgreSQL goes away while a report is being written: 503 with Retry-After (the client
/// will try again), nothing half-stored, and the next report is stored once it is back.
fn database_lost_mid_ingest_is_503() -> TestResult {
    let Some(db) = common::TestDb::new(Backend::Postgres) else { return Ok(()) };
    // postgres://user@host:port/name → the same through the proxy.
    let (prefix, rest) = db.url.split_once('@').unwrap();
    let (hostport, name) = rest.split_once('/').unwrap();
    // The build's uuid is first sent inside the write transaction (diesel's statements are
    // prepared once per connection, so their SQL text is not sent again; their values are).
    let proxy = CuttingProxy::start(hostport.to_owned(), b"cut-mid-write");
    // Plain text, so the proxy can see where in the conversation it is.
    let url = format!("{prefix}@{}/{name}?sslmode=disable", proxy.addr);
    let s = Server::start_on(db, &url, &[]);
    s.setup();
    assert_eq!(s.send(&report("before")).0, 201);
    proxy.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let body = report("cut-mid-write").to_string();
    let resp = agent
        .post(s.url("/api/v1/reports"))
        .header("Content-Type", "application/json")
        .header("Tbox-Builder", "alice")
        .header("Tbox-Signature", &key(0).sign(body.as_bytes()))
        .send(body.as_bytes())?;
    assert_eq!(resp.status().as_u16(), 503, "{}", s.log_text());
    assert!(resp.headers().get("retry-after").is_some());
    proxy.armed.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(s.builds("demo").len(), 1, "nothing of the cut report is stored");
    assert_eq!(s.send(&report("cut-mid-write")).0, 201, "the same report goes through once the database is back");
    Ok(())
}

/// The server's peak resident memory so far, in MiB.
fn peak_mib(s: &Server) -> u64 {
    s.proc_field("status", "VmHWM").and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok()).unwrap_or(0)
        / 1024
}

fn post_encoded(s: &Server, encoding: &str, compressed: &[u8], signed: &[u8]) -> (u16, Value) {
    let sig = key(0).sign(signed);
    s.post(
        compressed,
        &[
            ("Content-Type", "application/json"),
            ("Content-Encoding", encoding),
            ("Tbox-Builder", "alice"),
            ("Tbox-Signature", &sig),
        ],
    )
}

fn brotli_bomb_is_413_in_bounded_memory(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    s.setup();
    // 1 GiB of zeros, a few kilobytes once compressed (the review's was 3,363 bytes).
    let mut bomb = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut bomb, 1 << 16, 1, 24);
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            w.write_all(&zeros)?;
        }
    }
    assert!(bomb.len() < 1 << 20, "the bomb is {} bytes", bomb.len());
    let before = peak_mib(&s);
    let (status, v) = post_encoded(&s, "br", &bomb, b"{}");
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["error"], "too_large");
    let after = peak_mib(&s);
    // The body limit is 32 MiB: inflating stops there, far from the gigabyte.
    assert!(after < 256, "peak memory {after} MiB (before the bomb: {before} MiB)");
    // And the server still serves.
    assert_eq!(s.send(&report("after-bomb")).0, 201);
    Ok(())
}

fn gzip_bomb_is_413_in_bounded_memory(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    s.setup();
    // Concatenated gzip members, 1 MiB of zeros each: 1 GiB inflated from about 1 MiB.
    let mut member = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    member.write_all(&vec![0u8; 1 << 20])?;
    let member = member.finish()?;
    let bomb: Vec<u8> = member.iter().copied().cycle().take(member.len() * 1024).collect();
    // Four at once: the review saw 342 MiB.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            let (s, bomb, tx) = (&s, &bomb, tx.clone());
            scope.spawn(move || tx.send(post_encoded(s, "gzip", bomb, b"{}").0).unwrap());
        }
    });
    drop(tx);
    // One is inflated (and stopped at the limit); one at a time, so the others meanwhile get a
    // 503 with Retry-After, and their clients try again later.
    let statuses: Vec<u16> = rx.iter().collect();
    assert!(statuses.iter().all(|&st| st == 413 || st == 503), "{statuses:?}");
    assert!(statuses.contains(&413), "{statuses:?}");
    let peak = peak_mib(&s);
    assert!(peak < 256, "peak memory {peak} MiB");
    Ok(())
}

fn unsupported_encoding_is_415_not_read_as_json(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    s.setup();
    let body = report("zstd").to_string();
    for encoding in ["zstd", "compress", "gzip, br", "bogus"] {
        // The plain JSON, signed: a server that ignored the header would accept it.
        let (status, v) = post_encoded(&s, encoding, body.as_bytes(), body.as_bytes());
        assert_eq!(status, 415, "{encoding}: {v}");
        assert!(v["message"].as_str().unwrap().contains("Content-Encoding"), "{v}");
    }
    assert!(s.builds("demo").is_empty());
    // deflate (zlib) is understood.
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(body.as_bytes())?;
    assert_eq!(post_encoded(&s, "deflate", &z.finish()?, body.as_bytes()).0, 201);
    Ok(())
}

/// Sends headers announcing `length` bytes, then one byte every `every`, until the server
/// answers; returns the answer's status line and how long it took.
fn trickle(s: &Server, length: usize, every: Duration, limit: Duration) -> (String, Duration) {
    let addr = s.base.trim_start_matches("http://");
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    write!(
        conn,
        "POST /api/v1/reports HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Tbox-Builder: alice\r\nTbox-Signature: x\r\nContent-Length: {length}\r\n\r\n"
    )
    .unwrap();
    let start = Instant::now();
    let mut answer = Vec::new();
    let mut last = Instant::now();
    while start.elapsed() < limit {
        let mut buf = [0u8; 4096];
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Err(_) => {}
        }
        if last.elapsed() >= every {
            let _ = conn.write_all(b" ");
            last = Instant::now();
        }
    }
    let line = String::from_utf8_lossy(&answer).lines().next().unwrap_or("").to_owned();
    (line, start.elapsed())
}

fn slow_body_is_cut_off_with_408(backend: Backend) -> TestResult {
    let Some(s) = Server::start_with(backend, &["--body-grace", "2", "--min-body-rate", "1000"]) else {
        return Ok(());
    };
    s.setup();
    // One byte every 0.5 s of a 10 kB body: never finishes at 2 bytes/s.
    let (line, took) = trickle(&s, 10_000, Duration::from_millis(500), Duration::from_secs(30));
    assert!(line.contains(" 408 "), "answer: {line:?} after {took:?}");
    assert!(took < Duration::from_secs(10), "cut off after {took:?}");
    Ok(())
}

fn slow_connections_do_not_take_the_server_down(backend: Backend) -> TestResult {
    let Some(s) =
        Server::start_with(backend, &["--body-grace", "1", "--min-body-rate", "1000", "--max-connections", "40"])
    else {
        return Ok(());
    };
    s.setup();
    // The soft open-files limit was raised to the hard one.
    let limits = s.proc_field("limits", "Max open files").unwrap_or_default();
    let numbers: Vec<&str> = limits.split_whitespace().take(2).collect();
    assert_eq!(numbers.first(), numbers.get(1), "soft and hard open-files limits: {limits}");
    // More slow uploads than the server takes connections: they are cut off, and an ordinary
    // request is served once they are.
    let addr = s.base.trim_start_matches("http://").to_owned();
    let slow: Vec<TcpStream> = (0..60)
        .filter_map(|_| {
            let mut c = TcpStream::connect(&addr).ok()?;
            write!(c, "POST /api/v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{").ok()?;
            Some(c)
        })
        .collect();
    assert!(!slow.is_empty());
    let start = Instant::now();
    let (status, _) = s.get("/");
    assert_eq!(status, 200);
    assert!(start.elapsed() < Duration::from_secs(20), "served after {:?}", start.elapsed());
    drop(slow);
    assert!(!s.log_text().contains("Too many open files"));
    Ok(())
}

/// A connected socket from a chosen loopback address.
fn connect_from(s: &Server, from: std::net::Ipv4Addr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&std::net::SocketAddr::from((from, 0)).into())?;
    let server: std::net::SocketAddr = s.base.trim_start_matches("http://").parse().unwrap();
    socket.connect(&server.into())?;
    Ok(socket.into())
}

/// One client trickling bodies over more connections than the server takes (1,100 against
/// 1,024 in the red team's trial: ordinary GETs got nothing for a minute): past its share its
/// requests are answered 429 at once, and everyone else is served meanwhile.
fn one_address_cannot_hold_every_connection(backend: Backend) -> TestResult {
    let serve = ["--max-connections", "40", "--max-connections-per-address", "10"];
    let Some(s) = Server::start_with(backend, &serve) else { return Ok(()) };
    s.setup();
    let attacker = std::net::Ipv4Addr::new(127, 0, 0, 1);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..60 {
        let Ok(mut c) = connect_from(&s, attacker) else { continue };
        c.set_read_timeout(Some(Duration::from_millis(1500)))?;
        write!(
            c,
            "POST /api/v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTbox-Builder: alice\r\nTbox-Signature: AAAA\r\nContent-Length: 100000\r\n\r\n{{"
        )?;
        held.push(c);
    }
    // Those past the share hear 429 (and are closed) within moments; the rest wait on their body.
    for c in &mut held {
        let mut answer = [0u8; 64];
        if let Ok(n) = c.read(&mut answer)
            && answer[..n].starts_with(b"HTTP/1.1 429")
        {
            refused += 1;
        }
    }
    assert!(refused >= 45, "{refused} of {} refused", held.len());
    // Someone else is served at once.
    let start = Instant::now();
    let mut reader = connect_from(&s, std::net::Ipv4Addr::new(127, 0, 0, 2))?;
    reader.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(reader, "GET /projects/demo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    let _ = reader.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "after {:?}: {answer:.100}", start.elapsed());
    assert!(start.elapsed() < Duration::from_secs(3), "served after {:?}", start.elapsed());
    drop(held);
    Ok(())
}

/// A signed self-registration, as `tbox-report register` sends it.
fn register(s: &Server, body: &Value) -> (u16, Value, Option<String>) {
    let text = body.to_string();
    let sig = key(1).sign(text.as_bytes());
    let mut resp = s
        .agent
        .post(s.url("/api/v1/builders"))
        .header("Content-Type", "application/json")
        .header("Tbox-Signature", &sig)
        .send(text.as_bytes())
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let text = resp.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null), retry)
}

/// Registers from a given source address on 127.0.0.0/8 (the loopback network is all ours):
/// what a squatter with a few addresses does.
fn register_from(s: &Server, from: std::net::Ipv4Addr, body: &Value) -> u16 {
    let text = body.to_string();
    let sig = key(1).sign(text.as_bytes());
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&std::net::SocketAddr::from((from, 0)).into()).unwrap();
    let server: std::net::SocketAddr = s.base.trim_start_matches("http://").parse().unwrap();
    socket.connect(&server.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    write!(
        stream,
        "POST /api/v1/builders HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTbox-Signature: {sig}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// A few networks cannot fill a project's queue of pending registrations and lock newcomers out
/// (the red team made 30 pending registrations a minute from 40 addresses of one /24): one
/// network holds at most 3, a full queue makes room for a newcomer at the expense of the network
/// holding most, and a registration left pending expires.
fn registration_squatting_keeps_a_path_open(backend: Backend) -> TestResult {
    let serve = [
        "--max-pending",
        "6",
        "--registrations-per-address",
        "1000",
        "--pending-expire",
        "3s",
        "--lost-check-every",
        "1",
    ];
    let Some(s) = Server::start_with(backend, &serve) else { return Ok(()) };
    s.setup();
    let ip = |c: u8, d: u8| std::net::Ipv4Addr::new(127, 0, c, d);
    // Forty addresses of one /24: three get in.
    let from_one: Vec<u16> =
        (1..=40).map(|d| register_from(&s, ip(1, d), &registration(&format!("sq-a{d}"), &["demo"]))).collect();
    assert_eq!(from_one.iter().filter(|&&c| c == 201).count(), 3, "{from_one:?}");
    assert!(from_one.iter().all(|&c| c == 201 || c == 429), "{from_one:?}");
    for d in 1..=3 {
        assert_eq!(register_from(&s, ip(2, d), &registration(&format!("sq-b{d}"), &["demo"])), 201);
    }
    // The queue is full (6); a newcomer from elsewhere still gets in, in place of the oldest of
    // the network holding most.
    assert_eq!(register_from(&s, ip(3, 1), &registration("newcomer", &["demo"])), 201);
    let pending = s.admin_ok(&["builder", "list", "--pending"]);
    assert!(pending.contains("newcomer") && !pending.contains("sq-a1\t") && pending.contains("sq-b1"), "{pending}");
    // Left pending, registrations expire (after 3 s; the sweep runs every second, later on a
    // machine busy with the whole test suite).
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let mut pending = String::new();
    while std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(500));
        pending = s.admin_ok(&["builder", "list", "--pending"]);
        if !pending.contains("newcomer") && !pending.contains("sq-b1") {
            break;
        }
    }
    assert!(!pending.contains("newcomer") && !pending.contains("sq-b1"), "{pending}");
    Ok(())
}

fn registration(name: &str, projects: &[&str]) -> Value {
    json!({"name": name, "projects": projects, "public_key": key(1).public_key().to_pem(), "owner": "x@example.org"})
}

fn registration_flood_is_rate_limited(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    s.setup();
    let mut statuses = Vec::new();
    let mut retry_after = None;
    let mut errors = Vec::new();
    for i in 0..8 {
        // Each for a project of its own would be the same: one network waits for at most 3.
        let (status, v, retry) = register(&s, &registration(&format!("flood-{i}"), &["demo"]));
        if status == 429 {
            errors.push(v["error"].as_str().unwrap_or_default().to_owned());
            retry_after = retry;
        }
        statuses.push(status);
    }
    // Three wait for approval; then the network's queue is full; a burst of 5 requests from one
    // network, then 429 rate_limited with a Retry-After.
    assert_eq!(statuses, [201, 201, 201, 429, 429, 429, 429, 429]);
    assert_eq!(errors, ["too_many_pending", "too_many_pending", "rate_limited", "rate_limited", "rate_limited"]);
    let secs: u64 = retry_after.expect("Retry-After on a 429").parse()?;
    assert!((1..=3600).contains(&secs), "Retry-After: {secs}");
    let listed = s.admin_ok(&["builder", "list", "--pending"]);
    assert_eq!(listed.lines().filter(|l| l.starts_with("flood-")).count(), 3, "{listed}");
    Ok(())
}

fn pending_and_revoked_builders_stay_off_public_pages(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    s.setup();
    assert_eq!(s.send(&report("b1")).0, 201);
    assert_eq!(register(&s, &registration("mallory-pending", &["demo"])).0, 201);
    s.admin_ok(&["builder", "add", "revoked-rita", "--project", "demo", "--key", &s.pubkey_file(key(2))]);
    let rita = json!({"format": "tbox-report/1", "uuid": "r1", "project": "demo", "builder": "revoked-rita",
        "state": "finished", "result": "success", "branch": "main", "revision": "abc",
        "started_at": "2026-11-01T10:00:00Z", "finished_at": "2026-11-01T10:01:00Z", "steps": [],
        "reporter": "t"});
    assert_eq!(s.send_as("revoked-rita", key(2), rita.to_string().as_bytes()).0, 201);
    s.admin_ok(&["builder", "revoke", "revoked-rita"]);
    for path in [
        "/",
        "/projects/demo",
        "/projects/demo?compact=1",
        "/projects/demo/console",
        "/projects/demo/feed.atom",
        "/projects/demo/cctray.xml",
        "/projects/demo/badge.svg",
        "/api/v1/projects",
        "/api/v1/projects/demo/builders",
        "/api/v1/projects/demo/status",
        "/api/v1/projects/demo/builds",
    ] {
        let (status, text) = s.get(path);
        assert_eq!(status, 200, "{path}");
        assert!(
            text.contains("alice") || path == "/" || path.ends_with(".svg") || path == "/api/v1/projects",
            "{path}"
        );
        for hidden in ["mallory-pending", "revoked-rita"] {
            assert!(!text.contains(hidden), "{path} shows {hidden}");
        }
    }
    assert_eq!(s.get("/projects/demo/builders/mallory-pending").0, 404);
    assert_eq!(s.get("/api/v1/builders/mallory-pending").0, 404);
    // Its holder, proving the key, learns its status (what `tbox-report check` shows).
    let path = "/api/v1/builders/mallory-pending";
    let mut resp = s
        .agent
        .get(s.url(path))
        .header("Tbox-Builder", "mallory-pending")
        .header("Tbox-Signature", &key(1).sign(path.as_bytes()))
        .call()?;
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = serde_json::from_str(&resp.body_mut().read_to_string()?)?;
    assert_eq!(v["status"], "pending");
    // Someone else's signature does not do.
    let resp = s.agent.get(s.url(path)).header("Tbox-Signature", &key(0).sign(path.as_bytes())).call()?;
    assert_eq!(resp.status().as_u16(), 404);
    assert_eq!(s.get("/projects/demo/builders/revoked-rita").0, 404);
    // The front page counts only alice.
    let (_, projects) = s.get_json("/api/v1/projects");
    // `red` is the sum of failed, tests_failed and exception: not counted twice.
    let status = projects["projects"][0]["status"].as_object().unwrap();
    let total: u64 = status.iter().filter(|(k, _)| *k != "red").filter_map(|(_, v)| v.as_u64()).sum();
    assert_eq!(total, 1, "{projects}");
    Ok(())
}

fn pending_registrations_are_capped_per_project(backend: Backend) -> TestResult {
    let Some(s) = Server::start_with(backend, &["--max-pending", "2", "--registrations-per-address", "1000"]) else {
        return Ok(());
    };
    s.setup();
    assert_eq!(register(&s, &registration("p1", &["demo"])).0, 201);
    assert_eq!(register(&s, &registration("p2", &["demo", "other"])).0, 201);
    let (status, v, retry) = register(&s, &registration("p3", &["demo"]));
    assert_eq!((status, v["error"].as_str()), (429, Some("too_many_pending")), "{v}");
    assert!(retry.is_some());
    // Another project still has room; approving one frees a place.
    assert_eq!(register(&s, &registration("p4", &["other"])).0, 201);
    s.admin_ok(&["builder", "approve", "p1"]);
    assert_eq!(register(&s, &registration("p3", &["demo"])).0, 201);
    Ok(())
}

fn one_registration_naming_a_project_many_times_is_422(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    s.setup();
    let (status, v, _) = register(&s, &registration("greedy", &vec!["demo"; 9000]));
    assert_eq!(status, 422, "{v}");
    let (status, v, _) = register(&s, &registration("twice", &["demo", "other", "demo"]));
    assert_eq!(status, 422, "{v}");
    assert!(v["message"].as_str().unwrap().contains("projects[2]"), "{v}");
    assert!(!s.admin_ok(&["builder", "list"]).contains("greedy"));
    Ok(())
}

fn nul_byte_in_url_is_400(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    s.setup();
    assert_eq!(s.send(&report("b1")).0, 201);
    for path in [
        "/api/v1/projects/%00",
        "/api/v1/projects/demo%00",
        "/api/v1/builders/%00",
        "/api/v1/projects/demo/builds?branch=%00",
        "/api/v1/projects/demo/tests/history?name=%00",
        "/api/v1/projects/demo/revisions/%00",
        "/projects/demo?branch=%00",
        "/projects/%00",
        "/projects/demo/builders/a%00",
        "/projects/demo/feed.atom?branch=x%00y",
    ] {
        let (status, body) = s.get(path);
        assert_eq!(status, 400, "{path}: {body}");
        if path.starts_with("/api/") {
            let v: Value = serde_json::from_str(&body)?;
            assert_eq!(v["error"], "bad_url", "{path}");
        }
    }
    assert!(!s.log_text().contains("invalid byte sequence"));
    Ok(())
}

fn nul_byte_in_registration_is_422(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    s.setup();
    let (status, v, _) = register(&s, &registration("nul-project", &["x\u{0}"]));
    assert_eq!(status, 422, "{v}");
    let (status, v, _) = register(&s, &registration("nul\u{0}name", &["demo"]));
    assert_eq!(status, 422, "{v}");
    Ok(())
}

fn same_logs_in_opposite_order_do_not_deadlock(backend: Backend) -> TestResult {
    // Eighty reports at once, all from 127.0.0.1: more than one address's default share.
    let Some(s) = Server::start_with(backend, &["--max-connections-per-address", "200"]) else { return Ok(()) };
    s.setup();
    let pairs = 40;
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..pairs)
            .flat_map(|pair| {
                let (x, y) = (format!("log x of pair {pair}\n"), format!("log y of pair {pair}\n"));
                [(x.clone(), y.clone()), (y, x)].into_iter().enumerate().map(move |(i, (first, second))| {
                    let mut r = report(&format!("deadlock-{pair}-{i}"));
                    r["steps"][0]["log"] = json!(first);
                    r["steps"][1]["log"] = json!(second);
                    r
                })
            })
            .map(|r| {
                let s = &s;
                scope.spawn(move || s.send(&r).0)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|&st| st == 201), "{statuses:?}");
    assert_eq!(s.builds("demo").len(), pairs * 2);
    assert!(!s.log_text().contains("deadlock detected\""), "a deadlock reached a client");
    Ok(())
}

fn trailing_bytes_after_the_report_are_400(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    s.setup();
    let body = report("trailing").to_string();
    for tail in ["GARBAGE", "\0", body.as_str()] {
        let smuggled = format!("{body}{tail}");
        let (status, v) = s.send_as("alice", key(0), smuggled.as_bytes());
        assert_eq!(status, 400, "{tail:?}: {v}");
    }
    assert!(s.builds("demo").is_empty());
    assert_eq!(s.send_as("alice", key(0), format!("{body}\n").as_bytes()).0, 201);
    Ok(())
}

fn branch_switch_keeps_the_old_branchs_head(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    s.setup();
    let mut first = report("on-main");
    first["result"] = json!("success");
    assert_eq!(s.send(&first).0, 201);
    let mut begun = started("switched");
    begun["started_at"] = json!("2026-11-02T10:00:00Z");
    assert_eq!(s.send(&begun).0, 201);
    let mut done = report("switched");
    done["branch"] = json!("release-1.x");
    done["started_at"] = json!("2026-11-02T10:00:00Z");
    done["finished_at"] = json!("2026-11-02T10:05:00Z");
    assert_eq!(s.send(&done).0, 201);
    let (_, status) = s.get_json("/api/v1/projects/demo/status");
    let mut heads: Vec<(String, String)> = status["status"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["branch"].as_str().unwrap().to_owned(), h["status"].as_str().unwrap().to_owned()))
        .collect();
    heads.sort();
    assert_eq!(
        heads,
        [("main".to_owned(), "success".to_owned()), ("release-1.x".to_owned(), "tests failed".to_owned())],
        "{status}"
    );
    Ok(())
}

fn leap_second_is_stored_alike(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    s.setup();
    let mut r = report("leap");
    r["started_at"] = json!("2016-12-31T23:59:60Z");
    r["finished_at"] = json!("2017-01-01T00:04:00Z");
    r["steps"][0]["started_at"] = json!("2016-12-31T23:59:60.5Z");
    let (status, v) = s.send(&r);
    assert_eq!(status, 201, "{v}");
    let (_, build) = s.get_json(&format!("/api/v1/builds/{}", v["build"]));
    assert_eq!(build["started_at"], "2016-12-31T23:59:59.999999Z", "{build}");
    assert_eq!(build["steps"][0]["started_at"], "2016-12-31T23:59:59.999999Z", "{build}");
    Ok(())
}

fn pending_builders_are_listed_rejected_and_pruned(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    s.setup();
    for name in ["spam-1", "spam-2", "keeper"] {
        assert_eq!(register(&s, &registration(name, &["demo"])).0, 201);
    }
    let pending = s.admin_ok(&["builder", "list", "--pending"]);
    assert!(pending.contains("spam-1") && pending.contains("keeper") && !pending.contains("alice"), "{pending}");
    s.admin_ok(&["builder", "reject", "spam-1"]);
    // An approved builder is not rejected: that is what revoke is for.
    let out = s.admin(&["builder", "reject", "alice"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoke"));
    s.admin_ok(&["builder", "approve", "keeper"]);
    // Registered a moment ago: not old enough to prune.
    assert!(s.admin_ok(&["builder", "prune-pending", "--older-than", "1h"]).contains("deleted 0"));
    std::thread::sleep(Duration::from_millis(1100));
    assert!(s.admin_ok(&["builder", "prune-pending", "--older-than", "1s"]).contains("deleted 1"));
    let all = s.admin_ok(&["builder", "list"]);
    assert!(!all.contains("spam-") && all.contains("keeper") && all.contains("alice"), "{all}");
    // The name is free again.
    assert_eq!(register(&s, &registration("spam-1", &["demo"])).0, 201);
    Ok(())
}

fn unparseable_requests_are_not_logged_as_errors(backend: Backend) -> TestResult {
    let Some(s) = Server::start(backend) else { return Ok(()) };
    s.setup();
    let addr = s.base.trim_start_matches("http://");
    for garbage in
        [&b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"[..], b"GARBAGE\r\n\r\n", b"GET /\xff HTTP/1.1\r\n\r\n"]
    {
        let mut c = TcpStream::connect(addr)?;
        c.write_all(garbage)?;
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    }
    // A client's malformed report is not the server's error either.
    assert_eq!(s.send_as("alice", key(0), b"{not json").0, 400);
    assert!(!s.log_text().contains("ERROR"), "{}", s.log_text());
    Ok(())
}

fn uploads_share_a_memory_budget(backend: Backend) -> TestResult {
    let Some(s) = Server::start_with(backend, &["--max-body", "600000", "--body-memory", "1000000"]) else {
        return Ok(());
    };
    s.setup();
    // One upload holds 500 kB and goes quiet...
    let addr = s.base.trim_start_matches("http://");
    let mut hog = TcpStream::connect(addr)?;
    write!(
        hog,
        "POST /api/v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Tbox-Builder: alice\r\nTbox-Signature: x\r\nContent-Length: 600000\r\n\r\n"
    )?;
    hog.write_all(&vec![b' '; 500_000])?;
    std::thread::sleep(Duration::from_millis(500));
    // ...so another one that would pass the budget is told to come back, not kept in memory.
    let mut big = report("big");
    big["steps"][0]["log"] = json!("x".repeat(590_000));
    let (status, v) = s.send(&big);
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"], "busy");
    drop(hog);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.send(&big).0, 201, "the budget is given back when the first upload goes");
    // Unsigned uploads are refused before their body is read at all.
    let (status, v) = s.post(&[b' '; 100], &[("Content-Type", "application/json"), ("Tbox-Builder", "alice")]);
    assert_eq!((status, v["error"].as_str()), (401, Some("unsigned")), "{v}");
    Ok(())
}

/// A SQLite file removed, or replaced by another (a restore moved into place), under a running
/// server: its connections go on working on the old file, so `SELECT 1` answered and the health
/// check said 200 while every report went where nobody would read it.
#[test]
fn a_sqlite_file_removed_or_replaced_is_unhealthy() -> TestResult {
    let Some(s) = Server::start(Backend::Sqlite) else { return Ok(()) };
    s.setup();
    assert_eq!(s.send(&report("before")).0, 201);
    assert_eq!(s.get_json("/healthz").0, 200);
    let file = s.db.dir.join("tbox.db");
    let copy = s.db.dir.join("copy.db");
    std::fs::copy(&file, &copy)?;
    std::fs::rename(&copy, &file)?;
    let (status, v) = s.get_json("/healthz");
    assert_eq!((status, v["error"].as_str()), (503, Some("database_unavailable")), "{v}");
    assert!(s.log_text().contains("was replaced"), "{}", s.log_text());
    std::fs::remove_file(&file)?;
    let (status, v) = s.get_json("/healthz");
    assert_eq!((status, v["error"].as_str()), (503, Some("database_unavailable")), "{v}");
    assert!(s.log_text().contains("is gone"), "{}", s.log_text());
    Ok(())
}

/// `/healthz` answers without authentication, never cached, and takes HEAD; `--log-format
/// json` writes one JSON object per line, access log included, for a log collector.
fn health_check_and_json_logs_for_operators(backend: Backend) -> TestResult {
    let Some(s) = Server::start_logging(backend, &["--log-format", "json"], "info") else { return Ok(()) };
    let (status, v) = s.get_json("/healthz");
    assert_eq!((status, v), (200, serde_json::json!({"status": "ok"})));
    let resp = s.agent.head(s.url("/healthz")).call()?;
    assert_eq!(resp.status().as_u16(), 200);
    let resp = s.agent.get(s.url("/healthz")).call()?;
    assert_eq!(resp.headers().get("cache-control").and_then(|v| v.to_str().ok()), Some("no-store"));
    let resp = s.agent.post(s.url("/healthz")).send("")?;
    assert_eq!(resp.status().as_u16(), 405);
    let log = s.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
        for field in ["time", "level", "target", "message"] {
            assert!(v[field].is_string(), "{field} in {line}");
        }
    }
    assert!(lines.iter().any(|l| l.contains("GET /healthz")), "the access log too: {log}");
    Ok(())
}

/// Registers through a proxy that says the client is `forwarded_for`.
fn register_via(s: &Server, forwarded_for: &str, body: &Value) -> u16 {
    let text = body.to_string();
    let sig = key(1).sign(text.as_bytes());
    s.agent
        .post(s.url("/api/v1/builders"))
        .header("Content-Type", "application/json")
        .header("Tbox-Signature", &sig)
        .header("X-Forwarded-For", forwarded_for)
        .send(text.as_bytes())
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// `serve --trusted-proxy`: behind a proxy, each client has its own registration allowance and
/// line in the access log, and links use the host and scheme it was asked for; without it,
/// `X-Forwarded-*` are anyone's to write and count for nothing.
fn forwarded_headers_count_only_from_trusted_proxies(backend: Backend) -> TestResult {
    let builds_url = |s: &Server| -> String {
        let mut resp = s
            .agent
            .get(s.url("/api/v1/projects/demo/builds"))
            .header("X-Forwarded-Host", "ci.example.org")
            .header("X-Forwarded-Proto", "https")
            .call()
            .unwrap();
        let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        v["builds"][0]["url"].as_str().unwrap_or_default().to_owned()
    };
    // Not trusted: every registration is 127.0.0.1's, whatever the header says.
    let Some(open) = Server::start(backend) else { return Ok(()) };
    open.setup();
    assert_eq!(open.send(&report("b1")).0, 201);
    let statuses: Vec<u16> = (0..6)
        .map(|i| register_via(&open, &format!("198.51.{i}.1"), &registration(&format!("o-{i}"), &["demo"])))
        .collect();
    assert_eq!(statuses, [201, 201, 201, 429, 429, 429]);
    assert!(builds_url(&open).starts_with("http://127.0.0.1:"), "{}", builds_url(&open));
    drop(open);

    let Some(s) = Server::start_logging(backend, &["--trusted-proxy", "127.0.0.1"], "info") else { return Ok(()) };
    s.setup();
    assert_eq!(s.send(&report("b1")).0, 201);
    let statuses: Vec<u16> = (0..6)
        .map(|i| {
            // The client's own claim (left) is not believed; the proxy's (right) is.
            register_via(&s, &format!("10.9.9.9, 198.51.{i}.1"), &registration(&format!("t-{i}"), &["demo"]))
        })
        .collect();
    assert_eq!(statuses, [201; 6], "each client network its own allowance");
    // One network still has one allowance: its fourth waiting registration is refused.
    let same: Vec<u16> =
        (0..4).map(|i| register_via(&s, "203.0.113.7", &registration(&format!("n-{i}"), &["demo"]))).collect();
    assert_eq!(same, [201, 201, 201, 429]);
    assert_eq!(builds_url(&s).split("/builds/").next(), Some("https://ci.example.org"));
    let log = s.log_text();
    assert!(log.contains("198.51.3.1 \"POST /api/v1/builders"), "{log}");
    assert!(!log.contains("10.9.9.9 \""), "{log}");
    Ok(())
}
