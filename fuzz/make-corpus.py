#!/usr/bin/env python3
"""Writes the seed corpus, fuzz/corpus/<target>/, from the shipped examples,
the tests' fixtures and hand-made edge cases. Run from the repository root:
    python3 fuzz/make-corpus.py
The files are checked in; rerun this only to change the seeds."""
import base64, json, os, re, struct, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")


def read(rel):
    with open(os.path.join(ROOT, rel), "rb") as f:
        return f.read()


def write(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    assert len(data) <= 64 * 1024, (target, name)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --------------------------------------------------------------------- config
for rel in ["examples/workers.demo.toml", "packaging/etc/clearify/workers.toml",
            "packaging/examples/workers-cloud-2-4vcpu.toml",
            "packaging/examples/workers-pi4-4gb.toml",
            "packaging/examples/workers-pi4-8gb.toml",
            "tests/fixtures/config/valid.toml", "tests/fixtures/config/invalid.toml"]:
    write("config", "file-" + os.path.basename(rel).replace(".toml", ""), read(rel))

# Accepted as they are in the fuzz environment (fuzz/src/lib.rs: paths
# relative to fuzz/fixture/, which has bin/celery, worker.env, machine-id).
BASE = '[broker]\nurl = "redis://127.0.0.1:6379/0"\n\n[group.a]\nqueues = ["q"]\n'
MIN = '[celery]\napp = "demo.app"\n\n' + BASE
def grp(extra, url='redis://127.0.0.1:6379/0', top=""):
    return f'{top}[celery]\napp = "demo.app"\n\n[broker]\nurl = "{url}"\n\n[group.a]\nqueues = ["q"]\n{extra}\n'

config_cases = {
    "minimal": MIN,
    "empty": "",
    "no-groups": '[broker]\nurl = "redis://127.0.0.1/0"\n',
    # issue 12 §4: these pass --check today and then panic
    "known-url-percent-non-ascii": grp("", url="redis://h:6379/0?x=%aé"),
    "known-stop-timeout-huge": grp('stop_timeout = "300000000000y"'),
    "known-restart-delay-huge": grp('restart_delay = "300000000000y"\nrestart_delay_max = "300000000000y"'),
    "known-instances-u32-max": grp("instances = 4294967295"),
    "instances-zero": grp("instances = 0"),
    "instances-big": grp("instances = 1025"),
    "concurrency-big": grp("concurrency = 4294967295"),
    # issue 15: autoscale, valid and at every bound
    "autoscale": grp('instances = 2\nautoscale = { min = 1, max = 4, backlog_per_instance = 20, scale_down_after = "2m", memory_headroom = "300M" }'),
    "autoscale-zero": grp("autoscale = { min = 0, max = 1024 }"),
    "autoscale-bad": grp('instances = 9\nautoscale = { min = 5, max = 2, backlog_per_instance = 0, scale_down_after = "0s", memory_headroom = "max", maxx = 1 }'),
    "autoscale-huge": grp('autoscale = { min = 4294967295, max = 18446744073709551615, backlog_per_instance = -1, scale_down_after = "300000000000y", memory_headroom = "16E" }'),
    "durations-zero": grp('stop_timeout = "0s"\nrestart_delay = "0s"\nrestart_delay_max = "0s"\nstable_after = "0s"'),
    "durations-off": grp('heartbeat_timeout = "off"\nstall_timeout = "off"'),
    "duration-ns": grp('restart_delay = "1ns"\nrestart_delay_max = "1ns"'),
    "duration-year": grp('stop_timeout = "1y"\nstable_after = "1y"'),
    "duration-bad": grp('stop_timeout = "1 fortnight"'),
    "sizes": grp('memory_max = "18446744073709551615"\nmemory_high = "16E"\npids_max = 18446744073709551615'),
    "size-max-word": grp('memory_max = "max"\nmemory_swap_max = "0"'),
    "cpu-max-huge": grp("cpu_max = 1e308"),
    "cpu-max-negative": grp("cpu_max = -1.0"),
    "cpu-max-nan": grp("cpu_max = nan"),
    "cpu-max-inf": grp("cpu_max = inf"),
    "weights": grp("cpu_weight = 0\nio_weight = 100000"),
    "group-reserved": MIN.replace("[group.a]", "[group.supervisor]"),
    "group-long": MIN.replace("[group.a]", "[group." + "a" * 300 + "]"),
    "group-unicode": MIN.replace("[group.a]", '[group."é"]'),
    "group-empty-name": MIN.replace("[group.a]", '[group.""]'),
    "queue-nul": MIN.replace('["q"]', '["a\\u0000b"]'),
    "queue-control": MIN.replace('["q"]', '["a\\u001b[2Jb"]'),
    "queue-duplicate": MIN + '\n[group.b]\nqueues = ["q"]\n',
    "queue-empty": MIN.replace('["q"]', '[""]'),
    "group-id-clash": '[celery]\napp = "x"\n[broker]\nurl = "redis://127.0.0.1/0"\n[group.a]\nqueues=["x"]\ninstances=2\n[group.a-1]\nqueues=["y"]\n',
    "many-groups": '[celery]\napp = "x"\n[broker]\nurl = "redis://127.0.0.1/0"\n' + "".join(f'[group.g{i}]\nqueues = ["q{i}"]\n' for i in range(200)),
    "env-values": grp('env = { A = "x\\u0000y", B = "\\r\\n", C = "", "D E" = "1", PATH = "/x" }'),
    "extra-args": grp('extra_args = ["--detach", "\\u0000", "-Q", "--logfile=x", "-n"]'),
    "celery-section": '[celery]\napp = "demo.celery_app"\ncommand = "bin/celery"\nworkdir = "."\nenv_file = "worker.env"\nuser = "nobody"\nloglevel = "debug"\nextra_args = ["--without-gossip"]\n' + BASE,
    "celery-no-app": BASE,
    "celery-app-control": '[celery]\napp = "a\\u0007b"\n' + BASE,
    "celery-command-list": '[celery]\napp = "x"\ncommand = ["bin/celery", "-X"]\n' + BASE,
    "daemon-section": '[daemon]\nsocket = "/run/x.sock"\ndevice_id = "dev-1"\nadmin_group = "root"\nrequire_limits = true\n' + grp('memory_max = "1G"'),
    "daemon-socket-long": '[daemon]\nsocket = "/' + "s" * 200 + '"\n' + MIN,
    "device-id-odd": '[daemon]\ndevice_id = "a@b c"\n' + MIN,
    "broker-url-env": '[celery]\napp = "x"\n[broker]\nurl_env = "BROKER_URL"\n[group.a]\nqueues=["q"]\n',
    "broker-url-env-missing": '[celery]\napp = "x"\n[broker]\nurl_env = "NOPE"\n[group.a]\nqueues=["q"]\n',
    "broker-options": '[celery]\napp = "x"\n[broker]\nurl = "rediss://:p@127.0.0.1:6380/1?ssl_cert_reqs=none"\nwait_timeout = "5s"\non_timeout = "start"\ncheck_interval = "1s"\npriority_steps = [0, 9]\nkey_prefix = "x"\n[group.a]\nqueues=["q"]\n',
    "priority-steps-bad": '[celery]\napp = "x"\n[broker]\nurl = "redis://h/0"\npriority_steps = [300, -1]\n[group.a]\nqueues=["q"]\n',
    "defaults": '[defaults]\nconcurrency = 3\ninstances = 2\nstop_timeout = "10s"\nrestart_delay = "1s"\nrestart_delay_max = "2s"\nstable_after = "5s"\n' + MIN,
    "unknown-keys": MIN + 'stop_timout = "1s"\n[daemn]\n',
    "wrong-types": '[celery]\napp = "x"\n[broker]\nurl = 5\n[group.a]\nqueues = "q"\ninstances = "2"\n',
    "deep-array": "a = " + "[" * 200 + "]" * 200 + "\n",
    "bad-toml": "[group.a\nqueues = [\n",
    "int-overflow": grp("instances = 99999999999999999999"),
    "inline-groups": '[celery]\napp = "x"\n[broker]\nurl = "redis://h/0"\ngroup = { a = { queues = ["q"] } }\n',
    "crlf": MIN.replace("\n", "\r\n"),
    "bom": "\ufeff" + MIN,
}
for name, text in config_cases.items():
    write("config", name, text)
write("config", "not-utf8", MIN.encode() + b"# \xff\xfe\n")

# ------------------------------------------------------------------- env_file
write("env_file", "fixture-worker-env", read("tests/fixtures/config/worker.env"))
env_cases = {
    "simple": "A=1\nB=2\n",
    "export": "export A=1\nexport  B = 2\n",
    "quotes": "A='single'\nB=\"double\"\nC=\"with \\\"escape\\\"\"\nD='it''s'\n",
    "known-secret-quote": "REDIS_PASSWORD='Hunter2'Secret!'\n",
    "known-no-equals": "OTHER_URL redis://:pw@h/0\n",
    "unbalanced-double": 'A="open\n',
    "unbalanced-single": "A='open\n",
    "trailing-comment": 'A="x"   # comment\nB=y # not a comment?\n',
    "trailing-garbage": 'A="x"y\n',
    "empty-value": "A=\nB=''\nC=\"\"\n",
    "no-key": "=value\n",
    "bad-key": "1A=x\nA-B=x\nA.B=x\né=x\n",
    "spaces": "  A = 1  \n\t B\t=\t2\n",
    "comments-blank": "# c\n\n   \n#A=1\n",
    "crlf": "A=1\r\nB='2'\r\n",
    "bom": "\ufeffA=1\n",
    "nul": "A=x\x00y\n",
    "control": "A=\x1b[31mred\x07\n",
    "unicode": "A=héllo ☃\n",
    "backslash": 'A="a\\nb\\tc\\\\"\nB=a\\ b\n',
    "multiline-quote": 'A="line1\nline2"\n',
    "dollar": "A=$HOME\nB=${PATH}\nC='$x'\n",
    "export-only": "export\nexport A\n",
    "duplicate": "A=1\nA=2\n",
    "long-line": "A=" + "x" * 5000 + "\n",
    "cr-only": "A=1\rB=2\r",
    "no-final-newline": "A=1",
    "equals-in-value": "URL=redis://:p=w@h/0?a=b\n",
}
for name, text in env_cases.items():
    write("env_file", name, text)

# ----------------------------------------------------------------- broker_url
urls = [
    "redis://127.0.0.1:6379/0", "redis://:secret@127.0.0.1:6379/0", "redis://user:pw@h/15",
    "redis://h", "redis://h:/0", "redis://h:99999/0", "redis://h:6379/-1", "redis://h:6379/x",
    "redis://[::1]:6379/0", "redis://[::1/0", "redis://:p@ss@h:1/0", "rediss://h:6380/0",
    "rediss://h/0?ssl_cert_reqs=none", "rediss://h/0?ssl_cert_reqs=CERT_NONE#insecure",
    "rediss://h/0?ssl_ca_certs=/nonexistent/ca.pem",
    "rediss://h/0?ssl_certfile=/nonexistent/c.pem",
    "rediss://h/0?ssl_certfile=/nonexistent/c&ssl_keyfile=/nonexistent/k",
    "unix:///run/redis/redis.sock", "unix:///run/redis/redis.sock?db=3", "unix://relative",
    "redis+unix:///s.sock?db=x", "redis+socket:///run/redis.sock?virtual_host=2",
    "socket:///run/redis.sock?virtual_host=/4", "socket:///s?db=abc",
    "valkey://h/0", "valkeys://h/0", "amqp://guest@h//", "http://h/", "://h", "redis:/h",
    "not a url", "", "redis://h/0?db=5", "redis://h/0?db=", "redis://h/0?password=secret",
    "redis://h:6379/0?x=%aé", "redis://h/0?x=%", "redis://h/0?x=%%", "redis://h/0?x=%é",
    "redis://h/0?x=%a", "redis://h/0?%zz=%41%42", "redis://h/0?a+b=c+d", "redis://h/0#frag",
    "redis://h/0?#?", "REDIS://H/0", "redis://h\x00/0", "redis://h/0?virtual_host=\u00e9",
    "redis://" + "a" * 300 + "/0",
    "redis+socket://:pw@/s.sock?virtual_host=1", "unix:///s.sock?password=secret",
    "redis://h/0?protocol=4", "redis://h/0?password=abcd&y=@z", "redis://:pa?ss@h/0",
    "redis://0.0.0.0/0",
]
for i, u in enumerate(urls):
    safe = re.sub(r"[^A-Za-z0-9]+", "-", u)[:40].strip("-") or "empty"
    write("broker_url", f"{i:02d}-{safe}", u)

# -------------------------------------------------------------------- control
def frame(obj_or_bytes):
    body = obj_or_bytes if isinstance(obj_or_bytes, bytes) else json.dumps(obj_or_bytes).encode()
    return struct.pack(">I", len(body)) + body

requests = {
    "status": {"type": "status", "targets": []},
    "status-targets": {"type": "status", "targets": ["text", "text-1", "é", ""]},
    "start": {"type": "start", "targets": ["a"]},
    "stop": {"type": "stop", "targets": ["a", "b-2"]},
    "restart": {"type": "restart", "targets": ["a"], "rolling": True},
    "reload": {"type": "reload"},
    "logs": {"type": "logs", "target": None, "lines": 10},
    "logs-since": {"type": "logs", "target": "a-1", "lines": 18446744073709551615, "since": 1795893808.944395},
    "logs-since-tiny": {"type": "logs", "target": "a", "lines": 0, "since": 5e-324},
    "test": {"type": "test"},
    "version": {"type": "version"},
}
for name, req in requests.items():
    env = {"version": 1, "request": req}
    write("control", "frame-" + name, frame(env))
    write("control", "body-" + name, json.dumps(env))
write("control", "frame-version-2", frame({"version": 2, "request": {"type": "nope"}}))
write("control", "frame-version-huge", frame(b'{"version": 99999999999, "request": {}}'))
write("control", "frames-two", frame({"version": 1, "request": {"type": "version"}}) + frame({"version": 1, "request": {"type": "reload"}}))
write("control", "frames-bad-then-good", frame(b"{nope") + frame({"version": 1, "request": {"type": "test"}}))
write("control", "frame-too-large", struct.pack(">I", 1024 * 1024 + 1) + b"{}")
write("control", "frame-max-prefix", b"\xff\xff\xff\xff")
write("control", "frame-truncated", struct.pack(">I", 100) + b'{"version": 1')
write("control", "frame-empty", struct.pack(">I", 0))
write("control", "header-short", b"\x00\x00")
write("control", "body-deep", "[" * 300 + "]" * 300)
write("control", "body-extra-fields", '{"version":1,"request":{"type":"status","targets":[],"x":1},"y":[1,2]}')
write("control", "body-duplicate", '{"version":1,"version":1,"request":{"type":"reload"}}')
write("control", "body-unicode-escape", '{"version":1,"request":{"type":"stop","targets":["\\ud800","\\u0000"]}}')
responses = {
    "resp-done": {"type": "done", "messages": ["stopped a-1", "\x1b[2J"]},
    "resp-error": {"type": "error", "kind": "permission_denied", "message": "no"},
    "resp-version": {"type": "version", "version": "0.1.0", "protocol": 1},
    "resp-logs": {"type": "logs", "lines": [{"ts": 1.5, "instance": "a-1", "stream": "stderr", "text": "hi"}]},
    "resp-reloaded": {"type": "reloaded", "applied": True, "added": ["b"], "removed": [], "changed": [], "unchanged": ["a"], "warnings": [], "errors": []},
}
for name, resp in responses.items():
    write("control", name, json.dumps(resp))
    write("control", "frame-" + name, frame(resp))

# --------------------------------------------------------------------- framer
# Byte 0: chunk size (bit 7: the daemon's 48 KiB, else 1 + b % 64);
# byte 1: the seed for the read sizes and the clock; then the stream.
src = read("src/logs/grouper.rs").decode()
m = re.search(r'const CELERY_STDERR: &str = "\\\n(.*?)";\n', src, re.S)
celery = m.group(1).replace('\\"', '"').replace("\\\\", "\\").encode()
streams = {
    "celery-stderr": celery,
    "traceback": b"Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nValueError: boom\n",
    "chained": b"Traceback (most recent call last):\n  x\nKeyError: 1\n\nDuring handling of the above exception, another exception occurred:\n\nTraceback (most recent call last):\n  y\nValueError: 2\n",
    "warning": b"/app/x.py:3: DeprecationWarning: old\n  old()\nnext\n",
    "crlf": b"a\r\nb\r\n\r\nc\r",
    "lone-cr": b"a\rb\r\r\n\r",
    "trailing-cr": b"abc\r",
    "blank-lines": b"\n\n\n  \n\t\n",
    "ansi": b"\x1b[31m[2024-05-01 12:00:00,000: ERROR/MainProcess] red\x1b[0m\n\x1b[1;33mx\n\x1b[",
    "binary": bytes(range(256)),
    "no-newline": b"no newline at the end",
    "long-line": b"x" * 300 + b"\ny\n",
    "header-odd": b"[1: /]\n[1: A/]\n[1: A/b]\n[9: \xff/x]\n[",
    "utf8": "héllo ☃ ✓\nñ\n".encode(),
}
for i, (name, s) in enumerate(streams.items()):
    for head in (0x07, 0x3F, 0x80 | i):
        write("framer", f"{name}-{head:02x}", bytes([head, (i * 37) & 0xFF]) + s)

# ------------------------------------------------------------------ heartbeat
src = read("src/broker/heartbeat.rs").decode()
for const in ("REAL_HEARTBEAT", "REAL_ONLINE"):
    m = re.search(r'const %s: &str = r#"(.*?)"#;' % const, src)
    write("heartbeat", const.lower().replace("_", "-"), m.group(1))
event = {"hostname": "a@b", "utcoffset": 0, "pid": 7, "clock": 2, "freq": 2.0, "active": 1,
         "processed": 40, "timestamp": 1795893808.9, "type": "worker-heartbeat"}
b64 = base64.b64encode(json.dumps(event).encode()).decode()
hb_cases = {
    "plain-object": {"body": event, "properties": {}},
    "plain-string": {"body": json.dumps(event), "properties": {}},
    "base64": {"body": b64, "properties": {"body_encoding": "base64"}},
    "base64-nopad": {"body": b64.rstrip("="), "properties": {"body_encoding": "base64"}},
    "base64-urlsafe": {"body": base64.urlsafe_b64encode(json.dumps(event).encode()).decode(), "properties": {"body_encoding": "base64"}},
    "base64-whitespace": {"body": " \n".join(b64[i:i + 10] for i in range(0, len(b64), 10)), "properties": {"body_encoding": "base64"}},
    "base64-bad": {"body": "!!!", "properties": {"body_encoding": "base64"}},
    "base64-pad-middle": {"body": "ab=cd", "properties": {"body_encoding": "base64"}},
    "numbers-odd": {"body": dict(event, pid=-1, active=1e300, processed=-5.5, freq=-2, timestamp=1e308), "properties": {}},
    "numbers-huge": {"body": dict(event, pid=2**64, active=2**64 - 1), "properties": {}},
    "numbers-strings": {"body": dict(event, pid="7", freq="2"), "properties": {}},
    "no-type": {"body": {"hostname": "h"}, "properties": {}},
    "no-hostname": {"body": {"type": "worker-heartbeat"}, "properties": {}},
    "hostname-control": {"body": dict(event, hostname="\x1b]0;pwn\x07"), "properties": {}},
    "other-event": {"body": dict(event, type="worker-offline"), "properties": {}},
    "body-array": {"body": [1, 2], "properties": {}},
    "body-null": {"body": None},
    "properties-odd": {"body": b64, "properties": {"body_encoding": 5}},
}
for name, obj in hb_cases.items():
    write("heartbeat", name, json.dumps(obj))
write("heartbeat", "not-json", "not json")
write("heartbeat", "deep", "[" * 200 + "]" * 200)
write("heartbeat", "empty", "")
write("heartbeat", "float-overflow", '{"body": {"hostname": "h", "freq": 1e400}}')
write("heartbeat", "raw-base64", b64)
write("heartbeat", "binary", bytes(range(256)))
print("corpus written to", OUT)
