//! Fuzz target `record_roundtrip`: arbitrary mixes of events and touches are encoded (one record
//! per run of one kind, as the segment writer does), framed, read back and decoded; what comes
//! out must equal what went in, under one gap-free sequence.

#![no_main]

use std::sync::Arc;

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use pulse_engine::{
    Browser, CountryCode, DeviceType, Event, EventKind, Timestamp, Touch, VisitorId, WebsiteId,
};
use pulse_snapshot::{batch, record, LogEntry};

fn entry(u: &mut Unstructured<'_>) -> arbitrary::Result<LogEntry> {
    let site: String = u.arbitrary()?;
    let website = WebsiteId::new(&site)
        .or_else(|_| WebsiteId::new("site"))
        .map_err(|_| arbitrary::Error::IncorrectFormat)?;
    let ts = Timestamp::from_unix_ms(u.int_in_range(0..=Timestamp::MAX_MS)?)
        .map_err(|_| arbitrary::Error::IncorrectFormat)?;
    if u.ratio(1, 4)? {
        return Ok(LogEntry::Touch {
            touch: Touch {
                website,
                ts,
                visitor: VisitorId(u.arbitrary()?),
                is_bot: u.arbitrary()?,
            },
            carried_from: u.arbitrary::<Option<u64>>()?.map(VisitorId),
        });
    }
    let target: String = u.arbitrary()?;
    let referrer: Option<String> = u.arbitrary()?;
    let country: Option<[u8; 2]> = u.arbitrary()?;
    Ok(LogEntry::Event {
        event: Arc::new(Event {
            website,
            ts,
            visitor: VisitorId(u.arbitrary()?),
            kind: if u.arbitrary()? {
                EventKind::Custom
            } else {
                EventKind::Pageview
            },
            target: Arc::from(target.as_str()),
            referrer_domain: referrer
                .filter(|r| r.len() <= 255)
                .map(|r| Arc::from(r.as_str())),
            is_bot: u.arbitrary()?,
            browser: *u.choose(&Browser::ALL)?,
            device: *u.choose(&DeviceType::ALL)?,
            country: country.and_then(|c| CountryCode::new(std::str::from_utf8(&c).ok()?)),
        }),
        carried_from: u.arbitrary::<Option<u64>>()?.map(VisitorId),
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(first_seq) = u.int_in_range(0..=u64::MAX / 2) else {
        return;
    };
    let mut entries = Vec::new();
    while entries.len() < 64 {
        match entry(&mut u) {
            Ok(e) => entries.push(e),
            Err(_) => break,
        }
    }
    let mut decoded = Vec::new();
    let mut start = 0;
    while start < entries.len() {
        let mut payload = Vec::new();
        let taken = batch::encode(first_seq + start as u64, &entries[start..], &mut payload);
        assert!(taken > 0, "encode took nothing from a non-empty slice");
        let mut framed = Vec::new();
        record::frame(&payload, &mut framed).unwrap_or_else(|_| unreachable!("small batch"));
        let (read, span) =
            record::read(&framed).unwrap_or_else(|e| panic!("framed record unreadable: {e}"));
        assert_eq!(span, framed.len());
        let (_, count) = batch::decode(read, &mut None, |e| decoded.push(e))
            .unwrap_or_else(|e| panic!("decode: {e}"));
        assert_eq!(count as usize, taken);
        start += taken;
    }
    assert_eq!(decoded.len(), entries.len());
    for (i, (got, want)) in decoded.iter().zip(&entries).enumerate() {
        assert_eq!(got.seq, first_seq + i as u64);
        assert_eq!(&got.entry, want);
    }
});
