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

/// Under systemd, stderr is the journal's stream: lines carry their syslog
/// priority. A stderr that is not the stream named by $JOURNAL_STREAM (a
/// child's redirected stderr) gets plain lines.
#[test]
fn errors_carry_their_priority_when_stderr_is_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let path = std::env::temp_dir().join(format!("stopguard-journal-{}", std::process::id()));
    let stream = std::fs::File::create(&path).unwrap();
    let meta = stream.metadata().unwrap();
    let status = Command::new(stopguard_bin())
        .args(["run", "--config", "/nonexistent/stopguard.toml"])
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stderr(stream)
        .status()
        .unwrap();
    let written = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        written.trim(),
        "<3>stopguard: reading /nonexistent/stopguard.toml: No such file or directory (os error 2)"
    );

    let out = Command::new(stopguard_bin())
        .args(["run", "--config", "/nonexistent/stopguard.toml"])
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("stopguard: reading"),
        "{out:?}"
    );
}

#[test]
fn a_bad_ring_size_is_refused_before_anything_loads() {
    let (code, _, stderr) = run(&["trace", "--ring-bytes", "5000"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr.trim(),
        "stopguard: ring buffer size 5000 is not a power of two from 4096 bytes to 256 MiB"
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

/// What `check-config` calls valid, `run` can start with: both refuse, with
/// the same words, what the host cannot give the agent.
#[test]
fn check_config_and_run_refuse_the_same_unusable_settings() {
    let dir = std::env::temp_dir().join(format!("stopguard-cli-host-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("open")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("open"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let d = dir.display();
    let agent = format!(
        "[agent]\nstate_dir = \"{d}/state\"\naudit_log = \"{d}/audit.jsonl\"\nsocket = \"{d}/sock\"\n"
    );
    let long = "x".repeat(120);
    for (extra, expected) in [
        (
            "[[sink]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\nsecret_file = \"/nonexistent/secret\"\n".to_string(),
            "reading secret_file /nonexistent/secret",
        ),
        (
            "[[sink]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\nsecret_env = \"STOPGUARD_TEST_UNSET_SECRET\"\n".to_string(),
            "secret_env `STOPGUARD_TEST_UNSET_SECRET` is not set",
        ),
        (
            format!("{agent}control_group = \"no-such-group-sg\"\n"),
            "group `no-such-group-sg` does not exist",
        ),
        (
            agent.replace(&format!("{d}/sock"), &format!("{d}/{long}.sock")),
            "a Unix socket path holds at most 107",
        ),
        (
            agent.replace(&format!("{d}/state"), &format!("{d}/open")),
            "writable by everyone",
        ),
    ] {
        let text = if extra.starts_with("[[sink]]") {
            format!("{agent}\n{extra}")
        } else {
            extra
        };
        let file = dir.join("host.toml");
        std::fs::write(&file, &text).unwrap();
        let path = file.to_str().unwrap();
        let (code, _, check) = run(&["check-config", path]);
        assert_eq!(code, Some(1), "check-config took:\n{text}\n{check}");
        assert!(check.contains(expected), "{check}");
        let (code, _, started) = run(&["run", "--config", path]);
        assert_eq!(code, Some(1), "run took:\n{text}\n{started}");
        assert!(started.contains(expected), "{started}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn completions_and_manual_pages_cover_every_command() {
    let (code, bash, stderr) = run(&["completions", "bash"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(bash.contains("complete -F _stopguard"), "{bash}");
    assert!(
        bash.contains("stopguard__subcmd__window__subcmd__open"),
        "subcommands completed: {bash}"
    );
    let (code, _, stderr) = run(&["completions", "tcsh"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("invalid value 'tcsh'"), "{stderr}");

    let dir = std::env::temp_dir().join(format!("stopguard-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (code, listed, stderr) = run(&["man", dir.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    assert_eq!(listed.lines().count(), pages.len(), "{listed}");
    for page in [
        "stopguard.8",
        "stopguard-run.8",
        "stopguard-window-open.8",
        "stopguard-alert-test.8",
        "stopguard-completions.8",
    ] {
        assert!(pages.iter().any(|p| p == page), "{page} missing: {pages:?}");
    }
    assert!(
        !pages.iter().any(|p| p.contains("-man.")),
        "the hidden command has no page"
    );
    let root = std::fs::read_to_string(dir.join("stopguard.8")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(root.contains(".TH stopguard 8"), "{root}");
    for section in [
        "SUBCOMMANDS",
        "EXAMPLES",
        "FILES",
        "/etc/stopguard/stopguard.toml",
    ] {
        assert!(root.contains(section), "{section} missing:\n{root}");
    }
}
