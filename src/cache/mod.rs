//! The cache side: executes planned actions on Redis.
//!
//! [`Cache`] owns one multiplexed Redis connection (reopened after a failure) and promises that
//! when [`Cache::execute`] returns `Ok`, every key of the plan has been unlinked and every
//! pattern has been scanned to completion with each match unlinked. Keys go out as pipelined
//! `UNLINK`s in chunks — one round trip for a whole batch — and patterns use `SCAN MATCH`
//! (never `KEYS`), so Redis is never blocked. [`glob_match`] is Redis' glob matcher in pure
//! Rust, for tests and dry runs.

use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::plan::Target;

/// Errors talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis: connection timed out")]
    Timeout,
}

/// What executing a plan did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExecReport {
    /// Keys Redis reported as removed (existing keys; absent keys are not counted).
    pub removed: u64,
    /// UNLINK commands sent.
    pub unlink_commands: u64,
    /// SCAN iterations run for patterns.
    pub scans: u64,
    /// Tag sets invalidated.
    pub tags: u64,
    /// Version keys incremented.
    pub bumps: u64,
}

/// Invalidates tag sets atomically: for each set in KEYS, unlink its members (in chunks, to
/// stay within Lua's unpack limit) and the set. Returns how many members existed.
/// A tag key that is not a set (an application wrote something else there) is simply
/// unlinked: an error here would stall every later invalidation.
const TAG_SCRIPT: &str = r"
local removed = 0
for _, tag in ipairs(KEYS) do
  if redis.call('TYPE', tag).ok == 'set' then
    local members = redis.call('SMEMBERS', tag)
    for i = 1, #members, 1000 do
      removed = removed + redis.call('UNLINK', unpack(members, i, math.min(i + 999, #members)))
    end
  end
  redis.call('UNLINK', tag)
end
return removed
";

/// Increments version keys; a key holding something that is not an integer is replaced by
/// ARGV[1] (a fresh, time-based version) instead of failing: the namespace changes either way.
const BUMP_SCRIPT: &str = r"
for _, k in ipairs(KEYS) do
  local ok = redis.pcall('INCR', k)
  if type(ok) == 'table' and ok.err then
    redis.call('SET', k, ARGV[1])
  end
end
return #KEYS
";

/// Tunables for [`Cache`].
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Keys per `UNLINK` command.
    pub unlink_chunk: usize,
    /// `COUNT` hint for `SCAN`.
    pub scan_count: usize,
    pub timeout: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            unlink_chunk: 500,
            scan_count: 1000,
            timeout: Duration::from_secs(5),
        }
    }
}

/// A Redis connection that executes cache actions.
pub struct Cache {
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
    opts: CacheOptions,
}

impl Cache {
    pub fn new(url: &str, opts: CacheOptions) -> Result<Self, CacheError> {
        Ok(Cache {
            client: redis::Client::open(url)?,
            conn: None,
            opts,
        })
    }

    /// Returns a live connection, opening one if needed.
    pub async fn connection(&mut self) -> Result<MultiplexedConnection, CacheError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.opts.timeout))
            .set_response_timeout(Some(self.opts.timeout));
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        self.conn = Some(c.clone());
        Ok(c)
    }

    /// Checks the connection with `PING`.
    pub async fn ping(&mut self) -> Result<(), CacheError> {
        let mut c = self.connection().await?;
        let r: Result<String, _> = redis::cmd("PING").query_async(&mut c).await;
        self.forget_on_error(r).map(|_| ())
    }

    fn forget_on_error<T>(&mut self, r: Result<T, redis::RedisError>) -> Result<T, CacheError> {
        r.map_err(|e| {
            if e.is_io_error()
                || e.is_connection_dropped()
                || e.is_timeout()
                || e.is_unrecoverable_error()
            {
                self.conn = None;
            }
            CacheError::Redis(e)
        })
    }

    /// Executes every target: unlinks keys and pattern matches, invalidates tag sets, bumps
    /// version keys. `marks` (see [`crate::plan::fences`]) are raised first: once a warmed key
    /// is unlinked, no older warm write may land on it. Idempotent apart from bumps (a retried
    /// bump increments again, which only invalidates once more), so safe to retry.
    pub async fn execute<'a>(
        &mut self,
        marks: &[(String, crate::source::Lsn)],
        targets: impl IntoIterator<Item = &'a Target>,
    ) -> Result<ExecReport, CacheError> {
        self.set_marks(marks).await?;
        let mut keys: Vec<&str> = Vec::new();
        let mut patterns: Vec<&str> = Vec::new();
        let mut tags: Vec<&str> = Vec::new();
        let mut tag_patterns: Vec<&str> = Vec::new();
        let mut bumps: Vec<&str> = Vec::new();
        let mut bump_patterns: Vec<&str> = Vec::new();
        for t in targets {
            match t {
                Target::Key(k) => keys.push(k),
                Target::Pattern(p) => patterns.push(p),
                Target::Tag(k) => tags.push(k),
                Target::TagPattern(p) => tag_patterns.push(p),
                Target::Bump(k) => bumps.push(k),
                Target::BumpPattern(p) => bump_patterns.push(p),
            }
        }
        let mut report = ExecReport::default();
        let r = self.unlink_keys(&keys, &mut report).await;
        self.forget_on_error(r)?;
        for p in patterns {
            let r = self.unlink_pattern(p, &mut report).await;
            self.forget_on_error(r)?;
        }
        let r = self.invalidate_tags(&tags, &mut report).await;
        self.forget_on_error(r)?;
        for p in tag_patterns {
            let found = self.scan(p, Some("set"), &mut report).await;
            let found = self.forget_on_error(found)?;
            let names: Vec<&str> = found.iter().map(String::as_str).collect();
            let r = self.invalidate_tags(&names, &mut report).await;
            self.forget_on_error(r)?;
        }
        let r = self.incr(&bumps, &mut report).await;
        self.forget_on_error(r)?;
        for p in bump_patterns {
            let found = self.scan(p, None, &mut report).await;
            let found = self.forget_on_error(found)?;
            let names: Vec<&str> = found.iter().map(String::as_str).collect();
            let r = self.incr(&names, &mut report).await;
            self.forget_on_error(r)?;
        }
        Ok(report)
    }

    /// Unlinks each tag set's members and the set, atomically per set (one Lua script call
    /// for up to 100 sets).
    async fn invalidate_tags(
        &mut self,
        tags: &[&str],
        report: &mut ExecReport,
    ) -> Result<(), redis::RedisError> {
        if tags.is_empty() {
            return Ok(());
        }
        let mut conn = self.connection().await.map_err(into_redis)?;
        let script = redis::Script::new(TAG_SCRIPT);
        for chunk in tags.chunks(100) {
            let mut inv = script.prepare_invoke();
            for t in chunk {
                inv.key(*t);
            }
            let removed: u64 = inv.invoke_async(&mut conn).await?;
            report.removed += removed;
            report.tags += chunk.len() as u64;
        }
        Ok(())
    }

    /// Increments version keys in one pipeline.
    async fn incr(
        &mut self,
        keys: &[&str],
        report: &mut ExecReport,
    ) -> Result<(), redis::RedisError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut conn = self.connection().await.map_err(into_redis)?;
        let script = redis::Script::new(BUMP_SCRIPT);
        let fresh = chrono::Utc::now().timestamp_micros();
        for chunk in keys.chunks(500) {
            let mut inv = script.prepare_invoke();
            for k in chunk {
                inv.key(*k);
            }
            inv.arg(fresh);
            let _: i64 = inv.invoke_async(&mut conn).await?;
        }
        report.bumps += keys.len() as u64;
        Ok(())
    }

    /// Every key matching `pattern` (optionally of one type), by SCAN.
    async fn scan(
        &mut self,
        pattern: &str,
        kind: Option<&str>,
        report: &mut ExecReport,
    ) -> Result<Vec<String>, redis::RedisError> {
        let mut conn = self.connection().await.map_err(into_redis)?;
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(self.opts.scan_count);
            if let Some(kind) = kind {
                cmd.arg("TYPE").arg(kind);
            }
            let (next, found): (u64, Vec<String>) = cmd.query_async(&mut conn).await?;
            report.scans += 1;
            out.extend(found);
            if next == 0 {
                out.sort();
                out.dedup();
                return Ok(out);
            }
            cursor = next;
        }
    }

    async fn unlink_keys(
        &mut self,
        keys: &[&str],
        report: &mut ExecReport,
    ) -> Result<(), redis::RedisError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut conn = self.connection().await.map_err(into_redis)?;
        // Bound one pipeline so a huge batch does not build a huge request.
        for group in keys.chunks(self.opts.unlink_chunk * 64) {
            let mut pipe = redis::pipe();
            for chunk in group.chunks(self.opts.unlink_chunk) {
                pipe.cmd("UNLINK").arg(chunk);
                report.unlink_commands += 1;
            }
            let removed: Vec<u64> = pipe.query_async(&mut conn).await?;
            report.removed += removed.iter().sum::<u64>();
        }
        Ok(())
    }

    async fn unlink_pattern(
        &mut self,
        pattern: &str,
        report: &mut ExecReport,
    ) -> Result<(), redis::RedisError> {
        let mut conn = self.connection().await.map_err(into_redis)?;
        let mut cursor: u64 = 0;
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(self.opts.scan_count)
                .query_async(&mut conn)
                .await?;
            report.scans += 1;
            if !found.is_empty() {
                let removed: u64 = redis::cmd("UNLINK")
                    .arg(&found)
                    .query_async(&mut conn)
                    .await?;
                report.unlink_commands += 1;
                report.removed += removed;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

/// Runs a pipeline of `EVALSHA`s of `script`. On a server that has not seen the script yet
/// (NOSCRIPT), loads it and runs the pipeline once more; every script here is idempotent.
async fn query_scripted<T: redis::FromRedisValue>(
    conn: &mut MultiplexedConnection,
    pipe: &redis::Pipeline,
    script: &redis::Script,
) -> Result<T, redis::RedisError> {
    match pipe.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            let _: Result<String, _> = script.prepare_invoke().load_async(conn).await;
            pipe.query_async(conn).await
        }
        other => other,
    }
}

fn into_redis(e: CacheError) -> redis::RedisError {
    match e {
        CacheError::Redis(e) => e,
        CacheError::Timeout => {
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
        }
    }
}

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

/// How long marks live: long enough to outlast any in-flight warm write.
pub const MARK_TTL_SECS: u64 = 86_400;

/// A version as the scripts compare it.
pub fn version_text(lsn: crate::source::Lsn) -> String {
    format!("{:016X}", lsn.0)
}

/// One versioned write.
#[derive(Debug, Clone)]
pub struct VersionedWrite<'a> {
    pub key: &'a str,
    pub value: &'a [u8],
    pub version: crate::source::Lsn,
    pub ttl: Option<u64>,
    pub rule_mark: &'a str,
}

impl Cache {
    /// Raises marks (before the keys they guard are unlinked), in one pipeline.
    pub async fn set_marks(
        &mut self,
        marks: &[(String, crate::source::Lsn)],
    ) -> Result<(), CacheError> {
        if marks.is_empty() {
            return Ok(());
        }
        let mut conn = self.connection().await?;
        let script = redis::Script::new(MARK_SCRIPT);
        let mut pipe = redis::pipe();
        for (key, lsn) in marks {
            pipe.invoke_script(script.key(key).arg(version_text(*lsn)).arg(MARK_TTL_SECS))
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
                    .key(crate::plan::mark_key(w.key))
                    .key(w.rule_mark)
                    .arg(version_text(w.version))
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
}

impl Cache {
    /// Bulk warm writes that share a version, TTL and rule: compare-and-set like
    /// [`Cache::write_versioned`], made cheap for the common case. Per chunk, the rule's marks
    /// are WATCHed and read: if no key of the rule was invalidated after `version` (its max
    /// mark is older), the values go in one MULTI/EXEC of native SETs, which aborts and is
    /// retried if a mark moves meanwhile; otherwise the chunk takes the per-key script.
    /// Needs a connection nobody else uses meanwhile (WATCH is per connection). Returns how
    /// many were written.
    pub async fn write_versioned_bulk(
        &mut self,
        writes: &[(String, Vec<u8>)],
        version: crate::source::Lsn,
        ttl: Option<u64>,
        rule_mark: &str,
        rule_max_mark: &str,
    ) -> Result<u64, CacheError> {
        let v = version_text(version);
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
                    written += self.bulk_script(chunk, &v, ttl, rule_mark).await?;
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
            inv.key(crate::plan::mark_key(k)).arg(v);
        }
        let r: Result<u64, _> = inv.invoke_async(&mut conn).await;
        self.forget_on_error(r)
    }
}

/// Figures from Redis `INFO` that users judge a cache by.
#[derive(Debug, Default, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RedisStats {
    pub keyspace_hits: u64,
    pub keyspace_misses: u64,
    pub evicted_keys: u64,
    pub used_memory: u64,
    /// 0 when no limit is set.
    pub maxmemory: u64,
}

impl RedisStats {
    /// Parses the `stats` and `memory` sections of `INFO`. Pure.
    pub fn parse(info: &str) -> RedisStats {
        let mut s = RedisStats::default();
        for line in info.lines() {
            let Some((k, v)) = line.trim().split_once(':') else {
                continue;
            };
            let v = v.trim().parse().unwrap_or(0);
            match k {
                "keyspace_hits" => s.keyspace_hits = v,
                "keyspace_misses" => s.keyspace_misses = v,
                "evicted_keys" => s.evicted_keys = v,
                "used_memory" => s.used_memory = v,
                "maxmemory" => s.maxmemory = v,
                _ => {}
            }
        }
        s
    }

    /// Hits / (hits + misses), when there were any lookups.
    pub fn hit_ratio(&self) -> Option<f64> {
        let total = self.keyspace_hits + self.keyspace_misses;
        (total > 0).then(|| self.keyspace_hits as f64 / total as f64)
    }

    /// used_memory / maxmemory, when a limit is set.
    pub fn memory_ratio(&self) -> Option<f64> {
        (self.maxmemory > 0).then(|| self.used_memory as f64 / self.maxmemory as f64)
    }
}

impl Cache {
    /// Reads [`RedisStats`] with `INFO stats` and `INFO memory`.
    pub async fn stats(&mut self) -> Result<RedisStats, CacheError> {
        let mut c = self.connection().await?;
        let r: Result<(String, String), _> = redis::pipe()
            .cmd("INFO")
            .arg("stats")
            .cmd("INFO")
            .arg("memory")
            .query_async(&mut c)
            .await;
        let (stats, memory) = self.forget_on_error(r)?;
        Ok(RedisStats::parse(&format!("{stats}\n{memory}")))
    }
}

/// Redis' glob matching (`*`, `?`, `[...]` with ranges and `^`, `\` escapes), byte-wise.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    fn m(p: &[u8], t: &[u8]) -> bool {
        let (mut pi, mut ti) = (0, 0);
        let (mut star_p, mut star_t) = (None, 0);
        while ti < t.len() {
            if pi < p.len() {
                match p[pi] {
                    b'*' => {
                        star_p = Some(pi);
                        star_t = ti;
                        pi += 1;
                        continue;
                    }
                    b'?' => {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                    b'[' => {
                        if let Some((matched, next)) = class(p, pi, t[ti]) {
                            if matched {
                                pi = next;
                                ti += 1;
                                continue;
                            }
                        }
                    }
                    b'\\' if pi + 1 < p.len() && p[pi + 1] == t[ti] => {
                        pi += 2;
                        ti += 1;
                        continue;
                    }
                    b'\\' if pi + 1 < p.len() => {}
                    c if c == t[ti] => {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                    _ => {}
                }
            }
            match star_p {
                Some(sp) => {
                    pi = sp + 1;
                    star_t += 1;
                    ti = star_t;
                }
                None => return false,
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }
    fn class(p: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
        let mut i = start + 1;
        let negate = p.get(i) == Some(&b'^');
        if negate {
            i += 1;
        }
        let mut matched = false;
        loop {
            match p.get(i)? {
                b']' => break,
                b'\\' => {
                    if *p.get(i + 1)? == c {
                        matched = true;
                    }
                    i += 2;
                }
                &lo if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|&h| h != b']') => {
                    let hi = p[i + 2];
                    let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
                    if (lo..=hi).contains(&c) {
                        matched = true;
                    }
                    i += 3;
                }
                &x => {
                    if x == c {
                        matched = true;
                    }
                    i += 1;
                }
            }
        }
        Some((matched != negate, i + 1))
    }
    m(pattern.as_bytes(), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn parses_info() {
        let s = super::RedisStats::parse(
            "# Stats\r\nkeyspace_hits:80\r\nkeyspace_misses:20\r\nevicted_keys:3\r\n# Memory\r\nused_memory:700\r\nmaxmemory:1000\r\n",
        );
        assert_eq!(s.hit_ratio(), Some(0.8));
        assert_eq!(s.memory_ratio(), Some(0.7));
        assert_eq!(s.evicted_keys, 3);
        assert_eq!(super::RedisStats::default().hit_ratio(), None);
    }

    #[test]
    fn glob_matches_like_redis() {
        assert!(glob_match("catalog:page:*", "catalog:page:3"));
        assert!(!glob_match("catalog:page:*", "catalog:pages"));
        assert!(glob_match("c?t", "cat"));
        assert!(glob_match("c[a-c]t", "cbt"));
        assert!(!glob_match("c[^a-c]t", "cbt"));
        assert!(glob_match("a\\*b", "a*b"));
        assert!(!glob_match("a\\*b", "axb"));
        assert!(glob_match("*", ""));
        assert!(glob_match(":1:course:*", ":1:course:42"));
    }
}
