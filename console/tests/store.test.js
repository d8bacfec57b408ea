// Unit tests of the store and its API client: retries on transient failures only, clear
// errors, the token, the brief's Cache API calls, and the event-stream reader. `fetch` is a
// scripted stand-in here; the browser tests run the same store against a real worker.
import { describe, expect, it } from 'vitest'
import { createStore, readEvents } from '../src/store.js'
import { ApiError, createClient } from '../src/api.js'

/** A fetch that answers from `script` in order and records each request. */
function scripted(script) {
  const calls = []
  const f = async (url, init = {}) => {
    calls.push({ url, ...init, body: init.body === undefined ? undefined : JSON.parse(init.body) })
    const next = script.shift()
    if (next instanceof Error) throw next
    const [status, body] = next
    return new Response(body === undefined ? '' : JSON.stringify(body), { status })
  }
  return { f, calls }
}

const noSleep = { sleep: async () => {}, retries: { attempts: 3, baseDelayMs: 1 } }

function memoryStorage() {
  const m = new Map()
  return { getItem: (k) => m.get(k) ?? null, setItem: (k, v) => m.set(k, v), removeItem: (k) => m.delete(k), m }
}

describe('the API client', () => {
  it('retries a 503 and a network failure, then succeeds', async () => {
    const { f, calls } = scripted([[503, { error: 'unavailable', detail: 'postgres: gone' }], new TypeError('failed to fetch'), [200, { ok: 1 }]])
    const c = createClient({ fetch: f, ...noSleep })
    expect(await c.call('GET', '/stats')).toEqual({ ok: 1 })
    expect(calls).toHaveLength(3)
  })

  it('never retries bad input, and says what was wrong', async () => {
    const { f, calls } = scripted([[400, { error: 'bad_request', detail: 'ttl -5: expected 0 to 2147483647 seconds' }]])
    const c = createClient({ fetch: f, ...noSleep })
    const e = await c.call('PATCH', '/configs/x', { ttl: -5 }).catch((x) => x)
    expect(e).toBeInstanceOf(ApiError)
    expect(e.status).toBe(400)
    expect(e.code).toBe('bad_request')
    expect(e.detail).toContain('ttl -5')
    expect(e.transient).toBe(false)
    expect(calls).toHaveLength(1)
  })

  it('gives up after the last attempt with the last error', async () => {
    const { f, calls } = scripted([[502, undefined], [504, undefined], [503, { error: 'unavailable', detail: 'redis: down' }]])
    const c = createClient({ fetch: f, ...noSleep })
    const e = await c.call('GET', '/stats').catch((x) => x)
    expect(e.detail).toBe('redis: down')
    expect(calls).toHaveLength(3)
  })

  it('waits longer between each attempt', async () => {
    const waits = []
    const { f } = scripted([[503, {}], [503, {}], [200, {}]])
    const c = createClient({ fetch: f, retries: { attempts: 3, baseDelayMs: 100 }, sleep: async (ms) => { waits.push(ms) } })
    await c.call('GET', '/stats')
    expect(waits).toEqual([100, 200])
  })
})

describe('the store', () => {
  it('sends the token once given, keeps it for the session only, and forgets it when cleared', async () => {
    const storage = memoryStorage()
    const { f, calls } = scripted([[200, {}], [200, {}]])
    const s = createStore({ fetch: f, storage, ...noSleep })
    await s.getCache('course:1')
    expect(calls[0].headers.Authorization).toBeUndefined()
    s.setToken(' t0k ')
    expect(storage.m.get('cachewarden.token')).toBe('t0k')
    await s.setCache('course:1', 'v', 60)
    expect(calls[1].headers.Authorization).toBe('Bearer t0k')
    s.setToken('')
    expect(storage.m.has('cachewarden.token')).toBe(false)
  })

  it('maps the Cache API to the operator API', async () => {
    const { f, calls } = scripted([[200, {}], [200, {}], [200, {}], [201, { ids: ['a'], removed: 2 }], [200, { count: 3 }], [200, {}], [200, {}]])
    const s = createStore({ fetch: f, storage: null, ...noSleep })
    await s.getCache('a/b:1')
    await s.getCache('full', { raw: true })
    await s.setCache('course:1', 'hello', 30)
    expect(await s.invalidateCache('course:*', { reason: 'r' })).toEqual({ ids: ['a'], removed: 2 })
    await s.invalidateCache({ tags: ['catalog'] }, { dryRun: true })
    await s.deleteCache('course:1', { reason: 'bad' })
    await s.listInvalidations({ status: 'failed', limit: 10, cursor: '' })
    expect(calls.map((c) => `${c.method} ${c.url}`)).toEqual([
      'GET /api/v1/keys/a%2Fb%3A1',
      'GET /api/v1/keys/full?raw=true',
      'PUT /api/v1/keys/course%3A1',
      'POST /api/v1/invalidations',
      'POST /api/v1/invalidations?dry_run=true',
      'DELETE /api/v1/keys/course%3A1?reason=bad',
      'GET /api/v1/invalidations?status=failed&limit=10',
    ])
    expect(calls[2].body).toEqual({ value: 'hello', ttl: 30 })
    expect(calls[3].body).toEqual({ pattern: 'course:*', reason: 'r' })
    expect(calls[4].body).toEqual({ tags: ['catalog'], reason: '' })
  })

  it('getCache answers a key Redis does not hold with what the API says of it', async () => {
    const absent = { key: 'course:404', redis_key: ':1:course:404', exists: false, rules: [{ rule: 'course' }] }
    const { f } = scripted([[404, absent], [404, { error: 'not_found', detail: 'no such endpoint' }]])
    const s = createStore({ fetch: f, storage: null, ...noSleep })
    expect(await s.getCache('course:404')).toEqual(absent)
    expect(s.state.error).toBeNull()
    await expect(s.getCache('x')).rejects.toThrow('no such endpoint')
  })

  it('updateConfig replaces the rule in the state; errors land in state.error', async () => {
    const view = { name: 'course', is_active: false, drift: [] }
    const { f } = scripted([[200, [{ name: 'course', is_active: true, drift: [] }]], [200, view], [403, { error: 'forbidden', detail: 'set [api] token' }]])
    const s = createStore({ fetch: f, storage: null, ...noSleep })
    await s.listConfigs()
    await s.updateConfig('course', { is_active: false })
    expect(s.state.configs[0].is_active).toBe(false)
    expect(s.state.error).toBeNull()
    await expect(s.updateConfig('course', { ttl: 5 })).rejects.toThrow('set [api] token')
    expect(s.state.error.status).toBe(403)
    expect(s.state.error.code).toBe('forbidden')
  })

  it('keeps a bounded lag history and the health from the figures', async () => {
    const script = []
    for (let i = 0; i < 130; i++) script.push([200, { now: `t${i}`, lag_ms_p50: i, lag_ms_p99: 2 * i, ready: i % 2 === 0, not_ready: [] }])
    const { f } = scripted(script)
    const s = createStore({ fetch: f, storage: null, ...noSleep })
    for (let i = 0; i < 130; i++) await s.getCacheStats('5m')
    expect(s.state.lagHistory).toHaveLength(120)
    expect(s.state.lagHistory.at(-1)).toEqual({ at: 't129', p50: 129, p99: 258 })
    expect(s.state.health.ready).toBe(false)
  })

  it('applies live events: newest invalidations first, bounded; health; config rows', () => {
    const s = createStore({ fetch: async () => new Response('[]'), storage: null })
    s.state.configs = [{ name: 'course', is_active: true }]
    for (let i = 0; i < 60; i++) s.apply('invalidation', { id: String(i) })
    expect(s.state.recent).toHaveLength(50)
    expect(s.state.recent[0].id).toBe('59')
    s.apply('health', { ready: false, reasons: ['redis unreachable'] })
    expect(s.state.health.reasons).toEqual(['redis unreachable'])
    s.apply('config', { name: 'course', is_active: false })
    expect(s.state.configs[0].is_active).toBe(false)
  })
})

describe('the event-stream reader', () => {
  it('parses named events across chunk boundaries and skips comments and non-JSON', async () => {
    const text = ': keep-alive\n\nevent: health\ndata: {"ready":true,"reasons":[]}\n\nevent: invalidation\ndata: {"id":"x"}\n\nevent: junk\ndata: not json\n\n'
    const bytes = new TextEncoder().encode(text)
    const body = new ReadableStream({
      start(c) {
        for (let i = 0; i < bytes.length; i += 7) c.enqueue(bytes.slice(i, i + 7))
        c.close()
      },
    })
    const seen = []
    await readEvents(body, (name, data) => seen.push([name, data]))
    expect(seen).toEqual([['health', { ready: true, reasons: [] }], ['invalidation', { id: 'x' }]])
  })
})
