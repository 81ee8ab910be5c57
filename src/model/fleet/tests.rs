use std::collections::BTreeMap;

use super::*;

fn instance(id: &str, state: InstanceState) -> InstanceRecord {
    InstanceRecord {
        id: id.into(),
        state,
        pid: Some(4242),
        uptime_secs: Some(3600),
        restarts: 0,
        last_exit: None,
        memory_bytes: Some(50 << 20),
        cpu_percent: Some(1.5),
        heartbeat_age_secs: Some(1.2),
    }
}

fn group(name: &str, queues: &[&str], n: u32, tpm: Option<f64>) -> GroupRecord {
    GroupRecord {
        name: name.into(),
        queues: queues.iter().map(|q| q.to_string()).collect(),
        concurrency: 2,
        total: n,
        running: n,
        crash_looping: 0,
        restarts: 0,
        memory_bytes: Some(u64::from(n) * (50 << 20)),
        memory_max: Some(512 << 20),
        processed: 10,
        active: 1,
        tasks_per_minute: tpm,
        max_instances: None,
        autoscale: None,
        instances: (1..=n)
            .map(|i| instance(&format!("{name}-{i}"), InstanceState::Running))
            .collect(),
    }
}

fn record(id: &str, version: &str, groups: Vec<GroupRecord>) -> DeviceRecord {
    DeviceRecord {
        schema: SCHEMA,
        device_id: id.into(),
        version: version.into(),
        hostname: format!("{id}-host"),
        arch: "arm64".into(),
        kernel: "6.1.0-28-arm64".into(),
        boot_time: Some(1_764_000_000),
        uptime_secs: 7200,
        interval_secs: 10.0,
        run: DaemonRun::Running,
        stopped_at: None,
        rss_bytes: Some(6 << 20),
        load: Some([0.1, 0.2, 0.3]),
        mem_total_bytes: Some(4 << 30),
        mem_available_bytes: Some(3 << 30),
        limits: true,
        broker_rtt_ms: Some(0.8),
        restarts_last_hour: 0,
        groups,
        instances_omitted: 0,
    }
}

fn seen(rec: DeviceRecord, last_beat: f64) -> Seen {
    Seen {
        record: rec,
        last_beat,
    }
}

fn summary(now: f64) -> ReadSummary {
    ReadSummary {
        now,
        members: 0,
        read: 0,
        expired: 0,
        skipped: vec![],
    }
}

#[test]
fn a_pi_with_four_groups_and_eight_instances_fits_well_under_the_cap() {
    let groups = vec![
        group("text", &["text_processing"], 2, Some(12.0)),
        group("image", &["image_processing"], 2, None),
        group("default", &["celery"], 2, None),
        group("reports", &["reports", "exports"], 2, None),
    ];
    let bytes = record("pi-kitchen-1a2b3c", "0.4.0", groups).encode();
    // docs/fleet.md gives this size; Redis adds ~60 bytes per key.
    assert!(bytes.len() < 3 * 1024, "{} bytes", bytes.len());
    let back = parse_record("pi-kitchen-1a2b3c", &bytes).unwrap();
    assert_eq!(back.groups[3].instances.len(), 2);
    assert_eq!(back.instances_omitted, 0);
}

#[test]
fn a_record_too_big_for_the_cap_loses_instance_detail_not_its_sums() {
    let rec = record(
        "big",
        "0.4.0",
        vec![group("a", &["q"], 400, None), group("b", &["q"], 3, None)],
    );
    let bytes = rec.encode();
    assert!(bytes.len() <= MAX_RECORD);
    let back = parse_record("big", &bytes).unwrap();
    assert_eq!(back.instances_omitted, 400);
    assert!(back.groups[0].instances.is_empty());
    assert_eq!(back.groups[0].total, 400);
    assert_eq!(back.groups[1].instances.len(), 3);
}

#[test]
fn in_redis_an_instance_is_an_array_and_200_fit() {
    let mut g = group("text", &["q"], 200, None);
    g.instances[0].cpu_percent = Some(12.345_678);
    g.instances[0].last_exit = Some("killed by SIGKILL".into());
    let bytes = record("d", "1", vec![g]).encode();
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(
        text.contains(r#"["text-1","running",4242,3600,0,"killed by SIGKILL",52428800,12.3,1.2]"#),
        "{text}"
    );
    let back = parse_record("d", &bytes).unwrap();
    assert_eq!(back.instances_omitted, 0);
    assert_eq!(back.groups[0].instances.len(), 200);
    assert_eq!(back.groups[0].instances[0].cpu_percent, Some(12.3));
    // Elsewhere (fleet DEVICE --json) an instance is an object.
    let json = serde_json::to_value(&back).unwrap();
    assert_eq!(json["groups"][0]["instances"][1]["id"], "text-2");
}

#[test]
fn hostile_records_are_refused_with_a_reason() {
    let ok = record("d", "1", vec![]);
    let mut too_big = serde_json::to_vec(&ok).unwrap();
    too_big.resize(MAX_RECORD + 1, b' ');
    assert!(parse_record("d", &too_big).unwrap_err().contains("larger"));

    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    assert!(
        parse_record("d", deep.as_bytes())
            .unwrap_err()
            .contains("not a fleet record")
    );

    let mut other_schema = ok.clone();
    other_schema.schema = 99;
    let e = parse_record("d", &serde_json::to_vec(&other_schema).unwrap()).unwrap_err();
    assert!(e.contains("schema 99"), "{e}");

    let e = parse_record("someone-else", &serde_json::to_vec(&ok).unwrap()).unwrap_err();
    assert!(e.contains("another device"), "{e}");

    let mut no_interval = ok.clone();
    no_interval.interval_secs = 0.0;
    assert!(parse_record("d", &serde_json::to_vec(&no_interval).unwrap()).is_err());

    assert!(parse_record("d", b"\xff\xfe").is_err());
    assert!(parse_record("d", b"").is_err());
}

#[test]
fn control_characters_are_kept_for_the_renderer_to_escape() {
    let mut rec = record("d", "1", vec![]);
    rec.hostname = "evil\x1b[2J\r\nhost".into();
    let back = parse_record("d", &rec.encode()).unwrap();
    assert_eq!(back.hostname, "evil\x1b[2J\r\nhost");
}

#[test]
fn presence_is_judged_by_redis_time_and_the_devices_own_interval() {
    let up = seen(record("a", "1", vec![]), 1000.0);
    assert_eq!(up.presence(1029.9), Presence::Up);
    assert_eq!(up.presence(1030.1), Presence::Lost);
    let mut slow = record("b", "1", vec![]);
    slow.interval_secs = 60.0;
    assert_eq!(seen(slow, 1000.0).presence(1100.0), Presence::Up);
    let mut stopped = record("c", "1", vec![]);
    stopped.run = DaemonRun::Stopped;
    assert_eq!(seen(stopped, 1000.0).presence(99_999.0), Presence::Stopped);
}

#[test]
fn device_rows_put_problems_first_and_mark_version_skew() {
    let mut crashing = group("g", &["q"], 2, None);
    crashing.crash_looping = 1;
    crashing.running = 1;
    let mut stopped = record("e-stopped", "0.4.0", vec![]);
    stopped.run = DaemonRun::Stopped;
    let rows = device_rows(
        summary(1000.0),
        &[
            seen(
                record("a-ok", "0.4.0", vec![group("g", &["q"], 2, Some(6.0))]),
                995.0,
            ),
            seen(record("b-old", "0.3.9", vec![]), 995.0),
            seen(stopped, 900.0),
            seen(record("d-crash", "0.4.0", vec![crashing]), 995.0),
            seen(record("c-lost", "0.4.0", vec![]), 900.0),
        ],
    );
    let order: Vec<&str> = rows.devices.iter().map(|d| d.device_id.as_str()).collect();
    assert_eq!(order, ["c-lost", "d-crash", "e-stopped", "b-old", "a-ok"]);
    assert_eq!(rows.common_version.as_deref(), Some("0.4.0"));
    assert!(rows.devices[3].version_skew);
    assert!(!rows.devices[4].version_skew);
    let ok = &rows.devices[4];
    assert_eq!((ok.running, ok.total), (2, 2));
    assert_eq!(ok.tasks_per_minute, Some(6.0));
    assert_eq!(ok.memory_limit_bytes, Some(2 * (512 << 20)));
    assert_eq!(ok.last_seen_secs, 5.0);
    // No group: the device's memory is the limit.
    assert_eq!(rows.devices[3].memory_limit_bytes, Some(4 << 30));
}

#[test]
fn queue_rows_share_tasks_between_live_devices_only() {
    let rows = queue_rows(
        summary(1000.0),
        &[
            seen(
                record("a", "1", vec![group("t", &["text", "x"], 3, Some(30.0))]),
                999.0,
            ),
            seen(
                record("b", "1", vec![group("t", &["text"], 1, Some(10.0))]),
                999.0,
            ),
            seen(
                record("lost", "1", vec![group("t", &["text"], 5, Some(99.0))]),
                100.0,
            ),
        ],
        &BTreeMap::from([("text".to_string(), 57)]),
    );
    let names: Vec<&str> = rows.queues.iter().map(|q| q.queue.as_str()).collect();
    assert_eq!(names, ["text", "x"]);
    let text = &rows.queues[0];
    assert_eq!(text.backlog, Some(57));
    assert_eq!(text.instances, 4);
    assert_eq!(text.concurrency, 8);
    assert_eq!(text.tasks_per_minute, Some(40.0));
    assert_eq!(text.devices.len(), 2);
    assert_eq!(text.devices[0].share, Some(0.75));
    assert_eq!(text.devices[1].share, Some(0.25));
    assert_eq!(rows.queues[1].backlog, None);
}

#[test]
fn the_queue_view_is_bounded_in_distinct_queues() {
    let many: Vec<String> = (0..MAX_QUEUES + 10).map(|i| format!("q{i:05}")).collect();
    let mut g = group("g", &[], 1, None);
    g.queues = many;
    let rows = queue_rows(
        summary(1.0),
        &[seen(record("a", "1", vec![g]), 1.0)],
        &BTreeMap::new(),
    );
    assert_eq!(rows.queues.len(), MAX_QUEUES);
    assert_eq!(rows.queues_omitted, 10);
}

#[test]
fn keys_sit_under_the_key_prefix() {
    let k = Keys::new("p:");
    assert_eq!(k.set(), "p:clearify:fleet");
    assert_eq!(k.record("pi-1"), "p:clearify:fleet:pi-1");
    assert_eq!(k.prune_guard(), "p:clearify:fleet-prune");
}

fn qs(names: &[&str]) -> Vec<String> {
    names.iter().map(|q| q.to_string()).collect()
}

/// `group` with `max_instances` set.
fn scaled(name: &str, queues: &[&str], total: u32, max: Option<u32>) -> GroupRecord {
    GroupRecord {
        max_instances: max,
        ..group(name, queues, total, None)
    }
}

#[test]
fn capacities_count_the_other_live_devices_groups_on_my_queues() {
    let now = 1000.0;
    let mut stopped = record("stopped", "0.4.0", vec![scaled("t", &["text"], 1, Some(4))]);
    stopped.run = DaemonRun::Stopped;
    let seen = vec![
        // Me: never counted.
        seen(
            record("me", "0.4.0", vec![scaled("t", &["text"], 1, Some(4))]),
            now,
        ),
        // Autoscaled: max 4 × concurrency 2; the queue it shares with me only.
        seen(
            record(
                "a",
                "0.4.0",
                vec![scaled("t", &["text", "other", "text"], 1, Some(4))],
            ),
            now - 5.0,
        ),
        // An older daemon's record: total 3 × 2; and a group not on my queues.
        seen(
            record(
                "b",
                "0.3.0",
                vec![
                    scaled("t", &["images", "text"], 3, None),
                    scaled("x", &["other"], 9, None),
                ],
            ),
            now - 29.0,
        ),
        // Lost: no beat for more than 3 intervals of 10 s.
        seen(
            record("lost", "0.4.0", vec![scaled("t", &["text"], 1, Some(4))]),
            now - 31.0,
        ),
        seen(stopped, now),
        // No capacity: left out.
        seen(
            record("zero", "0.4.0", vec![scaled("t", &["text"], 0, Some(0))]),
            now,
        ),
        // Two of its four instances in crash-loop: (4 − 2) × 2.
        seen(
            record(
                "looping",
                "0.4.0",
                vec![GroupRecord {
                    crash_looping: 2,
                    ..scaled("t", &["text"], 4, Some(4))
                }],
            ),
            now,
        ),
        // Saturates instead of overflowing.
        seen(
            record(
                "huge",
                "0.4.0",
                vec![GroupRecord {
                    concurrency: u32::MAX,
                    ..scaled("t", &["images"], 1, Some(u32::MAX))
                }],
            ),
            now,
        ),
    ];
    let got = capacities(now, &seen, "me", &qs(&["text", "images"]));
    assert_eq!(
        got,
        vec![
            Capacity {
                queues: qs(&["text"]),
                capacity: 8
            },
            Capacity {
                queues: qs(&["images", "text"]),
                capacity: 6
            },
            Capacity {
                queues: qs(&["text"]),
                capacity: 4
            },
            Capacity {
                queues: qs(&["images"]),
                capacity: u64::from(u32::MAX) * u64::from(u32::MAX)
            },
        ]
    );
    assert!(capacities(now, &seen, "me", &[]).is_empty());
}

#[test]
fn group_share_table() {
    let cap = |queues: &[&str], capacity| Capacity {
        queues: qs(queues),
        capacity,
    };
    let others = vec![
        cap(&["text"], 8),
        cap(&["images", "text"], 6),
        cap(&["images"], 2),
    ];
    let huge = [cap(&["text"], u64::MAX), cap(&["text"], u64::MAX)];
    // (my queues, my capacity, others, share)
    let table: Vec<(&[&str], u64, &[Capacity], f64)> = vec![
        // Alone: all of it.
        (&["text"], 8, &[], 1.0),
        // Nothing anywhere: 1, not NaN.
        (&["text"], 0, &[], 1.0),
        // 8 / (8 + 8 + 6).
        (&["text"], 8, &others, 8.0 / 22.0),
        // 4 / (4 + 6 + 2): the two-queue entry counts once.
        (&["images"], 4, &others, 4.0 / 12.0),
        (&["images", "text"], 4, &others, 4.0 / 20.0),
        // Nobody else on this queue.
        (&["reports"], 4, &others, 1.0),
        // Mine of no capacity beside others: 0.
        (&["text"], 0, &others, 0.0),
        // Saturating sum: no overflow, a share near 0.
        (&["text"], 1, &huge, 1.0 / u64::MAX as f64),
    ];
    for (mine, capacity, others, want) in table {
        let got = group_share(&qs(mine), capacity, others);
        assert!(
            (got - want).abs() < 1e-12,
            "{mine:?} {capacity}: {got} != {want}"
        );
    }
}

#[test]
fn max_instances_is_optional_in_a_record() {
    let mut rec = record("d", "0.4.0", vec![scaled("t", &["text"], 1, Some(4))]);
    let bytes = rec.encode();
    assert!(String::from_utf8_lossy(&bytes).contains("\"max_instances\":4"));
    assert_eq!(
        parse_record("d", &bytes).unwrap().groups[0].max_instances,
        Some(4)
    );
    // An older daemon's record has none, and none is written.
    rec.groups[0].max_instances = None;
    let bytes = rec.encode();
    assert!(!String::from_utf8_lossy(&bytes).contains("max_instances"));
    assert_eq!(
        parse_record("d", &bytes).unwrap().groups[0].max_instances,
        None
    );
}
