//! Configuration: `cachewarden.toml`, with environment overrides.
//!
//! Every setting has a documented default except the database and Redis URLs. Unknown keys are
//! refused with their position, so a typo never silently falls back to a default.
//! `CACHEWARDEN_POSTGRES_URL` and `CACHEWARDEN_REDIS_URL` override the file (handy for secrets);
//! relative paths (`rules_dir`) are resolved against the config file's directory.
//! [`redact_url`] keeps passwords out of logs.

mod diagnose;
pub mod env;
pub mod show;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors loading configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}; name the file with --config PATH or the CACHEWARDEN_CONFIG variable")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}:{line}:{col}: error: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
    #[error("{path}: error: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// How far one per-rule keyspace sample may scan (`[monitor] sample_budget`,
/// `sample_max_keys`).
#[derive(Debug, Clone, Copy)]
pub struct SampleLimits {
    /// Stop scanning after this long.
    pub budget: std::time::Duration,
    /// Stop after this many distinct keys.
    pub max_keys: usize,
}

/// The file read when none is named.
pub const DEFAULT_FILE: &str = "cachewarden.toml";

/// The process' `CACHEWARDEN_*` variables.
fn environment() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("CACHEWARDEN_"))
        .collect()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The keys the environment set (for `cachewarden config`).
    #[serde(skip)]
    pub from_env: Vec<env::Applied>,
    #[serde(default = "default_rules_dir")]
    pub rules_dir: PathBuf,
    #[serde(default)]
    pub source: SourceConfig,
    pub postgres: PostgresConfig,
    pub redis: RedisConfig,
    #[serde(default)]
    pub status: StatusConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// The Kafka source (`[source] kind = "kafka"`).
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    #[serde(default)]
    pub journal: JournalConfig,
    #[serde(default)]
    pub monitor: MonitorConfig,
}

/// `[journal]`: how long `cache_invalidations` keeps final rows.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// Final (`completed`/`failed`) rows older than this are deleted (`"7d"`, `"12h"`).
    #[serde(default = "default_journal_retention")]
    pub retention: String,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            retention: default_journal_retention(),
        }
    }
}

fn default_journal_retention() -> String {
    "7d".into()
}

/// `[monitor]`: monitoring tables and checks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    /// `cache_metrics` rows older than this are deleted (`"30d"`).
    #[serde(default = "default_monitor_retention")]
    pub retention: String,
    /// `/readyz` is 503 while Redis' used_memory / maxmemory exceeds this.
    #[serde(default = "default_max_memory_ratio")]
    pub max_memory_ratio: f64,
    /// `/readyz` is 503 while the last commit → invalidated lag exceeds this (`"30s"`).
    #[serde(default = "default_max_lag")]
    pub max_lag: String,
    /// `/readyz` is 503 while the replication slot retains more WAL than this (`"1GB"`).
    #[serde(default = "default_max_slot_wal")]
    pub max_slot_wal: String,
    /// How often `cache_metrics` rows are written (`"60s"`).
    #[serde(default = "default_monitor_interval")]
    pub interval: String,
    /// How long one per-rule keyspace sample may scan (`"1s"`).
    #[serde(default = "default_sample_budget")]
    pub sample_budget: String,
    /// How many distinct keys one per-rule keyspace sample may scan.
    #[serde(default = "default_sample_max_keys")]
    pub sample_max_keys: usize,
    /// How often the consistency probe compares cached values with the database (`"10s"`).
    #[serde(default = "default_probe_interval")]
    pub probe_interval: String,
    /// Count misses and evictions per rule from Redis keyspace notifications, enabling them in
    /// the server's `notify-keyspace-events` (a server-wide setting).
    #[serde(default)]
    pub keyspace_events: bool,
    /// Keys compared per probe (0: no probe).
    #[serde(default = "default_probe_sample")]
    pub probe_sample: usize,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            retention: default_monitor_retention(),
            max_memory_ratio: default_max_memory_ratio(),
            max_lag: default_max_lag(),
            max_slot_wal: default_max_slot_wal(),
            interval: default_monitor_interval(),
            sample_budget: default_sample_budget(),
            sample_max_keys: default_sample_max_keys(),
            keyspace_events: false,
            probe_interval: default_probe_interval(),
            probe_sample: default_probe_sample(),
        }
    }
}

fn default_max_slot_wal() -> String {
    "1GB".into()
}

fn default_monitor_interval() -> String {
    "60s".into()
}

fn default_sample_budget() -> String {
    "1s".into()
}

fn default_sample_max_keys() -> usize {
    100_000
}

fn default_probe_interval() -> String {
    "10s".into()
}

fn default_probe_sample() -> usize {
    100
}

fn default_max_memory_ratio() -> f64 {
    0.70
}

fn default_max_lag() -> String {
    "30s".into()
}

fn default_monitor_retention() -> String {
    "30d".into()
}

/// Parses a retention period: a number and `s`, `m`, `h` or `d` (`"7d"`, `"36h"`).
pub fn parse_period(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    let unit = s.chars().last()?;
    let n: f64 = s[..s.len() - unit.len_utf8()].trim().parse().ok()?;
    let secs = n * match unit {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        'd' => 86400.0,
        _ => return None,
    };
    // try_from: a period too long for a Duration is refused, not a panic.
    (secs.is_finite() && secs >= 1.0)
        .then(|| std::time::Duration::try_from_secs_f64(secs).ok())
        .flatten()
}

/// Parses a size: a number and `B`, `kB`, `MB`, `GB` or `TB` (powers of 1024, as PostgreSQL
/// reads them: `"1GB"`, `"512MB"`).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let n: f64 = s[..split].trim().parse().ok()?;
    let unit = match s[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1024.0,
        "mb" => 1024.0 * 1024.0,
        "gb" => 1024.0 * 1024.0 * 1024.0,
        "tb" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = n * unit;
    (bytes.is_finite() && bytes >= 1.0).then_some(bytes as u64)
}

/// A byte count as a person reads it (`"1.5 GB"`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn default_rules_dir() -> PathBuf {
    PathBuf::from("rules")
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Logical replication from `[postgres] url`'s database.
    #[default]
    Postgres,
    /// Debezium change events from Kafka (`[kafka]`); the journal stays in `[postgres]`.
    Kafka,
}

/// `[kafka]`: a consumer group reading Debezium change events.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: `host:port[,host:port…]`.
    pub brokers: String,
    /// The consumer group: workers of one group share the topics' partitions.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Topic names, or regular expressions when they start with `^` (librdkafka's rule).
    pub topics: Vec<String>,
    /// Where undecodable records are copied (besides `cache_dead_letters`).
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Confirmed offsets are committed at most this often (and always on a rebalance and at
    /// shutdown): a commit per batch would cost the broker a write per batch. A crash replays
    /// up to this much more.
    #[serde(default = "default_commit_interval")]
    pub commit_interval_ms: u64,
    /// Any librdkafka property, passed through (`"security.protocol" = "SASL_SSL"`, …).
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
}

fn default_group() -> String {
    "cachewarden".into()
}

fn default_commit_interval() -> u64 {
    1000
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(default)]
    pub kind: SourceKind,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    pub url: String,
    #[serde(default = "default_name")]
    pub slot: String,
    #[serde(default = "default_name")]
    pub publication: String,
    /// Apply pending migrations when `run` starts.
    #[serde(default = "yes")]
    pub auto_migrate: bool,
}

fn default_name() -> String {
    "cachewarden".into()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    /// Prepended to every key, pattern and tag (e.g. ":1:" for django-redis).
    #[serde(default)]
    pub key_prefix: String,
    /// Keys per UNLINK command.
    #[serde(default = "default_unlink_chunk")]
    pub unlink_chunk: usize,
    /// COUNT hint for SCAN.
    #[serde(default = "default_scan_count")]
    pub scan_count: usize,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// With a `rediss://` URL: the PEM certificate authority to verify the server with (the
    /// system's trusted roots when absent).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// With a `rediss://` URL: a client certificate and its key (PEM), for servers that
    /// require them (`tls-auth-clients yes`).
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
}

/// `[redis] unlink_chunk` when the file does not set it.
pub fn default_unlink_chunk() -> usize {
    500
}
/// `[redis] scan_count` when the file does not set it: 100 rather than 1,000. Redis runs one
/// command at a time, and each `SCAN` page holds up every other client's commands — the
/// worker's own exact `UNLINK`s and the application's reads. With a pattern pass running
/// continuously over 1,000,000 keys, exact keys' lag was p50 0.64 / p99 3.79 ms at 100 against
/// 3.73 / 15.5 ms at 1,000 (0.40 / 3.73 ms with no pass), while the pattern's own lag grew from
/// 2.3 / 4.6 s to 3.0 / 5.3 s (`bench/run.sh hotpath`).
pub fn default_scan_count() -> usize {
    100
}
/// `[redis] timeout_ms` when the file does not set it.
pub fn default_timeout_ms() -> u64 {
    5000
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            listen: default_listen(),
        }
    }
}

/// `[api]`: the operator API (`/api/v1`) and console on the `[status] listen` address.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// The bearer token state-changing calls need (and, when `[status] listen` is not a
    /// loopback address, read calls too). Without one, state-changing calls are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The largest request body accepted, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            token: None,
            max_body_bytes: default_max_body_bytes(),
        }
    }
}

fn default_max_body_bytes() -> usize {
    1024 * 1024
}

fn default_listen() -> String {
    "127.0.0.1:9187".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Cut a batch at this many changes.
    #[serde(default = "default_max_batch")]
    pub max_batch_changes: usize,
    /// Cut a batch once its changes hold about this many bytes (wide rows, TOASTed values).
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// Wait this long for more transactions before executing a batch (0: only what arrived).
    #[serde(default)]
    pub batch_linger_ms: u64,
    /// A batch stops growing this long (µs) after it first held a whole transaction, so that a
    /// steady stream cannot keep its first change waiting.
    #[serde(default = "default_batch_max_wait")]
    pub batch_max_wait_us: u64,
    /// Standby status update interval while idle.
    #[serde(default = "default_status_interval")]
    pub status_interval_ms: u64,
    /// Upper bound of the retry backoff when PostgreSQL or Redis is unavailable.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_ms: u64,
    /// How often the control loop polls rule files, `cache_configs` switches and application
    /// invalidation requests.
    #[serde(default = "default_control_interval")]
    pub control_interval_ms: u64,
    /// Deprecated name of `[monitor] interval`, in seconds (0: no `cache_metrics` rows).
    #[serde(default)]
    pub metrics_interval_secs: Option<u64>,
    /// Journal rows still `pending` or `running` this long after they were written are
    /// re-executed while the worker runs (a cancelled batch, a request whose executor failed).
    #[serde(default = "default_recover_after")]
    pub recover_after_secs: u64,
    /// How often the publication and the rule tables' names, identities and columns are
    /// checked against the catalog (also at each reload, and at once when the stream shows a
    /// renamed or recreated rule table).
    #[serde(default = "default_catalog_interval")]
    pub catalog_interval_ms: u64,
    /// The stream's journal rows are written in groups: at most this long after the first one
    /// of a group (the journal trails the cache; positions are confirmed when it is written).
    #[serde(default = "default_journal_window")]
    pub journal_window_ms: u64,
    /// …or once a group holds this many actions.
    #[serde(default = "default_journal_group_rows")]
    pub journal_group_rows: usize,
    /// How many batches' journal work may wait for the writer before the stream waits.
    #[serde(default = "default_journal_trail_batches")]
    pub journal_trail_batches: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            max_batch_changes: default_max_batch(),
            max_batch_bytes: default_max_batch_bytes(),
            batch_linger_ms: 0,
            batch_max_wait_us: default_batch_max_wait(),
            status_interval_ms: default_status_interval(),
            max_backoff_ms: default_max_backoff(),
            metrics_interval_secs: None,
            control_interval_ms: default_control_interval(),
            recover_after_secs: default_recover_after(),
            catalog_interval_ms: default_catalog_interval(),
            journal_window_ms: default_journal_window(),
            journal_group_rows: default_journal_group_rows(),
            journal_trail_batches: default_journal_trail_batches(),
        }
    }
}

fn default_batch_max_wait() -> u64 {
    300
}
fn default_journal_window() -> u64 {
    100
}
fn default_journal_group_rows() -> usize {
    10_000
}
fn default_journal_trail_batches() -> usize {
    64
}
/// 2,000 rather than 10,000: draining a backlog of 1,000,000 one-kilobyte rows peaked at 20 MiB
/// instead of 32 (each runtime thread's allocator arena keeps its own high-water mark of a
/// batch) and finished sooner (9.3–10.0 s against 11.6–12.3 s, `bench/backlog_rss.sh`); at
/// streaming rates batches are far smaller than either.
fn default_max_batch() -> usize {
    2_000
}
fn default_max_batch_bytes() -> usize {
    64 << 20
}
fn default_status_interval() -> u64 {
    10_000
}
fn default_max_backoff() -> u64 {
    5_000
}
fn default_control_interval() -> u64 {
    500
}
fn default_recover_after() -> u64 {
    30
}
fn default_catalog_interval() -> u64 {
    2_000
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as "info" or "cachewarden=debug"; RUST_LOG wins when set.
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: default_level(),
        }
    }
}

fn default_level() -> String {
    "info".into()
}

impl Config {
    /// Loads the file at `path`, applies the environment's `CACHEWARDEN_*` settings and
    /// validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_toml(&text, path, &environment())
    }

    /// Loads `path` when given (it must exist); else `cachewarden.toml` when it exists; else
    /// the environment alone, which must then set what a file would (at least
    /// `CACHEWARDEN_POSTGRES_URL` and `CACHEWARDEN_REDIS_URL`).
    pub fn load_or_env(path: Option<&Path>) -> Result<Config, ConfigError> {
        let default = Path::new(DEFAULT_FILE);
        match path {
            Some(p) => Self::load(p),
            None if default.exists() => Self::load(default),
            None => Self::from_toml("", default, &environment()).map_err(|e| match e {
                ConfigError::Invalid { path, message }
                | ConfigError::Parse { path, message, .. }
                    if message.contains("missing field") =>
                {
                    ConfigError::Invalid {
                        path,
                        message: format!(
                            "{message}: there is no {DEFAULT_FILE} here; name a file with --config \
                             PATH or CACHEWARDEN_CONFIG, or set every required key in the \
                             environment (CACHEWARDEN_POSTGRES_URL, CACHEWARDEN_REDIS_URL)"
                        ),
                    }
                }
                other => other,
            }),
        }
    }

    /// Parses config text with the configuration variables among `vars` applied over it
    /// (a list, so tests stay hermetic).
    pub fn from_toml(
        text: &str,
        path: &Path,
        vars: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let parse_error = |e: toml::de::Error| {
            let at = e.span().map_or(0, |s| s.start);
            let (line, col) = crate::span::line_col(text, at);
            let mut message = e.message().trim().replace('\n', " ");
            if message == "duplicate key" {
                let key = diagnose::leading_key(text.get(at..).unwrap_or(""));
                message = format!("duplicate key `{key}`: each key may be set once per section");
            }
            if let Some(hint) = diagnose::suggestion(&message) {
                message = format!("{message} (did you mean `{hint}`?)");
            }
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                col,
                message,
            }
        };
        let mut table: toml::Table = toml::from_str(text).map_err(parse_error)?;
        let applied = env::overlay(&mut table, vars);
        let mut cfg: Config = if applied.is_empty() {
            // Straight from the text: errors point at their line.
            toml::from_str(text).map_err(parse_error)?
        } else {
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    let mut message = e.message().trim().replace('\n', " ");
                    if let Some(hint) = diagnose::suggestion(&message) {
                        message = format!("{message} (did you mean `{hint}`?)");
                    }
                    let vars: Vec<&str> = applied.iter().map(|a| a.var.as_str()).collect();
                    ConfigError::Invalid {
                        path: path.to_path_buf(),
                        message: format!(
                            "{message} (with {} from the environment)",
                            vars.join(", ")
                        ),
                    }
                })?
        };
        cfg.from_env = applied;
        if cfg.rules_dir.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            cfg.rules_dir = base.join(&cfg.rules_dir);
        }
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        // An error about one key, at its line when the file sets it.
        let invalid_key = |section: &str, key: &str, message: String| match diagnose::key_position(
            text, section, key,
        ) {
            Some((line, col)) => ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                col,
                message,
            },
            None => invalid(message),
        };
        diagnose::check_log_level(&cfg.log.level)
            .map_err(|e| invalid_key("log", "level", format!("[log] level: {e}")))?;
        crate::tls::PgTls::from_url(&cfg.postgres.url)
            .map_err(|e| invalid(format!("[postgres] url: {e}")))?;
        cfg.postgres_config()
            .map_err(|e| invalid(format!("[postgres] url: {e}")))?;
        match (cfg.source.kind, &cfg.kafka) {
            (SourceKind::Kafka, None) => {
                return Err(invalid(
                    "[source] kind = \"kafka\" needs a [kafka] section (brokers, topics)".into(),
                ))
            }
            (SourceKind::Kafka, Some(k)) if k.topics.is_empty() || k.brokers.trim().is_empty() => {
                return Err(invalid(
                    "[kafka] brokers and topics must not be empty".into(),
                ))
            }
            _ => {}
        }
        for (key, value) in [
            ("[journal] retention", &cfg.journal.retention),
            ("[monitor] retention", &cfg.monitor.retention),
            ("[monitor] max_lag", &cfg.monitor.max_lag),
            ("[monitor] interval", &cfg.monitor.interval),
            ("[monitor] sample_budget", &cfg.monitor.sample_budget),
            ("[monitor] probe_interval", &cfg.monitor.probe_interval),
        ] {
            if parse_period(value).is_none() {
                return Err(invalid(format!(
                    "{key} {value:?}: expected a number and s, m, h or d, e.g. \"7d\""
                )));
            }
        }
        if parse_size(&cfg.monitor.max_slot_wal).is_none() {
            return Err(invalid(format!(
                "[monitor] max_slot_wal {:?}: expected a size such as \"1GB\" or \"512MB\"",
                cfg.monitor.max_slot_wal
            )));
        }
        if !(cfg.monitor.max_memory_ratio > 0.0 && cfg.monitor.max_memory_ratio <= 1.0) {
            return Err(invalid(format!(
                "[monitor] max_memory_ratio {}: expected a fraction in (0, 1]",
                cfg.monitor.max_memory_ratio
            )));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for f in [
            &mut cfg.redis.tls_ca_file,
            &mut cfg.redis.tls_cert_file,
            &mut cfg.redis.tls_key_file,
        ]
        .into_iter()
        .flatten()
        {
            if f.is_relative() {
                *f = base.join(&*f);
            }
        }
        crate::target::redis::client(&cfg.redis).map_err(|e| invalid(format!("[redis] {e}")))?;
        if let Err(e) = std::net::ToSocketAddrs::to_socket_addrs(cfg.status.listen.as_str()) {
            return Err(invalid_key(
                "status",
                "listen",
                format!(
                    "[status] listen {:?}: {e}: expected host:port, such as \"127.0.0.1:9187\", \"localhost:9187\" or \"0.0.0.0:9187\"",
                    cfg.status.listen
                ),
            ));
        }
        if cfg.worker.max_batch_changes == 0
            || cfg.redis.unlink_chunk == 0
            || cfg.redis.scan_count == 0
        {
            return Err(invalid(
                "[worker] max_batch_changes, [redis] unlink_chunk and scan_count must be positive"
                    .into(),
            ));
        }
        Ok(cfg)
    }

    /// How long `cache_invalidations` keeps final rows (validated at load).
    pub fn journal_retention(&self) -> std::time::Duration {
        parse_period(&self.journal.retention).unwrap_or(std::time::Duration::from_secs(7 * 86400))
    }

    /// The lag beyond which the worker is not ready (validated at load).
    pub fn max_lag(&self) -> std::time::Duration {
        parse_period(&self.monitor.max_lag).unwrap_or(std::time::Duration::from_secs(30))
    }

    /// How often `cache_metrics` rows are written; `None` when `[worker] metrics_interval_secs`
    /// (the older name, still honoured) is 0.
    pub fn metrics_interval(&self) -> Option<std::time::Duration> {
        match self.worker.metrics_interval_secs {
            Some(0) => None,
            Some(n) => Some(std::time::Duration::from_secs(n)),
            None => Some(
                parse_period(&self.monitor.interval).unwrap_or(std::time::Duration::from_secs(60)),
            ),
        }
    }

    /// The retained WAL beyond which the worker is not ready (validated at load).
    pub fn max_slot_wal(&self) -> u64 {
        parse_size(&self.monitor.max_slot_wal).unwrap_or(1 << 30)
    }

    /// How often the consistency probe runs (validated at load).
    pub fn probe_interval(&self) -> std::time::Duration {
        parse_period(&self.monitor.probe_interval).unwrap_or(std::time::Duration::from_secs(10))
    }

    /// How far one per-rule keyspace sample may scan.
    pub fn sample_limits(&self) -> SampleLimits {
        SampleLimits {
            budget: parse_period(&self.monitor.sample_budget)
                .unwrap_or(std::time::Duration::from_secs(1)),
            max_keys: self.monitor.sample_max_keys.max(1),
        }
    }

    /// How long `cache_metrics` keeps rows (validated at load).
    pub fn metrics_retention(&self) -> std::time::Duration {
        parse_period(&self.monitor.retention).unwrap_or(std::time::Duration::from_secs(30 * 86400))
    }

    /// Whether the changes come from Kafka (the watched tables may live in another database
    /// than `[postgres] url`'s).
    pub fn is_kafka(&self) -> bool {
        self.source.kind == SourceKind::Kafka
    }

    /// The name this instance's stream state is recorded under: the slot, or
    /// `kafka:<group_id>` for the Kafka source.
    pub fn stream_name(&self) -> String {
        match (&self.source.kind, &self.kafka) {
            (SourceKind::Kafka, Some(k)) => format!("kafka:{}", k.group_id),
            _ => self.postgres.slot.clone(),
        }
    }

    pub fn postgres_config(&self) -> Result<crate::db::PgConfig, tokio_postgres::Error> {
        // The TLS parameters were checked at load (`from_toml`); a URL that fails here fails
        // in tokio-postgres' own parsing.
        let (url, tls) = match crate::tls::PgTls::from_url(&self.postgres.url) {
            Ok(split) => split,
            Err(e) => {
                // A certificate file gone since start: fail closed, never fall back to less.
                tracing::error!(error = %e, "[postgres] url: the TLS settings no longer load; not connecting without them");
                (
                    crate::tls::strip_params(&self.postgres.url),
                    crate::tls::PgTls::unusable(),
                )
            }
        };
        let mut pg: tokio_postgres::Config = url.parse()?;
        pg.ssl_mode(match tls.mode {
            crate::tls::SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            crate::tls::SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        Ok(crate::db::PgConfig { pg, tls })
    }
}

/// Replaces the password in a URL with `***` for logging.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{userinfo}@{host}{tail}")
            }
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
rules_dir = "rules"
[source]
kind = "postgres"
[postgres]
url = "postgres://postgres@127.0.0.1:5432/edurise"
slot = "cachewarden"
publication = "cachewarden"
[redis]
url = "redis://127.0.0.1:6379/0"
key_prefix = ""
[status]
listen = "127.0.0.1:9187"
"#;

    #[test]
    fn parses_the_documented_example_with_env_overrides() {
        let vars = [(
            "CACHEWARDEN_REDIS_URL".to_string(),
            "redis://10.0.0.1/2".to_string(),
        )];
        let cfg = Config::from_toml(EXAMPLE, Path::new("/etc/cw/cachewarden.toml"), &vars).unwrap();
        assert_eq!(cfg.redis.url, "redis://10.0.0.1/2");
        assert_eq!(cfg.rules_dir, Path::new("/etc/cw/rules"));
        assert_eq!(cfg.postgres.slot, "cachewarden");
        assert_eq!(cfg.worker.max_batch_changes, 2_000);
    }

    #[test]
    fn unknown_keys_are_refused_with_position() {
        let text = EXAMPLE.replace("key_prefix", "key_prefx");
        let e = Config::from_toml(&text, Path::new("c.toml"), &[]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("c.toml:11:1: error: unknown field `key_prefx`"),
            "{e}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("512 MB"), Some(512 << 20));
        assert_eq!(parse_size("1.5kB"), Some(1536));
        assert_eq!(parse_size("100"), Some(100));
        for bad in ["", "GB", "1 PB", "-1GB", "0"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
        assert_eq!(format_size(1 << 30), "1.0 GB");
        assert_eq!(format_size(1000), "1000 B");
        let text = format!("{EXAMPLE}[monitor]\nmax_slot_wal = \"lots\"\n");
        let e = Config::from_toml(&text, Path::new("c.toml"), &[]).unwrap_err();
        assert!(e.to_string().contains("max_slot_wal"), "{e}");
    }

    #[test]
    fn retention_periods() {
        assert_eq!(
            parse_period("7d"),
            Some(std::time::Duration::from_secs(7 * 86400))
        );
        assert_eq!(
            parse_period("36h"),
            Some(std::time::Duration::from_secs(36 * 3600))
        );
        assert_eq!(
            parse_period("90m"),
            Some(std::time::Duration::from_secs(5400))
        );
        for bad in ["", "d", "7", "7w", "-1d", "0s"] {
            assert_eq!(parse_period(bad), None, "{bad}");
        }
        let text = format!("{EXAMPLE}[journal]\nretention = \"a week\"\n");
        let e = Config::from_toml(&text, Path::new("c.toml"), &[]).unwrap_err();
        assert!(
            e.to_string().contains("[journal] retention \"a week\""),
            "{e}"
        );
    }

    #[test]
    fn kafka_sources_need_their_section() {
        let text = EXAMPLE.replace("kind = \"postgres\"", "kind = \"kafka\"");
        let e = Config::from_toml(&text, Path::new("c.toml"), &[]).unwrap_err();
        assert!(e.to_string().contains("needs a [kafka] section"), "{e}");
        let text = format!(
            "{text}[kafka]\nbrokers = \"127.0.0.1:9092\"\ntopics = [\"^cw\\\\..*\"]\n\
             [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n"
        );
        let vars = [(
            "CACHEWARDEN_KAFKA_BROKERS".to_string(),
            "10.0.0.9:9092".to_string(),
        )];
        let cfg = Config::from_toml(&text, Path::new("c.toml"), &vars).unwrap();
        let k = cfg.kafka.unwrap();
        assert_eq!(cfg.source.kind, SourceKind::Kafka);
        assert_eq!(
            (k.brokers.as_str(), k.group_id.as_str()),
            ("10.0.0.9:9092", "cachewarden")
        );
        assert_eq!(k.topics, ["^cw\\..*"]);
        assert_eq!(k.properties["session.timeout.ms"], "6000");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(redact_url("redis://:pw@h/0"), "redis://:***@h/0");
    }
}
