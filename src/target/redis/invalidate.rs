//! Invalidation on Redis: the targets of a plan become pipelined `UNLINK`s, `SCAN`-driven
//! pattern deletes, atomic tag-set invalidations (Lua) and version-key increments.

use super::{into_redis, RedisTarget};
use crate::action::Target;
use crate::fence::Version;
use crate::glob::glob_match_bytes;
use crate::target::{CacheError, ExecReport};

/// Invalidates tag sets in bounded steps, so a big set never blocks Redis (no `SMEMBERS`).
/// For each set in KEYS, one call pops and unlinks at most ARGV[1] members; the call that
/// empties a set also unlinks the set, in the same atomic step, so a member added meanwhile is
/// either popped and unlinked or was added after the set was gone. Returns the count of
/// members that existed, then the 1-based indexes of the sets not yet empty (call again with
/// those). A tag key that is not a set (an application wrote something else there) is simply
/// unlinked: an error here would stall every later invalidation.
const TAG_SCRIPT: &str = r"
local step = tonumber(ARGV[1])
local removed = 0
local out = {0}
for i, tag in ipairs(KEYS) do
  if redis.call('TYPE', tag).ok == 'set' then
    local members = redis.call('SPOP', tag, step)
    for j = 1, #members, 1000 do
      removed = removed + redis.call('UNLINK', unpack(members, j, math.min(j + 999, #members)))
    end
    if redis.call('SCARD', tag) == 0 then
      redis.call('UNLINK', tag)
    else
      out[#out + 1] = i
    end
  else
    redis.call('UNLINK', tag)
  end
end
out[1] = removed
return out
";

/// At most this many patterns join one running pass ([`crate::target::early`]): each key a
/// page returns is matched against every joined pattern; the others wait for the next pass.
pub const MAX_JOINED: usize = 256;

/// Members popped per tag set per script call: about a millisecond of Redis time.
const TAG_STEP: usize = 1000;

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

/// The longest literal text every pattern starts with (up to the first glob metacharacter),
/// so that the server can skip what none of them can match. Pure.
fn literal_prefix<'a>(patterns: &[&'a str]) -> &'a str {
    let Some((first, rest)) = patterns.split_first() else {
        return "";
    };
    let mut prefix = crate::glob::literal_prefix(first);
    for p in rest {
        let l = crate::glob::literal_prefix(p);
        let common = prefix
            .char_indices()
            .zip(l.chars())
            .take_while(|((_, a), b)| a == b)
            .last()
            .map_or(0, |((i, a), _)| i + a.len_utf8());
        prefix = &prefix[..common];
    }
    prefix
}

/// What a paged pattern works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Paged {
    /// Tag sets matching the pattern: each invalidated.
    TagSets,
    /// Version keys matching the pattern: each incremented.
    VersionKeys,
}

impl RedisTarget {
    /// Executes every target: unlinks keys and pattern matches, invalidates tag sets, bumps
    /// version keys. `marks` (see [`crate::fence`]) are raised first: once a warmed key
    /// is unlinked, no older warm write may land on it. Idempotent apart from bumps (a retried
    /// bump increments again, which only invalidates once more), so safe to retry.
    pub(super) async fn execute_all(
        &mut self,
        marks: &[(String, Version)],
        targets: &[&Target],
    ) -> Result<ExecReport, CacheError> {
        self.started = std::time::Instant::now();
        self.set_marks(marks).await?;
        let mut keys: Vec<&str> = Vec::new();
        let mut patterns: Vec<&str> = Vec::new();
        let mut tags: Vec<&str> = Vec::new();
        let mut tag_patterns: Vec<&str> = Vec::new();
        let mut bumps: Vec<&str> = Vec::new();
        let mut bump_patterns: Vec<&str> = Vec::new();
        for t in targets {
            match *t {
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
        // Several patterns share one keyspace pass (a pass costs O(keyspace), however few keys
        // match); one pattern lets the server match.
        let r = if patterns.is_empty() {
            Ok(())
        } else {
            self.unlink_patterns(&patterns, &mut report).await
        };
        self.forget_on_error(r)?;
        let r = self.invalidate_tags(&tags, &mut report).await;
        self.forget_on_error(r)?;
        for p in tag_patterns {
            self.paged(p, Paged::TagSets, &mut report).await?;
        }
        let r = self.incr(&bumps, &mut report).await;
        self.forget_on_error(r)?;
        for p in bump_patterns {
            self.paged(p, Paged::VersionKeys, &mut report).await?;
        }
        Ok(report)
    }

    /// Unlinks each tag set's members and the set, in bounded steps (see the script; one call
    /// per step for up to 100 sets).
    async fn invalidate_tags<K: AsRef<[u8]>>(
        &mut self,
        tags: &[K],
        report: &mut ExecReport,
    ) -> Result<(), redis::RedisError> {
        if tags.is_empty() {
            return Ok(());
        }
        let mut conn = self.connection().await.map_err(into_redis)?;
        let script = redis::Script::new(TAG_SCRIPT);
        for chunk in tags.chunks(100) {
            let mut left: Vec<&[u8]> = chunk.iter().map(AsRef::as_ref).collect();
            while !left.is_empty() {
                let mut inv = script.prepare_invoke();
                for t in &left {
                    inv.key(*t);
                }
                inv.arg(TAG_STEP);
                let out: Vec<u64> = inv.invoke_async(&mut conn).await?;
                report.removed += out.first().copied().unwrap_or(0);
                left = out
                    .iter()
                    .skip(1)
                    .filter_map(|i| left.get((*i as usize).checked_sub(1)?).copied())
                    .collect();
            }
            report.tags += chunk.len() as u64;
        }
        Ok(())
    }

    /// Increments version keys in one pipeline.
    async fn incr<K: AsRef<[u8]>>(
        &mut self,
        keys: &[K],
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
                inv.key(k.as_ref());
            }
            inv.arg(fresh);
            let _: i64 = inv.invoke_async(&mut conn).await?;
        }
        report.bumps += keys.len() as u64;
        Ok(())
    }

    /// Works every key matching `pattern` page by page, so memory stays bounded by one SCAN
    /// page however many keys match. (SCAN may return a key twice: a tag invalidated or a
    /// version bumped twice only invalidates once more.)
    async fn paged(
        &mut self,
        pattern: &str,
        what: Paged,
        report: &mut ExecReport,
    ) -> Result<(), CacheError> {
        let kind = (what == Paged::TagSets).then_some("set");
        let mut cursor = 0;
        loop {
            self.before_page(report).await;
            let page = self.scan_page(pattern, kind, cursor, report).await;
            let (next, found) = self.forget_on_error(page)?;
            let r = match what {
                Paged::TagSets => self.invalidate_tags(&found, report).await,
                Paged::VersionKeys => self.incr(&found, report).await,
            };
            self.forget_on_error(r)?;
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// One SCAN page of keys matching `pattern` (optionally of one type): the next cursor
    /// (0 when done) and the keys found, as bytes (a key need not be UTF-8, and one that is
    /// not must not fail a pass on every retry).
    pub(super) async fn scan_page(
        &mut self,
        pattern: &str,
        kind: Option<&str>,
        cursor: u64,
        report: &mut ExecReport,
    ) -> Result<(u64, Vec<Vec<u8>>), redis::RedisError> {
        let mut conn = self.connection().await.map_err(into_redis)?;
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(self.opts.scan_count);
        if let Some(kind) = kind {
            cmd.arg("TYPE").arg(kind);
        }
        let page: (u64, Vec<Vec<u8>>) = cmd.query_async(&mut conn).await?;
        report.scans += 1;
        Ok(page)
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

    /// One `SCAN` pass for one or several patterns: the server matches one pattern itself, or
    /// the common literal prefix of several (at least `key_prefix` when the rules use one), in
    /// which case this process matches each key against every pattern, exactly as Redis would
    /// ([`glob_match_bytes`]; keys are read as bytes, so no key can fail a pass); each page's
    /// matches are unlinked in one command. Patterns requested meanwhile join the rest of the
    /// pass (see [`crate::target::early`]; at most [`MAX_JOINED`], and none that would widen
    /// the server's filter to every key): what they match is unlinked when the pass reaches
    /// it, ahead of the pass that covers them.
    async fn unlink_patterns(
        &mut self,
        patterns: &[&str],
        report: &mut ExecReport,
    ) -> Result<(), redis::RedisError> {
        let early = self.early.clone();
        let (mut taken, mut offered, mut joined) = (0, Vec::<String>::new(), Vec::<String>::new());
        // What every pattern of the pass (its own and the joined) starts with: a literal.
        let mut shared = literal_prefix(patterns).to_owned();
        let mut server_side = match patterns {
            [one] => one.to_string(),
            _ => format!("{shared}*"),
        };
        let mut conn = self.connection().await.map_err(into_redis)?;
        let mut cursor: u64 = 0;
        loop {
            // `Early` hands each distinct pattern over once a pass.
            if let Some(early) = &early {
                offered.clear();
                early.take(&mut taken, &mut offered);
                for q in offered.drain(..) {
                    if joined.len() >= MAX_JOINED || patterns.contains(&q.as_str()) {
                        continue;
                    }
                    let widened = literal_prefix(&[&shared, &q]).len();
                    if widened == 0 {
                        continue;
                    }
                    shared.truncate(widened);
                    server_side = format!("{shared}*");
                    joined.push(q);
                    report.joined += 1;
                }
            }
            self.before_page(report).await;
            let (next, found): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&server_side)
                .arg("COUNT")
                .arg(self.opts.scan_count)
                .query_async(&mut conn)
                .await?;
            report.scans += 1;
            let single = patterns.len() == 1 && joined.is_empty();
            let hits: Vec<&Vec<u8>> = found
                .iter()
                .filter(|k| {
                    single
                        || patterns.iter().any(|p| glob_match_bytes(p.as_bytes(), k))
                        || joined.iter().any(|p| glob_match_bytes(p.as_bytes(), k))
                })
                .collect();
            if !hits.is_empty() {
                let removed: u64 = redis::cmd("UNLINK")
                    .arg(&hits)
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

#[cfg(test)]
mod tests {
    use super::literal_prefix;

    #[test]
    fn patterns_share_the_literal_text_they_all_start_with() {
        assert_eq!(
            literal_prefix(&[":1:catalog:*", ":1:course:*:lessons"]),
            ":1:c"
        );
        assert_eq!(literal_prefix(&["app:a?", "app:b*"]), "app:");
        assert_eq!(literal_prefix(&["x[ab]*"]), "x");
        assert_eq!(literal_prefix(&["a\\*b", "a\\?c"]), "a");
        assert_eq!(literal_prefix(&["*", "abc"]), "");
        assert_eq!(literal_prefix(&["é:1", "é:2"]), "é:");
        assert_eq!(literal_prefix(&[]), "");
    }
}
