//! Files that hold the text of the user's files (the agent's and the brain's databases, their
//! `-wal` and `-shm`, the run lock) are created 0600, in folders created 0700 (DESIGN.md "Trust",
//! files). SQLite gives `-wal` and `-shm` the mode of the database file, so creating that file
//! 0600 before SQLite opens it is enough for all three. Existing files and folders keep their
//! mode: `agent status` warns about a database others can read ([`readable_by_others`]).

use std::io;
use std::path::Path;

/// Creates `dir` and its missing parents, each new one 0700 (on unix).
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates `path` empty and 0600 (on unix) when it does not exist; an existing file is left as
/// it is. SQLite takes an empty file for a new database.
pub fn create_file(path: &Path) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The permission bits of `path` when its group or others may read or write it; `None` when
/// only its owner may (or on a platform without unix modes, or when it does not exist).
pub fn readable_by_others(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o066 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_folders_are_0700_and_new_files_0600_and_existing_ones_keep_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b");
        create_dir_all(&deep).unwrap();
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&deep), 0o700);
        let file = deep.join("x.db");
        create_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(readable_by_others(&file), None);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        create_file(&file).unwrap();
        assert_eq!(mode(&file), 0o644, "an existing file is left alone");
        assert_eq!(readable_by_others(&file), Some(0o644));
        assert_eq!(readable_by_others(&deep.join("missing")), None);
    }
}

/// Replaces `path` with `text`, mode `mode`: written to a new file in the same folder, synced,
/// then renamed over it, so a crash leaves the old file or the new one, never half of one. The
/// folder is created (0755 for each new one: these are config and unit folders) if missing.
pub fn replace_file(path: &Path, text: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(folder)?;
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy());
    let temp = folder.join(format!(".{name}.{}.new", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)?;
        // The umask may have taken bits away from `mode`; the file gets exactly it.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(text)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written?;
    // The rename is durable once the folder is.
    if let Ok(dir) = std::fs::File::open(folder) {
        let _ = dir.sync_all();
    }
    Ok(())
}
