// The console in headless Chromium against the real binary, walked as a person would:
// sign in with the first admin's password; watch an event arrive in the source debugger
// (its `<script>` and `javascript:` values shown as text, nothing run); add a webhook
// destination from the catalog; see its mapping preview; send the Event Tester's event to
// a local receiver and see the 200; see the delivery counts; add a viewer, sign in as
// the viewer and fail to change anything; check every screen with axe-core.
// Needs SLUICE_URL, SLUICE_WRITE_KEY, SLUICE_ADMIN_TOKEN, SLUICE_ADMIN_PASSWORD (the
// banner's), and writes a
// screenshot of each screen to SCREENSHOTS (default docs/console).
import { chromium } from 'playwright-core'
import { startShop } from './shop.mjs'
import http from 'node:http'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { randomUUID } from 'node:crypto'

const URL = process.env.SLUICE_URL
const WRITE_KEY = process.env.SLUICE_WRITE_KEY
const PASSWORD = process.env.SLUICE_ADMIN_PASSWORD
const SOURCE = process.env.SLUICE_SOURCE ?? 'web'
const here = path.dirname(fileURLToPath(import.meta.url))
const shots = process.env.SCREENSHOTS ?? path.join(here, '../../docs/console')
fs.mkdirSync(shots, { recursive: true })
const axeSource = fs.readFileSync(path.join(here, 'node_modules/axe-core/axe.min.js'), 'utf8')

// A partner's endpoint on this machine, for the Event Tester.
const hits = []
const receiver = http.createServer((req, res) => {
  let body = ''
  req.on('data', (c) => { body += c })
  req.on('end', () => {
    hits.push({ url: req.url, body })
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end('{"ok":true}')
  })
})
await new Promise((r) => receiver.listen(0, '127.0.0.1', r))
const hook = `http://127.0.0.1:${receiver.address().port}/in`

// The shop: a page of another origin with unmodified analytics.js (from npm).
const shopPage = `<!doctype html><html><head><title>shop</title>
<script src="/ajs/index.js"></script></head><body><h1>shop</h1><script>
window.runAnalytics = async (writeKey, cdnURL, userId, name, props) => {
  const [analytics] = await AnalyticsNext.AnalyticsBrowser.load({ writeKey, cdnURL })
  await analytics.identify(userId, { email: userId + '@example.com', plan: 'pro' })
  await analytics.track(name, props)
}
</script></body></html>`
const shop = await startShop(shopPage)
const pageUrl = shop.url

const problems = []
const check = (ok, what) => { if (!ok) problems.push(what) }
const run = randomUUID().slice(0, 8)

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
})

/** axe-core on the page as it is (in a CSP-bypassing copy: the console's CSP forbids injected scripts). */
async function accessibility(page, name) {
  const ctx = await browser.newContext({ bypassCSP: true, storageState: await page.context().storageState() })
  const copy = await ctx.newPage()
  await copy.goto(page.url())
  await copy.waitForSelector('main h1')
  await copy.addScriptTag({ content: axeSource })
  const result = await copy.evaluate(async () => await window.axe.run(document, { resultTypes: ['violations'] }))
  for (const v of result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')) {
    problems.push(`${name}: axe ${v.impact} ${v.id}: ${v.help} (${v.nodes.length} nodes, e.g. ${v.nodes[0]?.target})`)
  }
  await ctx.close()
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true })
  // No screen writes a missing value as the words null or undefined.
  const stray = await page.evaluate(() => {
    const walk = document.createTreeWalker(document.querySelector('main'), NodeFilter.SHOW_TEXT)
    const found = []
    while (walk.nextNode()) {
      const n = walk.currentNode
      if (/^(null|undefined|NaN)$/.test(n.textContent.trim()) && !n.parentElement.closest('pre, textarea, code')) found.push(n.parentElement.tagName)
    }
    return found
  })
  check(stray.length === 0, `${name}: stray null/undefined text in ${stray.join(', ')}`)
}

async function signIn(page, user, password) {
  await page.goto(`${URL}/`)
  await page.getByLabel('User name').fill(user)
  await page.getByLabel('Password').fill(password)
  await page.getByRole('button', { name: 'Sign in' }).click()
  await page.waitForSelector('#who button')
}

try {
  const admin = await (await browser.newContext()).newPage()
  const dialogs = []
  admin.on('dialog', async (d) => { dialogs.push(d.message()); await d.accept() })
  const errors = []
  admin.on('pageerror', (e) => errors.push(String(e)))
  // The browser logs every 4xx it fetched (the sign-in probe's 401, the refused
  // setting's 400): those are expected; any other error is not.
  admin.on('console', (m) => m.type() === 'error' && !m.text().startsWith('Failed to load resource') && errors.push(m.text()))

  await admin.goto(`${URL}/`)
  await admin.waitForSelector('form.signin')
  await shot(admin, 'sign-in')
  await signIn(admin, 'admin', PASSWORD)

  // Sources: add one, a JavaScript website; its write key is shown with its snippet.
  await admin.waitForSelector('main table')
  check((await admin.locator('main').innerText()).includes(SOURCE), 'the sources list names the source')
  const site = `site-${run}`
  await admin.getByLabel('Name').fill(site)
  await admin.getByLabel('Type').selectOption('javascript')
  await admin.getByRole('button', { name: 'Add source' }).click()
  await admin.waitForSelector('text=Write key')
  const siteKey = (await admin.locator('main p code').first().innerText()).trim()
  check(siteKey.startsWith('wk_'), `the new source's key is shown: ${siteKey}`)
  check((await admin.locator('main pre').last().innerText()).includes(siteKey), 'the snippet holds the key')
  await shot(admin, 'source-install')

  // Its debugger, while analytics.js on a page of another origin sends to it (with a
  // hostile property: it must show as text).
  await admin.getByRole('link', { name: 'Debugger' }).click()
  await admin.waitForSelector('ul.events')
  const hostile = `<script>window.__owned=1</script><img src=x onerror="window.__owned=2">`
  const shop = await (await browser.newContext()).newPage()
  await shop.goto(pageUrl)
  await shop.evaluate(([wk, cdn, uid, name, props]) => window.runAnalytics(wk, cdn, uid, name, props),
    [siteKey, URL, `console-${run}`, `Console Checkout ${run}`, { note: hostile, link: 'javascript:window.__owned=3', revenue: 12.5 }])
  const row = admin.locator('ul.events li', { hasText: `Console Checkout ${run}` })
  await row.waitFor({ timeout: 20_000 })
  await row.locator('button').click()
  const raw = await admin.locator('main pre').last().innerText()
  check(raw.includes('<script>window.__owned=1</script>'), 'the raw view shows the script as text')
  check(raw.includes('javascript:window.__owned=3'), 'the raw view shows the javascript: URL as text')
  check(await admin.evaluate(() => window.__owned === undefined), 'nothing in the event ran')
  // A refused item shows beside the accepted ones, with its reason.
  await fetch(`${URL}/v1/track`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Basic ' + Buffer.from(siteKey + ':').toString('base64') },
    body: JSON.stringify({ event: `Refused ${run}`, properties: {} }),
  })
  const refusedRow = admin.locator('ul.events li.refused', { hasText: `Refused ${run}` })
  await refusedRow.waitFor({ timeout: 20_000 })
  await refusedRow.locator('button').click()
  check((await admin.locator('main .error').first().innerText()).includes('userId'), 'the refused item says why (no user)')
  await shot(admin, 'debugger')
  await accessibility(admin, 'debugger')

  // Add a destination from the catalog: classic Webhooks to the local receiver.
  await admin.locator('#nav').getByRole('link', { name: 'Catalog' }).click()
  await admin.getByLabel('Search').fill('webhook')
  await shot(admin, 'catalog')
  await accessibility(admin, 'catalog')
  await admin.getByRole('link', { name: 'Add Webhooks (classic)' }).click()
  const dest = `hooks-${run}`
  await admin.getByLabel('Name').fill(dest)
  await admin.getByLabel(`Source ${site}`).check()
  await admin.getByLabel(/Allow private networks/).check()
  // A wrong setting first: the API's error names the field beside it.
  await admin.getByLabel(/^hooks/).fill('[{"hook": "not a url"}]')
  await admin.getByRole('button', { name: 'Save' }).click()
  await admin.waitForSelector('.error[role="alert"]')
  check((await admin.locator('.error[role="alert"]').innerText()).includes('hooks'), 'the error names the hooks setting')
  await admin.getByLabel(/^hooks/).fill(JSON.stringify([{ hook }]))
  await admin.getByRole('button', { name: 'Save' }).click()
  await admin.waitForSelector(`text=Destination ${dest}`)
  await shot(admin, 'destination-settings')
  // Settings: a save, then a stale form (changed meanwhile by a script) is refused.
  const config = admin.getByLabel('Configuration')
  const edited = JSON.parse(await config.inputValue())
  edited.batch_size = 2
  await config.fill(JSON.stringify(edited, null, 2))
  await admin.getByRole('button', { name: 'Save' }).click()
  await admin.waitForSelector('text=Saved.')
  const meanwhile = await fetch(`${URL}/admin/v1/destinations/${dest}`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${process.env.SLUICE_ADMIN_TOKEN}` },
    body: JSON.stringify({ ...edited, batch_size: 3 }),
  })
  check(meanwhile.status === 200, `the script's change answered ${meanwhile.status}`)
  edited.batch_size = 4
  await config.fill(JSON.stringify(edited, null, 2))
  await admin.getByRole('button', { name: 'Save' }).click()
  await admin.waitForSelector('.error[role="alert"]')
  check((await admin.locator('.error[role="alert"]').innerText()).includes('changed'), 'a stale form is refused')
  const now = await (await fetch(`${URL}/admin/v1/destinations/${dest}`, { headers: { authorization: `Bearer ${process.env.SLUICE_ADMIN_TOKEN}` } })).json()
  check(now.batch_size === 3, `the script's change stays (batch_size ${now.batch_size})`)

  // Mappings: the preview of a recent event follows the configuration as it is edited,
  // before any save.
  await admin.getByRole('link', { name: 'Mappings' }).click()
  await admin.waitForSelector('.preview')
  check((await admin.locator('main').innerText()).includes(hook), 'the preview shows the request to the hook')
  const mapping = admin.getByLabel('Configuration with its mappings (JSON)')
  const draft = JSON.parse(await mapping.inputValue())
  draft.settings.hooks[0].hook = hook + '/edited'
  await mapping.fill(JSON.stringify(draft, null, 2))
  await admin.waitForSelector(`code:has-text("${hook}/edited")`)
  const stored = await (await fetch(`${URL}/admin/v1/destinations/${dest}`, { headers: { authorization: `Bearer ${process.env.SLUICE_ADMIN_TOKEN}` } })).json()
  check(stored.settings.hooks[0].hook === hook, 'the preview saved nothing')
  draft.settings.hooks[0].hook = hook
  await mapping.fill(JSON.stringify(draft, null, 2))
  await admin.waitForSelector(`code:has-text("${hook}")`)
  await shot(admin, 'destination-mappings')
  await accessibility(admin, 'mappings')

  // A Pushwoosh destination from the catalog: its presets shown; editing the Track Events
  // mapping changes the preview, before any save.
  await admin.locator('#nav').getByRole('link', { name: 'Catalog' }).click()
  await admin.getByLabel('Search').fill('pushwoosh')
  await admin.getByRole('link', { name: 'Add Pushwoosh' }).click()
  const push = `push-${run}`
  await admin.getByLabel('Name').fill(push)
  await admin.getByLabel(`Source ${site}`).check()
  await admin.getByLabel(/^pushwooshAPIKey/).fill('pw-secret-key')
  await admin.getByLabel(/^pushwooshAppCode/).fill('APP-12345')
  await admin.getByRole('button', { name: 'Save' }).click()
  await admin.waitForSelector(`text=Destination ${push}`)
  check(!(await admin.locator('main').innerText()).includes('pw-secret-key'), 'the API key is not shown back')
  await admin.getByRole('link', { name: 'Mappings' }).click()
  await admin.waitForSelector('text=Actions and presets of Pushwoosh')
  await admin.waitForSelector(`pre:has-text("Console Checkout ${run}")`)
  // The Track Events form: turn the action on and map its name to a fixed text.
  await admin.getByText('Edit each action').click()
  await admin.locator('details .card', { hasText: 'trackEvent — ' }).locator('input[type=checkbox]').check()
  await admin.getByLabel('trackEvent name').fill(`"Edited ${run}"`)
  await admin.waitForSelector(`pre:has-text("Edited ${run}")`)
  const pushDraft = JSON.parse(await admin.getByLabel('Configuration with its mappings (JSON)').inputValue())
  check(JSON.stringify(pushDraft.actions) === JSON.stringify([{ action: 'trackEvent', mapping: { name: `Edited ${run}` } }]),
    `the form wrote the configuration's actions: ${JSON.stringify(pushDraft.actions)}`)
  // A mapping the kit refuses: the API's error sits beside the field it names.
  const nameInput = admin.getByLabel('trackEvent name')
  await nameInput.fill('{"@pth": "$.event"}')
  const nameError = admin.locator('.mapping', { has: nameInput }).locator('.error')
  await nameError.filter({ hasText: 'unknown directive @pth' }).waitFor()
  await shot(admin, 'destination-mappings-field-error')
  await nameInput.fill(`"Edited ${run}"`)
  await admin.waitForSelector(`pre:has-text("Edited ${run}")`)
  check((await nameError.innerText()) === '', 'the field error goes when the mapping is mended')
  const pushPreview = await admin.locator('main').innerText()
  check(pushPreview.includes('pw-secret-key'), 'the preview of an unsaved config uses the stored (masked) API key')
  await shot(admin, 'destination-mappings-pushwoosh')
  // A field with the catalog's choices is a picker: Webhooks (Actions)'s method.
  const actionsHook = `actions-${run}`
  const created = await fetch(`${URL}/admin/v1/destinations/${actionsHook}`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${process.env.SLUICE_ADMIN_TOKEN}` },
    body: JSON.stringify({ type: 'actions_webhook', sources: [site], allow_private_networks: true, actions: [{ action: 'send', mapping: { url: hook } }] }),
  })
  check(created.status === 201, `the Webhooks (Actions) destination answered ${created.status}`)
  await admin.goto(`${URL}/console/destinations/${actionsHook}/mappings`)
  await admin.waitForSelector(`code:has-text("POST ${hook}")`)
  // Open already: the configuration lists an action.
  const method = admin.getByLabel('send method')
  check(await method.evaluate((el) => el.tagName === 'SELECT'), 'the method is a picker')
  const options = await method.locator('option').allInnerTexts()
  check(['"POST"', '"PUT"', '"PATCH"'].every((o) => options.includes(o)), `the picker offers the catalog's choices: ${options}`)
  await method.selectOption('"PUT"')
  await admin.waitForSelector(`code:has-text("PUT ${hook}")`)
  await admin.goto(`${URL}/console/destinations/${dest}/tester`)

  // Event Tester: the receiver answers 200.
  await admin.getByRole('button', { name: 'Send test event' }).click()
  await admin.waitForSelector('text=Result:')
  const tested = await admin.locator('main').innerText()
  check(tested.includes('delivered') && tested.includes('200'), `the tester shows the 200: ${tested.slice(0, 300)}`)
  check(hits.length >= 1, 'the receiver got the test event')
  await shot(admin, 'destination-tester')

  // Event Delivery: the counts (the event sent above reaches the hook too).
  await admin.getByRole('link', { name: 'Event Delivery' }).click()
  await admin.waitForSelector('main table')
  await shot(admin, 'destination-delivery')
  await accessibility(admin, 'delivery')

  // Event search: the journey of an event sent now, once the hook has it.
  const second = await fetch(`${URL}/v1/track`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Basic ' + Buffer.from(siteKey + ':').toString('base64') },
    body: JSON.stringify({ userId: `console-${run}`, event: `Console Checkout ${run}`, messageId: `console-${run}-2` }),
  })
  check(second.status === 200, `the second track answered ${second.status}`)
  const until = Date.now() + 20_000
  while (!hits.some((h) => h.body.includes(`console-${run}-2`)) && Date.now() < until) {
    await new Promise((r) => setTimeout(r, 100))
  }
  await admin.goto(`${URL}/console/events?id=console-${run}-2`)
  await admin.waitForSelector('text=Deliveries')
  check((await admin.locator('main').innerText()).includes(dest), 'the journey names the destination')
  await shot(admin, 'event-search')

  // Profiles: the user of the events above (once the profile consumer filed them), then
  // delete and suppress it.
  const filed = Date.now() + 30_000
  while (Date.now() < filed) {
    const r = await fetch(`${URL}/v1/spaces/default/collections/users/profiles/user_id:console-${run}/traits`, {
      headers: { authorization: 'Basic ' + Buffer.from(process.env.SLUICE_ADMIN_TOKEN + ':').toString('base64') },
    })
    if (r.status === 200) break
    await new Promise((res) => setTimeout(res, 200))
  }
  await admin.goto(`${URL}/console/profiles?type=user_id&id=console-${run}`)
  await admin.waitForSelector('text=Identities', { timeout: 30_000 })
  check((await admin.locator('main').innerText()).includes(`console-${run}`), 'the profile lists the user id')
  await shot(admin, 'profile')
  await accessibility(admin, 'profile')
  // Event search by user: the user's events from the profile store, each leading to its
  // journey (once the profile consumer filed the second track).
  const eventsUrl = `${URL}/v1/spaces/default/collections/users/profiles/user_id:console-${run}/events?limit=50`
  const listed = Date.now() + 30_000
  while (Date.now() < listed) {
    const r = await fetch(eventsUrl, { headers: { authorization: 'Basic ' + Buffer.from(process.env.SLUICE_ADMIN_TOKEN + ':').toString('base64') } })
    if (r.status === 200 && (await r.text()).includes(`console-${run}-2`)) break
    await new Promise((res) => setTimeout(res, 200))
  }
  await admin.goto(`${URL}/console/events`)
  await admin.getByLabel('User').fill(`console-${run}`)
  await admin.getByRole('button', { name: 'Find their events' }).click()
  await admin.getByRole('link', { name: `console-${run}-2` }).click()
  await admin.waitForSelector('text=Deliveries')
  check((await admin.locator('main').innerText()).includes(dest), 'the journey from the user search names the destination')
  await admin.goto(`${URL}/console/profiles?type=user_id&id=console-${run}`)
  await admin.waitForSelector('text=Identities', { timeout: 30_000 })
  await admin.getByRole('button', { name: 'Delete and suppress this user' }).click()
  await admin.waitForSelector('text=submitted')

  // A warehouse (when the server has one: .ci/run's, fed by the client suites): a value
  // its column cannot take is in the discards view; a window replay runs to its end.
  if (process.env.SLUICE_WAREHOUSE) {
    const wh = process.env.SLUICE_WAREHOUSE
    // A number first (the column's type, when the table is new), then a text.
    const group = await fetch(`${URL}/v1/batch`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Basic ' + Buffer.from(process.env.SLUICE_WAREHOUSE_WRITE_KEY + ':').toString('base64') },
      body: JSON.stringify({ batch: [
        { type: 'group', userId: `warehouse-${run}`, groupId: `g0-${run}`, traits: { employees: 5 } },
        { type: 'group', userId: `warehouse-${run}`, groupId: `g-${run}`, traits: { employees: `many-${run}` } },
      ] }),
    })
    check(group.status === 200, `the group calls answered ${group.status}`)
    const discarded = Date.now() + 60_000
    let seen = false
    while (!seen && Date.now() < discarded) {
      const r = await fetch(`${URL}/admin/v1/warehouses/${wh}/discards`, { headers: { authorization: `Bearer ${process.env.SLUICE_ADMIN_TOKEN}` } })
      seen = r.status === 200 && (await r.text()).includes(`many-${run}`)
      if (!seen) await new Promise((res) => setTimeout(res, 250))
    }
    check(seen, 'the warehouse discarded the text in its integer column')
    await admin.goto(`${URL}/console/warehouses/${wh}`)
    await admin.waitForSelector(`pre:has-text("many-${run}")`)
    check((await admin.locator('main').innerText()).includes('employees'), 'the discards view names the column')
    await admin.getByRole('button', { name: 'Replay window' }).click()
    await admin.waitForSelector('text=started')
    await admin.locator('td', { hasText: 'finished' }).first().waitFor({ timeout: 60_000 })
    await shot(admin, 'warehouse')
    await accessibility(admin, 'warehouse')
  }

  // The sources list: the new source with its volume.
  await admin.locator('#nav').getByRole('link', { name: 'Sources' }).click()
  await admin.waitForSelector(`text=${site}`)
  await shot(admin, 'sources')
  await accessibility(admin, 'sources')

  // Privacy and Access: add a viewer.
  await admin.locator('#nav').getByRole('link', { name: 'Privacy' }).click()
  await admin.waitForSelector('text=Regulations')
  await shot(admin, 'privacy')
  await admin.locator('#nav').getByRole('link', { name: 'Access' }).click()
  await admin.getByLabel('User name').fill(`viewer-${run}`)
  await admin.getByLabel('Password').fill('a long viewer password')
  await admin.getByRole('button', { name: 'Save user' }).click()
  await admin.waitForSelector(`td:text("viewer-${run}")`)
  await shot(admin, 'access')
  await accessibility(admin, 'access')
  check(errors.length === 0, `console errors in the admin's tab: ${errors.join(' | ')}`)
  check(dialogs.length === 0 || dialogs.every((d) => !d.includes('owned')), 'no dialog from event content')

  // The viewer reads, sees no write key, and cannot change anything.
  const viewer = await (await browser.newContext()).newPage()
  await signIn(viewer, `viewer-${run}`, 'a long viewer password')
  await viewer.waitForSelector('main table')
  check(!(await viewer.locator('main').innerText()).includes(WRITE_KEY), 'a viewer sees no write key')
  await viewer.goto(`${URL}/console/destinations/${dest}`)
  await viewer.waitForSelector('textarea')
  check(await viewer.getByRole('button', { name: 'Save' }).count() === 0, 'a viewer has no Save button')
  const status = await viewer.evaluate(async ([d]) => {
    const me = await (await fetch('/admin/v1/me')).json()
    const r = await fetch('/admin/v1/destinations/' + d, {
      method: 'DELETE', headers: { 'X-CSRF-Token': me.csrf },
    })
    return r.status
  }, [dest])
  check(status === 403, `a viewer's DELETE answered ${status}`)
  // The viewer may preview, and sees the Pushwoosh key masked.
  await viewer.goto(`${URL}/console/destinations/${push}/mappings`)
  await viewer.waitForSelector('.preview h2:has-text("trackEvent")')
  const seen = await viewer.locator('main').innerText()
  check(seen.includes('Token ********') && !seen.includes('pw-secret-key'), 'a viewer\'s preview masks the key')
} finally {
  await browser.close()
  receiver.close()
  shop.close()
}
if (problems.length) {
  console.error('console in Chromium:\n' + problems.join('\n'))
  process.exit(1)
}
console.log(`console in Chromium: sign-in, debugger (hostile event shown as text), catalog → destination, preview, tester (200), delivery, event search, access; viewer refused; axe: no serious violations; screenshots in ${shots}`)
