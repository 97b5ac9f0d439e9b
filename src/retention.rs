//! Retention: which backups of a job a target keeps, by the rules operators
//! know from restic and borg.
//!
//! [`decide`] is a pure function of the backups, the policy, the time and
//! the time zone: it reads nothing and deletes nothing. Every backup gets a
//! decision with the reasons that keep it. The newest backup is always
//! kept, whatever the policy, so pruning can never leave a job without a
//! backup.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use chrono::{DateTime, Datelike, Duration, Utc};
use chrono_tz::Tz;

/// Rules; a count of 0 and a missing `keep_within` are off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// The newest N backups.
    pub keep_last: u32,
    /// Every backup newer than this.
    pub keep_within: Option<Duration>,
    /// The newest backup of each of the last N hours, days, … that have one.
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
}

impl Policy {
    /// Returns whether any rule is on.
    pub fn has_rule(&self) -> bool {
        self.keep_last > 0
            || self.keep_within.is_some()
            || self.keep_hourly > 0
            || self.keep_daily > 0
            || self.keep_weekly > 0
            || self.keep_monthly > 0
            || self.keep_yearly > 0
    }
}

/// A complete backup: one whose manifest exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub id: String,
    pub keep: bool,
    /// The rules that keep it (empty when it is deleted).
    pub reasons: Vec<String>,
}

/// Names the calendar bucket a time falls in.
type BucketOf = fn(DateTime<Tz>) -> String;

/// Decides for every backup whether `policy` keeps it at `now`. Calendar
/// buckets (hours, days, ISO weeks, months, years) are counted in `zone`.
/// Decisions come newest first.
pub fn decide(backups: &[Candidate], policy: &Policy, now: DateTime<Utc>, zone: Tz) -> Vec<Decision> {
    let mut sorted: Vec<&Candidate> = backups.iter().collect();
    // Newest first; equal times by id, so the order never depends on input.
    sorted.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
    let mut decisions: Vec<Decision> =
        sorted.iter().map(|backup| Decision { id: backup.id.clone(), keep: false, reasons: Vec::new() }).collect();

    if let Some(first) = decisions.first_mut() {
        first.reasons.push("newest backup".to_string());
    }
    for (index, backup) in sorted.iter().enumerate() {
        if index < policy.keep_last as usize {
            decisions[index].reasons.push(format!("last {}", policy.keep_last));
        }
        if let Some(within) = policy.keep_within
            && backup.created_at > now - within
        {
            decisions[index].reasons.push(format!("within {}", format_duration(within)));
        }
        if backup.created_at > now {
            decisions[index].reasons.push("newer than now (check the clocks)".to_string());
        }
    }

    let buckets: [(&str, u32, BucketOf); 5] = [
        ("hourly", policy.keep_hourly, |at| at.format("%Y-%m-%d %H:00").to_string()),
        ("daily", policy.keep_daily, |at| at.format("%Y-%m-%d").to_string()),
        ("weekly", policy.keep_weekly, |at| {
            let week = at.iso_week();
            format!("{}-W{:02}", week.year(), week.week())
        }),
        ("monthly", policy.keep_monthly, |at| format!("{}-{:02}", at.year(), at.month())),
        ("yearly", policy.keep_yearly, |at| at.year().to_string()),
    ];
    for (name, count, bucket_of) in buckets {
        if count == 0 {
            continue;
        }
        let mut seen = BTreeSet::new();
        for (index, backup) in sorted.iter().enumerate() {
            if seen.len() == count as usize {
                break;
            }
            let bucket = bucket_of(backup.created_at.with_timezone(&zone));
            // The newest backup of each bucket is the first one met.
            if seen.insert(bucket.clone()) {
                decisions[index].reasons.push(format!("{name} ({bucket})"));
            }
        }
    }
    for decision in &mut decisions {
        decision.keep = !decision.reasons.is_empty();
    }
    decisions
}

/// Parses a duration such as `36h`, `14d`, `2w` or `1w3d12h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid =
        || format!("duration {text:?} is invalid; use whole hours, days or weeks, such as \"36h\", \"14d\" or \"2w\"");
    let mut total = Duration::zero();
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let amount: i64 = digits.parse().map_err(|_| invalid())?;
        digits.clear();
        total += match c {
            'h' => Duration::try_hours(amount),
            'd' => Duration::try_days(amount),
            'w' => Duration::try_weeks(amount),
            _ => None,
        }
        .ok_or_else(invalid)?;
    }
    if !digits.is_empty() || total <= Duration::zero() {
        return Err(invalid());
    }
    Ok(total)
}

/// Renders a duration the way [`parse_duration`] reads it.
pub fn format_duration(duration: Duration) -> String {
    let mut text = String::new();
    let hours = duration.num_hours();
    let (days, hours) = (hours / 24, hours % 24);
    if days > 0 {
        let _ = write!(text, "{days}d");
    }
    if hours > 0 || text.is_empty() {
        let _ = write!(text, "{hours}h");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn backups(times: &[&str]) -> Vec<Candidate> {
        times.iter().map(|time| Candidate { id: time.to_string(), created_at: at(time) }).collect()
    }

    /// Runs `decide` and returns the ids it keeps, newest first.
    fn kept(times: &[&str], policy: &Policy, now: &str, zone: Tz) -> Vec<String> {
        decide(&backups(times), policy, at(now), zone)
            .into_iter()
            .filter(|decision| decision.keep)
            .map(|decision| decision.id)
            .collect()
    }

    const NOW: &str = "2026-12-04T12:00:00Z";

    #[test]
    fn newest_is_always_kept() {
        let times = ["2026-01-01T00:00:00Z", "2026-06-01T00:00:00Z"];
        let decisions = decide(&backups(&times), &Policy::default(), at(NOW), Tz::UTC);
        assert_eq!(decisions[0].id, "2026-06-01T00:00:00Z");
        assert!(decisions[0].keep);
        assert_eq!(decisions[0].reasons, ["newest backup"]);
        assert!(!decisions[1].keep);
        assert!(decisions[1].reasons.is_empty());
    }

    #[test]
    fn keep_last_counts_newest() {
        let times = ["2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z", "2026-12-03T00:00:00Z", "2026-12-04T00:00:00Z"];
        let policy = Policy { keep_last: 2, ..Policy::default() };
        assert_eq!(kept(&times, &policy, NOW, Tz::UTC), ["2026-12-04T00:00:00Z", "2026-12-03T00:00:00Z"]);
    }

    #[test]
    fn keep_within_is_relative_to_now() {
        let times = ["2026-12-02T11:00:00Z", "2026-12-02T13:00:00Z", "2026-12-04T11:00:00Z"];
        let policy = Policy { keep_within: Some(Duration::hours(47)), ..Policy::default() };
        // 47 hours before now is 2026-12-02T13:00:00Z, which is not newer.
        assert_eq!(kept(&times, &policy, NOW, Tz::UTC), ["2026-12-04T11:00:00Z"]);
        let policy = Policy { keep_within: Some(Duration::hours(48)), ..Policy::default() };
        assert_eq!(kept(&times, &policy, NOW, Tz::UTC), ["2026-12-04T11:00:00Z", "2026-12-02T13:00:00Z"]);
    }

    #[test]
    fn daily_keeps_newest_of_each_day() {
        let times = [
            "2026-12-01T08:00:00Z",
            "2026-12-01T20:00:00Z",
            "2026-12-02T08:00:00Z",
            "2026-12-03T08:00:00Z",
            "2026-12-03T20:00:00Z",
        ];
        let policy = Policy { keep_daily: 2, ..Policy::default() };
        let decisions = decide(&backups(&times), &policy, at(NOW), Tz::UTC);
        let kept: Vec<(&str, &Vec<String>)> = decisions
            .iter()
            .filter(|decision| decision.keep)
            .map(|decision| (decision.id.as_str(), &decision.reasons))
            .collect();
        assert_eq!(
            kept,
            [
                ("2026-12-03T20:00:00Z", &vec!["newest backup".to_string(), "daily (2026-12-03)".to_string()]),
                ("2026-12-02T08:00:00Z", &vec!["daily (2026-12-02)".to_string()]),
            ]
        );
    }

    #[test]
    fn buckets_follow_the_time_zone() {
        // 23:30 UTC on Dec 1 is already Dec 2 in Berlin (UTC+1).
        let times = ["2026-12-01T22:30:00Z", "2026-12-01T23:30:00Z", "2026-12-02T10:00:00Z"];
        let policy = Policy { keep_daily: 2, ..Policy::default() };
        assert_eq!(kept(&times, &policy, NOW, Tz::UTC), ["2026-12-02T10:00:00Z", "2026-12-01T23:30:00Z"]);
        assert_eq!(
            kept(&times, &policy, NOW, chrono_tz::Europe::Berlin),
            ["2026-12-02T10:00:00Z", "2026-12-01T22:30:00Z"]
        );
    }

    #[test]
    fn grandfather_father_son() {
        // One backup a day at 03:00 UTC for the whole of 2026 up to Dec 4.
        let mut day = at("2026-01-01T03:00:00Z");
        let mut times = Vec::new();
        while day <= at(NOW) {
            times.push(day.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            day += Duration::days(1);
        }
        let refs: Vec<&str> = times.iter().map(String::as_str).collect();
        let policy = Policy { keep_daily: 7, keep_weekly: 4, keep_monthly: 6, keep_yearly: 2, ..Policy::default() };
        let kept = kept(&refs, &policy, NOW, Tz::UTC);
        // Daily: Nov 28 to Dec 4. Weekly: Dec 4 for ISO week 49, then the
        // Sundays ending weeks 48, 47 and 46. Monthly: Dec 4, then the ends
        // of November back to July. Yearly: Dec 4 for 2026.
        let expected = [
            "2026-12-04",
            "2026-12-03",
            "2026-12-02",
            "2026-12-01",
            "2026-11-30",
            "2026-11-29",
            "2026-11-28",
            "2026-11-22",
            "2026-11-15",
            "2026-10-31",
            "2026-09-30",
            "2026-08-31",
            "2026-07-31",
        ];
        let kept_days: Vec<&str> = kept.iter().map(|id| &id[..10]).collect();
        assert_eq!(kept_days, expected);
    }

    #[test]
    fn zero_counts_are_off() {
        let times = ["2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z"];
        let policy = Policy { keep_last: 0, keep_daily: 0, ..Policy::default() };
        assert!(!policy.has_rule());
        assert_eq!(kept(&times, &policy, NOW, Tz::UTC), ["2026-12-02T00:00:00Z"]);
    }

    #[test]
    fn future_backups_are_kept() {
        let times = ["2026-12-01T00:00:00Z", "2026-12-05T00:00:00Z"];
        let policy = Policy { keep_last: 1, ..Policy::default() };
        let decisions = decide(&backups(&times), &policy, at(NOW), Tz::UTC);
        assert!(decisions[0].reasons.contains(&"newer than now (check the clocks)".to_string()));
        assert!(!decisions[1].keep);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("36h").unwrap(), Duration::hours(36));
        assert_eq!(parse_duration("14d").unwrap(), Duration::days(14));
        assert_eq!(parse_duration("1w3d12h").unwrap(), Duration::hours(10 * 24 + 12));
        assert_eq!(format_duration(Duration::hours(36)), "1d12h");
        for bad in ["", "12", "5m", "d", "0h", "-1d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
