//! A job's schedule: a cron expression with seconds, read exactly as
//! tokio-cron-scheduler reads it (croner, seconds required, day-of-month
//! and day-of-week both honoured), plus the nicknames `@hourly`, `@daily`,
//! `@weekly`, `@monthly` and `@yearly`, in a time zone (UTC by default).
//!
//! The daemon hands [`Schedule::cron`] to tokio-cron-scheduler; `status`
//! and the metrics use [`Schedule::next_after`] and [`Schedule::period`]
//! (the overdue alert fires when no run succeeded in twice the period).

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

#[derive(Debug, Clone)]
pub struct Schedule {
    /// As written in the config.
    pub source: String,
    /// The six-field expression the scheduler gets.
    pub cron: String,
    pub tz: Tz,
    parsed: Cron,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.cron == other.cron && self.tz == other.tz
    }
}
impl Eq for Schedule {}

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
}

impl Schedule {
    pub fn parse(source: &str, tz: Tz) -> Result<Schedule, String> {
        let s = source.trim();
        let cron = match s.to_ascii_lowercase().as_str() {
            "@hourly" => "0 0 * * * *".to_owned(),
            "@daily" | "@midnight" => "0 0 0 * * *".to_owned(),
            "@weekly" => "0 0 0 * * Sun".to_owned(),
            "@monthly" => "0 0 0 1 * *".to_owned(),
            "@yearly" | "@annually" => "0 0 0 1 1 *".to_owned(),
            n if n.starts_with('@') => {
                return Err(format!(
                    "unknown nickname {s:?} (expected @hourly, @daily, @weekly, @monthly or @yearly)"
                ));
            }
            _ => s.to_owned(),
        };
        let fields = cron.split_whitespace().count();
        if fields != 6 && fields != 7 {
            return Err(format!(
                "{s:?} has {fields} fields; a schedule is sec min hour day-of-month month day-of-week (e.g. \"0 0 3 * * Mon\") or @hourly/@daily/@weekly/@monthly"
            ));
        }
        let parsed = parser()
            .parse(&cron)
            .map_err(|e| format!("invalid cron expression {s:?}: {e}"))?;
        let sched = Schedule {
            source: s.to_owned(),
            cron,
            tz,
            parsed,
        };
        if sched.next_after(Utc::now()).is_none() {
            return Err(format!("{s:?} never fires"));
        }
        Ok(sched)
    }

    /// The first firing strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.parsed
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The longest gap between consecutive firings over the next few,
    /// for "no success in twice the period".
    pub fn period(&self, from: DateTime<Utc>) -> Duration {
        let mut t = match self.next_after(from) {
            Some(t) => t,
            None => return Duration::ZERO,
        };
        let mut longest = Duration::ZERO;
        for _ in 0..6 {
            let Some(n) = self.next_after(t) else { break };
            longest = longest.max((n - t).to_std().unwrap_or_default());
            t = n;
        }
        longest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn nicknames_and_periods() {
        let t = Utc.with_ymd_and_hms(2026, 12, 6, 10, 0, 30).unwrap();
        let h = Schedule::parse("@hourly", chrono_tz::UTC).unwrap();
        assert_eq!(
            h.next_after(t),
            Some(Utc.with_ymd_and_hms(2026, 12, 6, 11, 0, 0).unwrap())
        );
        assert_eq!(h.period(t), Duration::from_secs(3600));
        let m = Schedule::parse("@monthly", chrono_tz::UTC).unwrap();
        assert_eq!(m.period(t), Duration::from_secs(31 * 86400));
        let w = Schedule::parse("0 0 3 * * Mon", chrono_tz::UTC).unwrap();
        assert_eq!(
            w.next_after(t),
            Some(Utc.with_ymd_and_hms(2026, 12, 7, 3, 0, 0).unwrap())
        );
        assert_eq!(w.period(t), Duration::from_secs(7 * 86400));
        let s = Schedule::parse("*/10 * * * * *", chrono_tz::UTC).unwrap();
        assert_eq!(s.period(t), Duration::from_secs(10));
    }

    #[test]
    fn time_zone_moves_the_firing() {
        let t = Utc.with_ymd_and_hms(2026, 12, 6, 10, 0, 0).unwrap();
        let b = Schedule::parse("0 0 3 * * *", chrono_tz::Europe::Berlin).unwrap();
        // 03:00 in Berlin (UTC+1 in December) is 02:00 UTC.
        assert_eq!(
            b.next_after(t),
            Some(Utc.with_ymd_and_hms(2026, 12, 7, 2, 0, 0).unwrap())
        );
    }

    #[test]
    fn bad_schedules() {
        for bad in [
            "",
            "0 3 * * Mon",
            "@fortnightly",
            "61 * * * * *",
            "a b c d e f",
        ] {
            assert!(Schedule::parse(bad, chrono_tz::UTC).is_err(), "{bad}");
        }
    }
}
