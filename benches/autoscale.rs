//! The autoscale decision on its own (issue 15, docs/benchmarks.md run M):
//! `Machine::scale_check` for GROUPS autoscaled groups (default 50), fed a
//! backlog and a sample per group, as the actor does at every check, in
//! this process without I/O. Prints the median and p90 of one check (all
//! groups) and per decision (one group) over ROUNDS checks.
//!
//!   cargo bench --locked --bench autoscale -- [GROUPS] [ROUNDS]
//!
//! bench/autoscale.py measures the same in the running daemon (with the
//! backlog poll and the memory sample).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant as StdInstant};

use clearify_workerd::config::{self, Environment};
use clearify_workerd::model::autoscale::Memory;
use clearify_workerd::plan;
use clearify_workerd::supervisor::machine::{Action, Machine, ScaleSample};
use tokio::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let groups: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let mut text = String::from(
        "[broker]\nurl = \"redis://127.0.0.1:6379/0\"\n[celery]\napp = \"x\"\ncommand = \"/bin/true\"\nworkdir = \"/\"\n",
    );
    for g in 0..groups {
        text.push_str(&format!(
            "[group.g{g}]\nqueues = [\"q{g}\", \"r{g}\"]\nconcurrency = 2\nautoscale = {{ min = 1, max = 4 }}\n"
        ));
    }
    let loaded = config::load_str(
        &text,
        Path::new("/bench/workers.toml"),
        &Environment::system(),
    )
    .unwrap_or_else(|e| panic!("bench config: {e}"));
    let mut m = Machine::new(plan::build(&loaded.config), true, Box::new(|| 0.0));
    let t0 = Instant::now();
    m.boot(t0);
    confirm(&mut m, t0, &mut 100);
    let samples: BTreeMap<String, ScaleSample> = m
        .autoscaled_groups()
        .into_iter()
        .map(|g| {
            let s = ScaleSample {
                share: Some(0.5),
                memory: Memory {
                    available: Some(2 << 30),
                    per_instance: Some(300 << 20),
                    pressure: false,
                },
            };
            (g, s)
        })
        .collect();
    // A backlog that keeps every group where it is (20 per instance, one
    // instance, share 0.5: desired 1), so each check decides and keeps the
    // machine the same size: a steady state, as an idle fleet.
    let backlog: BTreeMap<String, u64> = (0..groups)
        .flat_map(|g| [(format!("q{g}"), 30), (format!("r{g}"), 10)])
        .collect();
    let mut times = Vec::with_capacity(rounds);
    let mut pid = 10_000;
    for i in 0..rounds {
        let now = t0 + Duration::from_secs(1 + i as u64);
        let start = StdInstant::now();
        m.backlog(backlog.clone(), now);
        m.scale_check(&samples, now);
        let actions = m.take_actions();
        times.push(start.elapsed());
        assert!(
            actions.iter().all(|a| !matches!(a, Action::Spawn { .. })),
            "{actions:?}"
        );
        confirm(&mut m, now, &mut pid);
    }
    times.sort();
    let median = times[times.len() / 2];
    let p90 = times[times.len() * 9 / 10];
    let per = |d: Duration| d.as_secs_f64() * 1e3 / groups as f64;
    println!(
        "{{\"groups\": {groups}, \"rounds\": {rounds}, \"check_median_ms\": {:.4}, \"check_p90_ms\": {:.4}, \"decision_median_ms\": {:.5}, \"decision_p90_ms\": {:.5}}}",
        median.as_secs_f64() * 1e3,
        p90.as_secs_f64() * 1e3,
        per(median),
        per(p90),
    );
    let state = m
        .scale_views()
        .iter()
        .map(|v| v.state.as_str())
        .collect::<Vec<_>>();
    assert!(state.iter().all(|s| *s == "steady"), "{state:?}");
}

/// Confirms every spawn the machine asked for.
fn confirm(m: &mut Machine, now: Instant, pid: &mut u32) {
    for a in m.take_actions() {
        if let Action::Spawn { spec, generation } = a {
            *pid += 1;
            m.spawned(&spec.id, generation, *pid, now);
        }
    }
}
