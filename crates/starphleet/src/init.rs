//! `starphleet init`: the tiny PID 1 inside every service container.
//!
//! A process that is PID 1 of its namespace gets no default signal actions, so most apps
//! would ignore the SIGTERM that starts a graceful stop and would only die at SIGKILL. This
//! init forwards signals to the app (also those that arrive while the app is being started),
//! reaps orphans, and exits with the app's status (like tini or `docker run --init`).
//!
//! It also carries the app's output: the app writes into pipes, init copies them to the log
//! files. When the disk is full the lines are dropped and counted instead of failing the app's
//! writes (an app whose logging thread dies on ENOSPC would otherwise break), and the count
//! is reported once writing works again.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};

static CHILD: AtomicI32 = AtomicI32::new(0);

/// How long output still in the pipes may take to be copied once the app exited.
const DRAIN_OUTPUT: std::time::Duration = std::time::Duration::from_millis(500);

/// The signals forwarded to the app.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

fn forwarded_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in FORWARDED {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Runs `args` as the app and never returns.
pub fn run(args: &[OsString]) -> ! {
    let Some((program, rest)) = args.split_first() else {
        eprintln!("starphleet init: usage: starphleet init COMMAND [ARGS…]");
        std::process::exit(2);
    };
    // Signals arriving before the app's pid is known wait, blocked, and are forwarded then.
    let set = forwarded_set();
    // SAFETY: changes this thread's signal mask; `set` is a valid set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    for sig in FORWARDED {
        // SAFETY: installing a handler that only calls an async-signal-safe function.
        unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
    }
    let mut cmd = Command::new(program);
    cmd.args(rest).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The app starts with default signal handling and nothing blocked.
            for sig in FORWARDED {
                libc::signal(sig, libc::SIG_DFL);
            }
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
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
    let (done_tx, done) = std::sync::mpsc::channel::<()>();
    let mut copiers = 0;
    if let Some(out) = child.stdout.take() {
        let done_tx = done_tx.clone();
        copiers += 1;
        std::thread::spawn(move || {
            relay(out, std::io::stdout(), "stdout");
            let _ = done_tx.send(());
        });
    }
    if let Some(err) = child.stderr.take() {
        copiers += 1;
        std::thread::spawn(move || {
            relay(err, std::io::stderr(), "stderr");
            let _ = done_tx.send(());
        });
    }
    // SAFETY: as above; pending signals are delivered (and forwarded) now.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid on any child; we are PID 1 and inherit orphans.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == child_pid {
            // The app is gone: copy what it left in the pipes (a process it left behind may
            // hold them open, so not for long), then report.
            let grace = std::time::Instant::now() + DRAIN_OUTPUT;
            for _ in 0..copiers {
                let left = grace.saturating_duration_since(std::time::Instant::now());
                if done.recv_timeout(left).is_err() {
                    break;
                }
            }
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

/// Copies the app's output to ours. A write that fails (disk full) drops that output and
/// counts it; the app never blocks on or sees our failure. The count is written out as soon
/// as a write works again.
fn relay(mut from: impl Read, mut to: impl Write, name: &str) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut dropped: u64 = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if dropped > 0 {
            let note = format!(
                "starphleet init: {dropped} bytes of the app's {name} were dropped: the log could not be written (disk full?)\n"
            );
            if to.write_all(note.as_bytes()).is_err() {
                dropped += n as u64;
                continue;
            }
            dropped = 0;
        }
        if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
            dropped += n as u64;
        }
    }
}
