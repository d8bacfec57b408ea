//! Command-line interface: argument definitions and the commands' edges.
//!
//! `run` starts the worker and the status endpoint; `migrate` applies the schema; `check`
//! validates rule files (and, with a database, against the schema); `explain` dry-runs an
//! event. Everything here is thin: it loads configuration, calls the library and turns
//! outcomes into exit codes (0 ok, 1 invalid input, 2 runtime failure).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cachewarden",
    version,
    about = "Keeps Redis caches correct from a PostgreSQL change stream"
)]
pub struct Cli {
    /// Configuration file [default: cachewarden.toml when it exists; without a file every
    /// key comes from CACHEWARDEN_<SECTION>_<KEY> variables].
    #[arg(long, global = true, env = "CACHEWARDEN_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream changes and invalidate cache keys until SIGTERM/SIGINT.
    Run,
    /// Apply cachewarden's schema migrations to the database.
    Migrate,
    /// Validate rule files; with a reachable database, also against its schema.
    Check {
        /// Only check syntax; do not connect to PostgreSQL.
        #[arg(long)]
        offline: bool,
    },
    /// Invalidate every key matching PATTERN now, journaled like any other invalidation.
    Invalidate {
        /// A key or Redis glob, written as the application names keys ([redis] key_prefix is
        /// prepended unless --raw).
        pattern: String,
        /// Why, recorded in cache_invalidations.reason.
        #[arg(long, default_value = "manual invalidation")]
        reason: String,
        /// Use PATTERN as the full Redis key or glob, without key_prefix.
        #[arg(long)]
        raw: bool,
    },
    /// Fill every key of refresh/write-through rules from the database (resumable, safe while
    /// the worker runs).
    Warm {
        /// Only this rule.
        #[arg(long)]
        rule: Option<String>,
        /// Only rows matching this SQL condition on the rule's table.
        #[arg(long = "where")]
        where_sql: Option<String>,
        /// Start over instead of resuming an interrupted run.
        #[arg(long)]
        restart: bool,
    },
    /// Suggest rule changes from the journal, cache_metrics and Redis: rules that never fire,
    /// key templates the application never caches, TTLs far shorter than the interval between
    /// invalidations, costly patterns, memory near maxmemory. Each with its figures and the
    /// exact rule-file change.
    Advise {
        /// How far back to look (`1h`, `24h`, `7d`).
        #[arg(long, default_value = "24h")]
        window: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the effective configuration: every key, its value and where it came from
    /// (environment, file line, default), secrets redacted.
    Config,
    /// Ask the running worker whether it is ready (GET /readyz on [status] listen): exit 0
    /// when ready, 1 when not (the reasons are printed), 2 when it does not answer. For
    /// container health checks.
    Ready,
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to standard output.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to standard output.
    Man,
    /// Print the keys an event would invalidate, without touching Redis.
    Explain {
        /// Event JSON file, or - for standard input.
        #[arg(long)]
        event: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}
