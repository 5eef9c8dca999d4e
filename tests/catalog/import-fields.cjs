// Brings an action's fields, default subscription and the presets from Segment's
// published definition into a catalog file, so both type and clean the payload alike:
//   node tests/catalog/import-fields.cjs <segment directory> catalog/<entry>.json
// Each action of the catalog file that Segment's destination also has gets Segment's
// fields (type, required, multiple, allow_null, format uri or email, properties, additional_properties,
// default, choices, description) and default subscription; the presets become Segment's
// automatic presets. The request templates (the catalog's own part) are left alone.
// Review the diff: a field the request template reads may have been renamed.
'use strict'
const fs = require('node:fs')
const [dir, file] = process.argv.slice(2)
if (!dir || !file) {
  console.error('usage: node tests/catalog/import-fields.cjs <segment directory> catalog/<entry>.json')
  process.exit(2)
}
const def = require(`@segment/action-destinations/dist/destinations/${dir}`).default
const entry = JSON.parse(fs.readFileSync(file, 'utf8'))

const TYPES = { string: 'string', text: 'text', password: 'password', number: 'number', integer: 'integer', boolean: 'boolean', datetime: 'datetime', object: 'object', hidden: 'string' }

function spec(f, nested) {
  const out = { type: TYPES[f.type] ?? 'string' }
  if (f.required === true) out.required = true
  if (f.multiple) out.multiple = true
  if (f.allowNull) out.allow_null = true
  if (f.format === 'uri' || f.format === 'email') out.format = f.format
  if (f.type === 'object' && f.properties) {
    out.properties = Object.fromEntries(Object.entries(f.properties).map(([k, p]) => [k, spec(p, true)]))
    // Segment's schema: an object with properties takes no others unless it says so.
    out.additional_properties = !!f.additionalProperties
  }
  if (f.choices) out.choices = f.choices.map((c) => (typeof c === 'string' ? c : c.value))
  if (!nested) {
    if (f.default !== undefined) out.default = f.default
    if (f.description) out.description = f.description
  }
  return out
}

let changed = 0
for (const [slug, action] of Object.entries(entry.actions ?? {})) {
  const theirs = def.actions[slug]
  if (!theirs) continue
  action.fields = Object.fromEntries(Object.entries(theirs.fields).map(([k, f]) => [k, spec(f, false)]))
  if (theirs.defaultSubscription) action.default_subscription = theirs.defaultSubscription
  changed += 1
}
const presets = (def.presets ?? []).filter((p) => (p.type ?? 'automatic') === 'automatic' && entry.actions?.[p.partnerAction])
if (presets.length || (def.presets ?? []).length === 0) {
  entry.presets = presets.map((p) => ({ action: p.partnerAction, subscription: p.subscribe, mapping: p.mapping }))
}
fs.writeFileSync(file, JSON.stringify(entry, null, 2) + '\n')
console.log(`${file}: ${changed} actions from Segment's ${dir}; ${presets.length} presets`)
