// The console end to end, in headless Chromium (Debian's, driven by playwright-core) against
// a running worker. Run by tests/console.rs, which owns the database and Redis: this script
// prints `STEP <name>` when the harness must act or check, and waits for `ok` on stdin.
//
// Environment: CW_URL (the worker's status address), CW_TOKEN, CW_CHROMIUM (executable),
// CW_SHOTS (screenshot directory).
import { chromium } from 'playwright-core'
import { mkdirSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { createInterface } from 'node:readline'

const url = process.env.CW_URL
const token = process.env.CW_TOKEN
const shots = process.env.CW_SHOTS ?? 'target/console-screenshots'
mkdirSync(shots, { recursive: true })

// axe-core: the accessibility rules (labels, contrast, keyboard, ARIA) checked in each view.
const axeSource = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8')

const input = createInterface({ input: process.stdin })
const replies = input[Symbol.asyncIterator]()
async function step(name) {
  console.log(`STEP ${name}`)
  const { value, done } = await replies.next()
  if (done || value.trim() !== 'ok') throw new Error(`harness refused step ${name}: ${value}`)
}

const browser = await chromium.launch({
  executablePath: process.env.CW_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
})
const errors = []
try {
  const page = await browser.newPage({ viewport: { width: 1366, height: 768 } })
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`))
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()}`) })
  const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true })
  const expectText = (locator, re, timeout = 15000) =>
    locator.filter({ hasText: re }).first().waitFor({ timeout })

  // Dashboard: health and figures load; live figures change after database writes.
  await page.goto(`${url}/#dashboard`)
  await expectText(page.getByTestId('health'), /ready/)
  await page.getByTestId('invalidations').locator('.value').filter({ hasText: /^\d+$/ }).waitFor()
  const before = Number(await page.getByTestId('invalidations').locator('.value').innerText())
  await shot('01-dashboard')
  await step('write')
  await expectText(page.getByTestId('recent').locator('tbody tr'), /course/)
  await page.waitForFunction(
    (n) => Number(document.querySelector('[data-testid="invalidations"] .value')?.textContent) > n,
    before, { timeout: 15000 })
  const after = Number(await page.getByTestId('invalidations').locator('.value').innerText())
  console.log(`invalidations figure ${before} -> ${after}`)
  await page.waitForFunction(() => !document.querySelector('[data-testid="lag"] .value')?.textContent.includes('—'), null, { timeout: 15000 })
  await shot('02-dashboard-live')

  // Without the token the rules are read-only; with it, switch a rule off.
  await page.getByRole('link', { name: 'Rules' }).click()
  const active = page.getByLabel('course active')
  await active.waitFor()
  if (!(await active.isDisabled())) throw new Error('rule switch editable without a token')
  await page.getByLabel('API token').fill(token)
  await page.getByRole('button', { name: 'Use' }).click()
  await page.waitForFunction(() => !document.querySelector('#active-course').disabled)
  await active.uncheck()
  await expectText(page.locator('tr[data-rule="course"] [role="status"]'), /switched off/)
  await expectText(page.locator('tr[data-rule="course"]'), /api@127\.0\.0\.1/)
  await shot('03-rules-switched-off')
  await step('rule-off')

  // A dry run, then the real invalidation.
  await page.getByRole('link', { name: 'Invalidate' }).click()
  await page.getByLabel(/^Pattern/).fill('page:*')
  await page.getByLabel(/^Reason/).fill('e2e invalidation')
  await page.getByRole('button', { name: 'Preview (dry run)' }).click()
  await expectText(page.getByTestId('preview'), /3 key\(s\) would be removed/)
  await shot('04-dry-run')
  await step('previewed')
  await page.getByRole('button', { name: 'Invalidate', exact: true }).click()
  await expectText(page.getByTestId('done'), /3 key\(s\) removed/)
  await shot('05-invalidated')
  await step('invalidated')

  // The key inspector names the rule behind a key.
  await page.getByRole('link', { name: 'Keys' }).click()
  await page.getByLabel('Key', { exact: true }).fill('course:9')
  await page.keyboard.press('Enter')
  await expectText(page.getByTestId('key-value'), /hello/)
  await expectText(page.getByTestId('key-info'), /rule course/)
  await shot('06-key-inspector')

  // Bad input shows the API's error in the page.
  await page.getByRole('link', { name: 'Invalidate' }).click()
  await page.getByLabel(/^Pattern/).fill('x'.repeat(2000))
  await page.getByRole('button', { name: 'Preview (dry run)' }).click()
  await expectText(page.getByRole('alert'), /more than the 1024 the API accepts/)
  await shot('07-error')

  // Keyboard: the views are reachable with Tab and Enter; every control has a label.
  await page.goto(`${url}/#dashboard`)
  await page.getByTestId('health').waitFor()
  let reached = false
  for (let i = 0; i < 10 && !reached; i++) {
    await page.keyboard.press('Tab')
    reached = await page.evaluate(() => document.activeElement?.textContent === 'Keys')
  }
  if (!reached) throw new Error('the Keys view is not reachable with the keyboard')
  await page.keyboard.press('Enter')
  await page.waitForURL(/#keys$/)
  for (const view of ['dashboard', 'rules', 'invalidate', 'keys']) {
    await page.goto(`${url}/#${view}`)
    await page.waitForTimeout(500)
    const unlabeled = await page.evaluate(() => [...document.querySelectorAll('input, select, textarea')]
      .filter((e) => !(e.labels?.length || e.getAttribute('aria-label')))
      .map((e) => e.outerHTML))
    if (unlabeled.length) throw new Error(`controls without a label in ${view}: ${unlabeled.join(' ')}`)
    await page.addScriptTag({ content: axeSource })
    const violations = await page.evaluate(async () => {
      const r = await window.axe.run(document, { runOnly: ['wcag2a', 'wcag2aa'] })
      return r.violations.map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`)
    })
    if (violations.length) throw new Error(`accessibility (WCAG 2 A/AA) in ${view}:\n${violations.join('\n')}`)
    console.log(`${view}: no WCAG 2 A/AA violation found by axe-core`)
  }
  const real = errors.filter((e) => !/the server responded with a status of 4\d\d/.test(e))
  if (real.length) throw new Error(`errors in the page:\n${real.join('\n')}`)
  console.log('DONE')
} finally {
  await browser.close()
  input.close()
}
