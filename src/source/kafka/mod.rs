//! The Kafka source: Debezium change events read by a consumer group.
//!
//! [`KafkaSource`] is the second implementation of [`Source`]; nothing after it learns about
//! Kafka. Each record is decoded by [`debezium`] into a one-change transaction (Debezium
//! events carry no transaction boundary); records of tables no rule names, tombstones and
//! transaction markers are skipped, but their offsets still move.
//!
//! **Acknowledgement.** `enable.auto.commit` and `enable.auto.offset.store` are off: offsets
//! are committed only from what [`Source::confirm`] was given, per partition, with the next
//! offset of the last record before the confirmed position — so a record's offset is committed
//! only after every cache action and journal row of every record before it is done. Confirmed
//! offsets are committed at most every `commit_interval_ms` (when due, by `confirm` or by the
//! idle wait in `next_batch`), on every revocation and at `close`. The bookkeeping of which
//! offsets may be committed under the current assignment is [`offsets`]. On a rebalance, the
//! offsets confirmed for revoked partitions are committed synchronously before they go; what
//! was read but not confirmed is abandoned to the partition's next owner, which reads it again
//! from the last commit (at-least-once; invalidations are idempotent).
//!
//! **Bad input.** A record that cannot be decoded becomes a [`DeadLetter`] (topic, partition,
//! offset, raw bytes, error), copied to `[kafka] dead_letter_topic` when set; when its table
//! could be read and a rule names it, it is also answered by a conservative invalidation of the
//! table's key families. Either way the partition moves on.
//!
//! **Versions.** A change's `commit_lsn` is Debezium's `source.lsn` when the connector gives
//! one, so versioned warm writes stay ordered across both sources.
//!
//! * [`debezium`] — pure decoding of Debezium's JSON envelope.
//! * [`values`] — pure rendering of Debezium's value encodings as PostgreSQL text.
//! * [`offsets`] — pure offset and assignment bookkeeping.

pub mod debezium;
pub mod offsets;
pub mod values;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{
    Batch, BatchLimits, DeadLetter, Lsn, Position, Progress, SharedFilter, Source, SourceError,
    Transaction,
};
use crate::config::KafkaConfig;
use crate::runtime::Shutdown;
use debezium::{Catalog, Decoded};
use offsets::{Assignment, Partition, PartitionOffset};

/// The consumer's callbacks: rebalances update the [`Assignment`].
struct Context {
    assignment: Arc<Mutex<Assignment>>,
}

impl Context {
    fn lock(&self) -> std::sync::MutexGuard<'_, Assignment> {
        self.assignment.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<Partition> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

fn offsets_list(offsets: &[(Partition, i64)]) -> Result<TopicPartitionList, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), next) in offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
    }
    Ok(tpl)
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let revoked = partitions(tpl);
            let confirmed = self.lock().revoke(revoked.clone());
            tracing::info!(partitions = ?revoked, "kafka: partitions revoked; committing what was confirmed, abandoning the rest to the next owner");
            if !confirmed.is_empty() {
                match offsets_list(&confirmed) {
                    Ok(list) => {
                        if let Err(e) = consumer.commit(&list, CommitMode::Sync) {
                            tracing::warn!(error = %e, "kafka: commit on revocation failed; the next owner replays from the previous commit");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "kafka: bad offsets on revocation"),
                }
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let assigned = partitions(tpl);
            tracing::info!(partitions = ?assigned, "kafka: partitions assigned");
            self.lock().assign(assigned);
        }
    }
}

/// How long closing waits for the brokers (final commit, leaving the group, flushing dead
/// letters) before it goes on without them.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Debezium change events from a Kafka consumer group.
pub struct KafkaSource {
    config: KafkaConfig,
    limits: BatchLimits,
    /// Tables the rules name (`schema.table`); other tables' records are skipped.
    tables: HashSet<String>,
    catalog: Arc<Catalog>,
    filter: SharedFilter,
    consumer: Option<Arc<StreamConsumer<Context>>>,
    producer: Option<FutureProducer>,
    assignment: Arc<Mutex<Assignment>>,
    /// Next offset to read of every partition read under its current assignment.
    consumed: BTreeMap<Partition, (i64, u64)>,
    /// Records skipped because no rule names their table.
    skipped: u64,
    /// When confirmed offsets were last committed (they are committed at most every
    /// `commit_interval_ms`).
    last_commit: Instant,
}

impl KafkaSource {
    /// A source for `tables`; `catalog` is what the worker's database knows of them.
    pub fn new(
        config: KafkaConfig,
        limits: BatchLimits,
        tables: &[String],
        catalog: Catalog,
        filter: SharedFilter,
    ) -> Self {
        KafkaSource {
            config,
            limits,
            tables: tables.iter().cloned().collect(),
            catalog: Arc::new(catalog),
            filter,
            consumer: None,
            producer: None,
            assignment: Arc::default(),
            consumed: BTreeMap::new(),
            skipped: 0,
            last_commit: Instant::now(),
        }
    }

    /// The client configuration: ours, then the user's pass-through properties.
    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.config.brokers)
            .set("group.id", &self.config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("topic.metadata.refresh.interval.ms", "10000");
        for (k, v) in &self.config.properties {
            c.set(k, v);
        }
        // The acknowledgement contract depends on these: never let a property turn them on.
        c.set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        c
    }

    fn assignment(&self) -> std::sync::MutexGuard<'_, Assignment> {
        self.assignment.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one record into the batch.
    async fn take(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        batch: &mut Batch,
    ) {
        let p = (topic.to_string(), partition);
        let Some(epoch) = self.assignment().epoch(&p) else {
            // Read just before its partition was revoked: the next owner reads it again.
            return;
        };
        self.consumed.insert(p, (offset + 1, epoch));
        match debezium::decode(key, payload, &self.catalog) {
            Ok(Decoded::Skip(_)) => {}
            Ok(Decoded::Change(event)) => {
                let mut change = event.change;
                let table = change.relation.qualified_name();
                if !self.tables.contains(&table) {
                    self.skipped += 1;
                    return;
                }
                let (_, filter) = self.filter.get();
                prune(&mut change, &filter);
                let lsn = event.lsn.unwrap_or_default();
                batch.transactions.push(Transaction {
                    xid: event.txid.unwrap_or(0) as u32,
                    commit_lsn: lsn,
                    end_lsn: lsn,
                    commit_time: event.committed.unwrap_or_else(chrono::Utc::now),
                    changes: vec![change],
                });
            }
            Err(e) => {
                let position = format!("{topic}/{partition}@{offset}");
                tracing::warn!(position, error = %e, "kafka: undecodable record: dead letter");
                self.dead_letter(topic, partition, offset, key, payload)
                    .await;
                if let Some(table) = e.table().filter(|t| self.tables.contains(*t)) {
                    let change = debezium::undecodable(table, &e);
                    batch.transactions.push(Transaction {
                        xid: 0,
                        commit_lsn: Lsn(0),
                        end_lsn: Lsn(0),
                        commit_time: chrono::Utc::now(),
                        changes: vec![change],
                    });
                }
                batch.dead_letters.push(DeadLetter {
                    source: "kafka",
                    position,
                    kafka: Some((topic.to_string(), partition, offset)),
                    payload: payload.unwrap_or_default().to_vec(),
                    error: e.to_string(),
                });
            }
        }
    }

    /// Copies an undecodable record to the dead-letter topic, when one is configured. A
    /// failure is logged: the row in `cache_dead_letters` is the record that counts.
    async fn dead_letter(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) {
        let (Some(producer), Some(dlq)) = (&self.producer, &self.config.dead_letter_topic) else {
            return;
        };
        let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
            key: "cachewarden.source",
            value: Some(format!("{topic}/{partition}@{offset}").as_bytes()),
        });
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(dlq).headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = payload {
            record = record.payload(v);
        }
        if let Err((e, _)) = producer.send(record, Duration::from_secs(10)).await {
            tracing::warn!(topic = dlq, error = %e, "kafka: could not copy a dead letter to the dead-letter topic");
        }
    }

    fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.config.commit_interval_ms)
    }

    /// When the confirmed offsets not yet committed are due (`None`: nothing to commit).
    fn commit_due(&self) -> Option<tokio::time::Instant> {
        self.assignment()
            .has_uncommitted()
            .then(|| tokio::time::Instant::from_std(self.last_commit + self.commit_interval()))
    }

    /// Commits the confirmed offsets that moved since their last commit. Asynchronous: a lost
    /// commit only means a replay; a revocation commits again, synchronously, and `close`
    /// does too.
    fn commit(&mut self) -> Result<(), SourceError> {
        self.last_commit = Instant::now();
        let commit = self.assignment().uncommitted();
        if commit.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer.clone().ok_or(SourceError::NotConnected)?;
        let list = offsets_list(&commit).map_err(kafka_error)?;
        consumer
            .commit(&list, CommitMode::Async)
            .map_err(kafka_error)?;
        tracing::debug!(offsets = ?commit, "kafka: committed");
        Ok(())
    }

    /// The position after everything read so far under the current assignment.
    fn position(&self) -> Position {
        let a = self.assignment();
        Position::Offsets(
            self.consumed
                .iter()
                .filter(|(p, (_, epoch))| a.epoch(p) == Some(*epoch))
                .map(|((topic, partition), (next, epoch))| PartitionOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    next: *next,
                    epoch: *epoch,
                })
                .collect(),
        )
    }
}

/// Drops values no rule reads (they become unknown), as the PostgreSQL source does.
fn prune(change: &mut super::Change, filter: &super::ColumnFilter) {
    let table = change.relation.qualified_name();
    let keep: Vec<bool> = change
        .relation
        .columns
        .iter()
        .map(|c| c.is_key || filter.keeps(&table, &c.name))
        .collect();
    for t in [&mut change.old, &mut change.new].into_iter().flatten() {
        for (d, k) in t.0.iter_mut().zip(&keep) {
            if !k && matches!(d, super::Datum::Text(_)) {
                *d = super::Datum::Unknown;
            }
        }
    }
}

impl Source for KafkaSource {
    fn connect(&mut self) -> BoxFuture<'_, Result<(), SourceError>> {
        async move {
            self.close().await;
            let context = Context {
                assignment: self.assignment.clone(),
            };
            let consumer: StreamConsumer<Context> = self
                .client_config()
                .create_with_context(context)
                .map_err(kafka_error)?;
            let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
            consumer.subscribe(&topics).map_err(kafka_error)?;
            if self.config.dead_letter_topic.is_some() {
                self.producer = Some(
                    plain_client_config(&self.config)
                        .create()
                        .map_err(kafka_error)?,
                );
            }
            self.consumed.clear();
            self.consumer = Some(Arc::new(consumer));
            tracing::info!(brokers = %self.config.brokers, group = %self.config.group_id,
                topics = ?self.config.topics, "kafka: consuming");
            Ok(())
        }
        .boxed()
    }

    fn next_batch<'a>(
        &'a mut self,
        shutdown: &'a mut Shutdown,
        wake: &'a tokio::sync::Notify,
    ) -> BoxFuture<'a, Result<Batch, SourceError>> {
        async move {
            let consumer = self.consumer.clone().ok_or(SourceError::NotConnected)?;
            let mut batch = Batch::default();
            let mut read = 0usize;
            let mut first: Option<Instant> = None;
            loop {
                let received = if read == 0 {
                    let due = self.commit_due();
                    tokio::select! {
                        biased;
                        _ = shutdown.recv() => {
                            batch.shutdown = true;
                            break;
                        }
                        _ = wake.notified() => break,
                        _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                            self.commit()?;
                            continue;
                        }
                        m = consumer.recv() => m,
                    }
                } else {
                    let elapsed = first.map_or(Duration::ZERO, |f| f.elapsed());
                    if batch.change_count() >= self.limits.max_changes
                        || elapsed >= self.limits.max_wait.max(self.limits.linger)
                    {
                        break;
                    }
                    match consumer.recv().now_or_never() {
                        Some(m) => m,
                        None if self.limits.linger > elapsed => {
                            match tokio::time::timeout(
                                self.limits.linger - elapsed,
                                consumer.recv(),
                            )
                            .await
                            {
                                Ok(m) => m,
                                Err(_) => break,
                            }
                        }
                        None => break,
                    }
                };
                match received {
                    Ok(m) => {
                        first.get_or_insert_with(Instant::now);
                        read += 1;
                        let (topic, partition, offset) =
                            (m.topic().to_string(), m.partition(), m.offset());
                        let (key, payload) =
                            (m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec));
                        drop(m);
                        self.take(
                            &topic,
                            partition,
                            offset,
                            key.as_deref(),
                            payload.as_deref(),
                            &mut batch,
                        )
                        .await;
                    }
                    Err(KafkaError::PartitionEOF(_)) => {}
                    Err(e) => {
                        if let Some(fatal) = consumer.client().fatal_error() {
                            return Err(SourceError::Lost(format!("kafka: {fatal:?}")));
                        }
                        // librdkafka recovers from broker and network errors on its own.
                        tracing::warn!(error = %e, "kafka: consumer error");
                        if read > 0 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            if read > 0 {
                batch.confirmable = Some(self.position());
            }
            Ok(batch)
        }
        .boxed()
    }

    fn confirm(&mut self, position: Position) -> BoxFuture<'_, Result<(), SourceError>> {
        async move {
            let Position::Offsets(offsets) = position else {
                return Ok(());
            };
            self.assignment().confirm(&offsets);
            // Committed now when due, else by `next_batch` once due.
            if self.last_commit.elapsed() >= self.commit_interval() {
                self.commit()?;
            }
            Ok(())
        }
        .boxed()
    }

    fn heartbeat(&mut self) -> BoxFuture<'_, Result<(), SourceError>> {
        // librdkafka's own thread keeps the group membership alive.
        async { Ok(()) }.boxed()
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        async move {
            if let Some(consumer) = self.consumer.take() {
                let confirmed = self.assignment().all_confirmed();
                // Commit what was confirmed and leave the group now, so that the partitions
                // move to the others at once. librdkafka blocks for both, for as long as the
                // brokers do not answer: off the runtime's threads, and bounded.
                let leaving = tokio::task::spawn_blocking(move || {
                    if let Ok(list) = offsets_list(&confirmed) {
                        if list.count() > 0 {
                            if let Err(e) = consumer.commit(&list, CommitMode::Sync) {
                                tracing::warn!(error = %e, "kafka: final commit failed; the group's next member reads again from the previous commit");
                            }
                        }
                    }
                    consumer.unsubscribe();
                    drop(consumer);
                });
                if tokio::time::timeout(CLOSE_TIMEOUT, leaving).await.is_err() {
                    tracing::warn!(timeout = ?CLOSE_TIMEOUT, "kafka: the brokers did not answer while leaving the group; going on (what was not committed is read again)");
                }
            }
            if let Some(p) = self.producer.take() {
                let flushing = tokio::task::spawn_blocking(move || {
                    use rdkafka::producer::Producer as _;
                    let _ = p.flush(CLOSE_TIMEOUT);
                });
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, flushing).await;
            }
            *self.assignment() = Assignment::default();
        }
        .boxed()
    }

    fn progress(&self) -> Progress {
        let assigned = self.assignment().assigned();
        let confirmed = assigned
            .iter()
            .map(|((t, p), next)| match next {
                Some(n) => format!("{t}/{p}@{n}"),
                None => format!("{t}/{p}@-"),
            })
            .collect::<Vec<_>>()
            .join(",");
        let head = self
            .consumed
            .iter()
            .map(|((t, p), (n, _))| format!("{t}/{p}@{n}"))
            .collect::<Vec<_>>()
            .join(",");
        let lag = self
            .consumed
            .iter()
            .map(|(p, (n, _))| n - assigned.get(p).copied().flatten().unwrap_or(*n))
            .sum::<i64>()
            .max(0) as u64;
        Progress {
            confirmed,
            head,
            lag,
        }
    }

    fn heartbeat_interval(&self) -> Duration {
        self.limits.status_interval
    }
}

fn kafka_error(e: KafkaError) -> SourceError {
    SourceError::Kafka(e.to_string())
}

/// The catalog knowledge of `tables` that the worker's database has (tables it does not have
/// are simply absent: their events' own schemas must do).
pub fn hints(catalog: &std::collections::HashMap<String, crate::catalog::TableInfo>) -> Catalog {
    catalog
        .iter()
        .map(|(table, info)| {
            let columns = info
                .columns
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let oid = info.types.get(i).copied().unwrap_or(0);
                    let typmod = info.typmods.get(i).copied().unwrap_or(-1);
                    debezium::ColumnHint {
                        name: name.clone(),
                        pg: values::PgType {
                            oid,
                            scale: (oid == super::oid::NUMERIC && typmod >= 4)
                                .then(|| ((typmod - 4) & 0xffff) as u32),
                            precision: (matches!(
                                oid,
                                super::oid::TIMESTAMP | super::oid::TIMESTAMPTZ | super::oid::TIME
                            ) && typmod >= 0)
                                .then_some(typmod as u32),
                        },
                        is_key: if info.replica_identity == 'f' {
                            info.primary_key.contains(name)
                        } else {
                            info.identity_columns.contains(name)
                        },
                    }
                })
                .collect();
            (
                table.clone(),
                debezium::TableHints {
                    replica_identity: info.replica_identity as u8,
                    columns,
                },
            )
        })
        .collect()
}

/// What `cachewarden check` learns from the brokers: the topics that exist, or why the
/// brokers cannot be reached (within `timeout`).
pub async fn probe(config: &KafkaConfig, timeout: Duration) -> Result<Vec<String>, String> {
    let consumer: BaseConsumer = plain_client_config(config)
        .create()
        .map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(None, timeout)
            .map(|m| m.topics().iter().map(|t| t.name().to_string()).collect())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The brokers and the user's properties, without the consumer group's (for the dead-letter
/// producer and `check`'s metadata probe).
fn plain_client_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers);
    for (k, v) in &config.properties {
        if !k.starts_with("group.") && !k.starts_with("auto.") && !k.starts_with("enable.auto") {
            c.set(k, v);
        }
    }
    c
}

/// Whether a `[kafka] topics` entry names a topic pattern (librdkafka: it starts with `^`).
pub fn is_pattern(topic: &str) -> bool {
    topic.starts_with('^')
}

/// Messages the consumer group has not consumed yet, per partition (`topic/partition`): each
/// partition's high watermark minus the group's committed offset (the whole partition when
/// nothing was committed). Named topics count all their partitions; topics matched by a
/// pattern count once the group has committed in them. Reads through a client of its own
/// that joins no group, so it never disturbs the members' assignment.
pub async fn consumer_lag(
    config: &KafkaConfig,
    timeout: Duration,
) -> Result<BTreeMap<String, u64>, String> {
    let mut client = plain_client_config(config);
    client.set("group.id", &config.group_id);
    let consumer: BaseConsumer = client.create().map_err(|e| e.to_string())?;
    let named: Vec<String> = config
        .topics
        .iter()
        .filter(|t| !is_pattern(t))
        .cloned()
        .collect();
    let any_pattern = config.topics.iter().any(|t| is_pattern(t));
    tokio::task::spawn_blocking(move || {
        let metadata = consumer
            .fetch_metadata(None, timeout)
            .map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        for t in metadata.topics() {
            let wanted =
                named.iter().any(|n| n == t.name()) || (any_pattern && !t.name().starts_with("__"));
            if wanted {
                for p in t.partitions() {
                    tpl.add_partition(t.name(), p.id());
                }
            }
        }
        let committed = consumer
            .committed_offsets(tpl, timeout)
            .map_err(|e| e.to_string())?;
        let mut lag = BTreeMap::new();
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            if offset.is_none() && !named.iter().any(|n| n == e.topic()) {
                continue;
            }
            let (low, high) = consumer
                .fetch_watermarks(e.topic(), e.partition(), timeout)
                .map_err(|e| e.to_string())?;
            let behind = high - offset.unwrap_or(low);
            lag.insert(
                format!("{}/{}", e.topic(), e.partition()),
                u64::try_from(behind).unwrap_or(0),
            );
        }
        Ok(lag)
    })
    .await
    .map_err(|e| e.to_string())?
}
