//! `GeoIp`: the optional country lookup from a MaxMind `.mmdb` file (`--geoip-db`).
//!
//! Only the ISO country code is read and kept; the address itself is never stored. Without a
//! database every country is `None`.

use std::net::IpAddr;
use std::path::Path;

use pulse_engine::CountryCode;
use serde::Deserialize;

use crate::error::ServerError;

pub struct GeoIp {
    reader: maxminddb::Reader<Vec<u8>>,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoIp").finish_non_exhaustive()
    }
}

/// The part of a GeoIP2/GeoLite2 Country (or City) record Pulse reads.
#[derive(Deserialize)]
struct CountryRecord<'a> {
    #[serde(borrow)]
    country: Option<IsoCode<'a>>,
    #[serde(borrow)]
    registered_country: Option<IsoCode<'a>>,
}

#[derive(Deserialize)]
struct IsoCode<'a> {
    iso_code: Option<&'a str>,
}

impl GeoIp {
    pub fn open(path: &Path) -> Result<Self, ServerError> {
        let reader = maxminddb::Reader::open_readfile(path).map_err(|e| ServerError::GeoIp {
            path: path.to_owned(),
            source: e,
        })?;
        Ok(Self { reader })
    }

    /// The country of `ip`, falling back to the registered country when the database has no
    /// physical one; `None` when the address is not in the database.
    pub fn country(&self, ip: IpAddr) -> Option<CountryCode> {
        let record: CountryRecord<'_> = self.reader.lookup(ip).ok().flatten()?;
        record
            .country
            .and_then(|c| c.iso_code)
            .or_else(|| record.registered_country.and_then(|c| c.iso_code))
            .and_then(CountryCode::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_countries_of_the_maxmind_test_database() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/GeoLite2-Country-Test.mmdb");
        assert!(path.exists(), "missing test database {}", path.display());
        let geoip = GeoIp::open(&path).unwrap();
        let check = |ip: &str, expected: Option<&str>| {
            let got = geoip.country(ip.parse().unwrap());
            assert_eq!(got.as_ref().map(|c| c.as_str()), expected, "{ip}");
        };
        check("81.2.69.142", Some("GB"));
        check("89.160.20.112", Some("SE"));
        check("50.114.0.1", Some("US"));
        check("127.0.0.1", None);
    }

    #[test]
    fn a_missing_database_is_a_clear_error() {
        let err = GeoIp::open(Path::new("/nonexistent/db.mmdb")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/db.mmdb"));
    }
}
