"""A hostile Celery task, for the system tests only (issue 12, section 1).

Loaded by a worker group of the packaged service through
`extra_args = ["--include", "attack_tasks"]` (the file is copied next to the
example app). The task `attack.probe` tries, from inside a real prefork pool
child running as the worker user, everything a task that runs arbitrary code
must NOT be able to do to its supervisor, and returns a JSON report: one
entry per attempt with

  name       what was tried
  ran        true once the attempt was actually made (so that an attempt
             that never ran cannot count as a refusal)
  succeeded  true when the attack worked: the test fails on any true
  detail     the errno or what happened

plus `facts` (uid, user, groups, capability sets, cgroup). Never run this
outside a throw-away VM: every attempt that succeeds does real damage.
"""

import ctypes
import errno
import grp
import json
import os
import pwd
import signal
import socket
import stat
import subprocess

from demo.celery_app import app

RUN_DIR = "/run/clearify-workerd"
CGROUP_ROOT = "/sys/fs/cgroup"
PTRACE_ATTACH = 16
PTRACE_DETACH = 17


class Report:
    def __init__(self):
        self.attempts = []

    def attempt(self, name, fn):
        """Run fn(); it returns a detail string when the attack worked and
        raises OSError when it was refused. Anything else is recorded as
        not having run."""
        entry = {"name": name, "ran": False, "succeeded": False, "detail": ""}
        try:
            entry["ran"] = True
            detail = fn()
            entry["succeeded"] = True
            entry["detail"] = f"WORKED: {detail}"
        except OSError as e:
            entry["detail"] = f"refused: {errno.errorcode.get(e.errno, e.errno)} {e.strerror}"
        except Refused as e:
            entry["detail"] = f"refused: {e}"
        except Exception as e:  # a bug in the probe, not a refusal
            entry["ran"] = False
            entry["detail"] = f"probe error: {type(e).__name__}: {e}"
        self.attempts.append(entry)


class Refused(Exception):
    """The attack was refused in a way that is not an OSError (e.g. a
    command's non-zero exit)."""


def own_cgroup():
    with open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    raise RuntimeError("no cgroup v2 entry in /proc/self/cgroup")


def cap_sets():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"):
                out[key] = value.strip()
    return out


def write_file(path, data):
    # O_WRONLY without O_CREAT/O_TRUNC: on cgroupfs the open itself is the
    # permission check; the write is the attack.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)
    return f"wrote {data!r} to {path}"


def open_for_write(path):
    fd = os.open(path, os.O_WRONLY)
    os.close(fd)
    return f"opened {path} for writing"


def libc():
    lib = ctypes.CDLL(None, use_errno=True)
    lib.ptrace.restype = ctypes.c_long
    lib.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    return lib


@app.task(name="attack.probe")
def probe(daemon_pid, other_group):
    r = Report()
    daemon_pid = int(daemon_pid)
    me = os.getuid()
    facts = {
        "pid": os.getpid(),
        "uid": me,
        "euid": os.geteuid(),
        "user": pwd.getpwuid(me).pw_name,
        "groups": sorted(grp.getgrgid(g).gr_name for g in os.getgroups()),
        "gid": grp.getgrgid(os.getgid()).gr_name,
        "caps": cap_sets(),
        "cgroup": own_cgroup(),
        "sockets": [],
        "run_dir_entries": [],
        "cgroup_files_tried": 0,
    }

    # ---- the control sockets ----------------------------------------------
    entries = sorted(os.listdir(RUN_DIR))
    facts["run_dir_entries"] = entries
    socks = [os.path.join(RUN_DIR, e) for e in entries
             if stat.S_ISSOCK(os.lstat(os.path.join(RUN_DIR, e)).st_mode)]
    facts["sockets"] = socks
    for path in socks:
        def connect(path=path):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
            finally:
                s.close()
            return f"connected to {path}"
        r.attempt(f"connect {path}", connect)

        def ctl_stop(path=path):
            p = subprocess.run(
                ["/usr/bin/clearifyctl", "--socket", path, "--request-timeout", "20", "stop", other_group],
                capture_output=True, text=True, timeout=60)
            if p.returncode == 0:
                return f"clearifyctl stop {other_group} via {path}: {p.stdout.strip()[:200]}"
            raise Refused(f"clearifyctl exit {p.returncode}: {(p.stderr or p.stdout).strip()[:200]}")
        r.attempt(f"clearifyctl stop {other_group} via {path}", ctl_stop)

    # ---- the runtime directory --------------------------------------------
    def present(path):
        # An entry an earlier attempt already removed or renamed cannot be
        # refused now: that attempt did not run (ENOENT is no refusal).
        if not os.path.lexists(path):
            raise RuntimeError(f"{path} is gone (an earlier attempt worked)")
        return path
    # Every entry below the runtime directory (the sockets, the daemon's
    # run records in workers/, ...), and a new file in every directory.
    # (A directory the worker may not list is still tried: os.walk lists
    # it as an entry of its parent.)
    tree = []
    for d, dirs, files in os.walk(RUN_DIR):
        tree += [os.path.join(d, x) for x in sorted(dirs) + sorted(files)]
    facts["run_dir_tree"] = tree
    for d in tree:
        if os.path.isdir(d) and not os.path.islink(d):
            def plant(d=d):
                fd = os.open(os.path.join(d, "evil"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                os.close(fd)
                return f"created {d}/evil"
            r.attempt(f"create a file in {d}", plant)
    for path in tree:
        if os.path.isfile(path) and not os.path.islink(path):
            r.attempt(f"open {path} for writing", lambda path=path: open_for_write(present(path)))
    for path in sorted(tree, key=lambda p: -p.count("/")):
        r.attempt(f"chmod 0777 {path}",
                  lambda path=path: (os.chmod(present(path), 0o777), f"chmod {path}")[1])
        r.attempt(f"rename {path}",
                  lambda path=path: (os.rename(present(path), path + ".moved"), f"renamed {path}")[1])
        remove = os.rmdir if os.path.isdir(path) and not os.path.islink(path) else os.unlink
        r.attempt(f"{remove.__name__} {path}",
                  lambda path=path, remove=remove: (remove(present(path)), f"removed {path}")[1])

    def plant_socket():
        path = os.path.join(RUN_DIR, "control.sock.evil")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(path)
        finally:
            s.close()
        return f"bound {path}"
    r.attempt(f"bind a socket in {RUN_DIR}", plant_socket)

    def plant_file():
        fd = os.open(os.path.join(RUN_DIR, "evil"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        return f"created {RUN_DIR}/evil"
    r.attempt(f"create a file in {RUN_DIR}", plant_file)
    r.attempt(f"chmod 0777 {RUN_DIR}", lambda: (os.chmod(RUN_DIR, 0o777), f"chmod {RUN_DIR}")[1])

    # ---- the daemon's process -----------------------------------------------
    def sig(n):
        os.kill(daemon_pid, n)
        return f"kill({daemon_pid}, {n}) returned 0"
    r.attempt(f"kill -0 the daemon ({daemon_pid})", lambda: sig(0))
    r.attempt(f"kill -HUP the daemon ({daemon_pid})", lambda: sig(signal.SIGHUP))

    def forked_kill():
        # A grandchild of the worker (a process the task forks) is no better off.
        p = subprocess.run(["kill", "-0", str(daemon_pid)], capture_output=True, text=True, timeout=30)
        if p.returncode == 0:
            return f"kill -0 {daemon_pid} from a child process succeeded"
        raise Refused(f"kill exit {p.returncode}: {p.stderr.strip()[:200]}")
    r.attempt("kill -0 the daemon from a forked child", forked_kill)

    def ptrace():
        lib = libc()
        if lib.ptrace(PTRACE_ATTACH, daemon_pid, None, None) == 0:
            lib.ptrace(PTRACE_DETACH, daemon_pid, None, None)
            return f"PTRACE_ATTACH {daemon_pid} returned 0"
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    r.attempt(f"PTRACE_ATTACH the daemon ({daemon_pid})", ptrace)

    def environ():
        with open(f"/proc/{daemon_pid}/environ", "rb") as f:
            data = f.read()
        return f"read {len(data)} bytes of the daemon's environment"
    r.attempt(f"read /proc/{daemon_pid}/environ", environ)

    # ---- the delegated cgroup tree ----------------------------------------
    leaf = CGROUP_ROOT + facts["cgroup"]
    unit = os.path.dirname(os.path.dirname(leaf))
    facts["unit_cgroup"] = unit
    if not os.path.isfile(os.path.join(unit, "cgroup.procs")):
        raise RuntimeError(f"{unit} is not a cgroup")
    r.attempt(f"write max to own {leaf}/memory.max",
              lambda: write_file(os.path.join(leaf, "memory.max"), "max"))
    r.attempt(f"write max to own {leaf}/pids.max",
              lambda: write_file(os.path.join(leaf, "pids.max"), "max"))
    r.attempt(f"move self into {unit}/supervisor",
              lambda: write_file(os.path.join(unit, "supervisor", "cgroup.procs"), str(os.getpid())))
    r.attempt(f"move self into {unit}",
              lambda: write_file(os.path.join(unit, "cgroup.procs"), str(os.getpid())))
    r.attempt(f"mkdir in {leaf}", lambda: (os.mkdir(os.path.join(leaf, "evil")), "mkdir")[1])
    r.attempt(f"mkdir in {unit}", lambda: (os.mkdir(os.path.join(unit, "evil")), "mkdir")[1])
    # Every file of the tree, opened for writing (no write: the open is
    # the permission check). One entry, listing the files that opened.
    def every_file():
        opened = []
        tried = 0
        for d, _dirs, files in os.walk(unit):
            for name in files:
                path = os.path.join(d, name)
                tried += 1
                try:
                    open_for_write(path)
                    opened.append(path)
                except OSError:
                    pass
        facts["cgroup_files_tried"] = tried
        if tried == 0:
            raise RuntimeError(f"no file found under {unit}")
        if opened:
            return f"{len(opened)} of {tried} files writable: {opened[:10]}"
        raise Refused(f"none of {tried} files under {unit} opens for writing")
    r.attempt(f"open any file under {unit} for writing", every_file)

    return {"facts": facts, "attempts": r.attempts}
