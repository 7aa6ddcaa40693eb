//! `LiveHub`: the live stream's fan-out. Every open stream of `GET …/realtime/stream` watches a
//! *topic* — one (website, `include_bots`) pair — and each topic holds its latest frame (the
//! Server-Sent Events message, shared as `Bytes`) in a `tokio::sync::watch`. A ticker calls
//! `tick` once a second: it renders each topic that has subscribers once, publishes the frame
//! only if it changed, drops topics nobody watches, and ends the topics of deleted websites (their
//! streams end with them). So a thousand streams of one website cost one rendering a second,
//! never a query per client.
//!
//! Each `Subscription` paces its own stream: the current frame at once, then at most one frame a
//! second however often its topic changes (the watch keeps only the newest), a `: keepalive`
//! comment every heartbeat interval, and the end at shutdown (`close`) or when its website goes.
//! Open streams are bounded (`max_streams`, from the memory plan): `reserve` refuses past it.
//!
//! It does not know how a frame is rendered (`routes::realtime::render` does), nor HTTP.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

/// Shortest time between two data messages of one stream.
pub const MIN_MESSAGE_GAP: Duration = Duration::from_secs(1);
/// How often the ticker renders every watched topic.
pub const TICK_INTERVAL: Duration = Duration::from_secs(1);
/// The heartbeat: an SSE comment, which clients ignore and proxies see as traffic.
const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// What a stream watches: one website's realtime answer, with bots or not (`None`: the website's
/// own policy, followed as it changes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicKey {
    pub website: String,
    pub include_bots: Option<bool>,
}

/// One rendering of a topic, ready to send.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The whole SSE message: `data: <json>\n\n`.
    pub message: Bytes,
    /// Which incarnation of the website it shows: a website deleted and created again under
    /// the same id is another website, whose topic starts afresh.
    pub incarnation: u64,
}

impl Frame {
    /// The SSE message carrying `json` (one line: compact JSON has no newline).
    pub fn new(json: &[u8], incarnation: u64) -> Self {
        let mut message = Vec::with_capacity(json.len() + 8);
        message.extend_from_slice(b"data: ");
        message.extend_from_slice(json);
        message.extend_from_slice(b"\n\n");
        Self {
            message: Bytes::from(message),
            incarnation,
        }
    }
}

#[derive(Debug)]
struct Topic {
    frames: watch::Sender<Bytes>,
    incarnation: u64,
}

/// Why a stream could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamRefused {
    #[error("{max_streams} streams are open, as many as the memory limit allows")]
    TooMany { max_streams: usize },
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// The topics, their subscribers and the bound on open streams (module docs).
#[derive(Debug)]
pub struct LiveHub {
    topics: Mutex<HashMap<TopicKey, Topic>>,
    /// `true` once shutdown began: every stream ends.
    closing: watch::Sender<bool>,
    open_streams: Arc<AtomicUsize>,
    max_streams: usize,
    heartbeat: Duration,
}

impl LiveHub {
    pub fn new(max_streams: usize, heartbeat: Duration) -> Self {
        Self {
            topics: Mutex::new(HashMap::new()),
            closing: watch::Sender::new(false),
            open_streams: Arc::new(AtomicUsize::new(0)),
            max_streams,
            heartbeat: heartbeat.max(Duration::from_millis(1)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TopicKey, Topic>> {
        // Every update of the map is one step: a panicking holder leaves it consistent.
        self.topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn max_streams(&self) -> usize {
        self.max_streams
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.open_streams.load(Ordering::SeqCst)
    }

    /// Topics watched now.
    pub fn topics(&self) -> usize {
        self.lock().len()
    }

    /// Bytes of the frames the topics hold (each shared by all of its streams).
    pub fn frame_bytes(&self) -> usize {
        self.lock()
            .values()
            .map(|topic| topic.frames.borrow().len())
            .sum()
    }

    /// Takes one of the `max_streams` places, for as long as the returned slot lives.
    pub fn reserve(&self) -> Result<StreamSlot, StreamRefused> {
        if *self.closing.borrow() {
            return Err(StreamRefused::ShuttingDown);
        }
        let taken = self
            .open_streams
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| {
                (open < self.max_streams).then_some(open + 1)
            });
        match taken {
            Ok(_) => Ok(StreamSlot {
                open_streams: Arc::clone(&self.open_streams),
            }),
            Err(_) => Err(StreamRefused::TooMany {
                max_streams: self.max_streams,
            }),
        }
    }

    /// Subscribes to `key`, whose current rendering is `frame` (rendered by the caller, which
    /// also learnt the website exists): the topic is created, or brought up to date, with it.
    pub fn subscribe(&self, key: TopicKey, frame: Frame, slot: StreamSlot) -> Subscription {
        let mut topics = self.lock();
        let topic = topics.entry(key).or_insert_with(|| Topic {
            frames: watch::Sender::new(frame.message.clone()),
            incarnation: frame.incarnation,
        });
        if topic.incarnation != frame.incarnation {
            // The website was replaced since the last tick: its old streams end, ours starts.
            *topic = Topic {
                frames: watch::Sender::new(frame.message.clone()),
                incarnation: frame.incarnation,
            };
        }
        publish(&topic.frames, frame.message);
        let mut frames = topic.frames.subscribe();
        frames.mark_unchanged();
        let now = Instant::now();
        Subscription {
            frames,
            closing: self.closing.subscribe(),
            heartbeat: self.heartbeat,
            next_heartbeat: now + self.heartbeat,
            next_message: now,
            // The current frame goes out at once.
            pending: true,
            _slot: slot,
        }
    }

    /// Whether any topic is watched (the ticker skips `tick` otherwise).
    pub fn is_idle(&self) -> bool {
        self.lock().is_empty()
    }

    /// One tick: drops unwatched topics, renders each watched one once with `render` (`None`:
    /// the website is gone, so its streams end) and publishes the frames that changed. Renders
    /// without the lock, so subscribing never waits on rendering.
    pub fn tick(&self, render: impl Fn(&TopicKey) -> Option<Frame>) {
        let watched: Vec<TopicKey> = {
            let mut topics = self.lock();
            topics.retain(|_, topic| topic.frames.receiver_count() > 0);
            topics.keys().cloned().collect()
        };
        for key in watched {
            let rendered = render(&key);
            let mut topics = self.lock();
            let Some(topic) = topics.get(&key) else {
                continue;
            };
            match rendered {
                Some(frame) if frame.incarnation == topic.incarnation => {
                    publish(&topic.frames, frame.message);
                }
                // Deleted, or deleted and created again: either way these streams' website is
                // gone. Dropping the sender ends them.
                _ => {
                    topics.remove(&key);
                }
            }
        }
    }

    /// Shutdown: every stream ends now, and no new one opens.
    pub fn close(&self) {
        self.closing.send_replace(true);
        self.lock().clear();
    }
}

/// Publishes `message` unless it is what the topic holds already.
fn publish(frames: &watch::Sender<Bytes>, message: Bytes) {
    frames.send_if_modified(|current| {
        if *current == message {
            return false;
        }
        *current = message;
        true
    });
}

/// One of the `max_streams` places, given back when dropped.
#[derive(Debug)]
pub struct StreamSlot {
    open_streams: Arc<AtomicUsize>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.open_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One open stream's view of its topic, and its pacing (module docs).
#[derive(Debug)]
pub struct Subscription {
    frames: watch::Receiver<Bytes>,
    closing: watch::Receiver<bool>,
    heartbeat: Duration,
    next_heartbeat: Instant,
    /// No data message before this instant (`MIN_MESSAGE_GAP` after the previous one).
    next_message: Instant,
    /// The topic changed since the last message sent.
    pending: bool,
    _slot: StreamSlot,
}

impl Subscription {
    /// The next message to send: a frame, or a keepalive comment. `None`: the stream ends
    /// (shutdown, or its website was deleted).
    pub async fn next_message(&mut self) -> Option<Bytes> {
        loop {
            if *self.closing.borrow() {
                return None;
            }
            let now = Instant::now();
            if self.pending && now >= self.next_message {
                self.pending = false;
                self.next_message = now + MIN_MESSAGE_GAP;
                return Some(self.frames.borrow_and_update().clone());
            }
            if now >= self.next_heartbeat {
                self.next_heartbeat = now + self.heartbeat;
                return Some(Bytes::from_static(KEEPALIVE));
            }
            let pending = self.pending;
            let (next_message, next_heartbeat) = (self.next_message, self.next_heartbeat);
            tokio::select! {
                // Either way (shutdown, or the hub itself gone) the stream ends: checked above.
                _ = self.closing.changed() => {
                    if self.closing.has_changed().is_err() {
                        return None;
                    }
                }
                changed = self.frames.changed(), if !pending => match changed {
                    Ok(()) => self.pending = true,
                    // The topic was dropped: its website is gone, or the server is stopping.
                    Err(_) => return None,
                },
                () = tokio::time::sleep_until(next_message), if pending => {}
                () = tokio::time::sleep_until(next_heartbeat) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(website: &str) -> TopicKey {
        TopicKey {
            website: website.to_owned(),
            include_bots: None,
        }
    }

    fn frame(json: &str) -> Frame {
        Frame::new(json.as_bytes(), 0)
    }

    #[test]
    fn a_frame_is_one_data_line_and_a_blank_line() {
        assert_eq!(&frame("{\"a\":1}").message[..], b"data: {\"a\":1}\n\n");
    }

    #[test]
    fn streams_are_bounded_and_give_their_place_back() {
        let hub = LiveHub::new(2, Duration::from_secs(15));
        let a = hub.reserve().unwrap();
        let _b = hub.reserve().unwrap();
        assert_eq!(
            hub.reserve().unwrap_err(),
            StreamRefused::TooMany { max_streams: 2 }
        );
        drop(a);
        assert_eq!(hub.open_streams(), 1);
        let c = hub.reserve().unwrap();
        hub.close();
        drop(c);
        assert_eq!(hub.reserve().unwrap_err(), StreamRefused::ShuttingDown);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_frame_goes_at_once_then_at_most_one_a_second() {
        let hub = LiveHub::new(10, Duration::from_secs(15));
        let mut stream = hub.subscribe(key("s"), frame("0"), hub.reserve().unwrap());
        assert_eq!(stream.next_message().await.unwrap(), "data: 0\n\n");
        let started = Instant::now();
        for n in 1..=5 {
            hub.tick(|_| Some(frame(&n.to_string())));
        }
        // Only the newest of the five changes, a second after the first message.
        assert_eq!(stream.next_message().await.unwrap(), "data: 5\n\n");
        assert_eq!(started.elapsed(), MIN_MESSAGE_GAP);
        // An unchanged rendering sends nothing: the next message is the heartbeat.
        hub.tick(|_| Some(frame("5")));
        assert_eq!(stream.next_message().await.unwrap(), ": keepalive\n\n");
        assert_eq!(started.elapsed(), Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn one_rendering_per_topic_whatever_the_subscribers() {
        let hub = LiveHub::new(100, Duration::from_secs(15));
        let streams: Vec<_> = (0..50)
            .map(|n| {
                let website = if n % 2 == 0 { "a" } else { "b" };
                hub.subscribe(key(website), frame("0"), hub.reserve().unwrap())
            })
            .collect();
        let renders = AtomicUsize::new(0);
        hub.tick(|_| {
            renders.fetch_add(1, Ordering::SeqCst);
            Some(frame("1"))
        });
        assert_eq!(renders.load(Ordering::SeqCst), 2);
        drop(streams);
        hub.tick(|_| {
            renders.fetch_add(1, Ordering::SeqCst);
            Some(frame("2"))
        });
        assert_eq!(renders.load(Ordering::SeqCst), 2, "unwatched topics render");
        assert_eq!(hub.topics(), 0);
        assert_eq!(hub.open_streams(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn streams_end_when_their_website_goes_or_the_server_stops() {
        let hub = LiveHub::new(10, Duration::from_secs(15));
        let mut deleted = hub.subscribe(key("gone"), frame("0"), hub.reserve().unwrap());
        let mut replaced = hub.subscribe(key("new"), frame("0"), hub.reserve().unwrap());
        let mut other = hub.subscribe(key("kept"), frame("0"), hub.reserve().unwrap());
        for stream in [&mut deleted, &mut replaced, &mut other] {
            assert!(stream.next_message().await.is_some());
        }
        hub.tick(|key| match key.website.as_str() {
            "gone" => None,
            "new" => Some(Frame::new(b"0", 1)),
            _ => Some(frame("0")),
        });
        assert_eq!(deleted.next_message().await, None);
        assert_eq!(replaced.next_message().await, None);
        let started = Instant::now();
        hub.close();
        assert_eq!(other.next_message().await, None);
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "shutdown ends streams at once"
        );
    }
}
