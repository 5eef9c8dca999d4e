// Unmodified analytics.js (@segment/analytics-next from npm) in headless Chromium against
// a running Sluice. The page only sets `cdnURL` to the Sluice URL: analytics.js loads
// /v1/projects/{writeKey}/settings from Sluice, which points its `Segment.io` integration
// back at Sluice, and sends cross-origin (CORS) from a page served on another port.
import { chromium } from 'playwright-core'
import { startShop } from './shop.mjs'
import { randomUUID } from 'node:crypto'

const URL = process.env.SLUICE_URL
const WRITE_KEY = process.env.SLUICE_WRITE_KEY
const TOKEN = process.env.SLUICE_ADMIN_TOKEN
const SOURCE = process.env.SLUICE_SOURCE ?? 'web'

const page = `<!doctype html><html><head><title>sluice browser test</title>
<script src="/ajs/index.js"></script></head><body><h1>shop</h1><script>
window.runAnalytics = async (writeKey, cdnURL, userId) => {
  const [analytics] = await AnalyticsNext.AnalyticsBrowser.load({ writeKey, cdnURL })
  await analytics.identify(userId, { email: userId + '@example.com', plan: 'pro' })
  await analytics.track('Browser Checkout', { revenue: 12.5 })
  await analytics.page('Docs', 'Install')
  return analytics.user().id()
}
</script></body></html>`

const shop = await startShop(page)
const pageUrl = shop.url

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
})
const userId = `browser-${randomUUID().slice(0, 8)}`
const problems = []
try {
  const tab = await browser.newPage()
  const consoleErrors = []
  tab.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()))
  await tab.goto(pageUrl)
  const id = await tab.evaluate(([wk, cdn, uid]) => window.runAnalytics(wk, cdn, uid), [WRITE_KEY, URL, userId])
  if (id !== userId) problems.push(`analytics.user().id() is ${id}`)

  // analytics.js sends asynchronously: wait (bounded) until the three events are stored.
  let mine = []
  const deadline = Date.now() + 20_000
  while (Date.now() < deadline) {
    const res = await fetch(`${URL}/admin/v1/sources/${SOURCE}/events?limit=1000`, {
      headers: { Authorization: `Bearer ${TOKEN}` },
    })
    mine = (await res.json()).data.map((e) => e.event).filter((e) => e.userId === userId)
    if (mine.length >= 3) break
    await new Promise((r) => setTimeout(r, 200))
  }
  const byType = Object.fromEntries(mine.map((e) => [e.type, e]))
  for (const t of ['identify', 'track', 'page']) {
    const e = byType[t]
    if (!e) {
      problems.push(`${t} not stored (console errors: ${consoleErrors.join(' | ')})`)
      continue
    }
    if (e.context?.library?.name !== 'analytics.js') problems.push(`${t}: library ${JSON.stringify(e.context?.library)}`)
    if (!e.context?.page?.url?.startsWith(pageUrl)) problems.push(`${t}: context.page.url ${e.context?.page?.url}`)
    if (!e.context?.userAgent) problems.push(`${t}: no userAgent`)
    if (!e.anonymousId) problems.push(`${t}: no anonymousId`)
    if (!e.messageId?.startsWith('ajs-')) problems.push(`${t}: messageId ${e.messageId}`)
    if (!e.originalTimestamp || !e.receivedAt || !e.sentAt) problems.push(`${t}: timestamps missing`)
  }
  if (byType.track && byType.track.event !== 'Browser Checkout') problems.push('track event name')
  if (byType.identify && byType.identify.traits?.plan !== 'pro') problems.push('identify traits')
  if (byType.page && byType.page.name !== 'Install') problems.push('page name')
  // analytics.js found its ingest host in the settings document Sluice served.
  const metrics = await (await fetch(`${URL}/metrics`)).text()
  if (!metrics.includes('route="/v1/projects/{write_key}/settings",status="200"')) {
    problems.push('analytics.js never loaded its settings from Sluice')
  }
} finally {
  await browser.close()
  shop.close()
}
if (problems.length) {
  console.error('analytics.js in Chromium:\n' + problems.join('\n'))
  process.exit(1)
}
console.log('analytics.js in Chromium: identify, track and page stored via the settings document and CORS')
