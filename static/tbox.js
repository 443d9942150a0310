// tbox: small improvements on pages that work without JavaScript.
// - <time> elements get a local-time tooltip; "ago" ones count up.
// - pages with <meta name="tbox-refresh"> reload their content in place (keeping scroll).
// - the waterfall and console remember their filters in this browser.
"use strict";

function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m";
  if (s < 86400) return Math.floor(s / 3600) + "h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
}

function decorateTimes(root) {
  for (const t of root.querySelectorAll("time[datetime]")) {
    const d = new Date(t.getAttribute("datetime"));
    if (isNaN(d)) continue;
    t.title = d.toLocaleString();
    if (t.classList.contains("ago")) t.textContent = ago(Date.now() - d.getTime()) + " ago";
  }
}

function autoRefresh() {
  const meta = document.querySelector('meta[name="tbox-refresh"]');
  if (!meta || new URLSearchParams(location.search).has("before")) return;
  const seconds = Math.max(15, parseInt(meta.content, 10) || 60);
  setInterval(async () => {
    if (document.hidden) return;
    try {
      const resp = await fetch(location.href, { headers: { Accept: "text/html" } });
      if (!resp.ok) return;
      const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
      const fresh = doc.querySelector("main");
      const main = document.querySelector("main");
      if (!fresh || !main) return;
      const box = main.querySelector(".scroll");
      const keep = box ? [box.scrollLeft, box.scrollTop] : null;
      const focused = document.activeElement && document.activeElement.name;
      if (focused && main.contains(document.activeElement)) return; // do not disturb typing
      main.replaceChildren(...fresh.childNodes);
      const nbox = main.querySelector(".scroll");
      if (nbox && keep) [nbox.scrollLeft, nbox.scrollTop] = keep;
      decorateTimes(main);
      rememberFilters();
    } catch (_) { /* offline: try again next time */ }
  }, seconds * 1000);
}

function rememberFilters() {
  const form = document.querySelector("form.filters");
  if (!form) return;
  const key = "tbox-filters:" + location.pathname.replace(/\/console$/, "");
  const params = new URLSearchParams(location.search);
  params.delete("before");
  const current = params.toString();
  if (current) {
    localStorage.setItem(key, current);
  } else {
    const saved = localStorage.getItem(key);
    if (saved && !form.querySelector(".restore")) {
      const a = document.createElement("a");
      a.className = "restore";
      a.href = location.pathname + "?" + saved;
      a.textContent = "your last filters";
      form.append(" ", a);
    }
  }
}

decorateTimes(document);
rememberFilters();
autoRefresh();
setInterval(() => decorateTimes(document), 60000);
