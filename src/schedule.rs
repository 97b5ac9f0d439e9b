//! Job schedules: crontab expressions evaluated in a time zone, with
//! daylight-saving changes handled so that a daily job runs exactly once a
//! day.
//!
//! Accepted forms:
//! - a standard 5-field crontab line, minute first (`30 2 * * *`); day of
//!   week 0 or 7 is Sunday, names (`mon-fri`) work too;
//! - `@hourly`, `@daily` (`@midnight`), `@weekly`, `@monthly`, `@yearly`
//!   (`@annually`);
//! - a 6-field line with seconds first (`*/10 * * * * *`), for sub-minute
//!   schedules and tests.
//!
//! As in cron, a line that restricts both the day of month and the day of
//! week fires when either matches.
//!
//! Fire times are wall-clock times in the zone. A wall time that a clock
//! change skips (02:30 when clocks jump from 02:00 to 03:00) fires at the
//! first instant after the gap; a wall time that occurs twice (when clocks go
//! back) fires once, at its first occurrence.

use std::str::FromStr;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    zone: Tz,
    /// Alternatives, any of which fires (two when both day fields are set).
    crons: Vec<cron::Schedule>,
}

impl Schedule {
    /// Parses `expression` for the IANA time zone `zone` (such as
    /// `Europe/Berlin`, or `UTC`).
    pub fn parse(expression: &str, zone: &str) -> Result<Schedule, String> {
        let zone: Tz = zone.parse().map_err(|_| {
            format!("time zone {zone:?} is not an IANA zone name; use for example \"Europe/Berlin\" or \"UTC\"")
        })?;
        let crons = to_cron(expression.trim())?
            .into_iter()
            .map(|line| {
                cron::Schedule::from_str(&line).map_err(|err| format!("schedule {expression:?} is invalid: {err}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Schedule { expression: expression.trim().to_string(), zone, crons })
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// Returns the first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Wall-clock times are generated on a clock without zone changes;
        // each is then placed on the real time line.
        let wall_after = after.with_timezone(&self.zone).naive_local();
        let start = Utc.from_utc_datetime(&wall_after);
        let mut candidates: Vec<_> = self.crons.iter().map(|cron| cron.after(&start).peekable()).collect();
        // A year of candidates is enough for any schedule that fires at all.
        for _ in 0..(366 * 24 * 60 * 4) {
            let (index, wall) = candidates
                .iter_mut()
                .enumerate()
                .filter_map(|(index, iterator)| iterator.peek().map(|wall| (index, wall.naive_utc())))
                .min_by_key(|(_, wall)| *wall)?;
            candidates[index].next();
            if let Some(instant) = self.instant_of(wall)
                && instant > after
            {
                return Some(instant);
            }
        }
        None
    }

    /// Places a wall-clock time in the zone on the real time line.
    fn instant_of(&self, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self.zone.from_local_datetime(&wall) {
            LocalResult::Single(at) => Some(at.with_timezone(&Utc)),
            // Twice in the same night: the first time only.
            LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
            // Skipped by a clock change: the first instant after the gap.
            // Zone changes happen on whole minutes.
            LocalResult::None => {
                let mut probe = wall.with_second(0)?.with_nanosecond(0)?;
                for _ in 0..(24 * 60) {
                    probe += Duration::minutes(1);
                    if let LocalResult::Single(at) | LocalResult::Ambiguous(at, _) =
                        self.zone.from_local_datetime(&probe)
                    {
                        return Some(at.with_timezone(&Utc));
                    }
                }
                None
            }
        }
    }
}

/// Turns a crontab line into lines for the cron crate (seconds first, day
/// of week 1 = Sunday); two when both day fields are restricted.
fn to_cron(expression: &str) -> Result<Vec<String>, String> {
    let fields: Vec<&str> = match expression.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => vec!["0", "0", "0", "1", "1", "*"],
        "@monthly" => vec!["0", "0", "0", "1", "*", "*"],
        "@weekly" => vec!["0", "0", "0", "*", "*", "0"],
        "@daily" | "@midnight" => vec!["0", "0", "0", "*", "*", "*"],
        "@hourly" => vec!["0", "0", "*", "*", "*", "*"],
        _ => {
            let words: Vec<&str> = expression.split_whitespace().collect();
            match words.len() {
                5 => std::iter::once("0").chain(words).collect(),
                6 => words,
                _ => {
                    return Err(format!(
                        "schedule {expression:?} has {} fields; use 5 (minute hour day-of-month month day-of-week), \
                         6 (seconds first) or @hourly, @daily, @weekly, @monthly, @yearly",
                        words.len()
                    ));
                }
            }
        }
    };
    let day_of_week = day_of_week_field(fields[5])?;
    let line = |day_of_month: &str, day_of_week: &str| {
        format!("{} {} {} {} {} {}", fields[0], fields[1], fields[2], day_of_month, fields[4], day_of_week)
    };
    let dom_set = fields[3] != "*" && fields[3] != "?";
    let dow_set = day_of_week != "*";
    Ok(if dom_set && dow_set {
        vec![line(fields[3], "*"), line("*", &day_of_week)]
    } else {
        vec![line(fields[3], &day_of_week)]
    })
}

/// Rewrites a crontab day-of-week field (0 or 7 = Sunday, 1 = Monday) as an
/// explicit list in the cron crate's numbering (1 = Sunday).
fn day_of_week_field(field: &str) -> Result<String, String> {
    if field == "*" || field == "?" {
        return Ok("*".to_string());
    }
    const NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let day = |text: &str| -> Result<u32, String> {
        let lower = text.to_ascii_lowercase();
        if let Some(index) = NAMES.iter().position(|name| *name == lower) {
            return Ok(index as u32);
        }
        match lower.parse::<u32>() {
            Ok(7) => Ok(0),
            Ok(number) if number < 7 => Ok(number),
            _ => Err(format!("day of week {text:?} is invalid; use 0-7 (0 and 7 are Sunday) or sun-sat")),
        }
    };
    let mut days = [false; 7];
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 =
                    step.parse().ok().filter(|step| *step > 0).ok_or_else(|| format!("step {step:?} is invalid"))?;
                (range, step)
            }
            None => (part, 1),
        };
        let (first, last) = match range {
            "*" => (0, 6),
            _ => match range.split_once('-') {
                Some((first, last)) => {
                    let first = day(first)?;
                    // 7 ends a range as Sunday after Saturday.
                    let last = if last == "7" { 7 } else { day(last)? };
                    if last < first {
                        return Err(format!("day-of-week range {range:?} runs backwards"));
                    }
                    (first, last)
                }
                None => {
                    let single = day(range)?;
                    (single, single)
                }
            },
        };
        for number in (first..=last).step_by(step as usize) {
            days[(number % 7) as usize] = true;
        }
    }
    let list: Vec<String> =
        days.iter().enumerate().filter(|(_, set)| **set).map(|(index, _)| (index + 1).to_string()).collect();
    Ok(list.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    /// The next `count` fire times after `start`, in UTC RFC 3339.
    fn fires(schedule: &Schedule, start: &str, count: usize) -> Vec<String> {
        let mut at = utc(start);
        (0..count)
            .map(|_| {
                at = schedule.next_after(at).unwrap();
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            })
            .collect()
    }

    #[test]
    fn berlin_spring_forward_runs_after_gap() {
        // On 2026-03-29 Berlin's clocks jump from 02:00 to 03:00 (UTC+1 to UTC+2).
        let daily = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            fires(&daily, "2026-03-27T12:00:00Z", 4),
            ["2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z", "2026-03-31T00:30:00Z"]
        );
    }

    #[test]
    fn berlin_fall_back_runs_once() {
        // On 2026-10-25 Berlin's clocks go back from 03:00 to 02:00: 02:30 happens twice.
        let daily = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            fires(&daily, "2026-10-23T12:00:00Z", 4),
            ["2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z", "2026-10-27T01:30:00Z"]
        );
    }

    #[test]
    fn new_york_spring_forward_runs_after_gap() {
        // On 2026-03-08 New York's clocks jump from 02:00 to 03:00 (UTC-5 to UTC-4).
        let daily = Schedule::parse("30 2 * * *", "America/New_York").unwrap();
        assert_eq!(
            fires(&daily, "2026-03-06T12:00:00Z", 4),
            ["2026-03-07T07:30:00Z", "2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z", "2026-03-10T06:30:00Z"]
        );
    }

    #[test]
    fn new_york_fall_back_runs_once() {
        // On 2026-11-01 New York's clocks go back from 02:00 to 01:00: 01:30 happens twice.
        let daily = Schedule::parse("30 1 * * *", "America/New_York").unwrap();
        assert_eq!(
            fires(&daily, "2026-10-30T12:00:00Z", 4),
            ["2026-10-31T05:30:00Z", "2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z", "2026-11-03T06:30:00Z"]
        );
        let at_two_thirty = Schedule::parse("30 2 * * *", "America/New_York").unwrap();
        assert_eq!(fires(&at_two_thirty, "2026-10-31T12:00:00Z", 2), ["2026-11-01T07:30:00Z", "2026-11-02T07:30:00Z"]);
    }

    #[test]
    fn restart_in_repeated_hour_does_not_rerun() {
        // A daemon that restarts at 01:40 of the second 01:00-02:00 hour, after
        // the 01:30 run of the first one, waits for the next day.
        let daily = Schedule::parse("30 1 * * *", "America/New_York").unwrap();
        assert_eq!(fires(&daily, "2026-11-01T06:40:00Z", 1), ["2026-11-02T06:30:00Z"]);
    }

    #[test]
    fn crontab_day_of_week_numbers() {
        // 2026-12-04 is a Friday.
        let weekdays = Schedule::parse("0 9 * * 1-5", "UTC").unwrap();
        assert_eq!(fires(&weekdays, "2026-12-04T10:00:00Z", 2), ["2026-12-07T09:00:00Z", "2026-12-08T09:00:00Z"]);
        for sunday in ["0", "7", "sun", "SUN"] {
            let schedule = Schedule::parse(&format!("0 9 * * {sunday}"), "UTC").unwrap();
            assert_eq!(fires(&schedule, "2026-12-04T10:00:00Z", 1), ["2026-12-06T09:00:00Z"], "{sunday}");
        }
        let weekend = Schedule::parse("0 9 * * 6-7", "UTC").unwrap();
        assert_eq!(fires(&weekend, "2026-12-04T10:00:00Z", 2), ["2026-12-05T09:00:00Z", "2026-12-06T09:00:00Z"]);
    }

    #[test]
    fn day_fields_combine_with_or() {
        // The 1st of the month or any Monday.
        let schedule = Schedule::parse("0 0 1 * 1", "UTC").unwrap();
        assert_eq!(
            fires(&schedule, "2026-11-28T00:00:00Z", 3),
            ["2026-11-30T00:00:00Z", "2026-12-01T00:00:00Z", "2026-12-07T00:00:00Z"]
        );
    }

    #[test]
    fn shortcuts_and_seconds() {
        let hourly = Schedule::parse("@hourly", "UTC").unwrap();
        assert_eq!(fires(&hourly, "2026-12-04T10:15:00Z", 1), ["2026-12-04T11:00:00Z"]);
        let weekly = Schedule::parse("@weekly", "UTC").unwrap();
        assert_eq!(fires(&weekly, "2026-12-04T10:15:00Z", 1), ["2026-12-06T00:00:00Z"]);
        let every_ten = Schedule::parse("*/10 * * * * *", "UTC").unwrap();
        assert_eq!(fires(&every_ten, "2026-12-04T10:15:03Z", 2), ["2026-12-04T10:15:10Z", "2026-12-04T10:15:20Z"]);
    }

    #[test]
    fn invalid_schedules_are_named() {
        for (expression, zone, expected) in [
            ("* * *", "UTC", "has 3 fields"),
            ("0 9 * * 8", "UTC", "day of week \"8\" is invalid"),
            ("0 9 * * 5-1", "UTC", "runs backwards"),
            ("61 * * * *", "UTC", "is invalid"),
            ("@daily", "Mars/Olympus", "not an IANA zone name"),
        ] {
            let err = Schedule::parse(expression, zone).unwrap_err();
            assert!(err.contains(expected), "{expression} {zone}: {err}");
        }
    }
}
