//! `restore --data-dir`: installing a verified backup into the data
//! directory of a stopped redis-server, with and without AOF.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::{Redis, Setup, assert_exit, assert_success, fill_sessions, stderr, stdout};

/// Starts a source server with sessions and backs it up once.
fn backed_up_source() -> Option<(Redis, Setup)> {
    let redis = Redis::start(&[])?;
    fill_sessions(&redis, 800);
    let setup = Setup::new(&redis.url(), "");
    assert_success(&setup.run(&["backup"]), "backup of the source");
    Some((redis, setup))
}

fn aside_folders(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.file_name().unwrap().to_string_lossy().starts_with("sessbackup-aside-"))
        .collect()
}

#[test]
fn running_server_refused_then_installed() {
    let Some((source, setup)) = backed_up_source() else { return };
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    let Some(old) = Redis::start_in(&dir, &[]) else { return };
    old.cmd::<()>(&["SET", "old-data", "x"]);
    let _: String = old.cmd(&["SAVE"]);
    let dir_arg = dir.to_str().unwrap();

    let output = setup.run(&["restore", "--data-dir", dir_arg]);
    assert_exit(&output, 1, "restore --data-dir while a server runs there");
    let message = stderr(&output);
    assert!(message.contains(&format!("redis-server (pid {}) is running in", old.pid())), "{message}");
    assert!(message.contains("stop it first"), "{message}");
    assert!(aside_folders(&dir).is_empty());

    old.shutdown();
    let output = setup.run(&["restore", "--data-dir", dir_arg, "--dry-run"]);
    assert_success(&output, "restore --data-dir --dry-run");
    assert!(stdout(&output).contains("would move"), "{}", stdout(&output));
    assert!(aside_folders(&dir).is_empty(), "a dry run moved files");

    let output = setup.run(&["restore", "--data-dir", dir_arg]);
    assert_success(&output, "restore --data-dir into a stopped server's directory");
    assert!(stdout(&output).contains("appendonly no"), "{}", stdout(&output));
    let aside = aside_folders(&dir);
    assert_eq!(aside.len(), 1);
    assert!(aside[0].join("dump.rdb").is_file(), "the replaced dump.rdb is not kept aside");
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".sessbackup"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let restored = Redis::start_in(&dir, &[]).expect("redis-server starts on the restored directory");
    assert_eq!(restored.digest(), source.digest());
}

#[test]
fn aof_server_comes_up_with_keys() {
    let Some((source, setup)) = backed_up_source() else { return };
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    let Some(old) = Redis::start_in(&dir, &["--appendonly", "yes"]) else { return };
    old.cmd::<()>(&["SET", "old-data", "x"]);
    old.shutdown();
    assert!(dir.join("appendonlydir").is_dir());

    let output = setup.run(&["restore", "--data-dir", dir.to_str().unwrap()]);
    assert_success(&output, "restore --data-dir of an AOF server");
    let text = stdout(&output);
    assert!(text.contains("so the server runs with appendonly yes"), "{text}");
    assert!(text.contains("appendonly.aof.manifest"), "{text}");
    assert!(aside_folders(&dir)[0].join("appendonlydir").is_dir(), "the old AOF is not kept aside");

    // Redis with appendonly yes loads the AOF, not dump.rdb: the new base
    // must bring every key back.
    let restored = Redis::start_in(&dir, &["--appendonly", "yes"]).expect("redis-server starts with the new AOF");
    assert_eq!(restored.keyspace(), source.keyspace());
    assert_eq!(restored.digest(), source.digest());
}

#[test]
fn owner_and_mode_are_kept() {
    // SAFETY: geteuid(2) takes no arguments and always succeeds.
    if unsafe { libc::geteuid() } != 0 {
        common::say("owner_and_mode_are_kept: needs root to change owners; skipped");
        return;
    }
    let Some((_source, setup)) = backed_up_source() else { return };
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    let old = dir.join("dump.rdb");
    std::fs::write(&old, b"old").unwrap();
    std::os::unix::fs::chown(&old, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o640)).unwrap();

    let output = setup.run(&["restore", "--data-dir", dir.to_str().unwrap(), "--appendonly", "no"]);
    assert_success(&output, "restore --data-dir over a file of another owner");
    let meta = std::fs::metadata(&old).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
}

#[test]
fn rdb_too_new_for_installed_redis() {
    let Some(source) = Redis::start(&[]) else { return };
    fill_sessions(&source, 20);
    let _: String = source.cmd(&["SAVE"]);
    let mut bytes = std::fs::read(source.rdb_path()).unwrap();
    // The same keys, as if Redis 7.2 (RDB version 11) had written them.
    bytes[5..9].copy_from_slice(b"0011");
    let body = bytes.len() - 8;
    let crc = crc::Crc::<u64>::new(&crc::CRC_64_REDIS).checksum(&bytes[..body]);
    bytes[body..].copy_from_slice(&crc.to_le_bytes());
    let home = tempfile::tempdir().unwrap();
    let newer = home.path().join("v11.rdb");
    std::fs::write(&newer, bytes).unwrap();
    let dir = home.path().join("data");
    std::fs::create_dir(&dir).unwrap();

    let output =
        common::sessbackup(&["restore", "--rdb", newer.to_str().unwrap(), "--data-dir", dir.to_str().unwrap()]);
    assert_exit(&output, 1, "an RDB 11 file into the data directory of Redis 7.0");
    assert!(stderr(&output).contains("which loads RDB versions up to 10"), "{}", stderr(&output));
    assert!(!dir.join("dump.rdb").exists(), "the file was installed");
}

#[test]
fn old_redis_gets_manual_steps() {
    let Some((_source, setup)) = backed_up_source() else { return };
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("data");
    std::fs::create_dir_all(dir.join("appendonlydir")).unwrap();
    // Stands in for the binary of a Redis 6.2 installation.
    let fake = home.path().join("redis-server");
    std::fs::write(&fake, "#!/bin/sh\necho 'Redis server v=6.2.14 sha=00000000:0 malloc=jemalloc-5.1.0 bits=64'\n")
        .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

    let output = setup.run(&["restore", "--data-dir", dir.to_str().unwrap(), "--redis-server", fake.to_str().unwrap()]);
    assert_exit(&output, 1, "an AOF install for Redis 6.2");
    let message = stderr(&output);
    assert!(message.contains("is Redis 6.2, which predates multi-part AOF"), "{message}");
    assert!(message.contains("--appendonly no"), "{message}");
    assert!(message.contains("CONFIG SET appendonly yes"), "{message}");
    assert!(aside_folders(&dir).is_empty(), "files moved despite the refusal");
}
