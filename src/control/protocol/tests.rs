//! Unit tests of the protocol: wire forms, frames and bounds.

use super::*;

#[test]
fn request_json_is_tagged_and_round_trips() {
    let env = Envelope::new(Request::Restart {
        targets: vec!["text".into()],
        rolling: true,
    });
    let json = serde_json::to_string(&env).unwrap();
    assert_eq!(
        json,
        r#"{"version":2,"request":{"type":"restart","targets":["text"],"rolling":true}}"#
    );
    let back: Envelope = serde_json::from_str(&json).unwrap();
    assert_eq!(back, env);
}

/// The wire form of every request that names targets: clients of
/// other versions and scripts speak it, so it must not move.
#[test]
fn target_requests_keep_their_wire_form() {
    let t = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let cases = [
        (
            Request::Status { targets: t(&[]) },
            r#"{"version":2,"request":{"type":"status","targets":[]}}"#,
        ),
        (
            Request::Status {
                targets: t(&["text", "webhook-1"]),
            },
            r#"{"version":2,"request":{"type":"status","targets":["text","webhook-1"]}}"#,
        ),
        (
            Request::Start {
                targets: t(&["all"]),
            },
            r#"{"version":2,"request":{"type":"start","targets":["all"]}}"#,
        ),
        (
            Request::Stop {
                targets: t(&["text-1", "text"]),
            },
            r#"{"version":2,"request":{"type":"stop","targets":["text-1","text"]}}"#,
        ),
        (
            Request::Restart {
                targets: t(&["text"]),
                rolling: false,
            },
            r#"{"version":2,"request":{"type":"restart","targets":["text"],"rolling":false}}"#,
        ),
        (
            Request::Logs {
                target: Some("all".into()),
                lines: 50,
                since: None,
            },
            r#"{"version":2,"request":{"type":"logs","target":"all","lines":50}}"#,
        ),
        (
            Request::Logs {
                target: None,
                lines: 5,
                since: Some(1.5),
            },
            r#"{"version":2,"request":{"type":"logs","target":null,"lines":5,"since":1.5}}"#,
        ),
    ];
    for (req, wire) in cases {
        let env = Envelope::new(req);
        assert_eq!(serde_json::to_string(&env).unwrap(), wire);
        let back: Envelope = serde_json::from_str(wire).unwrap();
        assert_eq!(back, env, "{wire}");
    }
}

#[test]
fn only_changing_requests_are_mutating() {
    assert!(Request::Reload.is_mutating());
    assert!(Request::Stop { targets: vec![] }.is_mutating());
    assert!(!Request::Status { targets: vec![] }.is_mutating());
    assert!(!Request::Test.is_mutating());
    assert!(
        !Request::Logs {
            target: None,
            lines: 10,
            since: None,
        }
        .is_mutating()
    );
}

#[test]
fn frames_round_trip_and_oversized_prefix_is_refused_before_reading() {
    let env = Envelope::new(Request::Logs {
        target: Some("text-1".into()),
        lines: 5,
        since: Some(1.5),
    });
    let buf = encode_frame(&env).unwrap();
    assert_eq!(&buf[..4], &((buf.len() - 4) as u32).to_be_bytes());
    let back: Envelope = read_frame_blocking(&mut &buf[..]).unwrap().unwrap();
    assert_eq!(back, env);

    // A prefix of MAX_FRAME + 1 with no body: refused as too large, not
    // "truncated", proving the body was never awaited.
    let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
    match read_frame_blocking::<_, Envelope>(&mut &huge[..]) {
        Err(FrameError::TooLarge(n)) => assert_eq!(n, MAX_FRAME + 1),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // Clean EOF and a truncated frame.
    assert!(
        read_frame_blocking::<_, Envelope>(&mut &[][..])
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        read_frame_blocking::<_, Envelope>(&mut &buf[..buf.len() - 1]),
        Err(FrameError::Truncated)
    ));
}

fn line(n: usize, text: &str) -> LogLine {
    LogLine {
        ts: n as f64,
        instance: "text-1".into(),
        stream: "stdout".into(),
        text: text.into(),
    }
}

#[test]
fn log_frames_split_big_answers_keep_order_and_stay_small() {
    // Small: one final frame.
    let small: Vec<LogLine> = (0..3).map(|n| line(n, "hi")).collect();
    assert_eq!(
        log_frames(small.clone()),
        vec![Response::Logs { lines: small }]
    );
    assert_eq!(log_frames(vec![]), vec![Response::Logs { lines: vec![] }]);
    // 1000 lines of 4 KiB control bytes (6 JSON bytes each): ~24 MiB.
    let ctl = "\u{1}".repeat(4096);
    let big: Vec<LogLine> = (0..1000).map(|n| line(n, &ctl)).collect();
    let frames = log_frames(big.clone());
    assert!(frames.len() > 20, "{}", frames.len());
    let mut back = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let bytes = encode_frame(f).unwrap().len();
        assert!(bytes <= LOG_CHUNK + 1024, "frame {i}: {bytes} bytes");
        match f {
            Response::LogsPart { lines } if i + 1 < frames.len() => back.extend_from_slice(lines),
            Response::Logs { lines } if i + 1 == frames.len() => back.extend_from_slice(lines),
            other => panic!("frame {i}: {other:?}"),
        }
    }
    assert_eq!(back, big);
    // One line too big for a frame is cut, not dropped.
    let huge = vec![line(1, &"\u{7}".repeat(MAX_FRAME))];
    let frames = log_frames(huge);
    assert_eq!(frames.len(), 1);
    let Response::Logs { lines } = &frames[0] else {
        panic!()
    };
    assert!(lines[0].text.ends_with(" [cut]"));
    assert!(encode_frame(&frames[0]).unwrap().len() <= LOG_CHUNK);
}

#[test]
fn target_lists_are_capped_while_parsing() {
    let names = |n: usize| {
        (0..n)
            .map(|i| format!("\"t{i}\""))
            .collect::<Vec<_>>()
            .join(",")
    };
    let req = |n: usize| {
        format!(
            r#"{{"version":2,"request":{{"type":"stop","targets":[{}]}}}}"#,
            names(n)
        )
    };
    let ok: Envelope = serde_json::from_str(&req(MAX_TARGETS)).unwrap();
    assert!(matches!(ok.request, Request::Stop { targets } if targets.len() == MAX_TARGETS));
    let err = serde_json::from_str::<Envelope>(&req(MAX_TARGETS + 1)).unwrap_err();
    assert!(err.to_string().contains("too many targets"), "{err}");
    let long = format!(
        r#"{{"version":2,"request":{{"type":"logs","target":"{}","lines":1}}}}"#,
        "x".repeat(MAX_TARGET_LEN + 1)
    );
    let err = serde_json::from_str::<Envelope>(&long).unwrap_err();
    assert!(err.to_string().contains("at most 128"), "{err}");
}

#[test]
fn encoding_stops_at_the_frame_limit() {
    let big = Response::Done {
        messages: vec!["x".repeat(1024); 2048],
    };
    assert!(matches!(
        encode_frame(&big),
        Err(FrameError::EncodeTooLarge)
    ));
    let fits = Response::Done {
        messages: vec!["x".repeat(1024); 1000],
    };
    let buf = encode_frame(&fits).unwrap();
    assert!(buf.len() <= MAX_FRAME + 4);
    assert_eq!(
        read_frame_blocking::<_, Response>(&mut &buf[..])
            .unwrap()
            .unwrap(),
        fits
    );
}

#[test]
fn logs_since_is_optional_on_the_wire() {
    let env: Envelope =
        serde_json::from_str(r#"{"version":1,"request":{"type":"logs","target":null,"lines":3}}"#)
            .unwrap();
    assert_eq!(
        env.request,
        Request::Logs {
            target: None,
            lines: 3,
            since: None
        }
    );
}
