// The source debugger in headless Chromium while RATE events a second arrive for
// SECONDS_RUN seconds (bench/console.sh): the tab's JS heap at the end, its renderer
// processes' private memory (for a blank page first: the baseline; the console idle
// before the load; and the most seen during it), its
// long tasks (over 50 ms), how many events it received and drew. A measurement, not a
// test.
import { chromium } from 'playwright-core'
import fs from 'node:fs'

const URL = process.env.SLUICE_URL
const KEY = process.env.SLUICE_WRITE_KEY
const SOURCE = process.env.SLUICE_SOURCE ?? 'default'
const RATE = Number(process.env.RATE ?? 2000)
const SECONDS = Number(process.env.SECONDS_RUN ?? 30)

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--enable-precise-memory-info'],
})
const page = await browser.newPage()

/**
 * The memory (MB) of this browser's renderer processes (the tab's), from /proc: `RssAnon`,
 * the private memory (what Chrome's task manager calls the memory footprint; shared
 * libraries and fonts left out), and the renderers counted.
 */
function rendererMB() {
  // The browser is a child of this node process; its renderers descend from it.
  const root = process.pid
  const parent = new Map()
  const renderers = []
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8')
      parent.set(Number(d), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]))
      if (fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').includes('--type=renderer')) renderers.push(Number(d))
    } catch (_) { /* a process that ended meanwhile */ }
  }
  let kb = 0
  let count = 0
  for (const pid of renderers) {
    let p = pid
    while (p && p !== root) p = parent.get(p)
    if (p !== root) continue
    try {
      const m = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/RssAnon:\s+(\d+) kB/)
      if (m) {
        kb += Number(m[1])
        count += 1
      }
    } catch (_) { /* ended */ }
  }
  return { mb: kb / 1024, count }
}
const blankRenderer = rendererMB()

await page.goto(`${URL}/`)
await page.getByLabel('User name').fill('admin')
await page.getByLabel('Password').fill(process.env.SLUICE_ADMIN_PASSWORD)
await page.getByRole('button', { name: 'Sign in' }).click()
await page.waitForSelector('#who button')
await page.goto(`${URL}/console/sources/${SOURCE}`)
await page.waitForSelector('ul.events')
await page.evaluate(() => {
  window.__long = []
  new PerformanceObserver((l) => { for (const e of l.getEntries()) window.__long.push(e.duration) })
    .observe({ type: 'longtask', buffered: true })
})
const auth = 'Basic ' + Buffer.from(KEY + ':').toString('base64')
const idle = rendererMB()
let maxRendererMB = idle.mb
const sampler = setInterval(() => { maxRendererMB = Math.max(maxRendererMB, rendererMB().mb) }, 1000)
const started = Date.now()
let sent = 0
// Batches of RATE/10 every 100 ms.
while (Date.now() - started < SECONDS * 1000) {
  const n = Math.round(RATE / 10)
  const batch = Array.from({ length: n }, (_, i) => ({ type: 'track', userId: `u${(sent + i) % 500}`, event: 'Load Test',
    properties: { i: sent + i, note: 'x'.repeat(200) } }))
  const t = Date.now()
  await fetch(`${URL}/v1/batch`, { method: 'POST', headers: { authorization: auth, 'content-type': 'application/json' }, body: JSON.stringify({ batch }) })
  sent += n
  const wait = 100 - (Date.now() - t)
  if (wait > 0) await new Promise((r) => setTimeout(r, wait))
}
await new Promise((r) => setTimeout(r, 1000))
clearInterval(sampler)
maxRendererMB = Math.max(maxRendererMB, rendererMB().mb)
const m = await page.evaluate(() => ({
  heapMB: performance.memory ? performance.memory.usedJSHeapSize / 1048576 : null,
  longTasks: window.__long.length,
  longestMs: Math.max(0, ...window.__long),
  rows: document.querySelectorAll('ul.events li').length,
  status: document.querySelector('main .row .muted')?.textContent,
}))
// Still responsive: a click on an event row opens it.
const t = Date.now()
await page.locator('ul.events li button').first().click()
await page.waitForSelector('text=Raw')
m.clickToDetailMs = Date.now() - t
m.sent = sent
m.blankPageRendererMB = Math.round(blankRenderer.mb)
m.idleRendererMB = Math.round(idle.mb)
m.maxRendererMB = Math.round(maxRendererMB)
m.renderers = idle.count
m.seconds = SECONDS
m.rate = Math.round(sent / ((Date.now() - started) / 1000))
await browser.close()
console.log(JSON.stringify(m))
