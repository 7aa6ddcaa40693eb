//! The events stream: `publish` (collect's last step in cluster mode) and `consume` (every
//! node's copy of the stream in its own engine). Not the validation or enrichment of events,
//! which collect does as in local mode.
//!
//! **Publish.** The validated, enriched entries of one request are grouped by website and each
//! group is one message on `pulse.events.<website>`, its payload the event log's own batch
//! format (`pulse_snapshot::batch`, whose codes are explicit), so the wire format is the log's.
//! Collect answers 202 only once JetStream acknowledged every message of the request (stored on
//! a quorum of the stream's replicas); no connection, a refusal or no ack within
//! `PUBLISH_TIMEOUT` is a 503. A message no server took ("no responders": the stream is between
//! two leaders) is published again until a leader stores it or `PUBLISH_TIMEOUT` passes, so a
//! leader change shorter than that is not a 503; it may then land after a later message of the
//! same request, which carries the same time. A request spanning two websites whose first
//! message was stored and second was not answers 503 too: a client retry then stores the first
//! again.
//!
//! **Consume.** An ordered consumer (ephemeral, recreated by the client after a lost
//! connection from where it stopped) reads the stream from `now - window` and counts each event
//! in this node's engine, in stream order — the same order on every node, so every node gives
//! the same answer. Events of websites this node does not know yet are looked up in the
//! websites bucket first (the watcher may lag the stream); events stored before their
//! website's `log_start_seq` belong to a deleted website of the same id and are not counted.
//! The node is caught up (`/readyz` 200) once it has counted the stream up to its head as of
//! start-up.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use bytes::Bytes;
use futures_util::StreamExt;
use pulse_engine::WebsiteId;
use pulse_snapshot::{batch, LogEntry};

use super::{Cluster, EVENTS_SUBJECT_PREFIX};
use crate::state::AppState;

/// How long the consumer waits before starting again after its stream of messages ended.
const CONSUMER_RETRY: Duration = Duration::from_secs(1);
/// How often an idle consumer checks that it is idle because the stream is, and how long it may
/// deliver nothing while the stream grows before it is started again.
const IDLE_CHECK: Duration = Duration::from_secs(1);
const STUCK_AFTER: Duration = Duration::from_secs(2);
/// The pause before publishing again a message no server took (no stream leader): a planned
/// leader change takes tens of milliseconds, so a short pause catches its end, and at most about
/// 30 tries fit in `PUBLISH_TIMEOUT` while a dead leader is being replaced.
const NO_LEADER_RETRY: Duration = Duration::from_millis(100);

/// Why events were not published (collect answers 503 with `Retry-After`).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to NATS")]
    Disconnected,
    #[error("JetStream did not acknowledge within {PUBLISH_TIMEOUT_SECS} s", PUBLISH_TIMEOUT_SECS = super::PUBLISH_TIMEOUT.as_secs())]
    TimedOut,
    #[error("JetStream refused the events: {0}")]
    Unavailable(String),
}

/// `entries` grouped by website, each group in arrival order.
fn by_website(entries: &[LogEntry]) -> Vec<(&WebsiteId, Vec<LogEntry>)> {
    let mut groups: Vec<(&WebsiteId, Vec<LogEntry>)> = Vec::new();
    for entry in entries {
        let website = entry.website();
        match groups.iter_mut().find(|(id, _)| *id == website) {
            Some((_, group)) => group.push(entry.clone()),
            None => groups.push((website, vec![entry.clone()])),
        }
    }
    groups
}

/// The subject events of `website` are published on.
pub fn subject(website: &WebsiteId) -> String {
    format!("{EVENTS_SUBJECT_PREFIX}{}", website.as_str())
}

/// The stream messages for `entries` (one website's): log batches whose sequence numbers mean
/// nothing (the stream numbers its messages), one per run of entries of one kind (events,
/// touches), as a log record holds one kind.
pub fn encode(entries: &[LogEntry]) -> Vec<Bytes> {
    let mut messages = Vec::new();
    let mut rest = entries;
    while !rest.is_empty() {
        let mut payload = Vec::with_capacity(
            batch::BATCH_HEADER_BYTES + rest.iter().map(batch::encoded_len).sum::<usize>(),
        );
        let taken = batch::encode(0, rest, &mut payload).max(1);
        messages.push(Bytes::from(payload));
        rest = rest.get(taken..).unwrap_or_default();
    }
    messages
}

impl Cluster {
    /// Publishes `entries` and waits for JetStream to acknowledge them all.
    pub async fn publish(&self, entries: &[LogEntry]) -> Result<(), PublishError> {
        let outcome = self.publish_acknowledged(entries).await;
        if outcome.is_err() {
            self.status.publish_failures.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    async fn publish_acknowledged(&self, entries: &[LogEntry]) -> Result<(), PublishError> {
        // Fail fast: while disconnected the client would only buffer the message and time out.
        if !self.status.is_connected() {
            return Err(PublishError::Disconnected);
        }
        let sent = async {
            let mut unacknowledged = Vec::new();
            for (website, group) in by_website(entries) {
                for message in encode(&group) {
                    let ack = self.send(subject(website), message.clone()).await?;
                    unacknowledged.push((website, message, ack));
                }
            }
            for (website, message, ack) in unacknowledged {
                match ack.await {
                    Ok(_) => {}
                    Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                        self.publish_again_when_led(subject(website), message)
                            .await?;
                    }
                    Err(e) => return Err(PublishError::Unavailable(e.to_string())),
                }
            }
            Ok(())
        };
        tokio::time::timeout(super::PUBLISH_TIMEOUT, sent)
            .await
            .map_err(|_| PublishError::TimedOut)?
    }

    /// Sends one message; the caller awaits its ack.
    async fn send(
        &self,
        subject: String,
        message: Bytes,
    ) -> Result<PublishAckFuture, PublishError> {
        self.jetstream
            .publish(subject, message)
            .await
            .map_err(|e| PublishError::Unavailable(e.to_string()))
    }

    /// Publishes `message` again, one at a time, until JetStream stores it: called after a "no
    /// responders" answer, which means no server took the message — the stream has no leader
    /// for a moment (an election: a leader that stepped down or died, or one the machine's load
    /// made miss its heartbeats), so nothing was stored and a retry cannot store it twice. The
    /// caller's `PUBLISH_TIMEOUT` bounds the wait: an election shorter than that is a slower
    /// 202, not a 503.
    async fn publish_again_when_led(
        &self,
        subject: String,
        message: Bytes,
    ) -> Result<(), PublishError> {
        loop {
            tokio::time::sleep(NO_LEADER_RETRY).await;
            let ack = self.send(subject.clone(), message.clone()).await?;
            match ack.await {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                    tracing::debug!(%subject, "no stream leader yet; publishing again");
                }
                Err(e) => return Err(PublishError::Unavailable(e.to_string())),
            }
        }
    }
}

/// Reads the stream from `start_ms` into the engine for as long as the server runs.
pub async fn consume(state: Arc<AppState>, start_ms: i64) {
    let Some(cluster) = state.cluster.as_ref() else {
        return;
    };
    let status = Arc::clone(cluster.status());
    // Where to start: by time the first time, after the last counted event when starting over.
    let mut resume_after: Option<u64> = None;
    let mut unknown = UnknownWebsites::default();
    loop {
        match consume_once(&state, cluster, start_ms, resume_after, &mut unknown).await {
            Ok(last) => resume_after = last.or(resume_after),
            Err(error) => tracing::warn!(%error, "reading the events stream failed; retrying"),
        }
        resume_after = resume_after.or_else(|| Some(status.consumed_seq()).filter(|&s| s > 0));
        tokio::time::sleep(CONSUMER_RETRY).await;
    }
}

/// Websites the bucket did not hold when their events arrived, so the lookup is not repeated for
/// every event of a deleted website; forgotten whenever the watcher applies a change.
#[derive(Debug, Default)]
struct UnknownWebsites {
    ids: HashSet<String>,
    catalog_changes: u64,
}

/// One consumer's life: creates it, counts what it delivers, returns the last stream sequence
/// counted when its messages end.
async fn consume_once(
    state: &Arc<AppState>,
    cluster: &Cluster,
    start_ms: i64,
    resume_after: Option<u64>,
    unknown: &mut UnknownWebsites,
) -> Result<Option<u64>, String> {
    let status = cluster.status();
    let head = cluster
        .events
        .get_info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .last_sequence;
    let deliver_policy = match resume_after {
        Some(seq) => DeliverPolicy::ByStartSequence {
            start_sequence: seq + 1,
        },
        None => {
            status.head_at_start.store(head, Ordering::Relaxed);
            DeliverPolicy::ByStartTime {
                start_time: async_nats::datetime::from_nanos(i128::from(start_ms) * 1_000_000)
                    .map_err(|e| e.to_string())?,
            }
        }
    };
    let consumer = cluster
        .events
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("{EVENTS_SUBJECT_PREFIX}>"),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    if consumer.cached_info().num_pending == 0 {
        mark_caught_up(status);
    }
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let mut last = None;
    let mut idle_since = tokio::time::Instant::now();
    loop {
        let next = match tokio::time::timeout(IDLE_CHECK, messages.next()).await {
            Ok(next) => next,
            Err(_) => {
                if consumer_stuck(cluster, idle_since).await {
                    tracing::warn!(
                        after = status.consumed_seq(),
                        "the events consumer stopped delivering while the stream grew; \
                         starting it again"
                    );
                    return Ok(last);
                }
                continue;
            }
        };
        let Some(message) = next else {
            break;
        };
        idle_since = tokio::time::Instant::now();
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "events stream consumer");
                continue;
            }
        };
        let (seq, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(error) => {
                tracing::warn!(%error, "a stream message without its metadata");
                continue;
            }
        };
        count_message(state, seq, &message.payload, unknown).await;
        last = Some(seq);
        status.consumed_seq.store(seq, Ordering::Relaxed);
        if pending == 0 || seq >= status.head_at_start() {
            mark_caught_up(status);
        }
    }
    Ok(last)
}

/// Whether the consumer has delivered nothing for `STUCK_AFTER` while the stream holds events
/// past the last one counted: its server died with it (the ordered consumer's own recovery waits
/// for missed heartbeats, tens of seconds), so it is started again after the last counted event.
async fn consumer_stuck(cluster: &Cluster, idle_since: tokio::time::Instant) -> bool {
    if idle_since.elapsed() < STUCK_AFTER || !cluster.status().is_connected() {
        return false;
    }
    match tokio::time::timeout(super::KV_TIMEOUT, cluster.events.get_info()).await {
        Ok(Ok(info)) => info.state.last_sequence > cluster.status().consumed_seq(),
        _ => false,
    }
}

fn mark_caught_up(status: &super::ClusterStatus) {
    if !status.caught_up.swap(true, Ordering::AcqRel) {
        tracing::info!(
            events = status.consumed_events(),
            "caught up with the events stream: ready"
        );
    }
}

/// Counts the events of one stream message in the engine.
async fn count_message(
    state: &Arc<AppState>,
    seq: u64,
    payload: &[u8],
    unknown: &mut UnknownWebsites,
) {
    let mut entries = Vec::new();
    let mut website_cache = None;
    if let Err(error) = batch::decode(payload, &mut website_cache, |logged| {
        entries.push(logged.entry);
    }) {
        // Only Pulse publishes here; a message it cannot read is logged, never guessed at.
        tracing::error!(seq, %error, "an unreadable message in the events stream was skipped");
        return;
    }
    let Some(first) = entries.first() else {
        return;
    };
    let id = first.website().as_str().to_owned();
    let mut website = state.websites.get(&id);
    let catalog_changes = state
        .cluster
        .as_ref()
        .map_or(0, |c| c.status().catalog_changes());
    if unknown.catalog_changes != catalog_changes {
        unknown.ids.clear();
        unknown.catalog_changes = catalog_changes;
    }
    if website.is_none() && !unknown.ids.contains(&id) {
        // The websites watcher may not have delivered a website created a moment ago.
        super::websites::refresh(state, &id).await;
        website = state.websites.get(&id);
        if website.is_none() {
            unknown.ids.insert(id.clone());
        }
    }
    let Some(website) = website else {
        return;
    };
    if seq < website.log_start_seq {
        // Stored for a deleted website whose id was used again: never counted.
        return;
    }
    let cluster_status = state.cluster.as_ref().map(|c| Arc::clone(c.status()));
    let mut counted = 0_u64;
    for entry in entries {
        match entry {
            LogEntry::Event {
                event,
                carried_from,
            } => {
                if state.engine.ingest(event, carried_from).is_ok() {
                    counted += 1;
                }
            }
            // A touch is no event: it only moves its visitor's last-seen time.
            LogEntry::Touch {
                touch,
                carried_from,
            } => {
                let _ = state.engine.touch(&touch, carried_from);
            }
        }
    }
    if let Some(status) = cluster_status {
        status.consumed_events.fetch_add(counted, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulse_engine::{Timestamp, VisitorId};
    use pulse_testkit::fixtures::pageview_event;

    fn entry(website: &str, visitor: u64) -> LogEntry {
        LogEntry::Event {
            event: Arc::new(pageview_event(website, visitor, 1_700_000_000_000)),
            carried_from: None,
        }
    }

    #[test]
    fn a_batch_is_one_message_per_website_in_arrival_order() {
        let entries = [entry("a", 1), entry("b", 2), entry("a", 3)];
        let groups = by_website(&entries);
        let shape: Vec<(&str, Vec<u64>)> = groups
            .iter()
            .map(|(id, group)| {
                (
                    id.as_str(),
                    group
                        .iter()
                        .filter_map(|e| e.event().map(|event| event.visitor.0))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(shape, [("a", vec![1, 3]), ("b", vec![2])]);
        assert_eq!(subject(groups[1].0), "pulse.events.b");
    }

    #[test]
    fn a_message_decodes_to_the_entries_it_was_made_of() {
        let touch = LogEntry::Touch {
            touch: pulse_engine::Touch {
                website: WebsiteId::new("site").unwrap(),
                ts: Timestamp::from_unix_ms(1_700_000_000_000).unwrap(),
                visitor: VisitorId(9),
                is_bot: false,
            },
            carried_from: None,
        };
        let entries = vec![entry("site", 7), entry("site", 8), touch, entry("site", 10)];
        let messages = encode(&entries);
        assert_eq!(messages.len(), 3, "one message per run of one kind");
        let mut decoded = Vec::new();
        for payload in &messages {
            batch::decode(payload, &mut None, |logged| decoded.push(logged.entry)).unwrap();
        }
        assert_eq!(decoded, entries);
    }
}
