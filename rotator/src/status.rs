//! `custos rotator status`: each job's state as its document in Custos has
//! it — step (or held), current and previous version, which consumers have
//! and have not moved and since when, the last success and error, the
//! claim's holder, and the next scheduled run — as a table or as JSON.
//! The same figures feed the daemon's gauges ([`export_gauges`]).

use serde_json::{Value, json};

use crate::config::JobConfig;
use crate::metrics as m;
use crate::state::JobState;

fn time(t: Option<i64>) -> Value {
    t.and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|d| Value::String(d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
        .unwrap_or(Value::Null)
}

/// The JSON status of one job.
pub fn job_status(job: &JobConfig, st: &JobState) -> Value {
    let next = job
        .schedule
        .next_after(chrono::Utc::now())
        .map(|d| d.timestamp());
    let (state, current, previous) = match &st.run {
        Some(r) if r.held_since.is_some() => ("held", r.new_version, Some(r.previous_version)),
        Some(r) => (r.step.as_str(), r.new_version, Some(r.previous_version)),
        None => match &st.last_run {
            Some(l) => ("idle", Some(l.new_version), Some(l.previous_version)),
            None => ("idle", None, None),
        },
    };
    let consumers: Vec<Value> = match &st.run {
        Some(r) => job
            .consumers
            .iter()
            .map(|n| {
                let p = r.consumers.get(n).cloned().unwrap_or_default();
                json!({
                    "name": n,
                    "moved": p.moved,
                    "since": time(p.since),
                    "seen": p.seen,
                    "version": p.version,
                })
            })
            .collect(),
        None => job
            .consumers
            .iter()
            .map(|n| json!({"name": n, "moved": st.last_run.is_some(), "since": Value::Null, "seen": Value::Null, "version": Value::Null}))
            .collect(),
    };
    let run = st.run.as_ref();
    json!({
        "job": job.name,
        "kind": job.kind_name(),
        "state": state,
        "schedule": job.schedule.source,
        "timezone": job.schedule.tz.name(),
        "run_id": run.map(|r| r.id.clone()),
        "current_version": current,
        "previous_version": previous.filter(|v| *v > 0),
        "promoted_at": time(run.and_then(|r| r.promoted_at)),
        "held_since": time(run.and_then(|r| r.held_since)),
        "step_started_at": time(run.map(|r| r.step_started_at)),
        "consumers": consumers,
        "undeclared_clients": run.map(|r| r.undeclared.clone()).unwrap_or_default(),
        "rewrapped": run.map(|r| r.rewrapped),
        "claimed_by": run.and_then(|r| r.claim.as_ref()).map(|c| c.owner.clone()),
        "last_error": run.and_then(|r| r.last_error.clone()),
        "last_success": time(st.last_success),
        "runs_done": st.runs_done,
        "next_run": time(next),
    })
}

/// A human-readable table of [`job_status`] objects.
pub fn table(jobs: &[Value]) -> String {
    let mut out = String::new();
    for j in jobs {
        let s = |k: &str| match &j[k] {
            Value::Null => "-".to_owned(),
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        out.push_str(&format!("Job {} ({})\n", s("job"), s("kind")));
        for (label, key) in [
            ("State", "state"),
            ("Current version", "current_version"),
            ("Previous version", "previous_version"),
            ("Promoted at", "promoted_at"),
            ("Held since", "held_since"),
            ("Last success", "last_success"),
            ("Last error", "last_error"),
            ("Claimed by", "claimed_by"),
            ("Next run", "next_run"),
        ] {
            if label != "Held since" && label != "Last error" && label != "Claimed by"
                || !j[key].is_null()
            {
                out.push_str(&format!("  {label:<17} {}\n", s(key)));
            }
        }
        let cons = j["consumers"].as_array().cloned().unwrap_or_default();
        if !cons.is_empty() {
            out.push_str("  Consumers\n");
            for c in cons {
                let name = c["name"].as_str().unwrap_or_default();
                let since = c["since"].as_str().unwrap_or("-");
                let what = match (c["moved"].as_bool(), c["seen"].as_bool()) {
                    (Some(true), _) => format!("moved (since {since})"),
                    (Some(false), Some(false)) => {
                        "NOT MOVED, never seen in the audit log (check the name)".into()
                    }
                    (Some(false), _) => format!("NOT MOVED (last read {since})"),
                    _ => "-".into(),
                };
                out.push_str(&format!("    {name:<24} {what}\n"));
            }
        }
        for u in j["undeclared_clients"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            out.push_str(&format!(
                "    {:<24} NOT MOVED (not a declared consumer)\n",
                u.as_str().unwrap_or_default()
            ));
        }
        out.push('\n');
    }
    out
}

/// Set the job's gauges from its document.
pub fn export_gauges(job: &JobConfig, st: &JobState) {
    let name = job.name.clone();
    let now = chrono::Utc::now();
    if let Some(t) = st.last_success {
        metrics::gauge!(m::LAST_SUCCESS, "rotation_job" => name.clone()).set(t as f64);
    }
    if let Some(n) = job.schedule.next_after(now) {
        metrics::gauge!(m::NEXT_RUN, "rotation_job" => name.clone()).set(n.timestamp() as f64);
    }
    metrics::gauge!(m::SCHEDULE_PERIOD, "rotation_job" => name.clone())
        .set(job.schedule.period(now).as_secs_f64());
    let held = st.run.as_ref().is_some_and(|r| r.held_since.is_some());
    metrics::gauge!(m::RUN_HELD, "rotation_job" => name.clone()).set(if held { 1.0 } else { 0.0 });
    metrics::gauge!(m::RUN_ACTIVE, "rotation_job" => name.clone()).set(if st.run.is_some() {
        1.0
    } else {
        0.0
    });
    let pending = st
        .run
        .as_ref()
        .filter(|r| r.step == crate::state::Step::Verify)
        .map(|r| r.consumers.values().filter(|p| !p.moved).count() + r.undeclared.len())
        .unwrap_or(0);
    metrics::gauge!(m::CONSUMERS_PENDING, "rotation_job" => name).set(pending as f64);
}
