// Runs axe-core (WCAG 2.1 A/AA) on pages in a real Chromium, light and dark; also checks for
// horizontal overflow at 390 px outside the waterfall table. With TBOX_A11Y_PREFIX set (pages
// served under a sub-path), every same-origin link, stylesheet, script, image and form target
// must lie under that prefix and answer (no 4xx/5xx). Exit 1 on any violation.
const { chromium } = require('playwright-core');
const fs = require('fs');
const axeSource = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
(async () => {
  const base = process.argv[2];
  const paths = process.argv.slice(3);
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'] });
  let failures = 0;
  let checked = 0;
  const prefix = process.env.TBOX_A11Y_PREFIX || '';
  for (const scheme of ['light', 'dark']) {
    for (const width of [1280, 390]) {
      const page = await browser.newPage({ colorScheme: scheme, viewport: { width, height: 900 }, bypassCSP: true });
      for (const p of paths) {
        await page.goto(base + p, { waitUntil: 'load' });
        await page.addScriptTag({ content: axeSource });
        const result = await page.evaluate(async () =>
          await axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } }));
        for (const v of result.violations) {
          failures++;
          console.log(`${scheme} ${width}px ${p}: ${v.id} (${v.impact}): ${v.help}; ${v.nodes.length} node(s), e.g. ${v.nodes[0].html.slice(0, 160)}`);
        }
        if (prefix && scheme === 'light' && width === 1280) {
          const urls = await page.evaluate(() => [...document.querySelectorAll('a[href], link[href], script[src], img[src], form[action]')]
            .map(e => e.href || e.src || e.action).filter(u => u && u.startsWith(location.origin)).map(u => u.split('#')[0]));
          for (const u of [...new Set(urls)]) {
            const path = new URL(u).pathname;
            if (!path.startsWith(prefix + '/')) { failures++; console.log(`${p}: a link outside ${prefix}/: ${u}`); continue; }
            const resp = await page.request.get(u);
            // The page of a missing project is the one link meant to be missing.
            if (resp.status() >= 400 && !u.endsWith('/projects/nope')) { failures++; console.log(`${p}: ${u} answers ${resp.status()}`); }
            checked++;
          }
        }
        if (width === 390) {
          const over = await page.evaluate(() => {
            const vw = document.documentElement.clientWidth;
            return [...document.querySelectorAll('body *')]
              .filter(e => !e.closest('.scroll') && e.getBoundingClientRect().right > vw + 1)
              .map(e => e.tagName + (e.className ? '.' + e.className : '')).slice(0, 3);
          });
          if (over.length) { failures++; console.log(`${scheme} 390px ${p}: wider than the screen: ${over.join(', ')}`); }
        }
      }
      await page.close();
    }
  }
  await browser.close();
  if (prefix) console.log(`${checked} links under ${prefix}/ checked`);
  console.log(failures ? `${failures} problem(s)` : 'no axe violations, no overflow');
  process.exit(failures ? 1 : 0);
})().catch(e => { console.error(e); process.exit(2); });
