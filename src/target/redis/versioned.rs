//! Versioned writes on Redis: the compare-and-set half of the fence protocol
//! ([`crate::fence`]), in Lua so each comparison and write is atomic. Marks are raised with a
//! never-lowering script; warm writes land only when not older than the key's and the rule's
//! marks; bulk writes take a WATCH/MULTI fast path while no key of the rule can refuse them.

use super::{query_scripted, RedisTarget};
use crate::fence::{mark_key, Version, MARK_TTL_SECS};
use crate::target::{CacheError, VersionedWrite};

/// Raises a mark key to a version (16 hex digits compare as numbers), never lowering it.
/// KEYS[1] mark; ARGV[1] version, ARGV[2] TTL seconds.
const MARK_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur < ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return 1
";

/// Warm writes with compare-and-set, many per call. For each write i, KEYS[3i-2..3i] are the
/// value key, the key's mark and the rule's mark; ARGV[3i-2..3i] its version, value and TTL
/// seconds (0: none). A write lands only if its version is not older than both marks (the
/// newest invalidations that touched the key). Returns a string of '1'/'0' per write.
const WARM_SCRIPT: &str = r"
local out = {}
for i = 1, #KEYS, 3 do
  local v = ARGV[i]
  local cur = redis.call('GET', KEYS[i + 1])
  local fam = redis.call('GET', KEYS[i + 2])
  if (cur and cur > v) or (fam and fam > v) then
    out[#out + 1] = '0'
  else
    local ttl = tonumber(ARGV[i + 2])
    if ttl > 0 then
      redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ttl)
    else
      redis.call('SET', KEYS[i], ARGV[i + 1])
    end
    out[#out + 1] = '1'
  end
end
return table.concat(out)
";

/// Bulk warm writes sharing one version, TTL and rule mark: KEYS = rule mark, then n value
/// keys, then their n marks; ARGV = version, TTL seconds (0: none), then n values. The marks
/// are read with one MGET. Returns how many were written.
const BULK_WARM_SCRIPT: &str = r"
local v = ARGV[1]
local fam = redis.call('GET', KEYS[1])
if fam and fam > v then return 0 end
local n = (#KEYS - 1) / 2
local marks = redis.call('MGET', unpack(KEYS, n + 2, 2 * n + 1))
local ttl = ARGV[2]
local written = 0
if ttl ~= '0' then
  for i = 1, n do
    local m = marks[i]
    if not (m and m > v) then
      redis.call('SET', KEYS[i + 1], ARGV[i + 2], 'EX', ttl)
      written = written + 1
    end
  end
else
  for i = 1, n do
    local m = marks[i]
    if not (m and m > v) then
      redis.call('SET', KEYS[i + 1], ARGV[i + 2])
      written = written + 1
    end
  end
end
return written
";

/// Writes per warm script call.
const WARM_CHUNK: usize = 200;

impl RedisTarget {
    /// Raises marks (before the keys they guard are unlinked), in one pipeline.
    pub async fn set_marks(&mut self, marks: &[(String, Version)]) -> Result<(), CacheError> {
        if marks.is_empty() {
            return Ok(());
        }
        let mut conn = self.connection().await?;
        let script = redis::Script::new(MARK_SCRIPT);
        let mut pipe = redis::pipe();
        for (key, lsn) in marks {
            pipe.invoke_script(script.key(key).arg(lsn.text()).arg(MARK_TTL_SECS))
                .ignore();
        }
        let r: Result<(), _> = query_scripted(&mut conn, &pipe, &script).await;
        self.forget_on_error(r)
    }

    /// Writes values with compare-and-set (see the warm script), in chunks pipelined together;
    /// returns which were written.
    pub async fn write_versioned(
        &mut self,
        writes: &[VersionedWrite<'_>],
    ) -> Result<Vec<bool>, CacheError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.connection().await?;
        let script = redis::Script::new(WARM_SCRIPT);
        let mut pipe = redis::pipe();
        for chunk in writes.chunks(WARM_CHUNK) {
            let mut inv = script.prepare_invoke();
            for w in chunk {
                inv.key(w.key)
                    .key(mark_key(w.key_prefix, w.key))
                    .key(w.rule_mark)
                    .arg(w.version.text())
                    .arg(w.value)
                    .arg(w.ttl.unwrap_or(0));
            }
            pipe.invoke_script(&inv);
        }
        let r: Result<Vec<String>, _> = query_scripted(&mut conn, &pipe, &script).await;
        Ok(self
            .forget_on_error(r)?
            .iter()
            .flat_map(|s| s.bytes().map(|b| b == b'1'))
            .collect())
    }
    /// Bulk warm writes that share a version, TTL and rule: compare-and-set like
    /// `Cache::write_versioned`, made cheap for the common case. Per chunk, the rule's marks
    /// are WATCHed and read: if no key of the rule was invalidated after `version` (its max
    /// mark is older), the values go in one MULTI/EXEC of native SETs, which aborts and is
    /// retried if a mark moves meanwhile; otherwise the chunk takes the per-key script.
    /// Needs a connection nobody else uses meanwhile (WATCH is per connection). Returns how
    /// many were written.
    pub async fn write_versioned_bulk(
        &mut self,
        writes: &[(String, Vec<u8>)],
        version: Version,
        ttl: Option<u64>,
        key_prefix: &str,
        rule_mark: &str,
        rule_max_mark: &str,
    ) -> Result<u64, CacheError> {
        let v = version.text();
        let mut written = 0;
        // 2,000 SETs run as one EXEC: about a millisecond of Redis time per transaction.
        for chunk in writes.chunks(2000) {
            loop {
                let mut conn = self.connection().await?;
                let r: Result<((), Vec<Option<String>>), _> = redis::pipe()
                    .cmd("WATCH")
                    .arg(rule_mark)
                    .arg(rule_max_mark)
                    .cmd("MGET")
                    .arg(rule_mark)
                    .arg(rule_max_mark)
                    .query_async(&mut conn)
                    .await;
                let (_, marks) = self.forget_on_error(r)?;
                let newer = |i: usize| {
                    marks
                        .get(i)
                        .and_then(|m| m.as_deref())
                        .is_some_and(|m| m > v.as_str())
                };
                if newer(0) || newer(1) {
                    let r: Result<(), _> = redis::cmd("UNWATCH").query_async(&mut conn).await;
                    self.forget_on_error(r)?;
                    if newer(0) {
                        break; // the whole family was invalidated after the read
                    }
                    written += self
                        .bulk_script(chunk, &v, ttl, key_prefix, rule_mark)
                        .await?;
                    break;
                }
                let mut tx = redis::pipe();
                tx.atomic();
                for (k, val) in chunk {
                    match ttl {
                        Some(t) if t > 0 => tx.cmd("SET").arg(k).arg(val).arg("EX").arg(t).ignore(),
                        _ => tx.cmd("SET").arg(k).arg(val).ignore(),
                    };
                }
                let r: Result<Option<()>, _> = tx.query_async(&mut conn).await;
                if self.forget_on_error(r)?.is_some() {
                    written += chunk.len() as u64;
                    break;
                }
                // A mark moved between WATCH and EXEC: nothing was written; look again.
            }
        }
        Ok(written)
    }

    /// The per-key compare-and-set path of [`Cache::write_versioned_bulk`].
    async fn bulk_script(
        &mut self,
        chunk: &[(String, Vec<u8>)],
        version: &str,
        ttl: Option<u64>,
        key_prefix: &str,
        rule_mark: &str,
    ) -> Result<u64, CacheError> {
        let mut conn = self.connection().await?;
        let script = redis::Script::new(BULK_WARM_SCRIPT);
        let mut inv = script.prepare_invoke();
        inv.key(rule_mark).arg(version).arg(ttl.unwrap_or(0));
        for (k, _) in chunk {
            inv.key(k);
        }
        for (k, v) in chunk {
            inv.key(mark_key(key_prefix, k)).arg(v);
        }
        let r: Result<u64, _> = inv.invoke_async(&mut conn).await;
        self.forget_on_error(r)
    }
}
