// The HTTP client of the operator API (/api/v1): JSON in and out, the bearer token, clear
// errors, and retries on transient failures. Pure apart from the `fetch` it is given.

/**
 * An error the API answered (`{error, detail}`) or a failure to reach it.
 */
export class ApiError extends Error {
  /**
   * @param {number} status HTTP status, 0 when the worker could not be reached
   * @param {string} code the API's `error` code (`bad_request`, `unauthorized`, …)
   * @param {string} detail what was wrong
   * @param {any} [body] the response's JSON body
   */
  constructor(status, code, detail, body = null) {
    super(status ? `${detail} (HTTP ${status})` : detail)
    this.name = 'ApiError'
    this.status = status
    this.code = code
    this.detail = detail
    this.body = body
  }

  /** Whether trying again may succeed: the worker unreachable, busy or restarting. */
  get transient() {
    return this.status === 0 || this.status === 429 || this.status === 502 ||
      this.status === 503 || this.status === 504
  }
}

/** Default retry policy: 3 attempts, 250 ms then 500 ms apart. */
export const RETRIES = { attempts: 3, baseDelayMs: 250 }

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Makes a client.
 * @param {object} options
 * @param {typeof fetch} [options.fetch] the fetch to use
 * @param {() => string|null} [options.token] the bearer token, read per call
 * @param {{attempts:number, baseDelayMs:number}} [options.retries]
 * @param {(ms:number) => Promise<void>} [options.sleep]
 */
export function createClient({ fetch: f = globalThis.fetch.bind(globalThis), token = () => null, retries = RETRIES, sleep: wait = sleep } = {}) {
  /**
   * One call, retried on transient failures.
   * @param {string} method
   * @param {string} path under /api/v1
   * @param {object} [body]
   */
  async function call(method, path, body) {
    let last
    for (let attempt = 1; attempt <= retries.attempts; attempt++) {
      try {
        return await once(method, path, body)
      } catch (e) {
        last = e
        if (!(e instanceof ApiError) || !e.transient || attempt === retries.attempts) throw e
        await wait(retries.baseDelayMs * 2 ** (attempt - 1))
      }
    }
    throw last
  }

  async function once(method, path, body) {
    const headers = { Accept: 'application/json' }
    const t = token()
    if (t) headers.Authorization = `Bearer ${t}`
    if (body !== undefined) headers['Content-Type'] = 'application/json'
    let res
    try {
      res = await f(`/api/v1${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      })
    } catch (e) {
      throw new ApiError(0, 'unreachable', `the worker did not answer: ${e.message}`)
    }
    const text = await res.text()
    let data = null
    try {
      data = text ? JSON.parse(text) : null
    } catch {
      data = null
    }
    if (!res.ok) {
      throw new ApiError(
        res.status,
        data?.error ?? 'http_error',
        data?.detail ?? (text.trim() || res.statusText || 'request failed'),
        data,
      )
    }
    return data
  }

  return { call }
}

/** `encodeURIComponent` for a key in a path (keys may hold `/`, `:`, `?`). */
export const keyPath = (key) => encodeURIComponent(key)
