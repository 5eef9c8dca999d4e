// A page of another origin for the browser suites: `page` at `/`, and unmodified
// analytics.js (the @segment/analytics-next UMD build from npm) under `/ajs/`.
import http from 'node:http'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const umd = path.join(here, 'node_modules/@segment/analytics-next/dist/umd')

/** Serves `page` on a free port of 127.0.0.1: `{ url, close }`. */
export async function startShop(page) {
  const server = http.createServer((req, res) => {
    if (req.url === '/') {
      res.writeHead(200, { 'content-type': 'text/html' })
      return res.end(page)
    }
    const file = path.join(umd, path.basename(req.url.replace(/^\/ajs\//, '')))
    if (req.url.startsWith('/ajs/') && fs.existsSync(file)) {
      res.writeHead(200, { 'content-type': 'application/javascript' })
      return res.end(fs.readFileSync(file))
    }
    res.writeHead(404)
    res.end()
  })
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  return { url: `http://127.0.0.1:${server.address().port}/`, close: () => server.close() }
}
