//! Write-then-rename for every output bagel writes (datasets, reports, caches, checkpoints,
//! plots): the content goes to a temp name beside the destination and is renamed into
//! place only when complete, so a reader never sees a half-written file (a replaced
//! directory is briefly absent between its two renames), and an error or an unwinding
//! panic on the way leaves nothing behind (the temp is removed when dropped; a killed
//! process leaves its `.{name}.tmp-{pid}`). No fsync: atomic, not durable across a power
//! loss.
//!
//! The rename is atomic on POSIX file systems when temp and destination share a directory,
//! which is why the temp is `.{name}.tmp-{pid}` next to the destination.
use std::io::Write;
use std::path::{Path, PathBuf};

/// A temp path next to `dest`, removed when dropped unless [`AtomicPath::commit`]ted: a
/// file ([`AtomicPath::new`]) or a directory this type created ([`AtomicPath::new_dir`]).
#[must_use = "an AtomicPath is removed when dropped unless committed"]
#[derive(Debug)]
pub struct AtomicPath {
    tmp: PathBuf,
    dest: PathBuf,
    /// A directory made by [`AtomicPath::new_dir`] (removed with its contents).
    dir: bool,
    done: bool,
}

impl AtomicPath {
    /// Reserve `.{name}.tmp-{pid}` in `dest`'s directory. Nothing is created yet.
    pub fn new(dest: &Path) -> AtomicPath {
        let name = dest.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let tmp = dest.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        AtomicPath { tmp, dest: dest.to_path_buf(), dir: false, done: false }
    }

    /// A temp directory next to `dest` to fill, created here (a stale one of this process's
    /// name is removed first). On commit it replaces `dest` whole.
    ///
    /// Errors: the I/O error of removing the stale temp or creating the new one.
    pub fn new_dir(dest: &Path) -> std::io::Result<AtomicPath> {
        let mut tmp = AtomicPath::new(dest);
        match std::fs::remove_dir_all(&tmp.tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(&tmp.tmp)?;
        tmp.dir = true;
        Ok(tmp)
    }

    /// Like [`AtomicPath::new`] with a temp file name of the caller's, in `dest`'s directory:
    /// for writers that read meaning from the name (an image library that picks the format
    /// from the extension). The name should start with `.` and be unique to the process.
    pub fn with_temp_name(dest: &Path, name: &str) -> AtomicPath {
        AtomicPath { tmp: dest.with_file_name(name), dest: dest.to_path_buf(), dir: false, done: false }
    }

    /// The temp path to write (a file, or a directory to fill).
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// The destination.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Rename the temp into place. A file replaces `dest` in one rename. A directory
    /// cannot replace a non-empty one that way: an existing `dest` directory is first
    /// renamed aside (`.{name}.old-{pid}`), the temp renamed into place, and only then the
    /// old one removed; should the second rename fail, the old one is put back.
    ///
    /// Errors: the I/O error of a rename; the temp is then removed and `dest` is as before.
    pub fn commit(mut self) -> std::io::Result<()> {
        if self.dir && self.dest.is_dir() {
            let name = self.dest.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            let old = self.dest.with_file_name(format!(".{name}.old-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&old);
            std::fs::rename(&self.dest, &old)?;
            if let Err(e) = std::fs::rename(&self.tmp, &self.dest) {
                let _ = std::fs::rename(&old, &self.dest);
                return Err(e);
            }
            self.done = true;
            let _ = std::fs::remove_dir_all(&old);
            return Ok(());
        }
        std::fs::rename(&self.tmp, &self.dest)?;
        self.done = true;
        Ok(())
    }
}

impl Drop for AtomicPath {
    fn drop(&mut self) {
        // Only what this type made: a file temp that is a directory (someone else's) stays.
        if !self.done {
            let _ = if self.dir { std::fs::remove_dir_all(&self.tmp) } else { std::fs::remove_file(&self.tmp) };
        }
    }
}

/// Write `bytes` to `dest` atomically. Errors: the I/O error; nothing is left behind.
pub fn write(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with(dest, |w| w.write_all(bytes))
}

/// Stream `dest` atomically: `fill` writes through a 1 MiB buffer, so large contents are
/// never held whole. Errors: `fill`'s or the file system's; nothing is left behind.
pub fn write_with(dest: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> std::io::Result<()> {
    let tmp = AtomicPath::new(dest);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(tmp.path())?);
    fill(&mut out)?;
    out.flush()?;
    drop(out);
    tmp.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry of `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bagel-atomic-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_leaves_no_temp() {
        let d = scratch("fail");
        let dest = d.join("report.json");
        write(&dest, b"old").unwrap();
        let err = write_with(&dest, |w| {
            w.write_all(b"half of the new")?;
            Err(std::io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        assert_eq!(names(&d), ["report.json"]);
        write(&dest, b"new").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert_eq!(names(&d), ["report.json"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_uncommitted_directory_is_removed_and_a_committed_one_replaces_the_old() {
        let d = scratch("dir");
        let dest = d.join("checkpoint-10");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("old"), b"1").unwrap();
        {
            let tmp = AtomicPath::new_dir(&dest).unwrap();
            std::fs::write(tmp.path().join("model"), b"2").unwrap();
            assert_eq!(tmp.path().file_name().unwrap().to_string_lossy(), format!(".checkpoint-10.tmp-{}", std::process::id()));
            // Dropped here, as on an error: the half-filled directory goes.
        }
        assert_eq!(names(&d), ["checkpoint-10"]);
        assert_eq!(names(&dest), ["old"]);
        let tmp = AtomicPath::new_dir(&dest).unwrap();
        std::fs::write(tmp.path().join("model"), b"3").unwrap();
        tmp.commit().unwrap();
        assert_eq!(names(&d), ["checkpoint-10"], "no temp and no old copy left");
        assert_eq!(names(&dest), ["model"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_file_temp_leaves_a_directory_of_that_name_alone() {
        let d = scratch("blocked");
        let dest = d.join("dpo.parquet");
        let tmp = AtomicPath::new(&dest);
        std::fs::create_dir(tmp.path()).unwrap();
        std::fs::write(tmp.path().join("keep"), b"someone else's").unwrap();
        assert!(std::fs::File::create(tmp.path()).is_err());
        drop(tmp);
        assert_eq!(names(&d.join(format!(".dpo.parquet.tmp-{}", std::process::id()))), ["keep"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_temp_name_of_the_callers_is_used_and_cleaned_up() {
        let d = scratch("named");
        let dest = d.join("loss.png");
        let tmp = AtomicPath::with_temp_name(&dest, ".tmp-1-loss.png");
        assert_eq!(tmp.path(), d.join(".tmp-1-loss.png"));
        std::fs::write(tmp.path(), b"png").unwrap();
        drop(tmp);
        assert!(names(&d).is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
