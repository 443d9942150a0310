//! Feeds in the formats other tools already read: Atom (status changes), SVG badges, the
//! shields.io endpoint JSON and cctray XML (CCMenu, CCTray, nevergreen).

use std::collections::HashMap;
use std::fmt::Write as _;

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::NaiveDateTime;
use serde::Deserialize;

use crate::AppState;
use crate::api::status::project;
use crate::api::views::time;
use crate::db::builds::{self, Filter};
use crate::db::models::{Build, Builder};
use crate::db::status::{Head, heads};
use crate::db::{DbConn, builders};
use crate::error::{AppError, PageError};
use crate::results::verdict::is_stale;
use crate::results::verdict::of;

/// Escapes text for XML (tera's HTML escaping would also turn `/` into `&#x2F;`).
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 cannot hold at all.
            c if ((c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r')) || matches!(c, '\u{fffe}' | '\u{ffff}') => {
                out.push('\u{fffd}')
            }
            c => out.push(c),
        }
    }
    out
}

/// Narrowing for every feed: one builder and/or one branch.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FeedQuery {
    pub builder: Option<String>,
    pub branch: Option<String>,
}

/// Green, red or neither: what a status change is a change between.
fn colour(b: &Build) -> Option<&'static str> {
    crate::results::verdict::colour(b).map(|green| if green { "green" } else { "red" })
}

/// One Atom entry.
struct Entry {
    id: String,
    title: String,
    updated: NaiveDateTime,
    link: String,
    summary: String,
}

/// Builds read to find status changes.
const WINDOW: i64 = 1000;
/// Entries in a feed.
const ENTRIES: usize = 50;

#[allow(clippy::too_many_arguments)]
fn changes(
    conn: &mut DbConn,
    authority: &str,
    project: &str,
    project_id: i64,
    cols: &[Builder],
    branch: Option<&str>,
    base: &str,
    stale_after: chrono::TimeDelta,
    lost_after: chrono::TimeDelta,
) -> Result<Vec<Entry>, AppError> {
    let filter = Filter {
        builders: Some(cols.iter().map(|b| b.id).collect()),
        branch: branch.map(str::to_owned),
        ..Filter::default()
    };
    let listed = builds::newest(conn, project_id, &filter, None, WINDOW)?;
    // Entry ids are `tag:` URIs (RFC 4151) that stay the same however the feed is fetched.
    let tag = |specific: String| format!("tag:{authority},2026:{project}/{specific}");
    let mut entries = Vec::new();
    // A failing test step makes a build "tests failed", as on every page.
    let kinds: HashMap<i64, &str> = listed
        .iter()
        .filter_map(|l| {
            l.steps.iter().find(|s| s.result == "failure").and_then(|s| s.kind.as_deref()).map(|k| (l.build.id, k))
        })
        .collect();
    let word = |b: &Build| of(b, kinds.get(&b.id).copied()).2;
    // Oldest first per (builder, branch), so each build is compared with the one before it.
    let mut runs: HashMap<(i64, String), Vec<&Build>> = HashMap::new();
    for l in listed.iter().rev().filter(|l| l.build.state == "finished") {
        runs.entry((l.build.builder_id, l.build.branch.clone())).or_default().push(&l.build);
    }
    for ((builder_id, branch), run) in &runs {
        let Some(builder) = cols.iter().find(|b| b.id == *builder_id) else { continue };
        let first_in_window = run[0];
        if builds::neighbours(conn, first_in_window)?.0.is_none() {
            entries.push(Entry {
                id: tag(format!("build/{}/new", first_in_window.id)),
                title: format!("{} reported for the first time on {branch}: {}", builder.name, word(first_in_window)),
                updated: first_in_window.finished_at.unwrap_or(first_in_window.started_at),
                link: format!("{base}/builds/{}", first_in_window.id),
                summary: format!("New builder {} on {branch}, revision {}.", builder.name, first_in_window.revision),
            });
        }
        let mut last: Option<&Build> = None;
        for b in run {
            if let (Some(prev), Some(now)) = (last, colour(b))
                && colour(prev).is_some_and(|c| c != now)
            {
                let what = if now == "red" { "broke" } else { "is fixed" };
                entries.push(Entry {
                    id: tag(format!("build/{}/{now}", b.id)),
                    title: format!("{} {what} on {branch}: {} (was {})", builder.name, word(b), word(prev)),
                    updated: b.finished_at.unwrap_or(b.started_at),
                    link: format!("{base}/builds/{}", b.id),
                    summary: format!(
                        "{} went from {} to {} at revision {}.",
                        builder.name,
                        word(prev),
                        word(b),
                        b.revision
                    ),
                });
            }
            if colour(b).is_some() {
                last = Some(b);
            }
        }
    }
    // A builder going silent mid-build is news too; it is neither red nor green, so it does not
    // stand between a build and the one it is compared with above.
    for b in listed.iter().map(|l| &l.build).filter(|b| b.is_lost()) {
        let Some(builder) = cols.iter().find(|c| c.id == b.builder_id) else { continue };
        entries.push(Entry {
            id: tag(format!("build/{}/lost", b.id)),
            title: format!("{} went silent mid-build on {}: lost", builder.name, b.branch),
            // When it was given up on (another server may have a shorter --lost-after).
            updated: (b.started_at + lost_after).min(crate::db::now()),
            link: format!("{base}/builds/{}", b.id),
            summary: format!(
                "{} started building revision {} at {} and sent no finished report.",
                builder.name,
                b.revision,
                time(b.started_at)
            ),
        });
    }
    // A dispute is news: builders answering one request disagree (DESIGN).
    for b in listed.iter().map(|l| &l.build).filter(|b| b.agreement.as_deref() == Some("disputed")) {
        let Some(builder) = cols.iter().find(|c| c.id == b.builder_id) else { continue };
        entries.push(Entry {
            id: tag(format!("build/{}/disputed", b.id)),
            title: format!(
                "{} disputed on {}: other builders disagree with its {}",
                builder.name,
                b.branch,
                b.result.as_deref().unwrap_or("result")
            ),
            updated: b.finished_at.unwrap_or(b.started_at),
            link: format!("{base}/builds/{}#agreement", b.id),
            summary: format!(
                "{} reported {} at revision {}, and builders answering the same request disagree; see who said what.",
                builder.name,
                b.result.as_deref().unwrap_or("a result"),
                b.revision
            ),
        });
    }
    for b in cols {
        if let Some(seen) = b.last_report_at.filter(|_| is_stale(b.last_report_at, stale_after)) {
            let at = seen + stale_after;
            entries.push(Entry {
                id: tag(format!("builder/{}/stale/{}", b.name, seen.and_utc().timestamp())),
                title: format!("{} has gone stale", b.name),
                updated: at,
                link: format!("{base}/projects/{}/builders/{}", "{project}", b.name),
                summary: format!("Nothing heard from {} since {}.", b.name, time(seen)),
            });
        }
    }
    // Newest first; the id breaks ties so the feed (and its ETag) is the same every time.
    entries.sort_by(|a, b| b.updated.cmp(&a.updated).then_with(|| a.id.cmp(&b.id)));
    entries.truncate(ENTRIES);
    Ok(entries)
}

/// `GET /projects/{p}/feed.atom` (and `/projects/{p}/builders/{b}/feed.atom`): status changes.
pub async fn atom(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<FeedQuery>,
) -> Result<HttpResponse, PageError> {
    atom_for(req, state, path.into_inner(), q.into_inner()).await
}

/// `GET /projects/{p}/builders/{b}/feed.atom`.
pub async fn builder_atom(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, PageError> {
    let (p, b) = path.into_inner();
    atom_for(req, state, p, FeedQuery { builder: Some(b), branch: None }).await
}

async fn atom_for(
    req: HttpRequest,
    state: web::Data<AppState>,
    name: String,
    q: FeedQuery,
) -> Result<HttpResponse, PageError> {
    let base = crate::api::base_url(&req);
    let pool = state.pool.clone();
    let stale_after = state.stale_after;
    let lost_after = state.lost_after;
    let self_url = format!("{base}{}", req.uri());
    let base2 = base.clone();
    let authority = tag_authority(state.public_url.as_deref());
    let authority2 = authority.clone();
    let (q_builder, q_branch) = (q.builder.clone(), q.branch.clone());
    let (p, entries) = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = project(&mut conn, &name)?;
        let mut cols = builders::for_project(&mut conn, p.id)?;
        if let Some(b) = &q.builder {
            cols.retain(|c| &c.name == b);
            if cols.is_empty() {
                return Err(AppError::not_found(format!("no builder {b:?} in project {name:?}")));
            }
        }
        let mut entries = changes(
            &mut conn,
            &authority2,
            &p.name,
            p.id,
            &cols,
            q.branch.as_deref(),
            &base2,
            stale_after,
            lost_after,
        )?;
        for e in &mut entries {
            e.link = e.link.replace("{project}", &p.name);
        }
        Ok((p, entries))
    })
    .await??;
    let updated = entries.first().map(|e| e.updated).unwrap_or(p.created_at);
    // The feed's id and title say which feed it is (project, builder, branch), not the URL
    // it was fetched by.
    let (mut feed_id, mut title) =
        (format!("tag:{authority},2026:{}/feed", p.name), format!("{}: build status changes", p.title));
    if let Some(b) = &q_builder {
        feed_id.push_str(&format!("/builder/{b}"));
        title = format!("{}: {b}'s build status changes", p.title);
    }
    if let Some(br) = &q_branch {
        feed_id.push_str(&format!("/branch/{br}"));
        title.push_str(&format!(" on {br}"));
    }
    let mut x = String::new();
    let _ = write!(
        x,
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\">\n\
         <id>{}</id>\n<title>{}</title>\n<updated>{}</updated>\n\
         <link rel=\"self\" type=\"application/atom+xml\" href=\"{}\"/>\n<link rel=\"alternate\" type=\"text/html\" href=\"{}\"/>\n\
         <author><name>tbox</name></author>\n<generator>tbox-server</generator>\n",
        esc(&feed_id),
        esc(&title),
        time(updated),
        esc(&self_url),
        esc(&format!("{base}/projects/{}", p.name)),
    );
    for e in entries {
        let _ = write!(
            x,
            "<entry>\n<id>{}</id>\n<title>{}</title>\n<updated>{}</updated>\n<link rel=\"alternate\" type=\"text/html\" href=\"{}\"/>\n<summary>{}</summary>\n</entry>\n",
            esc(&e.id),
            esc(&e.title),
            time(e.updated),
            esc(&e.link),
            esc(&e.summary)
        );
    }
    x.push_str("</feed>\n");
    Ok(HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "application/atom+xml; charset=utf-8"))
        .insert_header((CACHE_CONTROL, "public, max-age=60"))
        .body(x))
}

/// What a badge or shields endpoint says about a set of heads.
struct Verdict {
    message: String,
    /// shields.io colour name.
    colour: &'static str,
    /// The waterfall's colour, for our own SVG.
    hex: &'static str,
}

fn verdict(hs: &[Head]) -> Verdict {
    if hs.is_empty() {
        // Grey that white text reads on (4.6:1; the old #9f9f9f was 2.65:1).
        return Verdict { message: "no data".into(), colour: "lightgrey", hex: "#6e7781" };
    }
    let red = hs.iter().filter(|h| colour(&h.build) == Some("red")).count();
    let building = hs.iter().filter(|h| h.build.is_running()).count();
    let lost = hs.iter().filter(|h| h.build.is_lost()).count();
    let warned = hs.iter().any(|h| h.build.result.as_deref() == Some("warnings"));
    if hs.len() == 1 {
        let h = &hs[0];
        let (class, _, word) = of(&h.build, h.failing_kind.as_deref());
        let (colour, hex) = match class {
            "success" => ("brightgreen", "#1a7f37"),
            "warnings" | "tests-failed" => ("orange", "#bc4c00"),
            "failure" => ("red", "#cf222e"),
            "exception" => ("blueviolet", "#8250df"),
            "building" => ("yellow", "#bf8700"),
            "lost" => ("475569", "#475569"),
            "disputed" => ("bf3989", "#bf3989"),
            _ => ("lightgrey", "#6e7781"),
        };
        return Verdict { message: if word == "success" { "passing".into() } else { word.into() }, colour, hex };
    }
    // Another builder disagreed with a head: not passing on that one's word.
    let disputed = hs.iter().filter(|h| h.build.agreement.as_deref() == Some("disputed")).count();
    if red > 0 {
        Verdict { message: format!("failing on {red} of {}", hs.len()), colour: "red", hex: "#cf222e" }
    } else if disputed > 0 {
        Verdict { message: format!("disputed on {disputed} of {}", hs.len()), colour: "bf3989", hex: "#bf3989" }
    } else if building + lost == hs.len() && building > 0 {
        Verdict { message: "building".into(), colour: "yellow", hex: "#bf8700" }
    } else if lost == hs.len() {
        Verdict { message: "lost".into(), colour: "475569", hex: "#475569" }
    } else if warned {
        Verdict { message: "passing, warnings".into(), colour: "orange", hex: "#bc4c00" }
    } else {
        Verdict { message: "passing".into(), colour: "brightgreen", hex: "#1a7f37" }
    }
}

fn load_heads(
    state: &web::Data<AppState>,
    name: String,
    q: FeedQuery,
) -> impl std::future::Future<
    Output = Result<Result<(crate::db::models::Project, Vec<Head>), AppError>, actix_web::error::BlockingError>,
> {
    let pool = state.pool.clone();
    web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = project(&mut conn, &name)?;
        if let Some(b) = &q.builder
            && !builders::for_project(&mut conn, p.id)?.iter().any(|c| &c.name == b)
        {
            return Err(AppError::not_found(format!("no builder {b:?} in project {name:?}")));
        }
        let hs = heads(&mut conn, p.id, q.builder.as_deref(), q.branch.as_deref())?;
        Ok((p, hs))
    })
}

/// Approximate advance widths of Verdana 11px (what badges use), so the text fits its box.
fn text_width(s: &str) -> f64 {
    s.chars()
        .map(|c| match c {
            'i' | 'j' | 'l' | '.' | ',' | ':' | ';' | '!' | '|' | '\'' => 3.2,
            'f' | 'r' | 't' | 'I' | ' ' | '(' | ')' | '[' | ']' | '-' => 4.6,
            'm' | 'w' | 'M' | 'W' => 10.0,
            'A'..='Z' => 7.6,
            '0'..='9' => 7.0,
            _ if c.is_ascii() => 6.6,
            _ => 8.0,
        })
        .sum()
}

/// The SVG of a two-part badge.
pub fn badge_svg(label: &str, message: &str, hex: &str) -> String {
    let lw = (text_width(label) + 12.0).round();
    let mw = (text_width(message) + 12.0).round();
    let w = lw + mw;
    let (l, m) = (esc(label), esc(message));
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"20\" role=\"img\" aria-label=\"{l}: {m}\">\
<title>{l}: {m}</title>\
<linearGradient id=\"s\" x2=\"0\" y2=\"100%\"><stop offset=\"0\" stop-color=\"#bbb\" stop-opacity=\".1\"/><stop offset=\"1\" stop-opacity=\".1\"/></linearGradient>\
<clipPath id=\"r\"><rect width=\"{w}\" height=\"20\" rx=\"3\" fill=\"#fff\"/></clipPath>\
<g clip-path=\"url(#r)\"><rect width=\"{lw}\" height=\"20\" fill=\"#555\"/><rect x=\"{lw}\" width=\"{mw}\" height=\"20\" fill=\"{hex}\"/><rect width=\"{w}\" height=\"20\" fill=\"url(#s)\"/></g>\
<g fill=\"#fff\" text-anchor=\"middle\" font-family=\"Verdana,Geneva,DejaVu Sans,sans-serif\" font-size=\"11\">\
<text x=\"{lx}\" y=\"15\" fill=\"#010101\" fill-opacity=\".3\">{l}</text><text x=\"{lx}\" y=\"14\">{l}</text>\
<text x=\"{mx}\" y=\"15\" fill=\"#010101\" fill-opacity=\".3\">{m}</text><text x=\"{mx}\" y=\"14\">{m}</text></g></svg>",
        lx = lw / 2.0,
        mx = lw + mw / 2.0,
    )
}

/// The heads a badge or shields answer speaks of, and its label ("project" or "project builder").
async fn verdict_for(
    state: &web::Data<AppState>,
    project: String,
    q: FeedQuery,
) -> Result<(String, Verdict), AppError> {
    let builder = q.builder.clone();
    let (p, hs) = load_heads(state, project, q).await??;
    let label = match builder {
        Some(b) => format!("{} {b}", p.name),
        None => p.name,
    };
    Ok((label, verdict(&hs)))
}

fn svg_response(label: &str, v: &Verdict) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "image/svg+xml; charset=utf-8"))
        .insert_header((CACHE_CONTROL, "public, max-age=60"))
        .body(badge_svg(label, &v.message, v.hex))
}

/// `GET /projects/{p}/badge.svg[?branch=B][&builder=N]`.
pub async fn badge(
    state: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<FeedQuery>,
) -> Result<HttpResponse, PageError> {
    let name = path.into_inner();
    badge_answer(&name, verdict_for(&state, name.clone(), q.into_inner()).await)
}

/// A badge is always an image: an unknown project or builder gets a grey "unknown" one with
/// the 404 status, so that a README shows something sensible rather than a broken image.
fn badge_answer(name: &str, found: Result<(String, Verdict), AppError>) -> Result<HttpResponse, PageError> {
    match found {
        Ok((label, v)) => Ok(svg_response(&label, &v)),
        Err(AppError::Client { code: "not_found", .. }) => {
            let v = Verdict { message: "unknown".into(), colour: "lightgrey", hex: "#6e7781" };
            let mut res = svg_response(name, &v);
            *res.status_mut() = actix_web::http::StatusCode::NOT_FOUND;
            res.headers_mut().insert(CACHE_CONTROL, actix_web::http::header::HeaderValue::from_static("no-cache"));
            Ok(res)
        }
        Err(e) => Err(e.into()),
    }
}

/// `GET /projects/{p}/builders/{b}/badge.svg`: the same as `badge.svg?builder=B`.
pub async fn builder_badge(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, PageError> {
    let (p, b) = path.into_inner();
    badge_answer(
        &format!("{p} {b}"),
        verdict_for(&state, p.clone(), FeedQuery { builder: Some(b), branch: None }).await,
    )
}

/// `GET /api/v1/projects/{p}/shields.json[?branch=B][&builder=N]`: the shields.io endpoint schema.
pub async fn shields(
    state: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<FeedQuery>,
) -> Result<HttpResponse, AppError> {
    let name = path.into_inner();
    let (label, v) = match verdict_for(&state, name.clone(), q.into_inner()).await {
        Ok(found) => found,
        // Shields reads its own schema, also for a project or builder it does not know.
        Err(AppError::Client { code: "not_found", .. }) => {
            return Ok(HttpResponse::NotFound().insert_header((CACHE_CONTROL, "no-cache")).json(serde_json::json!({
                "schemaVersion": 1, "label": name, "message": "unknown", "color": "lightgrey", "isError": true,
            })));
        }
        Err(e) => return Err(e),
    };
    Ok(HttpResponse::Ok().insert_header((CACHE_CONTROL, "public, max-age=300")).json(serde_json::json!({
        "schemaVersion": 1,
        "label": label,
        "message": v.message,
        "color": v.colour,
        "isError": false,
        "cacheSeconds": 300,
    })))
}

/// `GET /projects/{p}/cctray.xml[?branch=B][&builder=N]`: one Project per builder and branch.
pub async fn cctray(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<FeedQuery>,
) -> Result<HttpResponse, PageError> {
    let base = crate::api::base_url(&req);
    let q = q.into_inner();
    let xml = |status: actix_web::http::StatusCode, body: String| {
        HttpResponse::build(status)
            .insert_header((CONTENT_TYPE, "application/xml; charset=utf-8"))
            .insert_header((CACHE_CONTROL, "public, max-age=30"))
            .body(body)
    };
    let (p, hs) = match load_heads(&state, path.into_inner(), q.clone()).await? {
        Ok(found) => found,
        // cctray clients read XML, also when the project is not there.
        Err(AppError::Client { code: "not_found", .. }) => {
            return Ok(xml(
                actix_web::http::StatusCode::NOT_FOUND,
                "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Projects/>\n".into(),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    // Only builders that have built: cctray's lastBuildTime is required, and a builder that
    // never built has none to give (its registration time was shown there once, as if it had).
    // Jenkins' cc.xml leaves out jobs never built, too.
    // For a running build, cctray wants the status of the last finished one.
    let pool = state.pool.clone();
    let running: Vec<Build> = hs.iter().filter(|h| h.build.is_running()).map(|h| h.build.clone()).collect();
    let finished: HashMap<i64, Build> = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let mut out = HashMap::new();
        for b in running {
            if let Some(f) = builds::last_finished(&mut conn, &b)? {
                out.insert(b.id, f);
            }
        }
        Ok(out)
    })
    .await??;
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Projects>\n");
    for h in &hs {
        let b = finished.get(&h.build.id).unwrap_or(&h.build);
        let status = match b.result.as_deref() {
            // Other builders disagree with it: cctray has no word for that, and it is no success.
            _ if b.agreement.as_deref() == Some("disputed") => "Unknown",
            // The builder went silent mid-build: not the source's fault, but not a success.
            Some(builds::LOST) => "Exception",
            Some("success" | "warnings") => "Success",
            Some("failure") => "Failure",
            Some("exception") => "Exception",
            _ => "Unknown",
        };
        let running = h.build.is_running();
        let activity = if running { "Building" } else { "Sleeping" };
        // While it builds, the page that shows it building is the builder's.
        let url = if running {
            format!("{base}/projects/{}/builders/{}", p.name, h.builder.name)
        } else {
            format!("{base}/builds/{}", b.id)
        };
        let _ = writeln!(
            x,
            "  <Project name=\"{}\" activity=\"{activity}\" lastBuildStatus=\"{status}\" lastBuildLabel=\"{}\" lastBuildTime=\"{}\" webUrl=\"{}\"/>",
            esc(&format!("{}/{} ({})", p.name, h.builder.name, h.build.branch)),
            b.id,
            time(b.finished_at.unwrap_or(b.started_at)),
            esc(&url),
        );
    }
    x.push_str("</Projects>\n");
    Ok(xml(actix_web::http::StatusCode::OK, x))
}

/// The authority of this server's `tag:` URIs: the host of `--public-url` (RFC 4151 allows no
/// port and no path there), else a fixed name, so that ids never depend on the Host header.
fn tag_authority(public_url: Option<&str>) -> String {
    public_url
        .and_then(|u| url::Url::parse(u).ok())
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'))
        .unwrap_or_else(|| "tbox.invalid".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn badge_width_follows_the_text() {
        let short = badge_svg("demo", "passing", "#2da44e");
        let long = badge_svg("demo", "failing on 12 of 50", "#cf222e");
        let width =
            |s: &str| s.split("width=\"").nth(1).and_then(|w| w.split('"').next()).and_then(|w| w.parse::<f64>().ok());
        assert!(width(&long) > width(&short));
        assert!(badge_svg("a<b", "x&y", "#000").contains("a&lt;b"));
    }
}
