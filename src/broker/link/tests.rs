use std::time::Duration;

use super::*;

#[test]
fn packs_commands_as_resp_arrays() {
    let mut out = Vec::new();
    pack(&mut out, &[b"PING"]);
    assert_eq!(out, PING);
    out.clear();
    pack(&mut out, &[b"LLEN", b"q\x06\x163"]);
    assert_eq!(out, b"*2\r\n$4\r\nLLEN\r\n$4\r\nq\x06\x163\r\n");
}

#[test]
fn parses_single_line_replies_and_waits_for_the_rest() {
    let buf = b"+PONG\r\n:42\r\n-WRONGTYPE Operation\r\n:-1\r\n+OK";
    let mut at = 0;
    let mut got = Vec::new();
    while let Some((r, used)) = parse_reply(&buf[at..]).unwrap() {
        got.push(format!("{r:?}"));
        at += used;
    }
    assert_eq!(got, ["+PONG", ":42", "-WRONGTYPE Operation", ":-1"]);
    assert_eq!(&buf[at..], b"+OK", "an incomplete line waits for more");
    assert!(parse_reply(b"").unwrap().is_none());
    assert!(parse_reply(b"\r").unwrap().is_none());
}

#[test]
fn other_reply_types_and_garbage_are_errors() {
    for bad in [
        &b"$4\r\nPONG\r\n"[..],
        b"*1\r\n:1\r\n",
        b"*2\r\n:1\r\n:2\r\n",
        b"*2\r\n$2\r\nab\r\n$1\r\n1\r\n",
        b"*3\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n3\r\n",
        b"*2\r\n$1\r\n1\r\n$7\r\n1000000\r\n",
        b":12x\r\n",
        b"HTTP/1.1 400 Bad Request\r\n",
    ] {
        let e = parse_reply(bad).map(|_| ()).unwrap_err();
        assert!(e.message.contains("the broker sent"), "{bad:?}: {e}");
    }
    let endless = vec![b'+'; MAX_REPLY_LINE + 1];
    assert!(parse_reply(&endless).is_err());
}

#[test]
fn parses_the_time_array_and_waits_for_all_of_it() {
    let full = b"*2\r\n$10\r\n1764950400\r\n$6\r\n000123\r\n+OK\r\n";
    let (r, used) = parse_reply(full).unwrap().unwrap();
    assert_eq!(
        r,
        Reply::Time {
            secs: 1_764_950_400,
            micros: 123
        }
    );
    assert_eq!(&full[used..], b"+OK\r\n");
    for cut in 1..used {
        assert!(parse_reply(&full[..cut]).unwrap().is_none(), "cut at {cut}");
    }
    let endless = [b"*2\r\n$10\r\n".as_slice(), &[b'1'; 64]].concat();
    assert!(parse_reply(&endless).is_err());
}

#[test]
fn a_beat_packs_time_zadd_and_set_with_ex() {
    let beat = Beat {
        set: "clearify:fleet".into(),
        member: "pi-1".into(),
        key: "clearify:fleet:pi-1".into(),
        record: b"{}".to_vec(),
        ttl_secs: 86400,
        score: Some(1764950400.5),
    };
    let mut out = Vec::new();
    beat.pack(&mut out);
    let mut expected = Vec::new();
    pack(&mut expected, &[b"TIME"]);
    pack(
        &mut expected,
        &[b"ZADD", b"clearify:fleet", b"1764950400.500000", b"pi-1"],
    );
    pack(
        &mut expected,
        &[b"SET", b"clearify:fleet:pi-1", b"{}", b"EX", b"86400"],
    );
    assert_eq!(out, expected);
    assert_eq!(beat.replies(), 3);
    let first = Beat {
        score: None,
        ..beat
    };
    out.clear();
    first.pack(&mut out);
    assert_eq!(out, b"*1\r\n$4\r\nTIME\r\n");
    assert_eq!(first.replies(), 1);
}

/// A plain link over a socketpair, and the broker's end of it.
fn link_pair() -> (Plain, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    ours.set_read_timeout(Some(RESPONSE_TIMEOUT)).unwrap();
    let plain = Plain {
        stream: PlainStream::Unix(ours),
        buf: Vec::new(),
    };
    (plain, theirs)
}

fn replies(plain: &mut Plain, req: &[u8], count: usize) -> Result<Vec<String>, ProbeError> {
    let mut got = Vec::new();
    plain.round_trip(req, count, "PING", |i, r| {
        got.push(format!("{i}{r:?}"));
        Ok(())
    })?;
    Ok(got)
}

#[test]
fn a_round_trip_reassembles_replies_split_across_reads() {
    let (mut plain, mut broker) = link_pair();
    let server = std::thread::spawn(move || {
        let mut req = [0u8; 64];
        let n = broker.read(&mut req).unwrap();
        for part in [&b"+PO"[..], b"NG\r\n:4", b"2\r\n:0\r", b"\n"] {
            broker.write_all(part).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        req[..n].to_vec()
    });
    let mut req = PING.to_vec();
    pack(&mut req, &[b"LLEN", b"a"]);
    pack(&mut req, &[b"LLEN", b"b"]);
    let got = replies(&mut plain, &req, 3).unwrap();
    assert_eq!(got, ["0+PONG", "1:42", "2:0"]);
    assert_eq!(server.join().unwrap(), req, "the request as sent");
}

#[test]
fn a_round_trip_fails_on_extra_data_a_close_or_silence() {
    // More than the replies asked for.
    let (mut plain, mut broker) = link_pair();
    broker.write_all(b"+PONG\r\n+PONG\r\n").unwrap();
    let e = replies(&mut plain, PING, 1).unwrap_err();
    assert!(e.message.contains("more than the replies"), "{e}");

    // Closed in the middle of a reply.
    let (mut plain, mut broker) = link_pair();
    let server = std::thread::spawn(move || {
        let mut req = [0u8; 64];
        let _ = broker.read(&mut req).unwrap();
        broker.write_all(b"+PO").unwrap();
    });
    let e = replies(&mut plain, PING, 1).unwrap_err();
    assert_eq!(e.message, "the broker closed the connection");
    server.join().unwrap();
    // Closed before the request: the write fails.
    let (mut plain, broker) = link_pair();
    drop(broker);
    let e = replies(&mut plain, PING, 1).unwrap_err();
    assert!(e.message.starts_with("connection lost (PING)"), "{e}");

    // A broker that says nothing: the response timeout.
    let (mut plain, _broker) = link_pair();
    let t = Instant::now();
    let e = replies(&mut plain, PING, 1).unwrap_err();
    assert!(e.message.starts_with("timed out after 3s (PING)"), "{e}");
    assert!(t.elapsed() >= RESPONSE_TIMEOUT, "{:?}", t.elapsed());
}
