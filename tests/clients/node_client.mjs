// Segment's official Node library (@segment/analytics-node from npm) against a running
// Sluice: only the host changes. Sends every call type, flushes, and checks through the
// admin API that each event is stored with the right fields and timestamps.
import { Analytics } from '@segment/analytics-node'
import { randomUUID } from 'node:crypto'

const URL = process.env.SLUICE_URL
const WRITE_KEY = process.env.SLUICE_WRITE_KEY
const TOKEN = process.env.SLUICE_ADMIN_TOKEN
const SOURCE = process.env.SLUICE_SOURCE ?? 'web'

const run = randomUUID().slice(0, 8)
const user = `node-user-${run}`
const anon = `node-anon-${run}`
const when = new Date('2024-05-01T10:00:00.123Z')

const errors = []
const analytics = new Analytics({ writeKey: WRITE_KEY, host: URL, flushAt: 4, maxRetries: 1 })
analytics.on('error', (err) => errors.push(String(err?.reason ?? err?.message ?? err)))

const sent = {
  identify: { userId: user, traits: { email: `${run}@example.com`, plan: 'pro' } },
  track: { userId: user, event: 'Order Completed', properties: { revenue: 42.5, currency: 'EUR' } },
  page: { anonymousId: anon, category: 'Docs', name: 'Install', properties: { url: 'https://example.com/docs' } },
  screen: { userId: user, name: 'Home' },
  group: { userId: user, groupId: `group-${run}`, traits: { name: 'Acme' } },
  alias: { userId: user, previousId: anon },
}
for (const [kind, params] of Object.entries(sent)) {
  params.messageId = `node-${kind}-${run}`
  params.timestamp = when
  analytics[kind](params)
}
await analytics.closeAndFlush({ timeout: 20000 })
if (errors.length) {
  console.error('client reported errors:', errors)
  process.exit(1)
}

const res = await fetch(`${URL}/admin/v1/sources/${SOURCE}/events?limit=1000`, {
  headers: { Authorization: `Bearer ${TOKEN}` },
})
const { data } = await res.json()
const byId = new Map(data.map((e) => [e.event.messageId, e.event]))
const problems = []
for (const [kind, params] of Object.entries(sent)) {
  const e = byId.get(params.messageId)
  if (!e) {
    problems.push(`${kind}: ${params.messageId} not stored`)
    continue
  }
  const received = new Date(e.receivedAt)
  const checks = {
    type: e.type === kind,
    library: e.context?.library?.name === '@segment/analytics-node',
    originalTimestamp: new Date(e.originalTimestamp).getTime() === when.getTime(),
    receivedAt: Math.abs(received.getTime() - Date.now()) < 300_000,
    timestamp: new Date(e.timestamp).getTime() < received.getTime() - 300 * 86_400_000,
    sentAt: typeof e.sentAt === 'string',
    noWriteKey: !('writeKey' in e),
  }
  if (kind === 'identify') checks.traits = e.traits?.plan === 'pro' && e.userId === user
  if (kind === 'track') checks.event = e.event === 'Order Completed' && e.properties?.revenue === 42.5
  if (kind === 'page') checks.page = e.name === 'Install' && e.anonymousId === anon
  if (kind === 'screen') checks.screen = e.name === 'Home'
  if (kind === 'group') checks.group = e.groupId === `group-${run}` && e.traits?.name === 'Acme'
  if (kind === 'alias') checks.alias = e.previousId === anon && e.userId === user
  const failed = Object.entries(checks).filter(([, ok]) => !ok).map(([k]) => k)
  if (failed.length) problems.push(`${kind}: ${failed.join(',')} in ${JSON.stringify(e)}`)
}
if (problems.length) {
  console.error('node client:\n' + problems.join('\n'))
  process.exit(1)
}
console.log(`node client: ${Object.keys(sent).length} events stored with the right fields`)
