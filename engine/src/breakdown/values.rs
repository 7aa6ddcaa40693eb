//! `ValueTable`: the values breakdowns count, as dense `u32` ids shared by a class's exact and
//! approximate state.
//!
//! Browsers, devices, countries and the three `(other)` overflow values have fixed ids (no
//! hashing on ingest). Page paths, custom event names and referrer domains are interned: each
//! distinct text gets an id while at least one event in the window carries it, and gives it back
//! when the last one leaves. At most `per_list_cap` texts per list are held; a text arriving
//! while its list is full is counted under that list's `(other)` value instead, so memory is
//! bounded whatever the traffic. This module does not count visitors or know about windows.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;

use crate::event::{Browser, CountryCode, DeviceType, Event, EventKind};

/// The six lists a breakdown answers, in the order of `BreakdownList::ALL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakdownList {
    /// Page paths of pageviews.
    Pages,
    /// Referring domains of all events.
    Referrers,
    /// Names of custom events.
    Events,
    /// Browser families of all events.
    Browsers,
    /// Device classes of all events.
    Devices,
    /// Countries of all events.
    Countries,
}

impl BreakdownList {
    /// Every list, in the order of the API's answer.
    pub const ALL: [Self; 6] = [
        Self::Pages,
        Self::Referrers,
        Self::Events,
        Self::Browsers,
        Self::Devices,
        Self::Countries,
    ];

    /// Position in `ALL`.
    pub fn index(self) -> usize {
        match self {
            Self::Pages => 0,
            Self::Referrers => 1,
            Self::Events => 2,
            Self::Browsers => 3,
            Self::Devices => 4,
            Self::Countries => 5,
        }
    }
}

/// The value text an overflowing list counts its extra values under.
pub const OTHER_VALUE: &str = "(other)";

/// "No value" in an event's value slots (no referrer, no country).
pub(crate) const NO_VALUE: u32 = u32::MAX;

const BROWSERS: u32 = Browser::ALL.len() as u32;
const DEVICES: u32 = DeviceType::ALL.len() as u32;
const COUNTRIES: u32 = 26 * 26;
const DEVICE_BASE: u32 = BROWSERS;
const COUNTRY_BASE: u32 = DEVICE_BASE + DEVICES;
const OTHER_BASE: u32 = COUNTRY_BASE + COUNTRIES;
/// The first interned (text) id; every id below is fixed.
pub(crate) const FIXED_IDS: u32 = OTHER_BASE + 3;
/// Text slots a table may hold: every id stays below `u16::MAX`, so a queued record keeps its
/// target and referrer in 16 bits each (`u16::MAX` there means "no value"). Three lists of
/// `EngineLimits::MAX_BREAKDOWN_VALUES_PER_LIST` fit.
pub(crate) const MAX_TEXT_SLOTS: u32 = u16::MAX as u32 - FIXED_IDS;
/// The largest capacity an import may restore for a container indexed or keyed by value id
/// (per-value counts, an estimate's minute tables): one element per id, ids below 2^16, and
/// less than as much again of the slack a container that grew by doubling keeps.
const MAX_ID_CAPACITY: u64 = 2 << 16;

/// The capacity, as a `usize`, that an import may allocate for a container of at most one
/// element per value id, or an error before anything is allocated. Such containers grow with
/// the distinct values, not with visitors, so the memory budget does not govern them (an
/// estimate under a budget of one byte still holds its values' counts); the id space does.
pub(crate) fn claim_id_capacity(capacity: u64) -> Result<usize, EngineError> {
    match usize::try_from(capacity) {
        Ok(capacity) if capacity as u64 <= MAX_ID_CAPACITY => Ok(capacity),
        _ => Err(EngineError::InvalidExport(
            "a value-id container larger than the id space",
        )),
    }
}

/// The text lists, in the order of their `(other)` ids.
const TEXT_LISTS: [BreakdownList; 3] = [
    BreakdownList::Pages,
    BreakdownList::Events,
    BreakdownList::Referrers,
];

fn text_list_index(list: BreakdownList) -> usize {
    match list {
        BreakdownList::Events => 1,
        BreakdownList::Referrers => 2,
        _ => 0,
    }
}

fn browser_index(browser: Browser) -> u32 {
    // The in-memory position only; nothing durable depends on it.
    browser as u32
}

fn device_index(device: DeviceType) -> u32 {
    device as u32
}

fn country_index(country: CountryCode) -> u32 {
    let [a, b] = country.as_bytes();
    u32::from(a.wrapping_sub(b'A')) * 26 + u32::from(b.wrapping_sub(b'A'))
}

/// The value ids one event carries: its target (a page or an event name), referrer, browser,
/// device and country, `NO_VALUE` where it has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventValues {
    pub ids: [u32; 5],
    pub is_pageview: bool,
}

impl EventValues {
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.ids.iter().copied().filter(|&id| id != NO_VALUE)
    }
}

/// `EventValues` in 8 bytes, as a queued record keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PackedValues {
    /// Ids below `u16::MAX` (`MAX_TEXT_SLOTS`); `u16::MAX` for none.
    target: u16,
    referrer: u16,
    /// Country index, or `u16::MAX` for none.
    country: u16,
    browser: u8,
    /// Device index in the low 7 bits; the top bit says "pageview".
    device_and_kind: u8,
}

impl EventValues {
    pub fn pack(&self) -> PackedValues {
        let trio = self.trio();
        PackedValues {
            target: narrow(self.ids[0]),
            referrer: narrow(self.ids[1]),
            country: trio.country,
            browser: trio.browser,
            device_and_kind: trio.device | if self.is_pageview { 0x80 } else { 0 },
        }
    }

    /// The event's browser, device and country.
    pub fn trio(&self) -> Trio {
        let [_, _, browser, device, country] = self.ids;
        Trio {
            browser: browser as u8,
            device: (device - DEVICE_BASE) as u8,
            country: if country == NO_VALUE {
                u16::MAX
            } else {
                (country - COUNTRY_BASE) as u16
            },
        }
    }
}

/// A text id in 16 bits: ids stay below `u16::MAX` (`MAX_TEXT_SLOTS`), which stands for none.
fn narrow(id: u32) -> u16 {
    u16::try_from(id).unwrap_or(u16::MAX)
}

fn widen(id: u16) -> u32 {
    if id == u16::MAX {
        NO_VALUE
    } else {
        u32::from(id)
    }
}

impl PackedValues {
    pub fn unpack(self) -> EventValues {
        let trio = Trio {
            browser: self.browser,
            device: self.device_and_kind & 0x7f,
            country: self.country,
        };
        let [browser, device, country] = trio.id_array();
        EventValues {
            ids: [
                widen(self.target),
                widen(self.referrer),
                browser,
                device,
                country,
            ],
            is_pageview: self.device_and_kind & 0x80 != 0,
        }
    }
}

/// An event's browser, device and country in 4 bytes, as a visitor's node keeps them: a
/// visitor's id comes from its address and User-Agent, so these rarely change within a visitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Trio {
    browser: u8,
    device: u8,
    /// Country index, or `u16::MAX` for none.
    country: u16,
}

impl Trio {
    /// A trio no event has (every event has a browser below 255).
    pub const NONE: Self = Self {
        browser: u8::MAX,
        device: u8::MAX,
        country: u16::MAX,
    };

    /// The browser, device and country ids, `NO_VALUE` for no country.
    fn id_array(self) -> [u32; 3] {
        let country = if self.country == u16::MAX {
            NO_VALUE
        } else {
            COUNTRY_BASE + u32::from(self.country)
        };
        [
            u32::from(self.browser),
            DEVICE_BASE + u32::from(self.device),
            country,
        ]
    }

    /// The value ids of the trio: browser, device, and the country when there is one.
    pub fn ids(self) -> impl Iterator<Item = u32> {
        self.id_array().into_iter().filter(|&id| id != NO_VALUE)
    }
}

impl EventValues {
    /// The event's text ids (target, then referrer when there is one).
    pub fn texts(&self) -> impl Iterator<Item = u32> + '_ {
        self.ids[..2].iter().copied().filter(|&id| id != NO_VALUE)
    }
}

#[derive(Debug)]
struct TextSlot {
    text: Option<Arc<str>>,
    hash: u64,
    list: BreakdownList,
    /// Holders' references: one per event held by each state that counts the value.
    refs: u32,
}

/// A class's value ids: fixed ones for enums, interned ones for texts, with reference counts.
#[derive(Debug)]
pub(crate) struct ValueTable {
    per_list_cap: usize,
    hasher: foldhash::quality::RandomState,
    table: HashTable<u32>,
    slots: Vec<TextSlot>,
    /// Free slots, the lowest taken first: which slot a new text takes then depends only on
    /// which are free, not on the order they were freed in (an estimate frees its minute's
    /// texts in its hash table's order, which a restored table does not share), so a restored
    /// table numbers new texts as the original does and the ids stay dense.
    free: BinaryHeap<Reverse<u32>>,
    live_per_list: [usize; 3],
    text_bytes: usize,
}

impl ValueTable {
    pub fn new(per_list_cap: usize) -> Self {
        Self {
            per_list_cap,
            hasher: foldhash::quality::RandomState::default(),
            table: HashTable::new(),
            slots: Vec::new(),
            free: BinaryHeap::new(),
            live_per_list: [0; 3],
            text_bytes: 0,
        }
    }

    /// The list an id belongs to.
    pub fn list_of(&self, id: u32) -> BreakdownList {
        if id < DEVICE_BASE {
            BreakdownList::Browsers
        } else if id < COUNTRY_BASE {
            BreakdownList::Devices
        } else if id < OTHER_BASE {
            BreakdownList::Countries
        } else if id < FIXED_IDS {
            TEXT_LISTS[(id - OTHER_BASE) as usize]
        } else {
            self.slots
                .get((id - FIXED_IDS) as usize)
                .map_or(BreakdownList::Pages, |slot| slot.list)
        }
    }

    /// The text of an id (empty for a free slot, which no caller holds).
    pub fn text_of(&self, id: u32) -> &str {
        if id < DEVICE_BASE {
            Browser::ALL.get(id as usize).map_or("", |b| b.as_str())
        } else if id < COUNTRY_BASE {
            DeviceType::ALL
                .get((id - DEVICE_BASE) as usize)
                .map_or("", |d| d.as_str())
        } else if id < OTHER_BASE {
            let i = (id - COUNTRY_BASE) as usize * 2;
            COUNTRY_LETTERS
                .get(i..i + 2)
                .and_then(|pair| std::str::from_utf8(pair).ok())
                .unwrap_or("")
        } else if id < FIXED_IDS {
            OTHER_VALUE
        } else {
            self.slots
                .get((id - FIXED_IDS) as usize)
                .and_then(|slot| slot.text.as_deref())
                .unwrap_or("")
        }
    }

    /// Every id that may hold counts: the fixed ones and the text slots (free ones included).
    pub fn id_bound(&self) -> u32 {
        FIXED_IDS + self.slots.len() as u32
    }

    /// The ids of `event`'s values, interning its texts and taking one reference on each.
    pub fn retain_event(&mut self, event: &Event) -> EventValues {
        let (list, is_pageview) = match event.kind {
            EventKind::Pageview => (BreakdownList::Pages, true),
            EventKind::Custom => (BreakdownList::Events, false),
        };
        let target = self.intern(list, &event.target);
        let referrer = match &event.referrer_domain {
            Some(domain) => self.intern(BreakdownList::Referrers, domain),
            None => NO_VALUE,
        };
        let country = event
            .country
            .map_or(NO_VALUE, |c| COUNTRY_BASE + country_index(c));
        EventValues {
            ids: [
                target,
                referrer,
                browser_index(event.browser),
                DEVICE_BASE + device_index(event.device),
                country,
            ],
            is_pageview,
        }
    }

    /// Takes one more reference on every text id of `values` (a second holder, the shadow).
    pub fn retain(&mut self, values: &EventValues) {
        for id in values.iter() {
            if let Some(slot) = self.text_slot(id) {
                slot.refs += 1;
            }
        }
    }

    /// Gives back one reference on every text id of `values`; a text nobody holds is forgotten.
    pub fn release(&mut self, values: &EventValues) {
        for id in values.iter() {
            self.release_id(id, 1);
        }
    }

    /// Gives back `count` references on `id`.
    pub fn release_id(&mut self, id: u32, count: u32) {
        let Some(slot) = self.text_slot(id) else {
            return;
        };
        slot.refs = slot.refs.saturating_sub(count);
        if slot.refs > 0 {
            return;
        }
        let hash = slot.hash;
        let list = slot.list;
        if let Some(text) = slot.text.take() {
            self.text_bytes -= text_cost(&text);
        }
        if let Ok(entry) = self.table.find_entry(hash, |&other| other == id) {
            entry.remove();
        }
        self.live_per_list[text_list_index(list)] -= 1;
        self.free.push(Reverse(id));
    }

    /// Bytes held: the table, the slots and the texts they keep alive.
    pub fn memory_bytes(&self) -> usize {
        self.table.allocation_size()
            + self.slots.capacity() * std::mem::size_of::<TextSlot>()
            + self.free.capacity() * std::mem::size_of::<u32>()
            + self.text_bytes
    }

    fn text_slot(&mut self, id: u32) -> Option<&mut TextSlot> {
        id.checked_sub(FIXED_IDS)
            .and_then(|i| self.slots.get_mut(i as usize))
    }

    fn intern(&mut self, list: BreakdownList, text: &Arc<str>) -> u32 {
        let hash = self.hasher.hash_one((text_list_index(list), &**text));
        let slots = &self.slots;
        let found = self.table.find(hash, |&id| {
            let slot = &slots[(id - FIXED_IDS) as usize];
            slot.list == list && slot.text.as_deref() == Some(&**text)
        });
        if let Some(&id) = found {
            self.slots[(id - FIXED_IDS) as usize].refs += 1;
            return id;
        }
        let list_index = text_list_index(list);
        let ids_left =
            self.free.len() as u32 + MAX_TEXT_SLOTS.saturating_sub(self.slots.len() as u32);
        if self.live_per_list[list_index] >= self.per_list_cap || ids_left == 0 {
            return OTHER_BASE + list_index as u32;
        }
        let slot = TextSlot {
            text: Some(Arc::clone(text)),
            hash,
            list,
            refs: 1,
        };
        let id = match self.free.pop() {
            Some(Reverse(id)) => {
                self.slots[(id - FIXED_IDS) as usize] = slot;
                id
            }
            None => {
                self.slots.push(slot);
                FIXED_IDS + self.slots.len() as u32 - 1
            }
        };
        self.text_bytes += text_cost(text);
        self.live_per_list[list_index] += 1;
        let slots = &self.slots;
        self.table
            .insert_unique(hash, id, |&i| slots[(i - FIXED_IDS) as usize].hash);
        id
    }
}

/// What a held text costs: its bytes and the `Arc` header, whoever else shares it.
fn text_cost(text: &str) -> usize {
    text.len() + 2 * std::mem::size_of::<usize>()
}

/// "AA" to "ZZ" back to back, so a country's text is a static slice.
static COUNTRY_LETTERS: [u8; 2 * COUNTRIES as usize] = {
    let mut out = [0_u8; 2 * COUNTRIES as usize];
    let mut i = 0;
    while i < COUNTRIES as usize {
        out[2 * i] = b'A' + (i / 26) as u8;
        out[2 * i + 1] = b'A' + (i % 26) as u8;
        i += 1;
    }
    out
};

// Checkpoints: the table as plain data and back (see `crate::export::BreakdownExport` for the
// value codes). Kept apart from the ingest path above.

use crate::error::EngineError;
use crate::export::TextValuesExport;

/// Browser names in the order of their ids, as an export describes its codes.
pub(crate) fn browser_names() -> Vec<String> {
    Browser::ALL.iter().map(|b| b.as_str().to_owned()).collect()
}

/// Device names in the order of their ids.
pub(crate) fn device_names() -> Vec<String> {
    DeviceType::ALL
        .iter()
        .map(|d| d.as_str().to_owned())
        .collect()
}

fn text_list_code(list: BreakdownList) -> u8 {
    text_list_index(list) as u8
}

fn text_list_of_code(code: u8) -> Option<BreakdownList> {
    match code {
        0 => Some(BreakdownList::Pages),
        1 => Some(BreakdownList::Events),
        2 => Some(BreakdownList::Referrers),
        _ => None,
    }
}

/// How the value codes of one export map to this build's ids.
#[derive(Debug)]
pub(crate) struct CodeMap {
    browsers: Vec<u32>,
    devices: Vec<u32>,
    text_slots: u32,
}

impl CodeMap {
    /// The map of an export naming `browser_names` and `device_names` and holding
    /// `text_slots` text slots; an error when a name is unknown here.
    pub fn new(
        browser_names: &[String],
        device_names: &[String],
        text_slots: usize,
    ) -> Result<Self, EngineError> {
        let invalid = EngineError::InvalidExport;
        let browsers = browser_names
            .iter()
            .map(|name| Browser::ALL.iter().position(|b| b.as_str() == name))
            .map(|at| at.map(|at| at as u32))
            .collect::<Option<Vec<u32>>>()
            .ok_or(invalid("breakdown names an unknown browser"))?;
        let devices = device_names
            .iter()
            .map(|name| DeviceType::ALL.iter().position(|d| d.as_str() == name))
            .map(|at| at.map(|at| DEVICE_BASE + at as u32))
            .collect::<Option<Vec<u32>>>()
            .ok_or(invalid("breakdown names an unknown device"))?;
        let fixed = (browsers.len() + devices.len()) as u64 + u64::from(COUNTRIES + 3);
        if fixed + text_slots as u64 >= u64::from(NO_VALUE)
            || text_slots as u64 > u64::from(MAX_TEXT_SLOTS)
        {
            return Err(invalid("breakdown holds more values than ids"));
        }
        Ok(Self {
            browsers,
            devices,
            text_slots: text_slots as u32,
        })
    }

    /// This build's id of `code`, or `NO_VALUE` for "no value"; `None` when out of range.
    fn id(&self, code: u32) -> Option<u32> {
        if code == NO_VALUE {
            return Some(NO_VALUE);
        }
        let mut code = code as usize;
        if let Some(&id) = self.browsers.get(code) {
            return Some(id);
        }
        code -= self.browsers.len();
        if let Some(&id) = self.devices.get(code) {
            return Some(id);
        }
        code -= self.devices.len();
        let code = code as u32;
        if code < COUNTRIES + 3 {
            // Countries and then the three `(other)` values lie back to back in both layouts.
            return Some(COUNTRY_BASE + code);
        }
        let slot = code - COUNTRIES - 3;
        (slot < self.text_slots).then_some(FIXED_IDS + slot)
    }

    /// This build's id of a value code that must be present, or an error.
    pub fn value_id(&self, code: u32) -> Result<u32, EngineError> {
        match self.id(code) {
            Some(id) if id != NO_VALUE => Ok(id),
            _ => Err(EngineError::InvalidExport(
                "breakdown value code out of range",
            )),
        }
    }

    /// An event's values from its codes, each checked to be of the kind its position needs
    /// (texts are checked against the table by `ValueTable::holds`).
    pub fn event_values(
        &self,
        codes: [u32; 5],
        pageview: bool,
    ) -> Result<EventValues, EngineError> {
        let invalid = EngineError::InvalidExport("breakdown event value of the wrong kind");
        let mut ids = [NO_VALUE; 5];
        for (id, code) in ids.iter_mut().zip(codes) {
            *id = self.id(code).ok_or(EngineError::InvalidExport(
                "breakdown value code out of range",
            ))?;
        }
        let [target, referrer, browser, device, country] = ids;
        let text_or_other = |id: u32| id >= OTHER_BASE && id != NO_VALUE;
        let kinds_ok = text_or_other(target)
            && (referrer == NO_VALUE || text_or_other(referrer))
            && browser < DEVICE_BASE
            && (DEVICE_BASE..COUNTRY_BASE).contains(&device)
            && (country == NO_VALUE || (COUNTRY_BASE..OTHER_BASE).contains(&country));
        if !kinds_ok {
            return Err(invalid);
        }
        Ok(EventValues {
            ids,
            is_pageview: pageview,
        })
    }
}

impl ValueTable {
    /// The texts as plain data, codes as `CodeMap` reads them back.
    pub fn export(&self) -> TextValuesExport {
        TextValuesExport {
            slots: self
                .slots
                .iter()
                .map(|slot| {
                    let text = slot.text.as_deref()?;
                    Some((text_list_code(slot.list), text.to_owned()))
                })
                .collect(),
            free: {
                let mut free: Vec<u32> = self.free.iter().map(|id| id.0 - FIXED_IDS).collect();
                free.sort_unstable();
                free
            },
            slots_capacity: self.slots.capacity() as u64,
            table_capacity: self.table.capacity() as u64,
            free_capacity: self.free.capacity() as u64,
        }
    }

    /// Rebuilds a table holding at most `per_list_cap` texts per list from `export`, where
    /// `refs[i]` is the number of references the restored events hold on text slot `i`; an
    /// error when a text is held by nothing, a free slot by something, or a list is over its cap.
    pub fn import(
        per_list_cap: usize,
        export: TextValuesExport,
        refs: &[u32],
    ) -> Result<Self, EngineError> {
        let invalid = EngineError::InvalidExport;
        let too_many = |n: u64| n >= u64::from(NO_VALUE - FIXED_IDS);
        if export.slots.len() as u64 > u64::from(MAX_TEXT_SLOTS)
            || too_many(export.slots_capacity)
            || too_many(export.table_capacity)
            || too_many(export.free_capacity)
            || export.slots.len() as u64 > export.slots_capacity
            || export.free.len() as u64 > export.free_capacity
            || refs.len() != export.slots.len()
        {
            return Err(invalid("breakdown texts larger than their allocations"));
        }
        let mut table = Self::new(per_list_cap);
        table.slots = Vec::with_capacity(export.slots_capacity as usize);
        table.table = HashTable::with_capacity(export.table_capacity as usize);
        table.free = BinaryHeap::with_capacity(export.free_capacity as usize);
        for (slot, refs) in export.slots.into_iter().zip(refs.iter().copied()) {
            let id = FIXED_IDS + table.slots.len() as u32;
            let Some((code, text)) = slot else {
                if refs > 0 {
                    return Err(invalid("breakdown event holds a free text slot"));
                }
                table.slots.push(TextSlot {
                    text: None,
                    hash: 0,
                    list: BreakdownList::Pages,
                    refs: 0,
                });
                continue;
            };
            let list = text_list_of_code(code).ok_or(invalid("breakdown text of no list"))?;
            if refs == 0 {
                return Err(invalid("breakdown text held by no event"));
            }
            let text: Arc<str> = Arc::from(text);
            let hash = table.hasher.hash_one((text_list_index(list), &*text));
            let slots = &table.slots;
            let seen = table.table.find(hash, |&other| {
                let slot = &slots[(other - FIXED_IDS) as usize];
                slot.list == list && slot.text.as_deref() == Some(&*text)
            });
            if seen.is_some() {
                return Err(invalid("breakdown text listed twice"));
            }
            let live = &mut table.live_per_list[text_list_index(list)];
            *live += 1;
            if *live > per_list_cap {
                return Err(invalid("breakdown list over its cap"));
            }
            table.text_bytes += text_cost(&text);
            table.slots.push(TextSlot {
                text: Some(text),
                hash,
                list,
                refs,
            });
            let slots = &table.slots;
            table
                .table
                .insert_unique(hash, id, |&i| slots[(i - FIXED_IDS) as usize].hash);
        }
        let mut listed = vec![false; table.slots.len()];
        for slot in export.free {
            let free_ok = table
                .slots
                .get(slot as usize)
                .is_some_and(|s| s.text.is_none())
                && !std::mem::replace(&mut listed[slot as usize], true);
            if !free_ok {
                return Err(invalid("breakdown free list names a held or repeated slot"));
            }
            table.free.push(Reverse(FIXED_IDS + slot));
        }
        if table.free.len() + table.table.len() != table.slots.len() {
            return Err(invalid("breakdown free list misses a free slot"));
        }
        Ok(table)
    }

    /// Whether `values`' texts are held here and in the lists their positions need: the target
    /// a page (pageview) or event name (custom event), the referrer a referrer.
    pub fn holds(&self, values: &EventValues) -> bool {
        let [target, referrer, ..] = values.ids;
        let target_list = if values.is_pageview {
            BreakdownList::Pages
        } else {
            BreakdownList::Events
        };
        let in_list = |id: u32, list: BreakdownList| {
            if id < FIXED_IDS {
                id == OTHER_BASE + text_list_index(list) as u32
            } else {
                self.slots
                    .get((id - FIXED_IDS) as usize)
                    .is_some_and(|slot| slot.text.is_some() && slot.list == list)
            }
        };
        in_list(target, target_list)
            && (referrer == NO_VALUE || in_list(referrer, BreakdownList::Referrers))
    }

    /// Adds `count` references on `id` to `refs` (indexed by text slot), for import.
    pub fn count_ref(refs: &mut [u32], id: u32, count: u32) -> Result<(), EngineError> {
        let Some(slot) = id.checked_sub(FIXED_IDS) else {
            return Ok(());
        };
        let held = refs
            .get_mut(slot as usize)
            .ok_or(EngineError::InvalidExport(
                "breakdown value code out of range",
            ))?;
        *held = held
            .checked_add(count)
            .ok_or(EngineError::InvalidExport("breakdown text held too often"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::test_pageview;

    fn page(path: &str) -> Event {
        test_pageview("s", 1, 0, path)
    }

    /// Records keep text ids in 16 bits: past `MAX_TEXT_SLOTS` texts, whatever the per-list
    /// cap, new texts count as `(other)` and every id still packs and unpacks unchanged.
    #[test]
    fn texts_past_sixteen_bit_ids_count_as_other() {
        let mut table = ValueTable::new(usize::MAX);
        let mut last = 0;
        for i in 0..=MAX_TEXT_SLOTS {
            let values = table.retain_event(&page(&format!("/{i}")));
            assert_eq!(values.pack().unpack(), values);
            last = values.ids[0];
        }
        assert_eq!(last, OTHER_BASE, "the page past the last id is (other)");
        assert_eq!(table.id_bound(), FIXED_IDS + MAX_TEXT_SLOTS);
        assert!(table.id_bound() <= u32::from(u16::MAX));
    }

    /// A new text takes the lowest free slot, whatever order the slots were freed in: a
    /// restored table (whose estimate frees texts in another order) then numbers new texts as
    /// the original does, and its counts grow alike.
    #[test]
    fn a_new_text_takes_the_lowest_free_slot_whatever_the_order_of_release() {
        for release_order in [[0, 2], [2, 0]] {
            let mut table = ValueTable::new(usize::MAX);
            let ids: Vec<u32> = ["/a", "/b", "/c"]
                .iter()
                .map(|path| table.retain_event(&page(path)).ids[0])
                .collect();
            for i in release_order {
                table.release_id(ids[i], 1);
            }
            let reused = table.retain_event(&page("/d")).ids[0];
            assert_eq!(reused, ids[0], "released in order {release_order:?}");
            assert_eq!(table.export().free, vec![ids[2] - FIXED_IDS]);
        }
    }
}
