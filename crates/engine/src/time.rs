//! Time in answers: `YYYY-MM-DD HH:MM:SS` in UTC, the legacy API's layout.

use chrono::{DateTime, Datelike, NaiveDateTime, Timelike, Utc};
use qtask_core::UnixMillis;

const LAYOUT: &str = "%Y-%m-%d %H:%M:%S";

pub fn now_millis() -> UnixMillis {
    Utc::now().timestamp_millis()
}

/// [`LAYOUT`], written digit by digit: every task in an answer has up to three times,
/// and chrono's formatter (even with the layout parsed once) was 2–3 % of a `describe`.
pub fn format(millis: UnixMillis) -> String {
    let Some(t) = DateTime::<Utc>::from_timestamp_millis(millis) else {
        return String::new();
    };
    let Ok(year) = u32::try_from(t.year()) else {
        return t.format(LAYOUT).to_string();
    };
    if year > 9999 {
        return t.format(LAYOUT).to_string();
    }
    let mut text = [0u8; 19];
    let fields = [
        (0, year, 4),
        (5, t.month(), 2),
        (8, t.day(), 2),
        (11, t.hour(), 2),
        (14, t.minute(), 2),
        (17, t.second(), 2),
    ];
    for (at, mut value, width) in fields {
        for digit in text[at..at + width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    for (at, separator) in [(4, b'-'), (7, b'-'), (10, b' '), (13, b':'), (16, b':')] {
        text[at] = separator;
    }
    String::from_utf8(text.to_vec()).unwrap_or_default()
}

/// Parses `YYYY-MM-DD HH:MM:SS` (UTC) or a Unix time in seconds.
pub fn parse(text: &str) -> Option<UnixMillis> {
    if let Ok(seconds) = text.parse::<i64>() {
        return seconds.checked_mul(1000);
    }
    NaiveDateTime::parse_from_str(text, LAYOUT)
        .ok()
        .map(|t| t.and_utc().timestamp_millis())
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let t = super::parse("2026-11-27 20:46:20").unwrap();
        assert_eq!(super::format(t), "2026-11-27 20:46:20");
        assert_eq!(super::parse("1700000000"), Some(1_700_000_000_000));
        assert_eq!(super::parse("yesterday"), None);
    }

    /// The digit-by-digit layout writes what chrono's formatter writes, across the
    /// range a store holds and at its edges.
    #[test]
    fn format_matches_chrono_s_layout() {
        use chrono::{DateTime, Utc};
        let chrono = |millis: i64| {
            DateTime::<Utc>::from_timestamp_millis(millis)
                .map(|t| t.format(super::LAYOUT).to_string())
                .unwrap_or_default()
        };
        let mut millis: i64 = -62_167_219_200_000; // 0000-01-01 00:00:00
        while millis < 253_402_300_800_000 {
            // up to 9999-12-31 23:59:59, in irregular steps
            assert_eq!(super::format(millis), chrono(millis), "{millis}");
            millis += 3_337_123_457;
        }
        for edge in [0, -1, 999, 1_000, 951_782_400_000, 253_402_300_799_999] {
            assert_eq!(super::format(edge), chrono(edge), "{edge}");
        }
        assert_eq!(
            super::format(-62_167_219_200_001),
            chrono(-62_167_219_200_001)
        );
        assert_eq!(
            super::format(253_402_300_800_000),
            chrono(253_402_300_800_000)
        );
        assert_eq!(super::format(i64::MAX), "");
    }
}
