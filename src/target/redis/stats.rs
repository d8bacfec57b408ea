//! Redis `INFO` figures (hits, misses, evictions, memory against `maxmemory`, uptime), read
//! from the `stats`, `memory` and `server` sections.

use super::RedisTarget;
use crate::target::{CacheError, CacheStats};

impl RedisTarget {
    /// Reads [`CacheStats`] with `INFO stats`, `INFO memory` and `INFO server`.
    pub async fn stats(&mut self) -> Result<CacheStats, CacheError> {
        let mut c = self.connection().await?;
        let r: Result<(String, String, String), _> = redis::pipe()
            .cmd("INFO")
            .arg("stats")
            .cmd("INFO")
            .arg("memory")
            .cmd("INFO")
            .arg("server")
            .query_async(&mut c)
            .await;
        let (stats, memory, server) = self.forget_on_error(r)?;
        Ok(parse_info(&format!("{stats}\n{memory}\n{server}")))
    }
}

/// Parses the `stats` and `memory` sections of `INFO`. Pure.
pub fn parse_info(info: &str) -> CacheStats {
    let mut s = CacheStats::default();
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
            "uptime_in_seconds" => s.uptime_seconds = v,
            _ => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_info() {
        let s = parse_info(
            "# Stats\r\nkeyspace_hits:80\r\nkeyspace_misses:20\r\nevicted_keys:3\r\n# Memory\r\nused_memory:700\r\nmaxmemory:1000\r\n# Server\r\nuptime_in_seconds:12\r\n",
        );
        assert_eq!(s.hit_ratio(), Some(0.8));
        assert_eq!(s.memory_ratio(), Some(0.7));
        assert_eq!(s.evicted_keys, 3);
        assert_eq!(s.uptime_seconds, 12);
        assert_eq!(CacheStats::default().hit_ratio(), None);
    }
}
