// The console's store: the state the views share and the actions that change it, over the
// operator API. The brief's Cache API — getCache, setCache, invalidateCache, updateConfig
// (and getCacheStats) — lives here; every action records its error in `state.error` for the
// page to show, and rethrows it for the caller.
import { reactive } from 'vue'
import { createClient, keyPath, ApiError } from './api.js'

/**
 * @typedef {object} KeyInfo
 * @property {string} key the application's key
 * @property {string} redis_key the full Redis key
 * @property {boolean} exists
 * @property {string} type Redis type (`none` when absent)
 * @property {number|null} ttl seconds left
 * @property {string|null} value text, or base64 when `encoding` is `base64`
 * @property {'utf8'|'base64'|null} encoding
 * @property {number|null} memory_bytes
 * @property {{rule:string, template:string, fields:Object<string,string>, file:string, line:number, active:boolean}[]} rules
 *
 * @typedef {object} ConfigView
 * @property {string} name
 * @property {string} table
 * @property {string} key_pattern
 * @property {number|null} ttl
 * @property {string} strategy
 * @property {boolean} is_active
 * @property {string} updated_at
 * @property {string|null} updated_by
 * @property {boolean} loaded
 * @property {string|null} rule_file
 * @property {number|null} line
 * @property {string[]} drift
 *
 * @typedef {{is_active?: boolean, ttl?: number, strategy?: 'invalidate'|'refresh'|'write-through'}} ConfigPatch
 *
 * @typedef {object} Invalidation
 * @property {string} id
 * @property {string} key_pattern
 * @property {string} kind
 * @property {string} status
 * @property {string} reason
 * @property {string|null} rule_name
 * @property {string} triggered_at
 */

const TOKEN_KEY = 'cachewarden.token'
/** Most live invalidations kept for the dashboard. */
export const RECENT = 50
/** Lag samples kept for the chart (one per stats poll). */
export const LAG_POINTS = 120

/**
 * Makes a store.
 * @param {object} [options]
 * @param {typeof fetch} [options.fetch]
 * @param {Storage|null} [options.storage] where the token is kept (the session's)
 * @param {object} [options.retries]
 * @param {(ms:number)=>Promise<void>} [options.sleep]
 */
export function createStore({ fetch: f, storage = globalThis.sessionStorage ?? null, retries, sleep } = {}) {
  const state = reactive({
    token: storage?.getItem(TOKEN_KEY) ?? '',
    error: null,
    stats: null,
    configs: [],
    recent: [],
    health: null,
    rules: null,
    lagHistory: [],
    live: false,
  })
  const doFetch = f ?? globalThis.fetch?.bind(globalThis)
  const client = createClient({ fetch: doFetch, token: () => state.token || null, retries, sleep })

  async function act(fn) {
    try {
      const r = await fn()
      state.error = null
      return r
    } catch (e) {
      state.error = e instanceof ApiError ? e : new ApiError(0, 'client', String(e?.message ?? e))
      throw state.error
    }
  }

  /** Keeps the API token for this browser session (never in the URL, never in localStorage). */
  function setToken(token) {
    state.token = token.trim()
    if (state.token) storage?.setItem(TOKEN_KEY, state.token)
    else storage?.removeItem(TOKEN_KEY)
  }

  /**
   * A key as Redis holds it, and the rules that produce it.
   * @param {string} key
   * @param {{raw?: boolean}} [opts]
   * @returns {Promise<KeyInfo>}
   */
  const getCache = (key, { raw = false } = {}) =>
    act(async () => {
      try {
        return await client.call('GET', `/keys/${keyPath(key)}${raw ? '?raw=true' : ''}`)
      } catch (e) {
        // 404: not in Redis; the body still names the rules that produce the key.
        if (e instanceof ApiError && e.status === 404 && e.body?.redis_key) return e.body
        throw e
      }
    })

  /**
   * Sets a key (manual warming).
   * @param {string} key
   * @param {string} value
   * @param {number|null} [ttl] seconds
   */
  const setCache = (key, value, ttl = null, { raw = false } = {}) =>
    act(() => client.call('PUT', `/keys/${keyPath(key)}${raw ? '?raw=true' : ''}`,
      ttl ? { value, ttl } : { value }))

  /** Deletes one key, journaled. */
  const deleteCache = (key, { reason = '', raw = false } = {}) => {
    const q = new URLSearchParams()
    if (reason) q.set('reason', reason)
    if (raw) q.set('raw', 'true')
    const qs = q.toString()
    return act(() => client.call('DELETE', `/keys/${keyPath(key)}${qs ? `?${qs}` : ''}`))
  }

  /**
   * Invalidates a pattern (a string), or `{keys}` / `{tags}`, journaled; with `dryRun` it
   * returns what would be touched and touches nothing.
   * @param {string|{keys?: string[], tags?: string[]}} what
   * @param {{reason?: string, dryRun?: boolean}} [opts]
   */
  const invalidateCache = (what, { reason = '', dryRun = false } = {}) => {
    const body = typeof what === 'string' ? { pattern: what } : { ...what }
    body.reason = reason
    return act(() => client.call('POST', `/invalidations${dryRun ? '?dry_run=true' : ''}`, body))
  }

  /**
   * Changes one rule's switch, TTL or strategy; refreshes the rule in `state.configs`.
   * @param {string} rule
   * @param {ConfigPatch} config
   * @returns {Promise<ConfigView>}
   */
  const updateConfig = (rule, config) =>
    act(async () => {
      const view = await client.call('PATCH', `/configs/${keyPath(rule)}`, config)
      const i = state.configs.findIndex((c) => c.name === rule)
      if (i >= 0) state.configs[i] = view
      return view
    })

  /** The dashboard's figures over a window (`15m`, `1h`, …). */
  const getCacheStats = (window = '15m') =>
    act(async () => {
      const s = await client.call('GET', `/stats?window=${encodeURIComponent(window)}`)
      state.stats = s
      state.health = { ready: s.ready, reasons: s.not_ready }
      if (s.lag_ms_p50 !== null && s.lag_ms_p50 !== undefined) {
        state.lagHistory.push({ at: s.now, p50: s.lag_ms_p50, p99: s.lag_ms_p99 })
        if (state.lagHistory.length > LAG_POINTS) state.lagHistory.splice(0, state.lagHistory.length - LAG_POINTS)
      }
      return s
    })

  /** Every rule's configuration. */
  const listConfigs = () =>
    act(async () => {
      state.configs = await client.call('GET', '/configs')
      return state.configs
    })

  /** A page of the journal, newest first. */
  const listInvalidations = (params = {}) => {
    const q = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== undefined && v !== ''))
    const qs = q.toString()
    return act(() => client.call('GET', `/invalidations${qs ? `?${qs}` : ''}`))
  }

  /** Applies one server-sent event to the state. */
  function apply(name, data) {
    if (name === 'invalidation') {
      state.recent.unshift(data)
      if (state.recent.length > RECENT) state.recent.length = RECENT
    } else if (name === 'health') {
      state.health = data
    } else if (name === 'rules') {
      state.rules = data
    } else if (name === 'config') {
      const i = state.configs.findIndex((c) => c.name === data.name)
      if (i >= 0) state.configs[i] = data
    }
  }

  /**
   * Follows /api/v1/events (server-sent events read through fetch, so the token goes in a
   * header, never in the URL) until `signal` aborts; reconnects after a failure.
   * @param {AbortSignal} signal
   */
  async function follow(signal) {
    while (!signal.aborted) {
      try {
        const headers = { Accept: 'text/event-stream' }
        if (state.token) headers.Authorization = `Bearer ${state.token}`
        const res = await doFetch('/api/v1/events', { headers, signal })
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`)
        state.live = true
        await readEvents(res.body, apply)
      } catch (e) {
        if (signal.aborted) break
      }
      state.live = false
      await new Promise((r) => setTimeout(r, 2000))
    }
    state.live = false
  }

  return {
    state, setToken, getCache, setCache, deleteCache, invalidateCache, updateConfig,
    getCacheStats, listConfigs, listInvalidations, follow, apply,
  }
}

/**
 * Reads a `text/event-stream` body, calling `onEvent(name, data)` per event (data parsed as
 * JSON). Exported for tests.
 * @param {ReadableStream<Uint8Array>} body
 * @param {(name:string, data:any) => void} onEvent
 */
export async function readEvents(body, onEvent) {
  const reader = body.getReader()
  const decoder = new TextDecoder()
  let buffer = ''
  for (;;) {
    const { value, done } = await reader.read()
    if (done) return
    buffer += decoder.decode(value, { stream: true })
    let end
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end)
      buffer = buffer.slice(end + 2)
      let name = 'message'
      const data = []
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) name = line.slice(6).trim()
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''))
      }
      if (!data.length) continue
      try {
        onEvent(name, JSON.parse(data.join('\n')))
      } catch {
        // Not JSON: not one of ours.
      }
    }
  }
}

/** The console's store. */
export const store = createStore()
