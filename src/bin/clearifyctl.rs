//! clearifyctl: inspect and control clearify-workerd over its control socket.
//! Everything but argument parsing lives in [`clearify_workerd::cli`].

use std::process::ExitCode;

use clap::Parser;

use clearify_workerd::cli::{self, Args};

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`clearifyctl logs | head`), like other
    // Unix tools, instead of panicking on the failed write.
    // SAFETY: setting a signal disposition to SIG_DFL before any threads.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let code = cli::run(Args::parse());
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
