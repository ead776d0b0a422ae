//! What `marsc` does on every way out — a normal return, an error, SIGINT, SIGTERM or SIGHUP:
//! kill the process group of every exec program still running, stop the `--local-cluster`
//! children, and remove the private folders it made (the local cluster's hosts file and
//! token). Signals are taken by a thread of their own (`sigwait`), so the cleanup runs as
//! ordinary code, never inside a signal handler.

use std::path::PathBuf;
use std::sync::Mutex;

/// Folders to remove on the way out.
static FOLDERS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Child `marsc` processes (pids) to stop on the way out.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// A command that drains on SIGTERM/SIGINT instead of stopping at once (`marsc serve`): the
/// first such signal calls this (once); a second one stops the process as usual.
type DrainFn = Box<dyn FnOnce() + Send>;
static DRAIN: Mutex<Option<DrainFn>> = Mutex::new(None);

/// On the next SIGTERM or SIGINT, call `f` instead of stopping (a later signal stops).
pub fn drain_on_signal(f: impl FnOnce() + Send + 'static) {
    *DRAIN.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(f));
}

const SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill the set they are given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Block the signals in this thread (call first in `main`, before any other thread exists, so
/// every thread inherits the mask) and start the thread that handles them. Child processes
/// start with an empty mask (the standard library resets it).
pub fn install() {
    let set = signal_set();
    // SAFETY: pthread_sigmask with a valid set on the calling thread.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let _ = std::thread::Builder::new()
        .name("mars:signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: sigwait on a valid set, writing the signal number to `sig`.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            if sig != libc::SIGHUP {
                let drain = DRAIN.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(drain) = drain {
                    drain();
                    continue;
                }
            }
            let name = match sig {
                libc::SIGINT => "SIGINT",
                libc::SIGTERM => "SIGTERM",
                _ => "SIGHUP",
            };
            eprintln!("marsc: stopped by {name}");
            exit(128 + sig);
        });
}

/// Remove `dir` (recursively) on every way out, unless [`forget_folder`] is called first.
pub fn remove_on_exit(dir: PathBuf) {
    FOLDERS.lock().unwrap_or_else(|p| p.into_inner()).push(dir);
}

/// `dir` has been removed already.
pub fn forget_folder(dir: &std::path::Path) {
    FOLDERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|d| d != dir);
}

/// Stop child process `pid` on every way out, unless [`forget_child`] is called first (before
/// the child is reaped: a reaped pid may belong to another process).
pub fn stop_on_exit(pid: u32) {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
}

pub fn forget_child(pid: u32) {
    CHILDREN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|&c| c != pid);
}

/// Kill exec programs, stop children (SIGTERM, so that they clean up their own programs;
/// SIGKILL for any still there a moment later), remove folders. Safe to call more than once.
pub fn cleanup() {
    mars_runtime::exec::kill_all();
    let children: Vec<u32> = CHILDREN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain(..)
        .collect();
    let alive = |pid: u32| {
        // A child that has exited but is not reaped is a zombie: done.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rfind(')')
                    .map(|i| s[i + 1..].trim_start().starts_with('Z'))
            })
            .is_some_and(|zombie| !zombie)
    };
    for &pid in &children {
        // SAFETY: kill(2) on a child of this process that has not been reaped.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while children.iter().any(|&p| alive(p)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for &pid in &children {
        if alive(pid) {
            // SAFETY: as above.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
    let folders: Vec<PathBuf> = FOLDERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain(..)
        .collect();
    for d in folders {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Clean up and end the process with `code`.
pub fn exit(code: i32) -> ! {
    cleanup();
    std::process::exit(code)
}

/// A private folder in the system's temporary folder: a fresh random name, created with
/// mode 0700 by one `mkdir` (which fails on anything already there, a planted symlink
/// included), removed on every way out.
pub struct PrivateDir {
    pub path: PathBuf,
}

impl PrivateDir {
    pub fn new(prefix: &str) -> std::io::Result<PrivateDir> {
        use std::os::unix::fs::DirBuilderExt;
        for _ in 0..16 {
            let mut r = [0u8; 12];
            mars_runtime::cluster::handshake::random_bytes(&mut r)?;
            let name: String = r.iter().map(|b| format!("{b:02x}")).collect();
            let path = std::env::temp_dir().join(format!("{prefix}-{name}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    remove_on_exit(path.clone());
                    return Ok(PrivateDir { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other("no fresh temporary folder name"))
    }

    /// Create `name` in the folder (never through an existing file or symlink), mode 0600.
    pub fn write(&self, name: &str, contents: &[u8]) -> std::io::Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        f.write_all(contents)?;
        Ok(path)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        forget_folder(&self.path);
    }
}
