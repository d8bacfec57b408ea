//! Operator reads and writes on Redis: one key's type, TTL, value and memory (the API's key
//! inspector), a manual `SET` (warming by hand), and the dry run of an invalidation — the same
//! scans executing would make, counting instead of unlinking.

use super::RedisTarget;
use crate::action::Target;
use crate::target::{CacheError, ExecReport, Inspected, Preview};

impl RedisTarget {
    /// `MEMORY USAGE` first (it moves no hit or miss counter, so an absent key costs the
    /// statistics nothing), then `TYPE` and `PTTL`, and `GET` for a string: each of those
    /// counts as a hit, reported in [`Inspected::reads`].
    pub(super) async fn inspect_key(&mut self, key: &str) -> Result<Inspected, CacheError> {
        let mut c = self.connection().await?;
        let r: Result<Option<u64>, _> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .query_async(&mut c)
            .await;
        let Some(memory) = self.forget_on_error(r)? else {
            return Ok(Inspected::absent());
        };
        let r: Result<(String, i64), _> = redis::pipe()
            .cmd("TYPE")
            .arg(key)
            .cmd("PTTL")
            .arg(key)
            .query_async(&mut c)
            .await;
        let (kind, pttl) = self.forget_on_error(r)?;
        let mut reads = 2;
        let value = if kind == "string" {
            reads += 1;
            let r: Result<Option<Vec<u8>>, _> =
                redis::cmd("GET").arg(key).query_async(&mut c).await;
            self.forget_on_error(r)?
        } else {
            None
        };
        // PTTL: -1 no expiry, -2 no key; milliseconds, rounded up to whole seconds.
        let ttl = (pttl >= 0).then(|| (pttl + 999) / 1000);
        Ok(Inspected {
            kind,
            ttl,
            value,
            memory: Some(memory),
            reads,
        })
    }

    /// `SET key value [EX ttl]`.
    pub(super) async fn put_value(
        &mut self,
        key: &str,
        value: &[u8],
        ttl: Option<u64>,
    ) -> Result<(), CacheError> {
        let mut c = self.connection().await?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        if let Some(t) = ttl.filter(|t| *t > 0) {
            cmd.arg("EX").arg(t);
        }
        let r: Result<(), _> = cmd.query_async(&mut c).await;
        self.forget_on_error(r)
    }

    /// Counts what `target` would touch; see [`crate::target::CacheTarget::preview`].
    pub(super) async fn preview_target(
        &mut self,
        target: &Target,
        sample: usize,
    ) -> Result<Preview, CacheError> {
        let mut out = Preview::default();
        match target {
            Target::Key(k) | Target::Bump(k) => {
                // MEMORY USAGE, not EXISTS: it moves no hit or miss counter.
                let mut c = self.connection().await?;
                let r: Result<Option<u64>, _> = redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(k)
                    .query_async(&mut c)
                    .await;
                out.count = u64::from(self.forget_on_error(r)?.is_some());
                if out.count > 0 && sample > 0 {
                    out.sample.push(k.clone());
                }
            }
            Target::Tag(k) => self.preview_tag(k, sample, &mut out).await?,
            Target::Pattern(p) | Target::BumpPattern(p) => {
                let o = &mut out;
                self.scan_all(p, None, |name| {
                    o.count += 1;
                    if o.sample.len() < sample {
                        o.sample.push(name);
                    }
                })
                .await?;
            }
            Target::TagPattern(p) => {
                let mut tags = Vec::new();
                self.scan_all(p, Some("set"), |name| tags.push(name))
                    .await?;
                for t in tags {
                    self.preview_tag(&t, sample, &mut out).await?;
                }
            }
        }
        Ok(out)
    }

    /// A tag set's members (`SCARD`, `SRANDMEMBER` for the sample), never the whole set.
    async fn preview_tag(
        &mut self,
        tag: &str,
        sample: usize,
        out: &mut Preview,
    ) -> Result<(), CacheError> {
        let mut c = self.connection().await?;
        let r: Result<Option<u64>, _> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(tag)
            .query_async(&mut c)
            .await;
        if self.forget_on_error(r)?.is_none() {
            return Ok(());
        }
        let r: Result<String, _> = redis::cmd("TYPE").arg(tag).query_async(&mut c).await;
        out.reads += 1;
        if self.forget_on_error(r)? != "set" {
            return Ok(());
        }
        let want = sample.saturating_sub(out.sample.len());
        let r: Result<(u64, Vec<String>), _> = redis::pipe()
            .cmd("SCARD")
            .arg(tag)
            .cmd("SRANDMEMBER")
            .arg(tag)
            .arg(want)
            .query_async(&mut c)
            .await;
        let (n, members) = self.forget_on_error(r)?;
        out.reads += 2;
        out.count += n;
        out.sample.extend(members.into_iter().take(want));
        Ok(())
    }

    /// Scans the whole keyspace for `pattern` (optionally one type), page by page.
    async fn scan_all<F>(
        &mut self,
        pattern: &str,
        kind: Option<&str>,
        mut each: F,
    ) -> Result<(), CacheError>
    where
        F: FnMut(String),
    {
        let mut report = ExecReport::default();
        let mut cursor = 0;
        loop {
            let page = self.scan_page(pattern, kind, cursor, &mut report).await;
            let (next, found) = self.forget_on_error(page)?;
            // Names are for people (previews, samples): a key that is not UTF-8 is shown
            // with replacement characters.
            found
                .into_iter()
                .map(|k| {
                    String::from_utf8(k)
                        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
                })
                .for_each(&mut each);
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}
