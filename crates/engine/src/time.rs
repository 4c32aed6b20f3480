//! Time in answers: `YYYY-MM-DD HH:MM:SS` in UTC, the legacy API's layout.

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, NaiveDateTime, Utc};
use qtask_core::UnixMillis;
use std::sync::LazyLock;

const LAYOUT: &str = "%Y-%m-%d %H:%M:%S";

/// [`LAYOUT`] parsed once: every task in an answer formats three times, and parsing the
/// layout each time was most of the cost (a `describe` profile).
static LAYOUT_ITEMS: LazyLock<Vec<Item<'static>>> = LazyLock::new(|| {
    StrftimeItems::new(LAYOUT)
        .parse_to_owned()
        .expect("the layout is valid")
});

pub fn now_millis() -> UnixMillis {
    Utc::now().timestamp_millis()
}

pub fn format(millis: UnixMillis) -> String {
    DateTime::<Utc>::from_timestamp_millis(millis)
        .map(|t| t.format_with_items(LAYOUT_ITEMS.iter()).to_string())
        .unwrap_or_default()
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
}
