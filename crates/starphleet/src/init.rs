//! `starphleet init`: the tiny PID 1 inside every service container.
//!
//! A process that is PID 1 of its namespace gets no default signal actions, so
//! most apps would ignore the SIGTERM that starts a graceful stop and would
//! only die at SIGKILL. This init forwards signals to the app, reaps orphans,
//! and exits with the app's status (like tini or `docker run --init`).

use std::ffi::OsString;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Runs `args` as the app and never returns.
pub fn run(args: &[OsString]) -> ! {
    let Some((program, rest)) = args.split_first() else {
        eprintln!("starphleet init: usage: starphleet init COMMAND [ARGS…]");
        std::process::exit(2);
    };
    for sig in [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ] {
        // SAFETY: installing a handler that only calls an async-signal-safe function.
        unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
    }
    let child = match Command::new(program).args(rest).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "starphleet init: cannot start {}: {e}",
                program.to_string_lossy()
            );
            std::process::exit(127);
        }
    };
    let child_pid = child.id() as i32;
    CHILD.store(child_pid, Ordering::SeqCst);
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid on any child; we are PID 1 and inherit orphans.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == child_pid {
            let code = if libc::WIFEXITED(status) {
                let code = libc::WEXITSTATUS(status);
                eprintln!("starphleet init: the app exited with code {code}");
                code
            } else {
                let sig = libc::WTERMSIG(status);
                eprintln!("starphleet init: the app was killed by signal {sig}");
                128 + sig
            };
            std::process::exit(code);
        }
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            std::process::exit(0);
        }
    }
}
