//! Installing a verified RDB file into the data directory of a stopped
//! Redis.
//!
//! Nothing is deleted: the files the new data replaces move to a folder
//! named `sessbackup-aside-<time>` inside the data directory. With AOF on,
//! Redis ignores `dump.rdb` at start-up and loads its AOF instead, so the RDB
//! also becomes the base of a fresh multi-part AOF (Redis 7.0 and newer),
//! which Redis then loads.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Install settings: the data directory and the names Redis uses in it.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
    pub dbfilename: String,
    /// Install as the base of a multi-part AOF as well.
    pub appendonly: bool,
    pub appenddirname: String,
    pub appendfilename: String,
}

/// A redis-server or valkey-server process found to use the directory.
#[derive(Debug, Clone)]
pub struct Holder {
    pub pid: u32,
    pub name: String,
    /// The evidence that it uses the directory, or why that cannot be ruled out.
    pub evidence: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{} is not a directory; give the data directory of the stopped Redis (its `dir` setting)", .0.display())]
    NotADirectory(PathBuf),
    #[error("{}; stop it first (redis-cli shutdown, or systemctl stop), then run the restore again", describe(.0))]
    InUse(Vec<Holder>),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error(
        "cannot give the restored files to uid {uid} gid {gid}, the owner of the files they replace, when running \
         as uid {euid}; run the restore as root or as that user"
    )]
    Owner { uid: u32, gid: u32, euid: u32 },
}

fn describe(holders: &[Holder]) -> String {
    holders
        .iter()
        .map(|holder| format!("{} (pid {}) {}", holder.name, holder.pid, holder.evidence))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Finds redis-server and valkey-server processes that use `dir` as their
/// working directory, which is where Redis keeps its files (it changes into
/// its `dir` at start-up). A server whose working directory this user may
/// not read is reported too, because it may be using `dir`.
pub fn servers_using(dir: &Path) -> Vec<Holder> {
    let Ok(wanted) = dir.canonicalize() else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut holders = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() {
            continue;
        }
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else { continue };
        let name = comm.trim().to_string();
        if !(name.starts_with("redis-server") || name.starts_with("valkey-server")) {
            continue;
        }
        match std::fs::read_link(entry.path().join("cwd")) {
            Ok(cwd) if cwd == wanted => holders.push(Holder {
                pid,
                name,
                evidence: format!("is running in {} (its working directory, from /proc/{pid}/cwd)", wanted.display()),
            }),
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => holders.push(Holder {
                pid,
                name,
                evidence: format!(
                    "is running, and this user may not read its working directory (/proc/{pid}/cwd), so it may be \
                     using {}; run as root or as its user to tell",
                    wanted.display()
                ),
            }),
            // The process ended meanwhile.
            Err(_) => {}
        }
    }
    holders
}

/// An install's effects: the files it replaces, where they go, and what it creates.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    /// Existing paths that move aside.
    pub moved: Vec<PathBuf>,
    pub aside: PathBuf,
    /// Paths the restore creates.
    pub installed: Vec<PathBuf>,
    pub owner: Option<(u32, u32)>,
    pub file_mode: u32,
}

/// Works out the install without changing anything.
pub fn plan(layout: &Layout, now: &str) -> Result<Plan, Error> {
    let io = |path: &Path, err: std::io::Error| Error::Io { path: path.to_path_buf(), message: err.to_string() };
    let dir_meta = std::fs::metadata(&layout.dir).map_err(|err| io(&layout.dir, err))?;
    if !dir_meta.is_dir() {
        return Err(Error::NotADirectory(layout.dir.clone()));
    }

    let dump = layout.dir.join(&layout.dbfilename);
    let aof_dir = layout.dir.join(&layout.appenddirname);
    // A single-file AOF from Redis before 7.0 would be loaded instead of the new data.
    let legacy_aof = layout.dir.join(&layout.appendfilename);
    let moved: Vec<PathBuf> =
        [&dump, &aof_dir, &legacy_aof].into_iter().filter(|path| path.symlink_metadata().is_ok()).cloned().collect();
    let mut installed = vec![dump.clone()];
    if layout.appendonly {
        installed.push(aof_dir.join(base_name(layout)));
        installed.push(aof_dir.join(manifest_name(layout)));
    }

    // The new files take the owner and mode of the dump they replace, else
    // the directory's owner and owner-only access.
    let (owner, file_mode) = match std::fs::metadata(&dump) {
        Ok(meta) => ((meta.uid(), meta.gid()), meta.permissions().mode() & 0o7777),
        Err(_) => ((dir_meta.uid(), dir_meta.gid()), 0o600),
    };
    // SAFETY: geteuid(2) takes no arguments and always succeeds (POSIX).
    let euid = unsafe { libc::geteuid() };
    if euid != 0 && owner.0 != euid {
        return Err(Error::Owner { uid: owner.0, gid: owner.1, euid });
    }
    Ok(Plan {
        moved,
        aside: layout.dir.join(format!("sessbackup-aside-{now}")),
        installed,
        owner: (euid == 0).then_some(owner),
        file_mode,
    })
}

fn base_name(layout: &Layout) -> String {
    format!("{}.1.base.rdb", layout.appendfilename)
}

fn manifest_name(layout: &Layout) -> String {
    format!("{}.manifest", layout.appendfilename)
}

/// Moves the replaced files aside and installs `verified`, an RDB file in
/// the same file system as the data directory, following `plan`.
pub fn install(layout: &Layout, plan: &Plan, verified: &Path) -> Result<(), Error> {
    let io = |path: &Path, err: std::io::Error| Error::Io { path: path.to_path_buf(), message: err.to_string() };
    let set_owner = |path: &Path, mode: u32| -> Result<(), Error> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|err| io(path, err))?;
        if let Some((uid, gid)) = plan.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|err| io(path, err))?;
        }
        Ok(())
    };
    set_owner(verified, plan.file_mode)?;
    std::fs::File::open(verified).and_then(|file| file.sync_all()).map_err(|err| io(verified, err))?;

    if !plan.moved.is_empty() {
        std::fs::create_dir(&plan.aside).map_err(|err| io(&plan.aside, err))?;
        set_owner(&plan.aside, 0o700)?;
        for path in &plan.moved {
            let name = path.file_name().expect("moved paths are files in the directory");
            std::fs::rename(path, plan.aside.join(name)).map_err(|err| io(path, err))?;
        }
    }

    let dump = layout.dir.join(&layout.dbfilename);
    if layout.appendonly {
        let aof_dir = layout.dir.join(&layout.appenddirname);
        std::fs::create_dir(&aof_dir).map_err(|err| io(&aof_dir, err))?;
        set_owner(&aof_dir, 0o750)?;
        let base = aof_dir.join(base_name(layout));
        std::fs::hard_link(verified, &base).map_err(|err| io(&base, err))?;
        let manifest = aof_dir.join(manifest_name(layout));
        let text = format!("file {} seq 1 type b\n", base_name(layout));
        write_new(&manifest, text.as_bytes()).map_err(|err| io(&manifest, err))?;
        set_owner(&manifest, plan.file_mode)?;
        sync_dir(&aof_dir).map_err(|err| io(&aof_dir, err))?;
    }
    std::fs::rename(verified, &dump).map_err(|err| io(&dump, err))?;
    sync_dir(&layout.dir).map_err(|err| io(&layout.dir, err))?;
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Reads the version of a redis-server binary from `--version`
/// ("Redis server v=7.0.15 sha=…"), or None if it cannot be run.
pub fn binary_version(binary: &str) -> Option<(u32, u32)> {
    let output = std::process::Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.split_whitespace().find_map(|word| word.strip_prefix("v="))?;
    let mut parts = version.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(dir: &Path, appendonly: bool) -> Layout {
        Layout {
            dir: dir.to_path_buf(),
            dbfilename: "dump.rdb".to_string(),
            appendonly,
            appenddirname: "appendonlydir".to_string(),
            appendfilename: "appendonly.aof".to_string(),
        }
    }

    #[test]
    fn install_moves_old_files_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dump.rdb"), b"old").unwrap();
        std::fs::create_dir(dir.path().join("appendonlydir")).unwrap();
        std::fs::write(dir.path().join("appendonlydir/appendonly.aof.3.base.rdb"), b"old base").unwrap();
        let verified = dir.path().join(".verified");
        std::fs::write(&verified, b"new").unwrap();
        let layout = layout(dir.path(), true);

        let plan = plan(&layout, "20261204T230000Z").unwrap();
        assert_eq!(plan.moved.len(), 2);
        install(&layout, &plan, &verified).unwrap();

        let aside = dir.path().join("sessbackup-aside-20261204T230000Z");
        assert_eq!(std::fs::read(aside.join("dump.rdb")).unwrap(), b"old");
        assert_eq!(std::fs::read(aside.join("appendonlydir/appendonly.aof.3.base.rdb")).unwrap(), b"old base");
        assert_eq!(std::fs::read(dir.path().join("dump.rdb")).unwrap(), b"new");
        assert_eq!(std::fs::read(dir.path().join("appendonlydir/appendonly.aof.1.base.rdb")).unwrap(), b"new");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("appendonlydir/appendonly.aof.manifest")).unwrap(),
            "file appendonly.aof.1.base.rdb seq 1 type b\n"
        );
        assert!(!verified.exists());
    }

    #[test]
    fn empty_directory_gets_private_files() {
        let dir = tempfile::tempdir().unwrap();
        let verified = dir.path().join(".verified");
        std::fs::write(&verified, b"new").unwrap();
        let layout = layout(dir.path(), false);
        let plan = plan(&layout, "now").unwrap();
        assert!(plan.moved.is_empty());
        install(&layout, &plan, &verified).unwrap();
        let mode = std::fs::metadata(dir.path().join("dump.rdb")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!dir.path().join("sessbackup-aside-now").exists());
    }

    #[test]
    fn file_is_not_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dump.rdb");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(plan(&layout(&file, false), "now"), Err(Error::NotADirectory(_))));
    }
}
