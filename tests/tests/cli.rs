//! The command line: help with examples, clear errors on bad input. No root.

use std::process::Command;

use stopguard_tests::stopguard_bin;

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(stopguard_bin()).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_command_has_help_with_examples() {
    for args in [&["--help"][..], &["trace", "--help"], &["run", "--help"]] {
        let (code, stdout, _) = run(args);
        assert_eq!(code, Some(0), "{args:?}");
        assert!(stdout.contains("Examples (as root):"), "{args:?}: {stdout}");
        assert!(stdout.contains("  stopguard "), "{args:?}: {stdout}");
    }
}

#[test]
fn run_refuses_a_missing_config_file() {
    let (code, _, stderr) = run(&["run", "--config", "/nonexistent/stopguard.toml"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr.trim(),
        "stopguard: reading /nonexistent/stopguard.toml: No such file or directory (os error 2)"
    );
}

#[test]
fn run_refuses_a_bad_config_naming_line_and_key() {
    let dir = std::env::temp_dir().join(format!("stopguard-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "[[service]]\nname = \"postgres\"\nexe = [\"/usr/bin/postgres\"]\non_respwan = \"freeze\"\n",
    )
    .unwrap();
    let (code, _, stderr) = run(&["run", "--config", file.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("reading {}", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("line 4"), "{stderr}");
    assert!(stderr.contains("unknown field `on_respwan`"), "{stderr}");
}

#[test]
fn a_bad_ring_size_is_refused_before_anything_loads() {
    let (code, _, stderr) = run(&["trace", "--ring-bytes", "5000"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr.trim(),
        "stopguard: ring buffer size 5000 is not a power of two of at least 4096 bytes"
    );
}

#[test]
fn check_config_says_what_it_watches_or_where_it_is_wrong() {
    let dir = std::env::temp_dir().join(format!("stopguard-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "[agent]\nhost = \"db-3\"\n[[service]]\nname = \"postgres\"\nexe = [\"/usr/lib/postgresql/*/bin/postgres\"]\non_respawn = \"kill\"\n",
    )
    .unwrap();
    let (code, stdout, stderr) = run(&["check-config", good.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("valid; host db-3"), "{stdout}");
    assert!(
        stdout.contains("in a window: Kill, otherwise: Alert"),
        "{stdout}"
    );
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[service]]\nname = \"pg\"\nexe = [\"/x\"]\non_respawn = \"thaw\"\n",
    )
    .unwrap();
    let (code, _, stderr) = run(&["check-config", bad.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(code, Some(1));
    assert!(stderr.contains("line 4"), "{stderr}");
    assert!(stderr.contains("unknown variant `thaw`"), "{stderr}");
}
