//! `ClassCache`: a fixed-size, lock-free memo of recent User-Agent verdicts, keyed by a
//! per-process keyed hash of the header. It owns the slot layout and nothing else: the
//! verdict itself comes from `user_agent::classify`, and the browser and device are packed
//! under the event log's explicit codes (`pulse_snapshot::codes`), never their declaration
//! order. It never stores the header.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use pulse_engine::{Browser, DeviceType};
use pulse_snapshot::codes::LogCode;

use super::{classify, UserAgentClass};

/// Slots of a `ClassCache` (a power of two): 4096 × 8 bytes = 32 KiB.
const CACHE_SLOTS: usize = 1 << 12;
/// Low bits of a cache slot that hold the class; the high 46 bits hold the hash tag.
const CLASS_BITS: u32 = 18;
/// Mask of the class bits.
const CLASS_MASK: u64 = (1 << CLASS_BITS) - 1;
/// Bits 0..8: the device's log code; bits 8..16: the browser's log code.
const BROWSER_SHIFT: u32 = 8;
/// Set when the verdict is a bot.
const BOT_BIT: u64 = 1 << 16;
/// Set in every filled slot, so an empty (zero) slot never matches.
const FILLED: u64 = 1 << 17;

/// A fixed-size memo of recent verdicts: real traffic repeats a few hundred distinct headers,
/// and a lookup costs one keyed hash of the header instead of a scan (about a quarter of the
/// collect handler's own CPU before the cache). Each slot is one atomic word, the high 46 bits
/// of the header's hash next to the packed class, so readers never lock and a racing writer
/// can only replace a whole entry. The hash is keyed with a per-process random key: nobody
/// can craft a header that shares a tag with another one, and the table holds no header.
/// A miss, or a hit on a slot another header took over, just classifies afresh.
#[derive(Debug)]
pub struct ClassCache {
    hasher: RandomState,
    slots: Box<[AtomicU64]>,
}

impl Default for ClassCache {
    fn default() -> Self {
        Self::new()
    }
}

impl ClassCache {
    /// An empty cache of `CACHE_SLOTS` slots under a fresh random hash key.
    pub fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            slots: (0..CACHE_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// `classify(user_agent)`, from the memo when this header was seen recently.
    pub fn classify(&self, user_agent: &str) -> UserAgentClass {
        let hash = self.hasher.hash_one(user_agent.as_bytes());
        let slot = &self.slots[(hash as usize) & (CACHE_SLOTS - 1)];
        let tag = hash & !CLASS_MASK;
        let current = slot.load(Ordering::Relaxed);
        if current & !CLASS_MASK == tag && current & FILLED != 0 {
            if let Some(class) = unpack(current) {
                return class;
            }
        }
        let class = classify(user_agent);
        slot.store(tag | pack(class), Ordering::Relaxed);
        class
    }

    /// Bytes the slots take (fixed at construction).
    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<AtomicU64>()
    }
}

/// The class in the low `CLASS_BITS` of a cache slot: the filled flag, the bot bit, and the
/// browser's and the device's log codes, one byte each.
fn pack(class: UserAgentClass) -> u64 {
    let bot = if class.is_bot { BOT_BIT } else { 0 };
    FILLED
        | bot
        | (u64::from(class.browser.to_code()) << BROWSER_SHIFT)
        | u64::from(class.device.to_code())
}

/// The class packed in `slot`, or `None` when a code in it is unknown (treated as a miss).
fn unpack(slot: u64) -> Option<UserAgentClass> {
    let [device, browser, ..] = slot.to_le_bytes();
    Some(UserAgentClass {
        is_bot: slot & BOT_BIT != 0,
        browser: Browser::from_code(browser).ok()?,
        device: DeviceType::from_code(device).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user_agent::tests::sample_lines;

    fn every_class() -> Vec<UserAgentClass> {
        let mut classes = Vec::new();
        for is_bot in [false, true] {
            for &browser in Browser::ALL {
                for &device in DeviceType::ALL {
                    classes.push(UserAgentClass {
                        is_bot,
                        browser,
                        device,
                    });
                }
            }
        }
        classes
    }

    #[test]
    fn every_class_survives_the_cache_slot_encoding() {
        for class in every_class() {
            let packed = pack(class);
            assert_eq!(packed & !CLASS_MASK, 0, "{class:?} spills into the tag");
            let slot = (0xABCD_u64 << CLASS_BITS) | packed;
            assert_eq!(unpack(slot), Some(class), "{class:?}");
        }
    }

    #[test]
    fn distinct_classes_pack_to_distinct_slots() {
        let packed: std::collections::HashSet<u64> = every_class().into_iter().map(pack).collect();
        assert_eq!(packed.len(), every_class().len());
    }

    #[test]
    fn a_slot_with_an_unknown_code_is_a_miss_not_a_default() {
        let known = pack(UserAgentClass {
            is_bot: false,
            browser: Browser::Other,
            device: DeviceType::Other,
        });
        assert_eq!(unpack(known | 0xFF), None, "unknown device code");
        assert_eq!(
            unpack(known | (0xFF << BROWSER_SHIFT)),
            None,
            "unknown browser code"
        );
    }

    #[test]
    fn the_cache_answers_what_the_scan_answers() {
        let mut samples = sample_lines("browser-user-agents.txt");
        samples.extend(sample_lines("bot-user-agents.txt"));
        samples.extend(
            ["", "curl/8.5.0", "Mozilla/5.0", "x".repeat(600).as_str()]
                .into_iter()
                .map(str::to_owned),
        );
        let cache = ClassCache::new();
        // Twice over: the first pass fills slots (more samples than some slots can hold
        // without collisions), the second reads them back.
        for round in 0..2 {
            for ua in &samples {
                assert_eq!(cache.classify(ua), classify(ua), "round {round}: {ua:?}");
            }
        }
        let filled = cache
            .slots
            .iter()
            .filter(|slot| slot.load(Ordering::Relaxed) != 0)
            .count();
        assert!(filled > 0, "the cache never stored a verdict");
    }
}
