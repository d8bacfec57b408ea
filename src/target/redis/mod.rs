//! Redis (standalone) as a cache target.
//!
//! [`RedisTarget`] owns one multiplexed connection, reopened after a connection-level failure,
//! and implements [`CacheTarget`]: invalidation (`invalidate`: pipelined, chunked `UNLINK`s —
//! one round trip for a whole batch — and `SCAN MATCH`, never `KEYS`, for patterns, so Redis is
//! never blocked), versioned writes (`versioned`: the fence protocol's compare-and-set in Lua)
//! `INFO` figures (`stats`), per-rule keyspace samples (`sample`) and operator reads, writes
//! and dry runs (`inspect`).

mod inspect;
mod invalidate;
mod legacy;
mod sample;
mod stats;
mod versioned;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use redis::aio::MultiplexedConnection;

use super::early::Early;
use super::priority::{Priority, DEFER_AT_MOST};
use super::{
    CacheError, CacheStats, CacheTarget, Cached, ExecReport, Inspected, Preview, VersionedWrite,
};
use crate::action::Target;
use crate::fence::Version;
use crate::monitor::families::{Estimate, Families, SampleLimits};

/// Tunables for [`RedisTarget`].
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Keys per `UNLINK` command.
    pub unlink_chunk: usize,
    /// `COUNT` hint for `SCAN`.
    pub scan_count: usize,
    pub timeout: Duration,
}

impl CacheOptions {
    /// The options `[redis]` configures.
    pub fn from_config(r: &crate::config::RedisConfig) -> Self {
        CacheOptions {
            unlink_chunk: r.unlink_chunk,
            scan_count: r.scan_count,
            timeout: Duration::from_millis(r.timeout_ms),
        }
    }
}

/// `[redis]`'s defaults.
impl Default for CacheOptions {
    fn default() -> Self {
        use crate::config::{default_scan_count, default_timeout_ms, default_unlink_chunk};
        CacheOptions {
            unlink_chunk: default_unlink_chunk(),
            scan_count: default_scan_count(),
            timeout: Duration::from_millis(default_timeout_ms()),
        }
    }
}

/// A Redis server (standalone) as a cache target.
pub struct RedisTarget {
    name: String,
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
    opts: CacheOptions,
    /// Keyspace passes hold each page back while this has urgent commands in flight.
    defer_to: Option<Arc<Priority>>,
    /// Patterns requested while a pass runs, which join it ([`crate::target::early`]).
    early: Option<Arc<Early>>,
    /// When the current execution began: its passes' waiting is budgeted against it.
    started: Instant,
}

/// A client for `[redis]`: its URL, and for `rediss://` the certificate authority and client
/// certificate files (read now: a missing file is an error here, not at the first command).
pub fn client(config: &crate::config::RedisConfig) -> Result<redis::Client, CacheError> {
    let files = [
        &config.tls_ca_file,
        &config.tls_cert_file,
        &config.tls_key_file,
    ];
    if files.iter().all(|f| f.is_none()) {
        return Ok(redis::Client::open(config.url.as_str())?);
    }
    if !config.url.starts_with("rediss://") {
        return Err(CacheError::Tls(
            "tls_ca_file, tls_cert_file and tls_key_file need a rediss:// url".into(),
        ));
    }
    let read = |key: &str, path: &Option<std::path::PathBuf>| {
        path.as_ref()
            .map(|p| {
                std::fs::read(p).map_err(|e| CacheError::Tls(format!("{key} {}: {e}", p.display())))
            })
            .transpose()
    };
    let client_tls = match (
        read("tls_cert_file", &config.tls_cert_file)?,
        read("tls_key_file", &config.tls_key_file)?,
    ) {
        (Some(client_cert), Some(client_key)) => Some(redis::ClientTlsConfig {
            client_cert,
            client_key,
        }),
        (None, None) => None,
        _ => {
            return Err(CacheError::Tls(
                "tls_cert_file and tls_key_file go together".into(),
            ))
        }
    };
    Ok(redis::Client::build_with_tls(
        config.url.as_str(),
        redis::TlsCertificates {
            client_tls,
            root_cert: read("tls_ca_file", &config.tls_ca_file)?,
        },
    )?)
}

impl RedisTarget {
    pub fn new(client: redis::Client, opts: CacheOptions) -> Result<Self, CacheError> {
        let info = client.get_connection_info();
        let name = format!("redis {}/{}", info.addr(), info.redis_settings().db());
        Ok(RedisTarget {
            name,
            client,
            conn: None,
            opts,
            defer_to: None,
            early: None,
            started: Instant::now(),
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

    /// Before a keyspace pass's next page: while the stream has exact keys in flight, waits
    /// for them, at most [`DEFER_AT_MOST`] a page and, over the whole execution, at most a
    /// quarter of the time spent working (so a saturated stream stretches a pass by a fifth at
    /// most). The wait is added to `report.deferred_us`.
    pub(super) async fn before_page(&self, report: &mut ExecReport) {
        let Some(p) = &self.defer_to else { return };
        let waited = Duration::from_micros(report.deferred_us);
        let working = self.started.elapsed().saturating_sub(waited);
        if waited * 4 > working || !p.is_urgent() {
            return;
        }
        let t = Instant::now();
        p.defer(DEFER_AT_MOST).await;
        report.deferred_us += t.elapsed().as_micros() as u64;
    }

    /// Checks the connection with `PING`.
    pub async fn ping(&mut self) -> Result<(), CacheError> {
        let mut c = self.connection().await?;
        let r: Result<String, _> = redis::cmd("PING").query_async(&mut c).await;
        self.forget_on_error(r).map(|_| ())
    }

    pub(super) fn forget_on_error<T>(
        &mut self,
        r: Result<T, redis::RedisError>,
    ) -> Result<T, CacheError> {
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
}

/// Runs a pipeline of `EVALSHA`s of `script`. On a server that has not seen the script yet
/// (NOSCRIPT), loads it and runs the pipeline once more; every script here is idempotent.
pub(super) async fn query_scripted<T: redis::FromRedisValue>(
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

pub(crate) fn into_redis(e: CacheError) -> redis::RedisError {
    match e {
        CacheError::Redis(e) => e,
        CacheError::Timeout => {
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
        }
        CacheError::Tls(message) => redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            message,
        )),
    }
}

impl CacheTarget for RedisTarget {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn execute<'a>(
        &'a mut self,
        marks: &'a [(String, Version)],
        targets: &'a [&'a Target],
    ) -> BoxFuture<'a, Result<ExecReport, CacheError>> {
        self.execute_all(marks, targets).boxed()
    }

    fn defer_to(&mut self, priority: Arc<Priority>) {
        self.defer_to = Some(priority);
    }

    fn join_from(&mut self, early: Arc<Early>) {
        self.early = Some(early);
    }

    fn write_versioned<'a>(
        &'a mut self,
        writes: &'a [VersionedWrite<'a>],
    ) -> BoxFuture<'a, Result<Vec<bool>, CacheError>> {
        RedisTarget::write_versioned(self, writes).boxed()
    }

    fn write_versioned_bulk<'a>(
        &'a mut self,
        writes: &'a [(String, Vec<u8>)],
        version: Version,
        ttl: Option<u64>,
        key_prefix: &'a str,
        rule_mark: &'a str,
        rule_max_mark: &'a str,
    ) -> BoxFuture<'a, Result<u64, CacheError>> {
        RedisTarget::write_versioned_bulk(
            self,
            writes,
            version,
            ttl,
            key_prefix,
            rule_mark,
            rule_max_mark,
        )
        .boxed()
    }

    fn ping(&mut self) -> BoxFuture<'_, Result<(), CacheError>> {
        RedisTarget::ping(self).boxed()
    }

    fn inspect<'a>(&'a mut self, key: &'a str) -> BoxFuture<'a, Result<Inspected, CacheError>> {
        self.inspect_key(key).boxed()
    }

    fn put<'a>(
        &'a mut self,
        key: &'a str,
        value: &'a [u8],
        ttl: Option<u64>,
    ) -> BoxFuture<'a, Result<(), CacheError>> {
        self.put_value(key, value, ttl).boxed()
    }

    fn preview<'a>(
        &'a mut self,
        target: &'a Target,
        sample: usize,
    ) -> BoxFuture<'a, Result<Preview, CacheError>> {
        self.preview_target(target, sample).boxed()
    }

    fn stats(&mut self) -> BoxFuture<'_, Result<CacheStats, CacheError>> {
        RedisTarget::stats(self).boxed()
    }

    fn take_counters<'a>(
        &'a mut self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Option<u64>>, CacheError>> {
        async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let mut c = self.connection().await?;
            let mut pipe = redis::pipe();
            for k in keys {
                pipe.cmd("GETDEL").arg(k);
            }
            let r: Result<Vec<redis::RedisResult<Option<u64>>>, _> =
                pipe.ignore_errors().query_async(&mut c).await;
            // A counter that is not a number is not a report: None.
            Ok(self
                .forget_on_error(r)?
                .into_iter()
                .map(|v| v.ok().flatten())
                .collect())
        }
        .boxed()
    }

    fn migrate_legacy_marks<'a>(
        &'a mut self,
        key_prefix: &'a str,
    ) -> BoxFuture<'a, Result<u64, CacheError>> {
        RedisTarget::migrate_legacy_marks(self, key_prefix).boxed()
    }

    fn read<'a>(
        &'a mut self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Cached>, CacheError>> {
        async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let mut c = self.connection().await?;
            // Which keys exist, by MEMORY USAGE: it moves no hit or miss counter and raises no
            // key-miss notification, so the reads below miss only in a race with a delete.
            let mut pipe = redis::pipe();
            for k in keys {
                pipe.cmd("MEMORY").arg("USAGE").arg(k);
            }
            let r: Result<Vec<Option<u64>>, _> = pipe.query_async(&mut c).await;
            let present = self.forget_on_error(r)?;
            if present.iter().all(Option::is_none) {
                return Ok(vec![Cached::Absent; keys.len()]);
            }
            let mut pipe = redis::pipe();
            for (k, p) in keys.iter().zip(&present) {
                if p.is_some() {
                    pipe.cmd("GET").arg(k);
                }
            }
            let r: Result<Vec<redis::RedisResult<Option<Vec<u8>>>>, _> =
                pipe.ignore_errors().query_async(&mut c).await;
            let mut values = self.forget_on_error(r)?.into_iter();
            Ok(present
                .iter()
                .map(|p| match p.and_then(|_| values.next()) {
                    Some(Ok(Some(v))) => Cached::Value(v),
                    Some(Ok(None)) => Cached::Vanished,
                    None => Cached::Absent,
                    Some(Err(_)) => Cached::Other,
                })
                .collect())
        }
        .boxed()
    }

    fn sample_families<'a>(
        &'a mut self,
        families: &'a Families,
        limits: SampleLimits,
    ) -> BoxFuture<'a, Result<Vec<Estimate>, CacheError>> {
        RedisTarget::sample_families(self, families, limits).boxed()
    }
}
