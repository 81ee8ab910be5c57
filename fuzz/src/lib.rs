//! The fuzz targets of clearify-workerd (issue 12 §4).
//!
//! Each function takes the raw bytes of one input, feeds them to one parser
//! of outside input, and panics when that parser panics or when an
//! invariant of its output does not hold. `src/bin/<target>.rs` wraps each
//! in `afl::fuzz!`; `src/bin/replay.rs` runs them over files without AFL.
//! docs/fuzzing.md says how they are run.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use clearify_workerd::broker;
use clearify_workerd::config::{self, Environment};
use clearify_workerd::control::protocol::{
    Envelope, EnvelopeVersion, FrameError, MAX_FRAME, Request, Response, encode_frame,
    read_frame_blocking, read_frame_bytes,
};
use clearify_workerd::logs::{self, Grouper, LogStore, Record};
use clearify_workerd::plan;
use clearify_workerd::supervisor::machine::{Action, ExitReason, Machine};

#[path = "../../tests/support/framing_model.rs"]
mod framing_model;
use framing_model::{expected_lines, frame_in_pieces};

/// `FUZZ_DEBUG=1`: the targets say what they did with an input (on
/// stderr), e.g. why a config was rejected.
fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("FUZZ_DEBUG").is_some())
}

/// A fuzz target: takes one input, panics on a bug.
pub type Target = fn(&[u8]);

/// The targets, by name (the names of the binaries and corpus folders).
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config),
    ("env_file", env_file),
    ("broker_url", broker_url),
    ("control", control),
    ("framer", framer),
    ("heartbeat", heartbeat),
];

/// A small deterministic generator for split points and clocks, seeded
/// from the input so that every run of an input does the same.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0 | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

// ---------------------------------------------------------------------------
// config: the workers.toml loader, then the plan and the state machine

/// Where a config input is read "from": fuzz/fixture/, which holds an
/// executable `bin/celery` and a `worker.env`, so that configs naming them
/// (the shipped examples, the tests' fixtures) are accepted and go on to
/// the plan and the state machine.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixture")
}

/// The environment every config input is checked against: fixed, so that
/// a crash replays anywhere.
fn fuzz_environment() -> Environment {
    let mut vars = HashMap::new();
    let path = format!("{}:/usr/bin:/bin", fixture_dir().join("bin").display());
    vars.insert("PATH".to_string(), path);
    for key in ["BROKER_URL", "CELERY_BROKER_URL"] {
        vars.insert(key.to_string(), "redis://:pw@127.0.0.1:6379/0".to_string());
    }
    Environment {
        hostname: Some("fuzzhost".to_string()),
        machine_id_path: fixture_dir().join("machine-id"),
        vars,
    }
}

/// Loads the input as workers.toml. Every config `--check` accepts must
/// produce a plan, render, and run through the supervisor's state machine
/// (boot, spawn, crash, restart, stop, shutdown) without a panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = fixture_dir().join("workers.toml");
    let loaded = match config::load_str(text, &path, &fuzz_environment()) {
        Ok(loaded) => loaded,
        Err(e) => {
            // A rejection names at least one error, and prints.
            assert!(e.error_count() > 0, "rejected without an error: {e:?}");
            let text = e.to_string();
            if debug() {
                eprintln!("config rejected:\n{text}");
            }
            return;
        }
    };
    let cfg = &loaded.config;
    if debug() {
        eprintln!("config accepted: {} groups", cfg.groups.len());
    }
    // The broker monitor parses the URL --check accepted; an error is
    // reported at run time, a panic kills the daemon.
    if let Some(b) = &cfg.broker {
        let _ = broker::check_url(&b.url);
        let _ = broker::heartbeat_channel(&b.key_prefix, 0);
        for g in &cfg.groups {
            for q in &g.queues {
                let _ = broker::queue_keys(q, &b.priority_steps, &b.key_prefix);
            }
        }
    }
    let plan = plan::build(cfg);
    assert_eq!(plan.groups.len(), cfg.groups.len());
    for (g, p) in cfg.groups.iter().zip(&plan.groups) {
        assert_eq!(g.name, p.name);
        // With autoscale the plan holds `max` specs and starts `instances`.
        assert_eq!(u64::from(g.max_instances()), p.instances.len() as u64);
        assert_eq!(g.instances, p.start);
        if let Some(a) = g.autoscale {
            assert!(
                a.min <= g.instances && g.instances <= a.max,
                "{a:?} {}",
                g.instances
            );
        }
    }
    let _ = plan::render_check(&plan, cfg);
    for spec in plan.instances() {
        let _ = plan::command_line(spec);
    }
    // Reloading the same config changes nothing.
    let same = plan::diff(&plan, &plan.clone());
    assert!(
        same.added.is_empty() && same.removed.is_empty() && same.changed.is_empty(),
        "a plan differs from itself: {same:?}"
    );
    assert_eq!(same.unchanged.len(), plan.groups.len());
    // The state machine handles one event in time linear in the number of
    // instances, so a run through every instance's life is quadratic: at
    // the config's bound (4096 instances) that is seconds per input, which
    // AFL++ would report as a hang. Its logic is the same at any size;
    // large plans are covered by the loader and the planner above.
    if plan.instances().count() <= MACHINE_MAX_INSTANCES {
        run_machine(plan);
    }
}

/// The largest plan [`config`] drives through the state machine.
const MACHINE_MAX_INSTANCES: usize = 64;

/// Drives the supervisor's pure state machine through a worker's life with
/// the plan's timings, as the daemon would.
fn run_machine(plan: plan::Plan) {
    let t0 = tokio::time::Instant::now();
    let mut m = Machine::new(plan.clone(), true, Box::new(|| 0.5));
    m.boot(t0);
    let mut pid = 1000u32;
    let mut now = t0;
    let answer = |m: &mut Machine, now: tokio::time::Instant, pid: &mut u32| {
        for action in m.take_actions() {
            match action {
                Action::Spawn { spec, generation } => {
                    *pid += 1;
                    m.spawned(&spec.id, generation, *pid, now);
                }
                Action::KillTree { id, seq, .. } => m.tree_cleared(&id, seq, now),
                _ => {}
            }
        }
    };
    answer(&mut m, now, &mut pid);
    // Every live worker crashes, twice, and the machine's deadlines pass.
    for round in 0..3 {
        now += Duration::from_secs(2);
        m.tick(now);
        answer(&mut m, now, &mut pid);
        let live: Vec<u32> = m.live_pids().collect();
        for p in live {
            let reason = if round == 0 {
                ExitReason::Code(1)
            } else {
                ExitReason::Signal(9)
            };
            let _ = m.exited(p, reason, now);
        }
        answer(&mut m, now, &mut pid);
        if let Some(d) = m.next_deadline() {
            now = now.max(d);
            m.tick(now);
            answer(&mut m, now, &mut pid);
        }
        let _ = m.snapshot(now);
        let _ = m.summary_facts(now);
    }
    let all: Vec<String> = plan.groups.iter().map(|g| g.name.clone()).collect();
    let _ = m.restart(&all, false, now);
    answer(&mut m, now, &mut pid);
    let _ = m.stop(&all, now);
    answer(&mut m, now, &mut pid);
    if let Some(d) = m.next_deadline() {
        now = now.max(d);
        m.tick(now);
        answer(&mut m, now, &mut pid);
    }
    let _ = m.reload(plan, now);
    answer(&mut m, now, &mut pid);
    m.shutdown(now);
    answer(&mut m, now, &mut pid);
    for p in m.live_pids().collect::<Vec<_>>() {
        let _ = m.exited(p, ExitReason::Code(0), now);
    }
    answer(&mut m, now, &mut pid);
}

// ---------------------------------------------------------------------------
// env_file

/// Parses the input as an env file (`KEY=VALUE` lines).
pub fn env_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count();
    match config::parse_env_file(text) {
        Ok(vars) => {
            assert!(vars.len() <= lines);
            for (k, _) in &vars {
                assert!(
                    !k.is_empty() && !k.contains('=') && !k.contains('\0'),
                    "bad key {k:?}"
                );
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in &errors {
                assert!(e.line >= 1 && e.line <= lines, "line {} of {lines}", e.line);
                assert!(e.column >= 1, "column {}", e.column);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// broker_url

/// Checks the input as a broker URL the way `--check` does
/// (`config::check_broker_url`) and the way the monitor does
/// (`broker::check_url`), and redacts it; what the first accepts the
/// second must too. Whatever the parser reads as the password, the
/// redaction hides.
pub fn broker_url(data: &[u8]) {
    let Ok(url) = std::str::from_utf8(data) else {
        return;
    };
    let checked = config::check_broker_url(url);
    let shown = config::redact_url(url);
    if let Ok(u) = config::broker_url::BrokerUrl::parse(url)
        && let Some(pw) = &u.password
        && pw.len() >= 4
        && pw.chars().all(|c| c.is_ascii_alphanumeric())
        && url.matches(pw.as_str()).count() == 1
    {
        assert!(
            !shown.contains(pw.as_str()),
            "the redaction shows the password"
        );
    }
    let parsed = broker::check_url(url);
    // What --check accepts, the daemon must be able to use.
    assert!(
        checked.is_err() || parsed.is_ok(),
        "--check accepts a URL the broker monitor refuses: {parsed:?}"
    );
}

// ---------------------------------------------------------------------------
// control

/// Decodes the input as the daemon does a control-socket request (one
/// frame body: the version, then the envelope) and as a stream of frames,
/// and as a response (what clearifyctl decodes). Whatever decodes must
/// encode and decode back to the same value.
pub fn control(data: &[u8]) {
    let _ = serde_json::from_slice::<EnvelopeVersion>(data);
    if let Ok(env) = serde_json::from_slice::<Envelope>(data) {
        round_trip_envelope(&env);
    }
    if let Ok(resp) = serde_json::from_slice::<Response>(data) {
        round_trip_response(&resp);
    }
    // The server's own reader (async), over the same bytes: the frame
    // bodies it yields are what the blocking reader decodes below.
    let bodies = server_frames(data);
    let mut r = Cursor::new(data);
    let mut n = 0;
    for _ in 0..64 {
        let before = r.position();
        match read_frame_blocking::<_, Envelope>(&mut r) {
            Ok(Some(env)) => {
                round_trip_envelope(&env);
                let body = bodies.get(n).expect("the async reader saw this frame");
                assert_eq!(serde_json::from_slice::<Envelope>(body).ok(), Some(env));
                n += 1;
            }
            Ok(None) => break,
            Err(FrameError::Json(_)) => n += 1,
            Err(FrameError::TooLarge(n)) => {
                assert!(n > MAX_FRAME);
                // Refused on the prefix alone: nothing of the body is read.
                assert_eq!(r.position(), before + 4);
                break;
            }
            Err(_) => break,
        }
        assert!(r.position() > before, "a frame read consumed nothing");
    }
}

/// The frame bodies `protocol::read_frame_bytes` (the server's reader)
/// yields from `data`, up to the first error or EOF.
fn server_frames(data: &[u8]) -> Vec<Vec<u8>> {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
    }
    RT.with(|rt| {
        rt.block_on(async {
            let mut r = data;
            let mut out = Vec::new();
            for _ in 0..64 {
                match read_frame_bytes(&mut r).await {
                    Ok(Some(body)) => {
                        assert!(body.len() <= MAX_FRAME);
                        out.push(body);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            out
        })
    })
}

fn without_since(env: &Envelope) -> (Envelope, Option<f64>) {
    let mut env = env.clone();
    let since = match &mut env.request {
        Request::Logs { since, .. } => since.take(),
        _ => None,
    };
    (env, since)
}

fn round_trip_envelope(env: &Envelope) {
    let frame = encode_frame(env).expect("a decoded request encodes");
    let back: Envelope = read_frame_blocking(&mut Cursor::new(&frame))
        .expect("an encoded request decodes")
        .expect("one frame");
    // JSON floats round-trip to within an ulp, not always exactly.
    let (a, sa) = without_since(env);
    let (b, sb) = without_since(&back);
    assert_eq!(a, b);
    match (sa, sb) {
        (None, None) => {}
        (Some(x), Some(y)) => assert!(
            x == y || (x - y).abs() <= f64::EPSILON * x.abs().max(y.abs()),
            "since {x} came back as {y}"
        ),
        (x, y) => panic!("since {x:?} came back as {y:?}"),
    }
}

fn round_trip_response(resp: &Response) {
    // Only encodability and a clean decode: floats may move by an ulp.
    let frame = match encode_frame(resp) {
        Ok(f) => f,
        Err(FrameError::TooLarge(_)) => return,
        Err(e) => panic!("a decoded response does not encode: {e}"),
    };
    let _: Response = read_frame_blocking(&mut Cursor::new(&frame))
        .expect("an encoded response decodes")
        .expect("one frame");
}

// ---------------------------------------------------------------------------
// framer: the line framer, the grouper, the journal encoding, the ring buffer

/// Input: one byte for the chunk size, one seed byte, then the stream.
/// The framer's lines must be exactly `expected_lines` (the model in
/// tests/support/framing_model.rs) however the
/// stream is cut; the grouper must keep every non-empty line, in order,
/// within its cap; journald's encoding must decode back; the ring buffer
/// must keep short lines whole and mark the shortened ones.
pub fn framer(data: &[u8]) {
    let [head, seed, stream @ ..] = data else {
        return;
    };
    let max = if head & 0x80 != 0 {
        logs::MAX_RECORD
    } else {
        1 + usize::from(head % 64)
    };
    let mut rng = Rng(u64::from(*seed) << 32 | stream.len() as u64);
    let mut cuts: Vec<usize> = (0..rng.below(8))
        .map(|_| rng.below(stream.len() as u64 + 1) as usize)
        .collect();
    cuts.sort_unstable();
    let lines = frame_in_pieces(stream, max, &cuts);
    let expected = expected_lines(stream, max);
    assert_eq!(lines, expected, "max {max}, cuts {cuts:?}");

    // Grouping, with a clock that moves 0 to 150 ms per line.
    let mut g = Grouper::new(max, logs::QUIET, logs::MAX_HOLD);
    let t0 = Instant::now();
    let mut now = t0;
    let mut records: Vec<Record> = Vec::new();
    for line in lines.iter().cloned() {
        now += Duration::from_millis(50 * rng.below(4));
        if let Some(d) = g.deadline()
            && d <= now
        {
            records.extend(g.poll(now));
        }
        records.extend(g.push(line, now));
    }
    records.extend(g.flush());
    assert!(g.deadline().is_none());
    let got: Vec<&[u8]> = records
        .iter()
        .flat_map(|r| r.message.split(|&b| b == b'\n'))
        .filter(|l| !l.is_empty())
        .collect();
    let want: Vec<&[u8]> = lines
        .iter()
        .map(|l| l.bytes.as_slice())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(got, want, "the grouper lost or reordered lines");
    for r in &records {
        assert!(r.priority <= 7, "priority {}", r.priority);
        assert!(
            r.message.len() <= max,
            "record of {} > {max}",
            r.message.len()
        );
    }

    // journald's native encoding round-trips every record.
    let meta = logs::WorkerMeta {
        group: "g".into(),
        instance: "g-1".into(),
        node: "g-1@fuzz".into(),
        pid: 1,
    };
    for r in &records {
        let entry = logs::encode_record(&meta, logs::Stream::Stderr, r);
        let fields = logs::decode_entry(&entry).expect("an encoded entry decodes");
        let message = fields
            .iter()
            .find(|(k, _)| k == "MESSAGE")
            .map(|(_, v)| v.as_slice());
        assert_eq!(message, Some(r.message.as_slice()));
    }

    // The ring buffer: the whole stream as one line, then the records.
    let store = LogStore::with_limits(4, 64 * 1024);
    for msg in std::iter::once(stream).chain(records.iter().map(|r| r.message.as_slice())) {
        store.push(&meta, logs::Stream::Stderr, msg);
        let tail = store.tail(Some("g-1"), 1, None);
        let [last] = tail.as_slice() else {
            panic!("tail of 1 gave {} lines", tail.len());
        };
        if msg.len() <= logs::MAX_STORED_LINE {
            assert_eq!(last.text, String::from_utf8_lossy(msg));
        } else {
            let note = format!(
                " … [{} more bytes in the journal]",
                msg.len() - logs::MAX_STORED_LINE
            );
            assert!(last.text.ends_with(&note), "a shortened line is not marked");
        }
    }
    assert!(store.len("g-1") <= 4);
}

// ---------------------------------------------------------------------------
// heartbeat

/// Decodes the input as a kombu envelope carrying a Celery event (what any
/// worker may publish on the heartbeat channel), and as base64, which must
/// agree with the `base64` crate on what it encodes.
pub fn heartbeat(data: &[u8]) {
    if let Some(hb) = broker::decode_heartbeat(data) {
        let _ = format!("{hb:?}");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = broker::base64_decode(text);
    }
    for engine in [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        let encoded = engine.encode(data);
        assert_eq!(
            broker::base64_decode(&encoded).as_deref(),
            Some(data),
            "base64 of {encoded:?}"
        );
    }
    // A heartbeat built around the input as its hostname decodes to it.
    if let Ok(host) = std::str::from_utf8(data) {
        let event = serde_json::json!({"hostname": host, "type": "worker-heartbeat", "active": 1});
        let body = base64::engine::general_purpose::STANDARD.encode(event.to_string());
        let envelope = serde_json::json!({
            "body": body,
            "properties": {"body_encoding": "base64"},
        });
        let hb = broker::decode_heartbeat(envelope.to_string().as_bytes())
            .expect("a well-formed heartbeat decodes");
        assert_eq!(hb.hostname, host);
        assert_eq!(hb.active, 1);
    }
}
