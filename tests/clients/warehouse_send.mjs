// The warehouse proof's events from Segment's official Node library (see
// warehouse_check.py, which sends the same set from the Python library and checks the
// warehouse). Fixed ids and times, so the warehouse's rows can be compared with a file.
import { Analytics } from '@segment/analytics-node'

const analytics = new Analytics({
  writeKey: process.env.SLUICE_WAREHOUSE_WRITE_KEY,
  host: process.env.SLUICE_URL,
  flushAt: 7,
  maxRetries: 1,
})
const errors = []
analytics.on('error', (err) => errors.push(String(err?.reason ?? err?.message ?? err)))

const lib = 'node'
const user = `wh-user-${lib}`
const anon = `wh-anon-${lib}`
const timestamp = new Date('2024-05-01T10:00:00.123Z')
const calls = [
  ['identify', { userId: user, anonymousId: anon,
    traits: { email: `${lib}@example.com`, plan: 'pro', address: { city: 'Berlin', street: 'Main St 1' }, logins: 3, vip: true } }],
  ['track', { userId: user, event: 'Order Completed',
    properties: { order_id: 'o-1', revenue: 42.5, currency: 'EUR', products: [{ sku: 'A', price: 10 }], coupon: null } }],
  ['track', { userId: user, event: 'Signed Up', properties: { method: 'email' } }],
  ['page', { anonymousId: anon, category: 'Docs', name: 'Install',
    properties: { url: 'https://example.com/docs/install', path: '/docs/install' } }],
  ['screen', { userId: user, name: 'Home' }],
  ['group', { userId: user, groupId: `wh-group-${lib}`, traits: { name: 'Acme', employees: 50 } }],
  ['alias', { userId: user, previousId: anon }],
]
calls.forEach(([kind, params], i) => {
  analytics[kind]({ ...params, messageId: `wh-${lib}-${i}-${kind}`, timestamp })
})
await analytics.closeAndFlush({ timeout: 20000 })
if (errors.length) {
  console.error('node client reported errors:', errors)
  process.exit(1)
}
console.log(`node client: ${calls.length} warehouse events sent`)
