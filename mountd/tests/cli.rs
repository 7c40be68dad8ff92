//! The `kith` command line without FUSE: first run, messages, standalone commands.
//! (Mounted behaviour is tested in the `kith-tests` crate.)

use std::path::Path;
use std::process::{Command, Output};

fn kith(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kith"))
        .args(args)
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_RUNTIME_DIR", home.join("run"))
        // A first run creates a keyring: tests have no passphrase to give.
        .env("KITH_KEYRING", "unencrypted")
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|e| panic!("cannot run kith: {e}"))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn help_lists_every_command() {
    let home = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = kith(home.path(), &["--help"]);
    assert!(out.status.success());
    let help = stdout(&out);
    for command in [
        "mount", "unmount", "status", "snapshot", "verify", "device", "demo",
    ] {
        assert!(help.contains(command), "{command} missing from {help}");
    }
}

#[test]
fn a_missing_mount_point_is_one_clear_line() {
    let home = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let missing = home.path().join("nowhere");
    let out = kith(home.path(), &["mount", &missing.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.starts_with("kith: mount point"), "{message}");
    assert!(message.contains("does not exist"), "{message}");
}

#[test]
fn status_without_a_daemon_says_so() {
    let home = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = kith(home.path(), &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("no kith daemon is running"));
}

#[test]
fn unmount_of_a_plain_directory_is_refused() {
    let home = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = kith(home.path(), &["unmount", &home.path().to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not mounted by kith"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_bad_config_names_the_file_and_the_key() {
    let home = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config_dir = home.path().join("config/kith");
    std::fs::create_dir_all(&config_dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(config_dir.join("config.toml"), "fuse_threads = 0\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let out = kith(home.path(), &["status"]);
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert!(message.contains("config.toml"), "{message}");
    assert!(message.contains("fuse_threads"), "{message}");
}

#[test]
fn snapshot_and_verify_work_on_an_unmounted_store() {
    let home = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = kith(home.path(), &["verify"]);
    assert_eq!(out.status.code(), Some(1), "no store yet: {}", stdout(&out));
    let store = home.path().join("store");
    let store = store.to_string_lossy();
    let out = kith(home.path(), &["--store", &store, "snapshot", "empty"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = kith(home.path(), &["--store", &store, "verify"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("problems: 0"), "{}", stdout(&out));
    let bad = kith(home.path(), &["--store", &store, "snapshot", "../escape"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("invalid snapshot name"),
        "{}",
        stderr(&bad)
    );
}
