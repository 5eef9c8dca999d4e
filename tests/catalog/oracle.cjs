// Segment's own Actions destinations as an oracle (tests/catalog/package.json pins the
// published @segment/action-destinations). Reads one JSON object per line on stdin:
//   {"destination": "<directory under dist/destinations>", "settings": {...}, "event": {...},
//    "actions"?: [{"action", "subscription", "mapping"}], "status"?: 202}
// and answers one line per input on stdout:
//   {"calls": [{"action", "requests": [{"method", "url", "headers", "body"}], "error"?}]}
// Without "actions", the destination's automatic presets run (each whose subscription
// matches the event), as a new Segment destination does; an action given without its
// subscription gets the definition's default one, and its mapping is laid over the
// fields' default mappings. Every request is intercepted
// (nock, network connections disabled): nothing leaves the machine; each is answered
// with `{}` and the input's status (200 unless it says). Driven by crates/destinations/tests/segment_oracle.rs.
'use strict'
const readline = require('node:readline')
const nock = require('nock')
const { Destination } = require('@segment/actions-core')
const { validate, parseFql } = require('@segment/destination-subscriptions')

nock.disableNetConnect()
let seen = []
// The status every request is answered with: the input's `status` (default 200).
let answerStatus = 200
for (const method of ['GET', 'POST', 'PUT', 'PATCH', 'DELETE']) {
  nock(/.*/).persist().intercept(/.*/, method).reply(function (uri, body) {
    const headers = {}
    for (const [k, v] of Object.entries(this.req.headers)) headers[k.toLowerCase()] = Array.isArray(v) ? v.join(', ') : String(v)
    const o = this.req.options
    const scheme = (o.proto || (o.protocol || 'https:').replace(/:$/, ''))
    const port = o.port && !['80', '443', 80, 443].includes(o.port) ? ':' + o.port : ''
    seen.push({ method, url: scheme + '://' + (o.hostname || o.host) + port + uri, headers, body: body === undefined ? null : body })
    return [answerStatus, '{}', { 'content-type': 'application/json' }]
  })
}

const destinations = new Map()
function destination(name) {
  if (!destinations.has(name)) {
    const def = require(`@segment/action-destinations/dist/destinations/${name}`).default
    destinations.set(name, { def, runner: new Destination(def) })
  }
  return destinations.get(name)
}

const quiet = { info() {}, error() {}, warn() {}, debug() {}, crit() {}, log() {}, level: 'error', name: 'oracle', withTags() { return quiet } }

async function run(input) {
  const { def, runner } = destination(input.destination)
  const actions = input.actions ?? (def.presets ?? [])
    .filter((p) => p.type === 'automatic' || p.type === undefined)
    .map((p) => ({ action: p.partnerAction, subscription: p.subscribe, mapping: p.mapping }))
  answerStatus = input.status ?? 200
  const calls = []
  for (const given of actions) {
    // An action named without a subscription or a mapping gets its definition's
    // default subscription and its fields' default mappings, as a new action in
    // Segment's app does.
    const fields = (def.actions[given.action] || {}).fields || {}
    const defaults = Object.fromEntries(Object.entries(fields).filter(([, f]) => f.default !== undefined).map(([k, f]) => [k, f.default]))
    const a = {
      action: given.action,
      subscription: given.subscription ?? (def.actions[given.action] || {}).defaultSubscription,
      // A mapping given is laid over the defaults, as Segment's app pre-fills a new
      // action's fields with them (and as Sluice's configured mappings override them).
      mapping: { ...defaults, ...(given.mapping ?? {}) },
    }
    if (!a.subscription || !validate(parseFql(a.subscription), input.event)) continue
    // An action with sync modes gets its default one, as Segment's app sets it.
    const modes = (def.actions[a.action] || {}).syncMode
    if (modes && modes.default && a.mapping.__segment_internal_sync_mode === undefined) {
      a.mapping = { ...a.mapping, __segment_internal_sync_mode: modes.default }
    }
    seen = []
    const call = { action: a.action }
    try {
      await runner.executeAction(a.action, {
        event: JSON.parse(JSON.stringify(input.event)),
        mapping: a.mapping ?? {},
        settings: input.settings ?? {},
        auth: input.auth,
        features: {},
        statsContext: {},
        logger: quiet,
        transactionContext: { transaction: {}, setTransaction() {} },
        stateContext: { getRequestContext() {}, setResponseContext() {} },
        subscriptionMetadata: {},
      })
    } catch (e) {
      call.error = String(e && e.message ? e.message : e)
    }
    call.requests = seen
    calls.push(call)
  }
  return { calls }
}

// One input at a time, answers in input order.
const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
let queue = Promise.resolve()
lines.on('line', (line) => {
  if (!line.trim()) return
  queue = queue.then(async () => {
    let out
    try {
      out = await run(JSON.parse(line))
    } catch (e) {
      out = { fatal: String(e && e.stack ? e.stack : e) }
    }
    process.stdout.write(JSON.stringify(out) + '\n')
  })
})
