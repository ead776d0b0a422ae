//! One running exec program: `sh -c` in a process group of its own, the three threads that
//! serve its pipes, and the registry of live process groups that lets the `marsc` binary kill
//! every program on any exit path (a signal included).
//!
//! A program's process group is signalled only while its leader (the `sh`, or the program it
//! `exec`ed) is not yet reaped: exits are observed with `waitid(WNOWAIT)`, which leaves the
//! zombie in place, so the group id cannot have been reused by an unrelated process when the
//! group is killed. The leader is reaped right after its group is killed.

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

/// How many lines of a program's stderr an error message quotes.
const STDERR_TAIL_LINES: usize = 8;

/// The longest response line a program may write (64 MiB); a longer one fails the batch and
/// the program is restarted. Bounds the memory a program can make `marsc` use.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Response lines read ahead of the node: the reader blocks (and so does the program's
/// stdout) beyond this many, so a program printing endlessly cannot grow `marsc`.
const READ_AHEAD_LINES: usize = 8;

/// Process groups of the exec programs alive in this process (their leaders not yet reaped).
static LIVE: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn live() -> std::sync::MutexGuard<'static, BTreeSet<i32>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Kill (SIGKILL) the process group of every exec program still running in this process.
/// For the `marsc` binary's exit paths (an error, a signal); safe to call from any thread, and
/// more than once. Programs are not reaped: the process is about to exit.
pub fn kill_all() -> usize {
    let groups = live();
    for &pgid in groups.iter() {
        // SAFETY: kill(2) on a process group whose leader this process has not reaped.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
    groups.len()
}

/// How many exec programs are running now (for tests and diagnostics).
pub fn running() -> usize {
    live().len()
}

/// How a program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(i32),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Code(c) => write!(f, "exit status {c}"),
            Ended::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// One line the program wrote on stdout.
pub struct Line {
    pub text: String,
    /// How many requests had begun to be written when the line was complete: a line with a
    /// smaller count than a request's cannot answer it.
    pub after_requests: u64,
}

/// Why reading the program's stdout stopped early.
#[derive(Debug)]
pub enum ReadError {
    Io(std::io::Error),
    TooLong,
}

/// A running program and the threads that serve its pipes.
pub struct Process {
    child: Child,
    pid: i32,
    requests: Sender<String>,
    /// Requests handed to the writer thread, and those it has begun to write.
    queued: u64,
    pub responses: Receiver<Result<Line, ReadError>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    stderr_done: Receiver<()>,
    threads: Vec<JoinHandle<()>>,
    /// Set once the leader has been reaped; its group must not be signalled after that.
    reaped: bool,
    /// Whether the program has written a response line (before it, other lines are its
    /// start-up chatter).
    pub answered: bool,
}

/// The command line given to `sh -c`: a simple command runs as `exec COMMAND`, so that the
/// program replaces the shell and no shell holds its stdout open after the program closes it.
/// Compound commands (`;`, `&`, `|`, newlines, subshells, keywords, builtins) keep the shell.
pub fn shell_form(command: &str) -> String {
    if is_simple(command) {
        format!("exec {command}")
    } else {
        command.to_string()
    }
}

fn is_simple(command: &str) -> bool {
    let trimmed = command.trim_start();
    let first = trimmed.split_whitespace().next().unwrap_or("");
    const SHELL_WORDS: &[&str] = &[
        "", "!", "{", "}", "(", "case", "for", "if", "while", "until", "function", "exec", "read",
        "cd", "eval", "set", "trap", "wait", "exit", "return", "export", ".", "source", ":",
        "ulimit", "umask", "command", "alias", "unset", "shift", "break", "continue", "local",
        "readonly", "times",
    ];
    if SHELL_WORDS.contains(&first) || first.contains('=') || first.starts_with('(') {
        return false;
    }
    // Outside quotes, a command separator or grouping makes it compound.
    let (mut single, mut double, mut escaped) = (false, false, false);
    for c in trimmed.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if !single => escaped = true,
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            ';' | '&' | '|' | '\n' | '(' | ')' | '`' if !single && !double => return false,
            _ => {}
        }
    }
    !single && !double && !escaped
}

impl Process {
    pub fn start(
        command: &str,
        dir: &Path,
        node_id: &str,
        replica: u32,
    ) -> std::io::Result<Process> {
        // The registry is held while spawning, so that `kill_all` on another thread either
        // sees this program or runs before it exists.
        let mut groups = live();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(shell_form(command))
            .current_dir(dir)
            .env("MARS_NODE_ID", node_id)
            .env("MARS_REPLICA", replica.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a kill reaches the program and its children.
            .process_group(0)
            .spawn()?;
        let pid = i32::try_from(child.id()).map_err(std::io::Error::other)?;
        groups.insert(pid);
        drop(groups);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(std::io::Error::other("the program's pipes are missing"));
        };
        let label = format!("{node_id}#{replica}");

        let started = Arc::new(AtomicU64::new(0));
        let (requests, request_rx) = crossbeam_channel::unbounded::<String>();
        let writer = {
            let started = Arc::clone(&started);
            std::thread::Builder::new()
                .name(format!("exec-w {label}"))
                .spawn(move || write_requests(stdin, request_rx, &started))?
        };

        let (response_tx, responses) = crossbeam_channel::bounded(READ_AHEAD_LINES);
        let reader = {
            let started = Arc::clone(&started);
            let label = label.clone();
            std::thread::Builder::new()
                .name(format!("exec-r {label}"))
                .spawn(move || read_lines(stdout, &response_tx, &started, &label))?
        };

        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let (done_tx, stderr_done) = crossbeam_channel::bounded(1);
        let tail = Arc::clone(&stderr_tail);
        let drainer = std::thread::Builder::new()
            .name(format!("exec-e {label}"))
            .spawn(move || {
                drain_stderr(stderr, &tail, &label);
                let _ = done_tx.send(());
            })?;

        Ok(Process {
            child,
            pid,
            requests,
            queued: 0,
            responses,
            stderr_tail,
            stderr_done,
            threads: vec![writer, reader, drainer],
            reaped: false,
            answered: false,
        })
    }

    /// Hand a request line to the writer thread; returns its sequence number (1, 2, …).
    pub fn send(&mut self, request: String) -> u64 {
        self.queued += 1;
        // The writer thread ends only when the program has closed its stdin; the reader
        // reports that as the end of its output.
        let _ = self.requests.send(request);
        self.queued
    }

    /// How the program ended, if it has, without reaping it.
    pub fn ended(&self) -> Option<Ended> {
        if self.reaped {
            return None;
        }
        // SAFETY: waitid fills `info`; WNOWAIT leaves the child waitable (a zombie).
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                self.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: the fields of a SIGCHLD siginfo, filled by waitid above.
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if rc != 0 || pid == 0 {
            return None;
        }
        Some(if info.si_code == libc::CLD_EXITED {
            Ended::Code(status)
        } else {
            Ended::Signal(status)
        })
    }

    /// The program closed its output: wait (up to `grace`) for it to exit, kill what is left
    /// of its group, and describe how it ended, with the last lines of its stderr.
    pub fn finish(mut self, grace: Duration) -> String {
        let deadline = Instant::now() + grace;
        let status = loop {
            match self.ended() {
                Some(e) => break Some(e),
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                None => break None,
            }
        };
        self.kill_group();
        let what = match status {
            Some(e) => format!("exited ({e})"),
            None => "closed its output without exiting (killed it)".to_string(),
        };
        // Let the drainer read what the program wrote before it died.
        let _ = self.stderr_done.recv_timeout(Duration::from_millis(500));
        format!("{what}{}", stderr_suffix(&self.tail()))
    }

    /// Kill the whole process group and reap it; returns the last lines of its stderr.
    pub fn kill(mut self) -> Vec<String> {
        self.kill_group();
        let _ = self.stderr_done.recv_timeout(Duration::from_millis(500));
        self.tail()
    }

    fn tail(&self) -> Vec<String> {
        self.stderr_tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// SIGKILL the group (the program and any children it left), then reap the leader.
    fn kill_group(&mut self) {
        if self.reaped {
            return;
        }
        let mut groups = live();
        // SAFETY: the leader is not reaped yet, so the group id is still ours.
        unsafe {
            libc::kill(-self.pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        groups.remove(&self.pid);
        self.reaped = true;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // Closing stdin asks a well-behaved program to exit; give it a moment, then kill its
        // group either way (children it left behind go too).
        let (closed, _) = crossbeam_channel::bounded(0);
        self.requests = closed;
        let deadline = Instant::now() + Duration::from_millis(200);
        while self.ended().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.kill_group();
        // The threads end once the pipes close; they are detached rather than joined so that
        // a grandchild holding a pipe open cannot stall the drop.
        self.threads.clear();
    }
}

fn write_requests(mut stdin: ChildStdin, requests: Receiver<String>, started: &AtomicU64) {
    for line in requests {
        started.fetch_add(1, Ordering::SeqCst);
        if stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
            .is_err()
        {
            return; // the program closed its stdin; the reader sees it end
        }
    }
}

/// Read stdout line by line, at most [`MAX_RESPONSE_BYTES`] a line. A cut-off last line (the
/// program died while writing it) is dropped: the end of output tells the node.
fn read_lines(
    stdout: impl Read,
    lines: &Sender<Result<Line, ReadError>>,
    started: &AtomicU64,
    label: &str,
) {
    let mut out = BufReader::with_capacity(1 << 16, stdout);
    let mut line: Vec<u8> = Vec::new();
    loop {
        let (done, used) = match out.fill_buf() {
            Ok([]) => {
                if !line.is_empty() {
                    tracing::warn!(node = %label, "exec program ended in the middle of a line ({} bytes dropped)", line.len());
                }
                return;
            }
            Ok(buf) => match buf.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    line.extend_from_slice(&buf[..=i]);
                    (true, i + 1)
                }
                None => {
                    line.extend_from_slice(buf);
                    (false, buf.len())
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = lines.send(Err(ReadError::Io(e)));
                return;
            }
        };
        out.consume(used);
        if line.len() > MAX_RESPONSE_BYTES {
            let _ = lines.send(Err(ReadError::TooLong));
            return;
        }
        if done {
            let text = String::from_utf8_lossy(&line).into_owned();
            line.clear();
            let after_requests = started.load(Ordering::SeqCst);
            if lines
                .send(Ok(Line {
                    text,
                    after_requests,
                }))
                .is_err()
            {
                return;
            }
        }
    }
}

fn drain_stderr(stderr: impl Read, tail: &Mutex<VecDeque<String>>, label: &str) {
    let mut err = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // A line is cut at 64 KiB so that a flood without newlines stays bounded.
        match (&mut err).take(64 << 10).read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                tracing::info!(target: "mars::exec::stderr", node = %label, "{line}");
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == STDERR_TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line);
            }
        }
    }
}

pub fn stderr_suffix(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; last lines of its stderr:\n{}", tail.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_commands_replace_the_shell() {
        assert_eq!(
            shell_form("python3 worker.py --x 'a; b'"),
            "exec python3 worker.py --x 'a; b'"
        );
        assert_eq!(shell_form("./prog 2>log"), "exec ./prog 2>log");
        for compound in [
            "read -r line; echo x",
            "a | b",
            "sleep 1 &",
            "while read -r l; do echo; done",
            "X=1 prog",
            "(prog)",
            "echo \"unterminated",
        ] {
            assert_eq!(shell_form(compound), compound, "{compound}");
        }
    }
}
