//! Replays inputs through a fuzz target without AFL++:
//!
//!     replay <target> <file or directory>...
//!
//! Each input runs in a child process (this binary with `--one`), so that a
//! panic, an abort, an out-of-memory kill or a hang (over
//! `FUZZ_REPLAY_TIMEOUT` seconds, default 10) is reported with the input's
//! name, its bytes in hex and the panic message, and the next input still
//! runs. Each child's address space is capped at `FUZZ_REPLAY_MEM_MB`
//! (default 2048) MiB, so that an input that makes a target allocate
//! without bound fails fast instead of taking the machine's memory.
//! Exits 1 when any input failed.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

fn usage() -> ExitCode {
    let names: Vec<&str> = clearify_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
    eprintln!(
        "usage: replay <target> <file or directory>...\ntargets: {}",
        names.join(" ")
    );
    ExitCode::from(2)
}

fn target(name: &str) -> Option<fn(&[u8])> {
    clearify_fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
}

fn inputs(paths: &[String]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let p = Path::new(p);
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file())
                .filter(|f| {
                    !f.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with('.') || n == "README.md")
                })
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.to_path_buf());
        }
    }
    Ok(out)
}

fn hex(data: &[u8]) -> String {
    const MAX: usize = 512;
    let mut s: String = data.iter().take(MAX).map(|b| format!("{b:02x}")).collect();
    if data.len() > MAX {
        s.push_str(&format!("… ({} bytes)", data.len()));
    }
    s
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--one") {
        // The child: run one input; a panic exits 101 with its message.
        let (Some(name), Some(file)) = (args.get(1), args.get(2)) else {
            return usage();
        };
        let Some(f) = target(name) else {
            return usage();
        };
        let mem_mb = std::env::var("FUZZ_REPLAY_MEM_MB")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(2048);
        let bytes = mem_mb.saturating_mul(1024 * 1024);
        let limit = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: bytes,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
            eprintln!("setrlimit: {}", std::io::Error::last_os_error());
        }
        let data = match std::fs::read(file) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{file}: {e}");
                return ExitCode::from(2);
            }
        };
        f(&data);
        return ExitCode::SUCCESS;
    }
    let Some((name, paths)) = args.split_first() else {
        return usage();
    };
    if target(name).is_none() || paths.is_empty() {
        return usage();
    }
    let timeout = std::env::var("FUZZ_REPLAY_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(10);
    let files = match inputs(paths) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("replay {name}: {e}");
            return ExitCode::from(2);
        }
    };
    let me = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("replay: {e}");
            return ExitCode::from(2);
        }
    };
    let debug = std::env::var_os("FUZZ_DEBUG").is_some();
    let (mut ok, mut bad) = (0usize, 0usize);
    let started = Instant::now();
    for file in &files {
        let t = Instant::now();
        let mut child = match Command::new(&me)
            .arg("--one")
            .arg(name)
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if debug {
                Stdio::inherit()
            } else {
                Stdio::piped()
            })
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("replay: cannot run {}: {e}", me.display());
                return ExitCode::from(2);
            }
        };
        // Drain stderr meanwhile, so a long panic message cannot block it.
        let reader = child.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                use std::io::Read;
                let mut buf = Vec::new();
                let _ = e.read_to_end(&mut buf);
                String::from_utf8_lossy(&buf).into_owned()
            })
        });
        let failure = loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => break None,
                Ok(Some(status)) => break Some(format!("{status}")),
                Ok(None) if t.elapsed() > Duration::from_secs(timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Some(format!("hang: still running after {timeout} s"));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => break Some(format!("wait: {e}")),
            }
        };
        match failure {
            None => ok += 1,
            Some(why) => {
                bad += 1;
                let stderr = reader.and_then(|r| r.join().ok()).unwrap_or_default();
                let data = std::fs::read(file).unwrap_or_default();
                println!("FAIL {name} {}: {why}", file.display());
                println!("  input (hex): {}", hex(&data));
                for line in stderr.lines().take(20) {
                    let line: String = line.chars().take(400).collect();
                    println!("  | {line}");
                }
            }
        }
    }
    println!(
        "replay {name}: {} inputs, {ok} ok, {bad} failed ({:.1} s)",
        files.len(),
        started.elapsed().as_secs_f64()
    );
    if bad > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
