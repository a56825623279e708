//! Timestamps as people read them: RFC 3339 in UTC, without a time-zone database.
use std::time::{SystemTime, UNIX_EPOCH};

/// `2026-11-22T10:00:00Z` from seconds since the epoch (UTC, no time-zone database needed).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The RFC 3339 form of a wall-clock time, with microseconds.
pub fn rfc3339_micros(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:06}Z", rfc3339(d.as_secs()).trim_end_matches('Z'), d.subsec_micros())
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_305_600 + 3661), "2026-11-22T01:01:01Z");
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_500_001);
        assert_eq!(super::rfc3339_micros(t), "1970-01-01T00:00:01.500001Z");
    }
}
