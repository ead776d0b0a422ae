//! Watching the other processes of a formed cluster: every pair of processes keeps a heartbeat
//! connection (opened and authenticated with the data link, see [`super::handshake`]) on which
//! each side writes a byte every [`BEAT`]. A peer whose heartbeat stays silent for the stall
//! limit (stopped with SIGSTOP, hung hard, cut off by the network), or whose connection closes
//! before it said goodbye (it died), fails the run: [`Health::failed`] fires and
//! [`Health::failure`] names the process. The runtime turns that into an error for its caller;
//! only `marsc` turns it into exit status 2.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

/// How often a heartbeat is written.
pub const BEAT: Duration = Duration::from_millis(500);

const ALIVE: u8 = b'.';

/// The diagnostic codes of [`Failure`].
pub const LOST: &str = "mars::cluster::lost";
pub const STALLED: &str = "mars::cluster::stalled";
const BYE: u8 = b'B';

/// How the cluster failed: a diagnostic code (`mars::cluster::lost`, `mars::cluster::stalled`)
/// and a message naming the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: &'static str,
    pub message: String,
}

struct State {
    failure: Mutex<Option<Failure>>,
    /// Dropped at the first failure: every clone of `failed` then sees the channel closed.
    alarm: Mutex<Option<Sender<()>>>,
    failed: Receiver<()>,
    /// The write halves of the heartbeat links; emptied by [`Health::finish`] once it has said
    /// goodbye on each.
    writers: Mutex<Vec<TcpStream>>,
    finished: std::sync::atomic::AtomicBool,
}

impl State {
    fn fail(&self, code: &'static str, why: String) {
        if self.finished.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            tracing::error!("cluster: {why}");
            *f = Some(Failure { code, message: why });
        }
        drop(f);
        self.alarm.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// The running cluster's health, as this process sees it.
#[derive(Clone)]
pub struct Health {
    state: Arc<State>,
}

/// The health of the cluster this process runs in now, for the panic hook of timely's network
/// threads ([`report_lost_link`]).
static ACTIVE: Mutex<Option<Weak<State>>> = Mutex::new(None);

/// A timely network thread lost its link to `process`: fail the active run, if any.
pub fn report_lost_link(process: usize, host: &str, why: &str) {
    let active = ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(state) = active.and_then(|w| w.upgrade()) {
        state.fail(
            LOST,
            format!("lost the connection to process {process} ({host}): {why}"),
        );
    }
}

impl Health {
    /// Start watching `links[p]` (the heartbeat connection to each other process `p`).
    pub fn watch(links: Vec<Option<TcpStream>>, hosts: &[String], stall: Duration) -> Health {
        let (alarm, failed) = crossbeam_channel::bounded(1);
        let state = Arc::new(State {
            failure: Mutex::new(None),
            alarm: Mutex::new(Some(alarm)),
            failed,
            writers: Mutex::new(Vec::new()),
            finished: std::sync::atomic::AtomicBool::new(false),
        });
        *ACTIVE.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::downgrade(&state));
        for (p, link) in links.into_iter().enumerate() {
            let Some(link) = link else { continue };
            let host = hosts.get(p).cloned().unwrap_or_else(|| "?".into());
            let Ok(writer) = link.try_clone() else {
                state.fail(LOST, format!("cannot watch process {p} ({host})"));
                continue;
            };
            state
                .writers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(writer);
            let watched = Arc::downgrade(&state);
            let _ = std::thread::Builder::new()
                .name(format!("mars:heartbeat-r{p}"))
                .spawn(move || read_beats(link, p, &host, stall, &watched));
        }
        let beating = Arc::downgrade(&state);
        let _ = std::thread::Builder::new()
            .name("mars:heartbeat".into())
            .spawn(move || loop {
                std::thread::sleep(BEAT);
                let Some(state) = beating.upgrade() else {
                    return;
                };
                let mut writers = state.writers.lock().unwrap_or_else(|p| p.into_inner());
                if state.finished.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                // A failed write is the reader's to report (the link is gone).
                for w in writers.iter_mut() {
                    let _ = w.write_all(&[ALIVE]);
                }
            });
        Health { state }
    }

    /// Closed (ready) once the cluster has failed.
    pub fn failed(&self) -> &Receiver<()> {
        &self.state.failed
    }

    /// What failed, if anything has.
    pub fn failure(&self) -> Option<Failure> {
        self.state
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// This process's run is over: say goodbye to every peer (before returning, so that a
    /// process exiting right after cannot look lost) and stop watching them.
    pub fn finish(&self) {
        let mut writers = self.state.writers.lock().unwrap_or_else(|p| p.into_inner());
        self.state
            .finished
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for mut w in writers.drain(..) {
            let _ = w.write_all(&[BYE]);
            let _ = w.shutdown(std::net::Shutdown::Write);
        }
    }

    /// Fail the run from outside (for tests and for callers with their own watchdogs).
    pub fn fail(&self, code: &'static str, why: String) {
        self.state.fail(code, why);
    }
}

fn read_beats(mut link: TcpStream, p: usize, host: &str, stall: Duration, state: &Weak<State>) {
    let _ = link.set_read_timeout(Some(stall));
    let mut buf = [0u8; 64];
    loop {
        let outcome = link.read(&mut buf);
        let Some(state) = state.upgrade() else { return };
        if state.finished.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        match outcome {
            Ok(0) => {
                state.fail(
                    LOST,
                    format!("lost the connection to process {p} ({host}): it closed without finishing the run"),
                );
                return;
            }
            Ok(n) if buf[..n].contains(&BYE) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                state.fail(
                    STALLED,
                    format!(
                        "process {p} ({host}) sent no heartbeat for {:.0} s: it is stopped, hung or cut off",
                        stall.as_secs_f64()
                    ),
                );
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                state.fail(
                    LOST,
                    format!("lost the connection to process {p} ({host}): {e}"),
                );
                return;
            }
        }
    }
}
