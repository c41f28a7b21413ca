//! RunPod writes times in several shapes; the admin API answers ISO 8601 (UTC, `Z`).

use chrono::{DateTime, FixedOffset, NaiveDateTime, SecondsFormat, Utc};

/// The time in `s` as ISO 8601 UTC, or `None` when it is in no known shape. Known shapes:
/// RFC 3339 (`2026-06-25T08:00:00.144Z`), Go's default (`2026-06-25 08:00:00.000 +0000 UTC`),
/// and a JavaScript date after a reason (`Rented by User: Thu Jun 25 2026 10:00:00 GMT+0000
/// (Coordinated Universal Time)`).
pub fn iso8601(s: &str) -> Option<String> {
    let s = s.trim();
    let parsed = DateTime::parse_from_rfc3339(s)
        .ok()
        .or_else(|| go_time(s))
        .or_else(|| js_date(s))?;
    Some(
        parsed
            .with_timezone(&Utc)
            .to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

fn go_time(s: &str) -> Option<DateTime<FixedOffset>> {
    // "2026-06-25 08:00:00.000 +0000 UTC": the zone name after the offset is redundant.
    let (head, _zone) = s.rsplit_once(' ')?;
    DateTime::parse_from_str(head, "%Y-%m-%d %H:%M:%S%.f %z")
        .ok()
        .or_else(|| DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f %z").ok())
        .or_else(|| {
            NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
                .ok()
                .map(|n| n.and_utc().fixed_offset())
        })
}

fn js_date(s: &str) -> Option<DateTime<FixedOffset>> {
    // "<reason>: Thu Jun 25 2026 10:00:00 GMT+0000 (Coordinated Universal Time)"
    let s = s.rsplit_once(": ").map_or(s, |(_, t)| t);
    let s = s.split_once(" (").map_or(s, |(t, _)| t);
    DateTime::parse_from_str(s.trim(), "%a %b %d %Y %H:%M:%S GMT%z").ok()
}

#[cfg(test)]
mod tests {
    use super::iso8601;

    #[test]
    fn runpod_time_shapes_become_iso8601() {
        assert_eq!(
            iso8601("2026-06-25 08:00:00.000 +0000 UTC").as_deref(),
            Some("2026-06-25T08:00:00Z")
        );
        assert_eq!(
            iso8601(
                "Rented by User: Thu Jun 25 2026 10:00:00 GMT+0000 (Coordinated Universal Time)"
            )
            .as_deref(),
            Some("2026-06-25T10:00:00Z")
        );
        assert_eq!(
            iso8601("Rented by User: Fri Jul 12 2024 15:14:40 GMT-0400 (Eastern Daylight Time)")
                .as_deref(),
            Some("2024-07-12T19:14:40Z")
        );
        assert_eq!(
            iso8601("2024-07-12T19:14:40.144Z").as_deref(),
            Some("2024-07-12T19:14:40Z")
        );
        assert_eq!(
            iso8601("2026-06-25 08:00:00 +0200 CEST").as_deref(),
            Some("2026-06-25T06:00:00Z")
        );
        assert_eq!(iso8601("soon"), None);
        assert_eq!(iso8601(""), None);
    }
}
