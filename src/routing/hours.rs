//! Hours of operation of a queue: a weekly schedule on the wall clock of one time zone, minus
//! holidays. `"mon-fri 08:00-20:00"` opens at the first instant the local clock shows 08:00 and
//! closes at the first instant it shows 20:00; across a DST change the wall clock decides (an
//! hour that does not exist is simply not open, a repeated hour is open twice).
use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Utc, Weekday};
use chrono_tz::Tz;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoursError {
    #[error(
        "hours \"{entry}\": {why} (write entries like \"mon-fri 08:00-20:00\" or \"sat 09:00-13:00\")"
    )]
    Entry { entry: String, why: String },
    #[error("holiday \"{0}\" is not a date like 2026-12-25")]
    Holiday(String),
    #[error("unknown time zone \"{0}\" (use an IANA name like \"Europe/London\")")]
    TimeZone(String),
}

/// One line of a schedule: these weekdays, from `start` (inclusive) to `end` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenSpan {
    /// Bit `n` set: open on the weekday `n` days from Monday.
    days: u8,
    start: NaiveTime,
    /// `None`: until midnight ("24:00").
    end: Option<NaiveTime>,
}

impl OpenSpan {
    fn covers(&self, day: Weekday, time: NaiveTime) -> bool {
        self.days & day_bit(day) != 0 && time >= self.start && self.end.is_none_or(|e| time < e)
    }
}

/// When a queue takes calls. An empty schedule (no `hours` configured) is always open, but
/// holidays still close it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hours {
    tz: Tz,
    spans: Vec<OpenSpan>,
    holidays: BTreeSet<NaiveDate>,
}

impl Default for Hours {
    fn default() -> Self {
        Hours::always_open(Tz::UTC)
    }
}

impl Hours {
    /// Open around the clock every day (no schedule, no holidays).
    pub fn always_open(tz: Tz) -> Hours {
        Hours {
            tz,
            spans: Vec::new(),
            holidays: BTreeSet::new(),
        }
    }

    /// Parses a schedule: `entries` like `"mon-fri 08:00-20:00"`, `"sat,sun 10:00-12:00"`,
    /// `"daily 00:00-24:00"`; `holidays` as `YYYY-MM-DD`; `tz` an IANA zone name.
    pub fn parse<S: AsRef<str>>(
        entries: &[S],
        holidays: &[S],
        tz: &str,
    ) -> Result<Hours, HoursError> {
        let tz: Tz = tz
            .trim()
            .parse()
            .map_err(|_| HoursError::TimeZone(tz.to_string()))?;
        let spans = entries
            .iter()
            .map(|e| parse_entry(e.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let holidays = holidays
            .iter()
            .map(|h| {
                NaiveDate::parse_from_str(h.as_ref().trim(), "%Y-%m-%d")
                    .map_err(|_| HoursError::Holiday(h.as_ref().to_string()))
            })
            .collect::<Result<BTreeSet<_>, _>>()?;
        Ok(Hours {
            tz,
            spans,
            holidays,
        })
    }

    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    pub fn holidays(&self) -> &BTreeSet<NaiveDate> {
        &self.holidays
    }

    /// Whether the queue takes calls at `at`.
    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        let local = at.with_timezone(&self.tz).naive_local();
        if self.holidays.contains(&local.date()) {
            return false;
        }
        self.spans.is_empty()
            || self
                .spans
                .iter()
                .any(|s| s.covers(local.date().weekday(), local.time()))
    }
}

impl fmt::Display for Hours {
    /// `"mon-fri 08:00-20:00; sat 09:00-13:00 (Europe/London)"`, for logs and messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.spans.is_empty() {
            f.write_str("always open")?;
        }
        for (i, s) in self.spans.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            let days: Vec<&str> = WEEKDAYS
                .iter()
                .filter(|(_, d)| s.days & day_bit(*d) != 0)
                .map(|(n, _)| *n)
                .collect();
            let end = s
                .end
                .map_or("24:00".to_string(), |e| e.format("%H:%M").to_string());
            write!(f, "{} {}-{}", days.join(","), s.start.format("%H:%M"), end)?;
        }
        write!(f, " ({})", self.tz.name())
    }
}

const WEEKDAYS: [(&str, Weekday); 7] = [
    ("mon", Weekday::Mon),
    ("tue", Weekday::Tue),
    ("wed", Weekday::Wed),
    ("thu", Weekday::Thu),
    ("fri", Weekday::Fri),
    ("sat", Weekday::Sat),
    ("sun", Weekday::Sun),
];

fn day_bit(d: Weekday) -> u8 {
    1 << d.num_days_from_monday()
}

/// `"mon"` or `"monday"`, any case.
fn parse_day(s: &str) -> Option<Weekday> {
    const FULL: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let s = s.trim().to_ascii_lowercase();
    WEEKDAYS
        .iter()
        .zip(FULL)
        .find(|((short, _), full)| s == *short || s == *full)
        .map(|((_, d), _)| *d)
}

/// `"mon-fri"`, `"sat,sun"`, `"fri-mon"` (wrapping), `"daily"` → a weekday bit set.
fn parse_days(text: &str) -> Result<u8, String> {
    if text.eq_ignore_ascii_case("daily") || text.eq_ignore_ascii_case("every") {
        return Ok(0x7f);
    }
    let mut bits = 0u8;
    for part in text.split(',') {
        let part = part.trim();
        let day = |name: &str| {
            parse_day(name).ok_or_else(|| {
                format!(
                    "\"{}\" is not a weekday (mon..sun) or a range like mon-fri",
                    name.trim()
                )
            })
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let a = day(a)?;
                let b = day(b)?;
                let mut d = a;
                loop {
                    bits |= day_bit(d);
                    if d == b {
                        break;
                    }
                    d = d.succ();
                }
            }
            None => bits |= day_bit(day(part)?),
        }
    }
    Ok(bits)
}

/// `"08:00"`; `"24:00"` (the midnight that ends a day) → `None`.
fn parse_clock(text: &str) -> Result<Option<NaiveTime>, String> {
    let text = text.trim();
    if text == "24:00" {
        return Ok(None);
    }
    NaiveTime::parse_from_str(text, "%H:%M")
        .map(Some)
        .map_err(|_| format!("\"{text}\" is not a time like 08:00"))
}

fn parse_entry(entry: &str) -> Result<OpenSpan, HoursError> {
    let fail = |why: String| HoursError::Entry {
        entry: entry.to_string(),
        why,
    };
    let trimmed = entry.trim();
    let (days, times) = trimmed
        .rsplit_once(char::is_whitespace)
        .ok_or_else(|| fail("expected days, a space, then a time range".into()))?;
    let days = parse_days(days.trim()).map_err(fail)?;
    let (start, end) = times
        .split_once('-')
        .ok_or_else(|| fail(format!("\"{times}\" is not a time range like 08:00-20:00")))?;
    let start = parse_clock(start)
        .map_err(fail)?
        .ok_or_else(|| fail("a range cannot start at 24:00".into()))?;
    let end = parse_clock(end).map_err(fail)?;
    if end.is_some_and(|e| e <= start) {
        return Err(fail(
            "the end must be later than the start on the same day (split a range that crosses \
             midnight into two entries, ending the first at 24:00)"
                .into(),
        ));
    }
    Ok(OpenSpan { days, start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test time")
            .with_timezone(&Utc)
    }

    fn bank() -> Hours {
        Hours::parse(
            &["mon-fri 08:00-20:00", "sat 09:00-13:00"],
            &["2026-12-25"],
            "Europe/London",
        )
        .expect("valid")
    }

    #[test]
    fn weekly_schedule_in_local_time() {
        let h = bank();
        // 2026-11-23 is a Monday; London is on GMT in November.
        assert!(!h.is_open(utc("2026-11-23T07:59:59Z")));
        assert!(h.is_open(utc("2026-11-23T08:00:00Z")));
        assert!(h.is_open(utc("2026-11-23T19:59:59Z")));
        assert!(!h.is_open(utc("2026-11-23T20:00:00Z")), "end is exclusive");
        // Saturday morning only, Sunday closed.
        assert!(h.is_open(utc("2026-11-28T12:30:00Z")));
        assert!(!h.is_open(utc("2026-11-28T13:00:00Z")));
        assert!(!h.is_open(utc("2026-11-29T12:00:00Z")));
        // Summer time: 08:00 BST is 07:00 UTC.
        assert!(h.is_open(utc("2026-06-01T07:00:00Z")));
        assert!(!h.is_open(utc("2026-06-01T19:00:00Z")));
    }

    #[test]
    fn holidays_close_the_whole_local_day() {
        let h = bank();
        // 2026-12-25 is a Friday.
        assert!(!h.is_open(utc("2026-12-25T12:00:00Z")));
        assert!(h.is_open(utc("2026-12-24T12:00:00Z")));
        // The holiday is a local date: in Tokyo it starts at 15:00 UTC the day before.
        let tokyo =
            Hours::parse(&["daily 00:00-24:00"], &["2026-12-25"], "Asia/Tokyo").expect("ok");
        assert!(tokyo.is_open(utc("2026-12-24T14:59:59Z")));
        assert!(!tokyo.is_open(utc("2026-12-24T15:00:00Z")));
        assert!(tokyo.is_open(utc("2026-12-25T15:00:00Z")));
    }

    #[test]
    fn empty_schedule_is_always_open_except_holidays() {
        let h = Hours::parse::<&str>(&[], &["2026-01-01"], "UTC").expect("ok");
        assert!(h.is_open(utc("2026-11-29T03:00:00Z")));
        assert!(!h.is_open(utc("2026-01-01T03:00:00Z")));
        assert!(Hours::default().is_open(utc("2026-01-01T03:00:00Z")));
    }

    #[test]
    fn day_lists_ranges_and_wrapping() {
        let h = Hours::parse(
            &["fri-mon 10:00-11:00", "Wednesday 22:00-24:00"],
            &[],
            "UTC",
        )
        .expect("ok");
        for (at, open) in [
            ("2026-11-27T10:30:00Z", true),  // Fri
            ("2026-11-28T10:30:00Z", true),  // Sat
            ("2026-11-29T10:30:00Z", true),  // Sun
            ("2026-11-30T10:30:00Z", true),  // Mon
            ("2026-11-24T10:30:00Z", false), // Tue
            ("2026-11-25T23:59:59Z", true),  // Wed until midnight
            ("2026-11-26T00:00:00Z", false), // Thu
        ] {
            assert_eq!(h.is_open(utc(at)), open, "{at}");
        }
        let h = Hours::parse(&["sat,sun 09:00-12:00"], &[], "UTC").expect("ok");
        assert!(h.is_open(utc("2026-11-29T09:00:00Z")));
        assert!(!h.is_open(utc("2026-11-27T09:00:00Z")));
        assert_eq!(h.to_string(), "sat,sun 09:00-12:00 (UTC)");
    }

    #[test]
    fn errors_name_the_entry_and_the_problem() {
        let e = |entries: &[&str]| {
            Hours::parse(entries, &[], "UTC")
                .expect_err("should fail")
                .to_string()
        };
        let s = e(&["mon-fri 20:00-08:00"]);
        assert!(
            s.contains("\"mon-fri 20:00-08:00\"") && s.contains("crosses midnight"),
            "{s}"
        );
        let s = e(&["mun-fri 08:00-20:00"]);
        assert!(s.contains("\"mun\" is not a weekday"), "{s}");
        let s = e(&["mon-fri 8am-8pm"]);
        assert!(s.contains("\"8am\" is not a time"), "{s}");
        let s = e(&["08:00-20:00"]);
        assert!(s.contains("expected days"), "{s}");
        assert!(e(&["mon 24:00-24:00"]).contains("cannot start at 24:00"));
        assert!(e(&["mon 09:00"]).contains("not a time range"));
        assert!(e(&["monkey 09:00-10:00"]).contains("not a weekday"));
        let s = Hours::parse(&["mon 09:00-10:00"], &["25/12/2026"], "UTC")
            .expect_err("bad holiday")
            .to_string();
        assert!(s.contains("25/12/2026"), "{s}");
        let s = Hours::parse::<&str>(&[], &[], "Europe/Lundon")
            .expect_err("bad zone")
            .to_string();
        assert!(s.contains("Europe/Lundon"), "{s}");
    }

    #[test]
    fn dst_follows_the_wall_clock() {
        // New York springs forward 2026-03-08 02:00 → 03:00: 02:30 never shows.
        let h = Hours::parse(&["sun 02:00-04:00"], &[], "America/New_York").expect("ok");
        assert!(h.is_open(utc("2026-03-08T07:00:00Z")), "03:00 EDT");
        assert!(!h.is_open(utc("2026-03-08T06:59:59Z")), "01:59:59 EST");
        assert!(!h.is_open(utc("2026-03-08T08:00:00Z")), "04:00 EDT");
    }
}
