//! Files the agent writes as root: never through a symbolic link, never in
//! a directory another user controls. A link planted where the state or the
//! audit log goes would otherwise make root overwrite or append to any file.

use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::Path,
};

use anyhow::{Context, Result, bail};

/// A write the disk refused (full, read-only), for `stopguard status`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WriteFailure {
    pub error: String,
    pub at: String,
}

impl WriteFailure {
    pub fn now(err: &anyhow::Error) -> WriteFailure {
        WriteFailure {
            error: format!("{err:#}"),
            at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        }
    }
}

/// Creates `dir` (mode 0755) when missing, then checks that only root (or
/// the agent's own user) can change what is in it: owned by one of them,
/// writable by neither group nor others, and not a link.
pub fn private_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    check_dir(dir)
}

/// The checks of `private_dir` without creating anything: a missing
/// directory passes (the agent will create it).
pub fn check_dir(dir: &Path) -> Result<()> {
    if !dir.exists() && fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    let meta = fs::symlink_metadata(dir).with_context(|| format!("checking {}", dir.display()))?;
    if meta.file_type().is_symlink() {
        bail!(
            "{} is a symbolic link: refusing to write through it; use the real directory",
            dir.display()
        );
    }
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        bail!(
            "{} belongs to uid {}, not to the agent's user: another user could plant links there (chown it to root or pick another directory)",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o022 != 0 {
        bail!(
            "{} is writable by {}: another user could plant links there (chmod go-w it or pick another directory)",
            dir.display(),
            if meta.mode() & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            }
        );
    }
    Ok(())
}

/// Opens `path` for appending, creating it (mode 0640); refuses a link.
pub fn open_append(path: &Path) -> Result<fs::File> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| refused(path, "opening"))
}

/// Writes `bytes` to `path` so that a crash leaves the old content or the
/// new, never half of one: a fresh temporary file (never an existing file
/// or a link), synced, renamed over `path`, the directory synced.
pub fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| refused(&tmp, "creating"))?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|()| {
            fs::rename(&tmp, path)
                .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
        });
    if written.is_err() {
        // A full disk leaves a torn temporary: give its space back.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

fn refused(path: &Path, doing: &str) -> String {
    let link = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if link {
        format!(
            "{doing} {}: it is a symbolic link, and the agent does not write through links",
            path.display()
        )
    } else {
        format!("{doing} {}", path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sg-files-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        private_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn a_planted_link_is_never_written_through() {
        let dir = scratch("link");
        let victim = dir.join("victim");
        fs::write(&victim, "precious\n").unwrap();
        let planted = dir.join("audit.jsonl");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let err = open_append(&planted).unwrap_err();
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
        // A planted temporary file is replaced, not followed.
        let state = dir.join("state.json");
        std::os::unix::fs::symlink(
            &victim,
            state.with_extension(format!("tmp.{}", std::process::id())),
        )
        .unwrap();
        replace(&state, b"{}").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
        assert_eq!(fs::read_to_string(&state).unwrap(), "{}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let dir = scratch("perm");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = private_dir(&dir).unwrap_err();
        assert!(
            format!("{err:#}").contains("writable by everyone"),
            "{err:#}"
        );
        let link = dir.with_extension("link");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = private_dir(&link).unwrap_err();
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
        fs::remove_file(&link).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
