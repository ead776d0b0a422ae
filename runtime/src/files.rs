//! Files opened on a user's or a request's behalf (SPEC 7.2, 7.3): reads that take regular
//! files only, within a size limit (no `/dev/zero`, no FIFO, no `/proc` file of unknown
//! length), paths confined to allowed folders after canonicalizing (no `..` and no symlink
//! out), and writes that never follow a planted link: a new file created exclusively
//! (`O_EXCL | O_NOFOLLOW`) beside the target, then renamed over it, which replaces a link
//! instead of writing through it. Also the exclusive lock on a run's output file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The largest file a request may name (`{"$file": …}`, `{"$npy": …}`): 64 MiB.
pub const MAX_REQUEST_FILE_BYTES: u64 = 64 << 20;

/// Read a whole regular file of at most `limit` bytes. A FIFO, a device, a directory or a
/// file that grows past the limit while being read is an error that says so; opening never
/// blocks (`O_NONBLOCK`).
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".to_string());
    }
    if meta.len() > limit {
        return Err(format!(
            "the file is {} bytes; at most {limit} are read",
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > limit {
        return Err(format!("the file grew past {limit} bytes while being read"));
    }
    Ok(bytes)
}

/// The folders a request's `$file` and `$npy` paths may name files in (canonical paths).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileRoots {
    roots: Vec<PathBuf>,
}

impl FileRoots {
    /// The folders, canonicalized; a folder that does not exist is an error.
    pub fn new<'a>(dirs: impl IntoIterator<Item = &'a Path>) -> std::io::Result<FileRoots> {
        let mut roots = Vec::new();
        for d in dirs {
            let c = d
                .canonicalize()
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", d.display())))?;
            if !roots.contains(&c) {
                roots.push(c);
            }
        }
        Ok(FileRoots { roots })
    }

    /// Whether no folder is allowed (every `$file` is refused).
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// The canonical path of `path` (relative to `base`, else to the current directory) if it
    /// lies inside one of the folders; otherwise why not.
    pub fn resolve(&self, base: Option<&Path>, path: &str) -> Result<PathBuf, String> {
        if self.roots.is_empty() {
            return Err(
                "files are not readable from this input (for stdin, allow a folder with --allow-files DIR)"
                    .to_string(),
            );
        }
        let full = match base {
            Some(dir) if Path::new(path).is_relative() => dir.join(path),
            _ => PathBuf::from(path),
        };
        let canonical = full.canonicalize().map_err(|e| e.to_string())?;
        if self.roots.iter().any(|r| canonical.starts_with(r)) {
            Ok(canonical)
        } else {
            Err(format!(
                "outside the folders requests may read ({}); widen with --allow-files DIR",
                self.roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Write `bytes` to `path` without following a link at `path` or at the temporary name: a
/// new file is created exclusively in the same folder, written, synced and renamed over
/// `path`. A reader sees the old file or the whole new one, never a part.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace_file(path, bytes, true)
}

/// [`write_atomically`] without syncing the data to disk first (for the many small output
/// files of `--files-dir`; a crash may leave one empty, never a write through a link).
pub fn write_replacing(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace_file(path, bytes, false)
}

fn replace_file(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
    let temp = dir.join(format!(
        ".{}.{}-{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temp)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| if sync { file.sync_all() } else { Ok(()) });
    let renamed = written.and_then(|()| std::fs::rename(&temp, path));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    renamed
}

/// Take an exclusive advisory lock (`flock`) on `file` without waiting; `Ok(false)` when
/// another process holds it. Released when the file is closed.
pub fn try_lock_exclusive(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor this `File` owns for the whole call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Whether two paths name the same existing file (same device and inode, links followed).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let f = dir.path().join("a.bin");
        std::fs::write(&f, b"abcd").expect("write");
        assert_eq!(read_regular(&f, 4), Ok(b"abcd".to_vec()));
        assert!(read_regular(&f, 3).expect_err("big").contains("at most 3"));
        let e = read_regular(Path::new("/dev/zero"), 1 << 20).expect_err("device");
        assert_eq!(e, "not a regular file");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(read_regular(&fifo, 10), Err("not a regular file".into()));
        assert!(read_regular(dir.path(), 10).is_err());
    }

    #[test]
    fn paths_stay_inside_their_roots() {
        let dir = tempfile::tempdir().expect("temp dir");
        let inner = dir.path().join("in");
        std::fs::create_dir(&inner).expect("mkdir");
        std::fs::write(inner.join("ok.bin"), b"x").expect("write");
        std::fs::write(dir.path().join("secret"), b"s").expect("write");
        std::os::unix::fs::symlink(dir.path().join("secret"), inner.join("link")).expect("ln");
        let roots = FileRoots::new([inner.as_path()]).expect("roots");
        assert!(roots.resolve(Some(&inner), "ok.bin").is_ok());
        assert!(roots
            .resolve(Some(&inner), "../secret")
            .expect_err("..")
            .contains("outside"));
        assert!(roots
            .resolve(Some(&inner), "link")
            .expect_err("link")
            .contains("outside"));
        assert!(roots
            .resolve(Some(&inner), "/etc/passwd")
            .expect_err("abs")
            .contains("outside"));
        let none = FileRoots::default();
        assert!(none
            .resolve(None, "ok.bin")
            .expect_err("none")
            .contains("--allow-files"));
    }

    #[test]
    fn atomic_writes_replace_a_planted_link_instead_of_following_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").expect("write");
        let out = dir.path().join("out.bin");
        std::os::unix::fs::symlink(&victim, &out).expect("ln");
        write_atomically(&out, b"new").expect("writes");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"keep");
        assert_eq!(std::fs::read(&out).expect("out"), b"new");
        assert!(!std::fs::symlink_metadata(&out)
            .expect("meta")
            .file_type()
            .is_symlink());
    }

    #[test]
    fn a_second_lock_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path().join("o.jsonl");
        let a = File::create(&p).expect("a");
        let b = OpenOptions::new().write(true).open(&p).expect("b");
        assert!(try_lock_exclusive(&a).expect("lock a"));
        assert!(!try_lock_exclusive(&b).expect("lock b"));
        assert!(same_file(&p, &dir.path().join(".").join("o.jsonl")));
    }
}
