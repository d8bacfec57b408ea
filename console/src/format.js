// Number and time formats the views share. Pure.

/** 0.8234 → "82.3%"; null → "—". */
export const percent = (v) => (v === null || v === undefined ? '—' : `${(v * 100).toFixed(1)}%`)

/** Bytes in binary units. */
export function bytes(v) {
  if (v === null || v === undefined) return '—'
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  let n = v
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++ }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`
}

/** Milliseconds, with a unit. */
export const ms = (v) => (v === null || v === undefined ? '—' : v < 1000 ? `${v.toFixed(1)} ms` : `${(v / 1000).toFixed(2)} s`)

/** A per-second rate. */
export const rate = (v) => (v === null || v === undefined ? '—' : `${v < 10 ? v.toFixed(2) : v.toFixed(0)}/s`)

/** A timestamp as local time of day (full date in the title attribute). */
export const clock = (at) => (at ? new Date(at).toLocaleTimeString() : '—')
