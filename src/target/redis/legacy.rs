//! Marks written by versions before 0.2 lived outside `key_prefix` (`cw:v:<full key>`),
//! which a Redis ACL restricted to the application's prefix forbids. At start they are moved
//! under the prefix (`<prefix>cw:v:<key>`, [`crate::fence::mark_key`]), keeping the newer of
//! the two versions and the old mark's time to live, so no fence is lost in the move.

use super::RedisTarget;
use crate::rules::template::escape_glob;
use crate::target::CacheError;

/// KEYS[1] the legacy mark, KEYS[2] its new name: moves the version (never lowering the new
/// one) with the old time to live, then deletes the legacy mark.
const MOVE_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
local cur = redis.call('GET', KEYS[2])
if (not cur) or cur < v then
  if ttl > 0 then
    redis.call('SET', KEYS[2], v, 'PX', ttl)
  else
    redis.call('SET', KEYS[2], v)
  end
end
redis.call('DEL', KEYS[1])
return 1
";

impl RedisTarget {
    /// Moves every legacy mark of keys under `key_prefix`; returns how many moved.
    pub async fn migrate_legacy_marks(&mut self, key_prefix: &str) -> Result<u64, CacheError> {
        if key_prefix.is_empty() {
            // Without a prefix the old and new names are the same.
            return Ok(0);
        }
        let mut conn = self.connection().await?;
        let pattern = format!("cw:v:{}*", escape_glob(key_prefix));
        let script = redis::Script::new(MOVE_SCRIPT);
        let mut cursor: u64 = 0;
        let mut moved = 0;
        loop {
            let r: Result<(u64, Vec<Vec<u8>>), _> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(self.opts.scan_count)
                .query_async(&mut conn)
                .await;
            let (next, keys) = self.forget_on_error(r)?;
            // Marks are named after rule keys, which are text: a name that is not UTF-8 is not
            // one of them (and must not fail the move).
            for old in keys.into_iter().filter_map(|k| String::from_utf8(k).ok()) {
                let Some(key) = old.strip_prefix("cw:v:") else {
                    continue;
                };
                let new = crate::fence::mark_key(key_prefix, key);
                let r: Result<u64, _> = script.key(&old).key(&new).invoke_async(&mut conn).await;
                moved += self.forget_on_error(r)?;
            }
            cursor = next;
            if cursor == 0 {
                return Ok(moved);
            }
        }
    }
}
