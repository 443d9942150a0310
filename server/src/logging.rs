//! The server's log: env_logger (`RUST_LOG`, default `info`), with one correction.
//!
//! actix-http logs a request it cannot parse (a bad header, garbage instead of HTTP) at ERROR,
//! as "stream error: request parse error: …". That is the client's mistake, answered with a
//! 400, and anyone on the internet can fill an operator's error log with it; here such lines
//! are logged at DEBUG instead, so ERROR keeps meaning "something is wrong with the server".

use log::{Level, Log, Metadata, Record};

struct Demoting(env_logger::Logger);

/// Whether a record is a client's unparseable request, logged by actix as an error.
fn client_caused(record: &Record<'_>) -> bool {
    record.level() == Level::Error
        && record.target().starts_with("actix_http::h1")
        && record.args().to_string().starts_with("stream error: request parse error")
}

impl Log for Demoting {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !client_caused(record) {
            return self.0.log(record);
        }
        let demoted = Record::builder()
            .args(*record.args())
            .level(Level::Debug)
            .target(record.target())
            .module_path(record.module_path())
            .file(record.file())
            .line(record.line())
            .build();
        if self.0.enabled(demoted.metadata()) {
            self.0.log(&demoted);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// Installs the logger; call once, first thing.
pub fn init() {
    let inner = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Demoting(inner))).is_ok() {
        log::set_max_level(max);
    }
}
