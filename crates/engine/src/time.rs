//! Time in answers: `YYYY-MM-DD HH:MM:SS` in UTC, the legacy API's layout.

use chrono::{DateTime, NaiveDateTime, Utc};
use qtask_core::UnixMillis;

pub fn now_millis() -> UnixMillis {
    Utc::now().timestamp_millis()
}

pub fn format(millis: UnixMillis) -> String {
    DateTime::<Utc>::from_timestamp_millis(millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// Parses `YYYY-MM-DD HH:MM:SS` (UTC) or a Unix time in seconds.
pub fn parse(text: &str) -> Option<UnixMillis> {
    if let Ok(seconds) = text.parse::<i64>() {
        return seconds.checked_mul(1000);
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
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
}
