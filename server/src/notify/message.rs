//! What a notification says: a one-line summary, the webhook's JSON body and its signature,
//! and the e-mail's subject and text.

use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;
use serde_json::json;

use super::{BROKE, DISPUTED, FIXED, Facts, LOST, NEW, STALE};
use crate::api::views::time;
use crate::db::models::Notification;

/// `sha256=<hex HMAC-SHA256(secret, body)>`: the `Tbox-Signature-256` header, GitHub's
/// `X-Hub-Signature-256` convention, so receivers can reuse their verification code.
pub fn signature(secret: &str, body: &[u8]) -> Result<String, openssl::error::ErrorStack> {
    let key = PKey::hmac(secret.as_bytes())?;
    let mut signer = Signer::new(MessageDigest::sha256(), &key)?;
    signer.update(body)?;
    let mac = signer.sign_to_vec()?;
    Ok(format!("sha256={}", tbox_protocol::hex(&mac)))
}

/// The change in a few words: "demo: alice-debian12 broke on main". An e-mail's subject.
pub fn summary(event: &str, f: &Facts) -> String {
    let on = f.branch.as_deref().map(|b| format!(" on {b}")).unwrap_or_default();
    let (p, b) = (&f.project, &f.builder);
    match event {
        BROKE => format!("{p}: {b} broke{on}"),
        FIXED => format!("{p}: {b} is fixed{on}"),
        NEW => format!("{p}: {b} reported for the first time{on}"),
        STALE => format!("{p}: {b} has gone stale"),
        LOST => format!("{p}: {b} went silent mid-build{on}"),
        DISPUTED => format!("{p}: builders disagree{on} ({b} among them)"),
        super::forge::STATUS => match &f.status {
            Some(s) => format!(
                "{p}: {} at {}: {} ({})",
                s.builder.as_deref().map_or_else(|| "summary".to_owned(), |b| format!("builder {b}")),
                s.revision.get(..12).unwrap_or(&s.revision),
                s.state,
                s.description
            ),
            None => format!("{p}: commit status"),
        },
        other => format!("{p}: {b}: {other}{on}"),
    }
}

/// Links into the server, from its public base URL.
struct Links {
    build: Option<String>,
    previous: Option<String>,
    builder: String,
    project: String,
}

fn links(base: &str, f: &Facts) -> Links {
    Links {
        build: f.build.as_ref().map(|b| format!("{base}/builds/{}", b.id)),
        previous: f.previous.as_ref().map(|b| format!("{base}/builds/{}", b.id)),
        builder: format!("{base}/projects/{}/builders/{}", f.project, f.builder),
        project: format!("{base}/projects/{}", f.project),
    }
}

fn short(rev: &str) -> &str {
    rev.get(..12).unwrap_or(rev)
}

/// The lines that say what happened, shared by the chat text and the e-mail. For a chat, what
/// builders wrote (an error line, test names) is set as code, so it cannot format, link or
/// mention anyone.
fn details(event: &str, f: &Facts, l: &Links, chat: bool) -> Vec<String> {
    let code = |s: &str| if chat { format!("`{}`", s.replace('`', "'")) } else { s.to_owned() };
    let mut out = Vec::new();
    match (&f.old_status, event) {
        (_, STALE) => out.push(format!(
            "Nothing heard from {} since {}.",
            f.builder,
            f.last_report_at.as_deref().unwrap_or("its last report")
        )),
        (_, LOST) => out.push("It started a build and sent no finished report.".to_owned()),
        (Some(old), _) => out.push(format!("Status: {} (was {old})", f.new_status)),
        (None, _) => out.push(format!("Status: {}", f.new_status)),
    }
    if let Some(b) = &f.build {
        match (&f.previous, event) {
            (Some(p), BROKE) => {
                out.push(format!("Broken by a change in {}..{}", short(&p.revision), short(&b.revision)))
            }
            (Some(p), FIXED) => {
                out.push(format!("Fixed by a change in {}..{}", short(&p.revision), short(&b.revision)))
            }
            (Some(p), _) => out.push(format!("Revisions: {}..{}", short(&p.revision), short(&b.revision))),
            (None, _) => out.push(format!("Revision: {}", short(&b.revision))),
        }
    }
    if let Some(d) = &f.dispute {
        out.push(format!("Disagreement: {}", code(d)));
    }
    if let Some(e) = &f.first_error {
        out.push(format!("First error (step {} \"{}\", line {}): {}", e.step, e.step_name, e.line, code(&e.text)));
    }
    if !f.new_failures.is_empty() {
        let names: Vec<String> = f
            .new_failures
            .iter()
            .map(|t| {
                let name = if t.suite.is_empty() { t.name.clone() } else { format!("{}::{}", t.suite, t.name) };
                let name = code(&name);
                if t.flaky { format!("{name} (flaky)") } else { name }
            })
            .collect();
        out.push(format!("Newly failing tests: {}", names.join(", ")));
    }
    if let Some(u) = &l.build {
        out.push(format!("Build: {u}"));
    } else {
        out.push(format!("Builder: {}", l.builder));
    }
    if let Some(c) = &f.compare_url {
        out.push(format!("Changes: {c}"));
    }
    out
}

/// Text a chat shows as it is: `&`, `<` and `>` escaped as Slack requires (Mattermost reads
/// them as Markdown entities), and channel-wide mentions broken with a zero-width space, so a
/// branch or test name cannot ping everyone.
fn chat_safe(text: &str) -> String {
    let mut out = text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    for mention in ["@channel", "@here", "@all", "@everyone"] {
        out = out.replace(mention, &format!("@\u{200b}{}", &mention[1..]));
    }
    out
}

/// The webhook's body: the facts, the links, and a `text` that a Slack or Mattermost incoming
/// webhook shows as it is.
pub fn webhook_body(n: &Notification, f: &Facts, base: &str) -> String {
    let l = links(base, f);
    let mut text = summary(&n.event, f);
    for line in details(&n.event, f, &l, true) {
        text.push('\n');
        text.push_str(&line);
    }
    let text = chat_safe(&text);
    let with_url = |b: &super::BuildFacts, url: &Option<String>| {
        json!({"id": b.id, "url": url, "revision": b.revision, "result": b.result,
               "started_at": b.started_at, "finished_at": b.finished_at})
    };
    json!({
        "event": n.event,
        "event_id": n.id,
        "at": time(n.created_at),
        "project": f.project,
        "project_url": l.project,
        "builder": f.builder,
        "builder_url": l.builder,
        "branch": f.branch,
        "old_status": f.old_status,
        "new_status": f.new_status,
        "build": f.build.as_ref().map(|b| with_url(b, &l.build)),
        "previous": f.previous.as_ref().map(|b| with_url(b, &l.previous)),
        "compare_url": f.compare_url,
        "first_error": f.first_error,
        "new_failures": f.new_failures,
        "last_report_at": f.last_report_at,
        "text": text,
    })
    .to_string()
}

/// The e-mail: its subject and plain text.
pub fn email(n: &Notification, f: &Facts, base: &str, subscription_id: i64) -> (String, String) {
    let l = links(base, f);
    let subject = summary(&n.event, f);
    let mut body = format!("{subject}.\n\n");
    for line in details(&n.event, f, &l, false) {
        body.push_str(&line);
        body.push('\n');
    }
    if let Some(p) = &l.previous {
        body.push_str(&format!("Build before: {p}\n"));
    }
    body.push_str(&format!("Waterfall: {}\n", l.project));
    body.push_str(&format!(
        "\n-- \ntbox-server, subscription #{subscription_id} (`tbox-server notify remove {subscription_id}` stops these)\n"
    ));
    (subject, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub documents this secret, payload and signature for checking an implementation of
    /// `X-Hub-Signature-256`; the same must come out here.
    #[test]
    fn signature_matches_githubs_documented_example() {
        let got = signature("It's a Secret to Everybody", b"Hello, World!").expect("hmac");
        assert_eq!(got, "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17");
    }

    #[test]
    fn chat_text_cannot_mention_or_link() {
        assert_eq!(
            chat_safe("<!channel> @here <https://evil|Build> a&b"),
            "&lt;!channel&gt; @\u{200b}here &lt;https://evil|Build&gt; a&amp;b"
        );
    }

    #[test]
    fn summaries_name_project_builder_and_branch() {
        let f = Facts {
            project: "demo".into(),
            builder: "alice-debian12".into(),
            branch: Some("main".into()),
            ..Facts::default()
        };
        assert_eq!(summary(BROKE, &f), "demo: alice-debian12 broke on main");
        assert_eq!(summary(FIXED, &f), "demo: alice-debian12 is fixed on main");
        assert_eq!(summary(STALE, &Facts { branch: None, ..f }), "demo: alice-debian12 has gone stale");
    }
}
