//! Replacing a small file atomically, for `[metrics] textfile` (the file
//! node_exporter's textfile collector reads): a reader sees the old
//! content or the new, never a half-written file.
//!
//! The text goes to a temporary file in the same directory (so the rename
//! stays on one file system), named `.<name>.<pid>.tmp` (node_exporter reads
//! only `*.prom`), created with `O_EXCL` (never through a symlink someone
//! left there) and mode 0644 whatever the umask (node_exporter runs as
//! another user), then renamed over the target.
//!
//! No fsync: the file is rebuilt every interval, so after a power loss the
//! next interval repairs whatever the crash left; an fsync every few seconds
//! would wear out a Raspberry Pi's SD card and could stall for long on it.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode of the written file.
pub const MODE: u32 = 0o644;

/// The temporary file [`write_atomic`] uses for `path`.
pub fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}.tmp", std::process::id()));
    Ok(path.with_file_name(tmp))
}

/// Replaces `path` with `contents`, atomically (see the module doc). On an
/// error the target is left as it was and the temporary file is removed.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path)?;
    // A temporary file left by a crash of this pid's predecessor.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(MODE)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(MODE))?;
        f.write_all(contents)?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replaces_the_file_with_mode_0644_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clearify.prom");
        write_atomic(&path, b"a 1\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "a 1\n");
        // (tests/metrics.rs runs the daemon under umask 077.)
        write_atomic(&path, b"a 2\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "a 2\n");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, MODE);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["clearify.prom"]);
    }

    #[test]
    fn a_symlink_at_the_temporary_path_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clearify.prom");
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, temp_path(&path).unwrap()).unwrap();
        write_atomic(&path, b"a 1\n").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(fs::read_to_string(&path).unwrap(), "a 1\n");
    }

    #[test]
    fn a_missing_directory_is_an_error_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope/clearify.prom");
        let e = write_atomic(&path, b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert!(temp_path(Path::new("/")).is_err());
    }
}
