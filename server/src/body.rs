//! Reading a request body safely: the size limit, the slow-client limit and decompression.
//!
//! actix-web's own body extractors inflate a compressed body in one go, into memory, and do it
//! on the async worker for small chunks: an 843-byte brotli body became a 1 GiB allocation, and
//! a few kilobytes stalled every other request for seconds. So handlers that take a body use
//! [`read`] with the raw [`web::Payload`] instead:
//!
//! - the body must arrive at [`Limits::min_rate`] on average once [`Limits::grace`] has passed
//!   (a client sending one byte every few seconds holds a connection and a file descriptor for
//!   ever otherwise), else 408;
//! - the compressed bytes and the inflated bytes are each held to [`Limits::max`], checked as
//!   they grow, else 413 (an announced `Content-Length` over the limit is refused before a byte
//!   is read);
//! - no byte for [`IDLE`] is a 408 too, however much came before (early bytes earn time at the
//!   minimum rate, but not the right to hold a connection silent);
//! - all bodies being read hold at most [`Limits::budget`] bytes together: past that, 503 with
//!   `Retry-After` (the reporter spools and tries again), so many large uploads cannot exhaust
//!   memory before any of them has been authenticated;
//! - inflating runs on the blocking pool, one body at a time (a second one meanwhile gets a
//!   503), as a stream that stops one byte past the limit;
//! - `gzip`, `deflate` and `br` are understood; any other `Content-Encoding` is 415, never read
//!   as if it were plain.

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::http::header::{CONTENT_ENCODING, CONTENT_LENGTH, HeaderMap};
use actix_web::rt::time::{Instant, timeout};
use actix_web::web;
use futures_util::StreamExt as _;

use crate::error::AppError;

/// How much, and how fast, a body must come.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest body, compressed or not, in bytes.
    pub max: usize,
    /// Bytes per second the body must average once the grace period is over.
    pub min_rate: u64,
    /// How long any body may take regardless of its rate (a slow start, a short report).
    pub grace: Duration,
    /// Bytes all bodies being read may hold together.
    pub budget: usize,
}

/// The longest silence within a body, the first bytes included: a client with something to
/// send sends it (30 s let a trickling client hold a connection half a minute for free).
pub const IDLE: Duration = Duration::from_secs(10);

/// Bytes held by bodies being read, all requests together.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// A share of [`IN_FLIGHT`], given back when the body is done with (read, refused or dropped).
struct Held(usize);

impl Held {
    fn grow(&mut self, n: usize, budget: usize) -> Result<(), AppError> {
        let before = IN_FLIGHT.fetch_add(n, Ordering::SeqCst);
        if before + n > budget {
            IN_FLIGHT.fetch_sub(n, Ordering::SeqCst);
            return Err(AppError::busy("too many uploads are in progress; try again shortly"));
        }
        self.0 += n;
        Ok(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(self.0, Ordering::SeqCst);
    }
}

/// Bodies being inflated at once.
static INFLATING: AtomicUsize = AtomicUsize::new(0);

/// A turn at inflating, given back on drop (also if the blocking task is dropped).
struct Turn;

impl Turn {
    fn take() -> Result<Turn, AppError> {
        if INFLATING.fetch_add(1, Ordering::SeqCst) >= 1 {
            INFLATING.fetch_sub(1, Ordering::SeqCst);
            return Err(AppError::busy("another compressed body is being inflated; try again shortly"));
        }
        Ok(Turn)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        INFLATING.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Limits {
    /// The time by which the body must be complete, or have grown, given what has come so far.
    fn deadline(&self, start: Instant, received: usize, last: Instant) -> Instant {
        let earned = Duration::from_secs_f64(received as f64 / self.min_rate.max(1) as f64);
        (start + self.grace.max(earned)).min(last + IDLE)
    }
}

/// A `Content-Encoding` this server inflates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
}

fn encoding(headers: &HeaderMap) -> Result<Encoding, AppError> {
    let mut codings = Vec::new();
    for value in headers.get_all(CONTENT_ENCODING) {
        let value = value.to_str().map_err(|_| AppError::unsupported_media_type("Content-Encoding is not ASCII"))?;
        codings.extend(value.split(',').map(str::trim).filter(|c| !c.is_empty()).map(str::to_ascii_lowercase));
    }
    codings.retain(|c| c != "identity");
    let unsupported = |what: &str| {
        AppError::unsupported_media_type(format!(
            "Content-Encoding {what} is not supported; send the body plain, or as gzip, deflate or br"
        ))
    };
    match codings.as_slice() {
        [] => Ok(Encoding::Identity),
        [one] => match one.as_str() {
            "gzip" | "x-gzip" => Ok(Encoding::Gzip),
            "deflate" => Ok(Encoding::Deflate),
            "br" => Ok(Encoding::Brotli),
            other => Err(unsupported(&format!("{other:?}"))),
        },
        several => Err(unsupported(&format!("{:?} (more than one coding)", several.join(", ")))),
    }
}

fn too_large(limit: usize) -> AppError {
    AppError::too_large(format!("the body is larger than this server's limit of {limit} bytes"))
}

/// Reads the whole body within `limits`, inflated if it came compressed.
pub async fn read(headers: &HeaderMap, mut payload: web::Payload, limits: Limits) -> Result<web::Bytes, AppError> {
    let encoding = encoding(headers)?;
    let announced = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limits.max as u64) {
        return Err(too_large(limits.max));
    }
    let start = Instant::now();
    let mut last = start;
    let mut held = Held(0);
    // Room for what was announced, up to 1 MiB: a slow client announcing the limit should not
    // make the server set aside 32 MiB before a byte has come.
    let mut raw = web::BytesMut::with_capacity(announced.map_or(8 << 10, |n| n.min(1 << 20) as usize));
    loop {
        let wait = limits.deadline(start, raw.len(), last).saturating_duration_since(Instant::now());
        let chunk = match timeout(wait, payload.next()).await {
            Err(_elapsed) => {
                return Err(AppError::too_slow(format!(
                    "the body came too slowly: {} bytes in {} s (at least {} bytes/s are needed after the first {} s)",
                    raw.len(),
                    start.elapsed().as_secs(),
                    limits.min_rate,
                    limits.grace.as_secs()
                )));
            }
            Ok(None) => break,
            Ok(Some(chunk)) => {
                chunk.map_err(|e| AppError::bad_request("bad_body", format!("the body could not be read: {e}")))?
            }
        };
        if raw.len() + chunk.len() > limits.max {
            return Err(too_large(limits.max));
        }
        held.grow(chunk.len(), limits.budget)?;
        last = Instant::now();
        raw.extend_from_slice(&chunk);
    }
    let raw = raw.freeze();
    if encoding == Encoding::Identity {
        return Ok(raw);
    }
    let turn = Turn::take()?;
    web::block(move || {
        let _turn = turn;
        let _held = held;
        inflate(encoding, &raw, limits.max)
    })
    .await?
}

/// Inflates `raw`, stopping as soon as the output would pass `max`.
///
/// The caller holds the one [`Turn`]: each body may grow to the limit, so parallel bombs
/// would multiply the memory held, while compressed reports are rare and quick to inflate.
fn inflate(encoding: Encoding, raw: &[u8], max: usize) -> Result<web::Bytes, AppError> {
    let decoder: Box<dyn Read + '_> = match encoding {
        Encoding::Identity => Box::new(raw),
        Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        Encoding::Deflate => Box::new(flate2::read::ZlibDecoder::new(raw)),
        Encoding::Brotli => Box::new(brotli_decompressor::Decompressor::new(raw, 64 << 10)),
    };
    // Compression ratios of build logs are around 6 to 10; start there, and grow only as data
    // comes, never past the limit (a Vec left to double on its own would reach twice the
    // limit, and hold the old buffer while copying to the new one).
    let mut out: Vec<u8> = Vec::with_capacity(raw.len().saturating_mul(8).min(max));
    let mut chunk = vec![0u8; 64 << 10];
    let mut decoder = decoder;
    loop {
        let n = match decoder.read(&mut chunk) {
            Ok(0) => return Ok(out.into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(AppError::bad_request("bad_encoding", format!("the body could not be decompressed: {e}")));
            }
        };
        if out.len() + n > max {
            return Err(too_large(max));
        }
        if out.capacity() - out.len() < n {
            let target = out.capacity().saturating_mul(2).max(out.len() + n).min(max);
            out.reserve_exact(target - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).ok();
        e.finish().unwrap_or_default()
    }

    #[test]
    fn inflation_stops_at_the_limit() {
        // 64 MiB of zeros compresses to ~64 KiB; the limit is 1 MiB.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        let e = inflate(Encoding::Gzip, &bomb, 1 << 20).err();
        assert!(matches!(e, Some(AppError::Client { code: "too_large", .. })), "{e:?}");
        let ok = inflate(Encoding::Gzip, &gzip(b"{}"), 1 << 20).ok();
        assert_eq!(ok.as_deref(), Some(&b"{}"[..]));
    }

    #[test]
    fn corrupt_bodies_are_bad_requests() {
        let e = inflate(Encoding::Brotli, b"\xff\xff\xff not brotli", 1 << 20).err();
        assert!(matches!(e, Some(AppError::Client { code: "bad_encoding", .. })), "{e:?}");
    }

    #[test]
    fn early_bytes_do_not_buy_silence() {
        let limits = Limits { max: 32 << 20, min_rate: 1000, grace: Duration::from_secs(60), budget: 1 << 30 };
        let start = Instant::now();
        // Ten megabytes at once earn 10,000 s at the minimum rate, but the idle limit still
        // holds from the last byte.
        let last = start + Duration::from_secs(1);
        assert_eq!(limits.deadline(start, 10 << 20, last), last + IDLE);
        // A slow start is allowed its grace period.
        assert_eq!(limits.deadline(start, 0, start + Duration::from_secs(59)), start + Duration::from_secs(60));
    }

    #[test]
    fn only_known_encodings() {
        let mut h = HeaderMap::new();
        let mut with = |v: &'static str| {
            h.insert(CONTENT_ENCODING, actix_web::http::header::HeaderValue::from_static(v));
            encoding(&h).ok()
        };
        assert_eq!(with("GZIP"), Some(Encoding::Gzip));
        assert_eq!(with("identity"), Some(Encoding::Identity));
        assert_eq!(with("br"), Some(Encoding::Brotli));
        assert_eq!(with("zstd"), None);
        assert_eq!(with("gzip, gzip"), None);
        assert_eq!(with("compress"), None);
    }
}
