//! The tera templates, embedded in the binary and parsed once at start-up.

use std::sync::OnceLock;

use actix_web::http::StatusCode;
use tera::{Context, Tera};

static TERA: OnceLock<Tera> = OnceLock::new();

/// The path the pages live under (`/ci` for `--public-url https://host/ci`), empty at the root.
static ROOT: OnceLock<String> = OnceLock::new();

/// Sets the path every link of the pages starts with, from `--public-url` (once, at start).
/// The templates put it in unescaped, so it may hold only what a URL path spells plainly.
pub fn set_root(public_url: &str) -> anyhow::Result<()> {
    let url = url::Url::parse(public_url)?;
    let path = url.path().trim_end_matches('/');
    anyhow::ensure!(
        path.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~/%".contains(&b)),
        "--public-url: the path {path:?} may hold letters, digits, '-', '.', '_', '~', '/' and %-escapes only"
    );
    let _ = ROOT.set(path.to_owned());
    Ok(())
}

/// The path every link of the pages starts with: a page's links hold no bare `/`, so that the
/// pages work behind a proxy that serves them under a sub-path.
pub fn root() -> &'static str {
    ROOT.get().map_or("", String::as_str)
}

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../../templates/base.html")),
    ("index.html", include_str!("../../templates/index.html")),
    ("waterfall.html", include_str!("../../templates/waterfall.html")),
    ("build.html", include_str!("../../templates/build.html")),
    ("error.html", include_str!("../../templates/error.html")),
    ("console.html", include_str!("../../templates/console.html")),
    ("builder.html", include_str!("../../templates/builder.html")),
    ("requests.html", include_str!("../../templates/requests.html")),
    ("tests.html", include_str!("../../templates/tests.html")),
    ("test_history.html", include_str!("../../templates/test_history.html")),
];

/// Parses the templates; `serve` calls this before it binds, so a broken template stops
/// the server at start instead of failing requests.
pub fn init() -> Result<(), tera::Error> {
    if TERA.get().is_none() {
        let mut tera = Tera::default();
        // Autoescaping applies to names ending in .html: every user-supplied string is escaped.
        tera.add_raw_templates(TEMPLATES.iter().copied())?;
        let _ = TERA.set(tera);
    }
    Ok(())
}

/// Renders a page.
pub fn render(name: &str, ctx: &Context) -> anyhow::Result<String> {
    init()?;
    let tera = TERA.get().ok_or_else(|| anyhow::anyhow!("templates not loaded"))?;
    // Every page gets `asset_version`: stylesheet and script URLs change whenever their
    // content does, so browsers may cache them for long.
    let mut ctx = ctx.clone();
    ctx.insert("asset_version", super::assets::version());
    ctx.insert("root", root());
    tera.render(name, &ctx).map_err(|e| anyhow::anyhow!("rendering {name}: {e:?}"))
}

/// The HTML page for an error.
pub fn error_page(status: StatusCode, message: &str) -> String {
    let mut ctx = Context::new();
    ctx.insert("status", &status.to_string());
    ctx.insert("message", message);
    render("error.html", &ctx).unwrap_or_else(|e| {
        log::error!("{e:#}");
        format!("<!DOCTYPE html><title>{status}</title><p>{}</p>", tera::escape_html(message))
    })
}
