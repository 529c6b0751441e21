//! A hostile local user and a tampered disk: an unprivileged user (made by
//! the test) who runs fake supervisors, config files that are devices,
//! FIFOs or links into root's directories, endpoints that drip a byte a
//! second and command lines full of chat markup and terminal escapes; and
//! a saved state edited to name other processes. Each test is one defect
//! found by probing the built agent: none of it may make the agent act as
//! root for the user, hang, grow, obey markup or touch what is not its own.

use std::{
    fs,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use stopguard_tests::{
    Receiver, Sandbox, bash, free_port, operator_kill, peak_rss_kib, person, root_test, sinks,
    stat_fields, stopguard_bin,
};

/// The unprivileged user the tests act as: created once, kept.
const USER: &str = "sg-hostile";

/// The hostile user's uid and gid, creating the user if need be.
fn hostile_user() -> (u32, u32) {
    bash(&format!(
        "id -u {USER} >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin {USER}"
    ));
    let id = |flag: &str| bash(&format!("id {flag} {USER}")).trim().parse().unwrap();
    (id("-u"), id("-g"))
}

/// A directory of the hostile user's own inside the sandbox.
fn home(sandbox: &Sandbox) -> PathBuf {
    let (uid, gid) = hostile_user();
    let home = sandbox.dir.join("home");
    fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(uid), Some(gid)).unwrap();
    fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).unwrap();
    home
}

/// A file the hostile user writes: owned by them, `mode`.
fn user_file(path: &Path, text: &str, mode: u32) {
    let (uid, gid) = hostile_user();
    fs::write(path, text).unwrap();
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// What the hostile user runs, in a process group of its own, ended (the
/// whole group) when dropped.
struct Theirs(Child);

impl Theirs {
    fn run(program: &Path, args: &[&str]) -> Theirs {
        let (uid, gid) = hostile_user();
        let child = Command::new(program)
            .args(args)
            .uid(uid)
            .gid(gid)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("running {} as {USER}: {e}", program.display()));
        Theirs(child)
    }
}

impl Drop for Theirs {
    fn drop(&mut self) {
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// A fake supervisor: a shell script named `name` in the user's home that
/// runs the watched program (its copy in the sandbox, which anyone may
/// run) as its child when `runs_service`, else sleeps.
fn fake_supervisor(sandbox: &Sandbox, name: &str, runs_service: bool) -> PathBuf {
    let home = home(sandbox);
    let script = home.join(name);
    let body = if runs_service {
        format!(
            "{} {}/data-{name} &\nwait\n",
            sandbox.dir.join("bin/sgdaemon").display(),
            home.display()
        )
    } else {
        "while :; do sleep 1; done\n".to_string()
    };
    user_file(&script, &format!("#!/bin/sh\n{body}"), 0o755);
    script
}

/// The pid of the watched program the hostile user's supervisor started,
/// once it has written its start line.
fn their_daemon(sandbox: &Sandbox, name: &str) -> u32 {
    let data = home(sandbox).join(format!("data-{name}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = fs::read_to_string(&data).unwrap_or_default();
        if let Some(pid) = text
            .lines()
            .find_map(|l| l.strip_prefix("start ")?.trim().parse().ok())
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "{name} started no daemon");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP server the hostile user runs on loopback `port`: it notes every
/// connection in `log`; `drip` answers with an HTTP head, then one byte a
/// second, forever.
fn their_server(sandbox: &Sandbox, port: u16, drip: bool, log: &Path) -> Theirs {
    let script = home(sandbox).join(format!("server-{port}.py"));
    user_file(
        &script,
        &format!(
            r#"#!/usr/bin/python3
import socket, threading, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {port}))
s.listen(128)
def serve(c):
    with open("{log}", "a") as f:
        f.write("connection\n")
    try:
        if {drip}:
            c.sendall(b"HTTP/1.0 200 OK\r\n")
            while True:
                c.sendall(b"x")
                time.sleep(1)
        c.close()
    except OSError:
        pass
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#,
            log = log.display(),
            drip = if drip { "True" } else { "False" },
        ),
        0o755,
    );
    user_file(log, "", 0o666);
    let server = Theirs::run(&script, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the user's server did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // That connection was the test's own.
    std::thread::sleep(Duration::from_millis(200));
    fs::write(log, "").unwrap();
    server
}

/// `stopguard ARGS` against the sandbox's agent, or None when it has not
/// answered within `limit` (then it is killed).
fn within(sandbox: &Sandbox, args: &[&str], limit: Duration) -> Option<Output> {
    let mut child = Command::new(stopguard_bin())
        .arg("--socket")
        .arg(sandbox.dir.join("sock"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(child.wait_with_output().unwrap())
}

/// `stopguard stop sgdaemon --and-pause`, answered within `limit`.
fn stop_and_pause(sandbox: &Sandbox, limit: Duration) -> Output {
    let args = [
        "stop",
        "sgdaemon",
        "--and-pause",
        "--reason",
        "hostile",
        "--wait",
        "10s",
    ];
    within(sandbox, &args, limit).expect("stop --and-pause did not answer")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// A directory only root may enter (0700), outside anything the user owns.
fn root_only(sandbox: &Sandbox) -> PathBuf {
    let dir = sandbox.dir.join("root-only");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

#[test]
fn a_fake_mysqld_safe_neither_creates_nor_deletes_files_as_root() {
    let Some(_probes) = root_test("a_fake_mysqld_safe_neither_creates_nor_deletes_files_as_root")
    else {
        return;
    };
    let mut sandbox = Sandbox::new("hostile-mysqld-safe");
    sandbox.start_agent("alert");
    let (uid, _) = hostile_user();
    let home = home(&sandbox);
    let secret = root_only(&sandbox);
    // Its pid file's directory is a link into root's directory.
    std::os::unix::fs::symlink(&secret, home.join("d")).unwrap();
    bash(&format!("chown -h {USER} {}", home.join("d").display()));
    let safe = fake_supervisor(&sandbox, "mysqld_safe", true);
    let pid_file = format!("--pid-file={}/d/evil", home.display());
    let _safe = Theirs::run(&safe, &[&pid_file]);
    let daemon = their_daemon(&sandbox, "mysqld_safe");

    let explained = text(&sandbox.client(&["explain", "sgdaemon"]));
    assert!(
        explained.contains(&format!("runs as {}", person(uid))),
        "explain does not say whose mysqld_safe it is:\n{explained}"
    );
    let out = stop_and_pause(&sandbox, Duration::from_secs(40));
    assert!(
        !secret.join("evil.shutdown").exists(),
        "`touch` ran as root for the user's mysqld_safe:\n{}",
        text(&out)
    );
    assert!(
        text(&out).contains("NOT switched off"),
        "the refused switch is not reported:\n{}",
        text(&out)
    );
    // A root-owned file where the link points, which the switch back on
    // (`rm -f`) must not delete.
    fs::write(secret.join("evil.shutdown"), "root's").unwrap();
    let _ = within(
        &sandbox,
        &["window", "close", "sgdaemon"],
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        secret.join("evil.shutdown").exists(),
        "`rm -f` ran as root for the user's mysqld_safe: {:#?}",
        sandbox.audit()
    );
    unsafe { libc::kill(daemon as i32, libc::SIGKILL) };
}

#[test]
fn a_users_patroni_config_reaches_neither_root_commands_nor_the_agents_probe() {
    let Some(_probes) =
        root_test("a_users_patroni_config_reaches_neither_root_commands_nor_the_agents_probe")
    else {
        return;
    };
    let mut sandbox = Sandbox::new("hostile-patroni-config");
    sandbox.start_runsv();
    sandbox.start_agent("alert");
    let (uid, _) = hostile_user();
    let home = home(&sandbox);
    let port = free_port();
    let log = home.join("connections");
    let _server = their_server(&sandbox, port, false, &log);
    // The service's own data directory, and the user's addresses for the
    // REST API and the DCS.
    let config = home.join("evil.yml");
    user_file(
        &config,
        &format!(
            "scope: evil\nrestapi:\n  connect_address: 127.0.0.1:{port}\netcd:\n  host: 127.0.0.1:{port}\npostgresql:\n  data_dir: {}\n",
            sandbox.dir.join("sv").display()
        ),
        0o644,
    );
    let patroni = fake_supervisor(&sandbox, "patroni", false);
    let _patroni = Theirs::run(&patroni, &[config.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(300));

    let explained = text(&sandbox.client(&["explain", "sgdaemon"]));
    assert!(
        explained.contains(&format!("not trusted (owned by {})", person(uid))),
        "explain does not mark the user's patroni as not trusted:\n{explained}"
    );
    let out = stop_and_pause(&sandbox, Duration::from_secs(90));
    let connections = fs::read_to_string(&log).unwrap();
    assert!(
        connections.is_empty(),
        "the agent or a command it ran reached the user's address:\n{}\n{}",
        text(&out),
        sandbox.agent.as_ref().unwrap().log()
    );
    assert!(
        !text(&out).contains("patroni switched off"),
        "{}",
        text(&out)
    );
    sandbox.ok(&["window", "close", "sgdaemon"]);
}

#[test]
fn a_config_that_is_a_device_or_a_fifo_neither_grows_nor_hangs_the_agent() {
    let Some(_probes) =
        root_test("a_config_that_is_a_device_or_a_fifo_neither_grows_nor_hangs_the_agent")
    else {
        return;
    };
    let mut sandbox = Sandbox::new("hostile-config-device");
    sandbox.start_agent("alert");
    let home = home(&sandbox);
    let fifo = home.join("fifo");
    bash(&format!(
        "mkfifo {f} && chown {USER} {f}",
        f = fifo.display()
    ));
    // One runs the service, so the user's patronis are the service's
    // user's: trusted, their configs read.
    let zero = fake_supervisor(&sandbox, "patroni", true);
    let _zero = Theirs::run(&zero, &["/dev/zero"]);
    let daemon = their_daemon(&sandbox, "patroni");
    let other = home.join("other");
    fs::create_dir_all(&other).unwrap();
    let waiting = other.join("patroni");
    user_file(&waiting, "#!/bin/sh\nwhile :; do sleep 1; done\n", 0o755);
    let _fifo = Theirs::run(&waiting, &[fifo.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(300));

    let agent = sandbox.agent.as_ref().unwrap().pid();
    let before = peak_rss_kib(agent) / 1024;
    let out = within(&sandbox, &["explain", "sgdaemon"], Duration::from_secs(20))
        .expect("explain hung on a config that is a FIFO or /dev/zero");
    assert!(text(&out).contains("sgdaemon: running"), "{}", text(&out));
    let after = peak_rss_kib(agent) / 1024;
    assert!(
        after < before + 64,
        "the agent grew from {before} MiB to {after} MiB reading a config"
    );
    unsafe { libc::kill(daemon as i32, libc::SIGKILL) };
}

#[test]
fn a_dripping_patroni_endpoint_delays_neither_explain_much_nor_status_at_all() {
    let Some(_probes) =
        root_test("a_dripping_patroni_endpoint_delays_neither_explain_much_nor_status_at_all")
    else {
        return;
    };
    let mut sandbox = Sandbox::new("hostile-drip");
    sandbox.start_agent("alert");
    let home = home(&sandbox);
    let port = free_port();
    let _server = their_server(&sandbox, port, true, &home.join("connections"));
    let config = home.join("patroni.yml");
    user_file(
        &config,
        &format!("scope: drip\nrestapi:\n  connect_address: 127.0.0.1:{port}\n"),
        0o644,
    );
    let patroni = fake_supervisor(&sandbox, "patroni", true);
    let _patroni = Theirs::run(&patroni, &[config.to_str().unwrap()]);
    let daemon = their_daemon(&sandbox, "patroni");

    // Clients that ask and give up.
    let mut gone: Vec<Child> = (0..40)
        .map(|_| {
            Command::new(stopguard_bin())
                .arg("--socket")
                .arg(sandbox.dir.join("sock"))
                .args(["explain", "sgdaemon"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for client in &mut gone {
        let _ = client.kill();
        let _ = client.wait();
    }
    for args in [&["status"][..], &["window", "list"], &["thaw", "999999"]] {
        let started = Instant::now();
        let out = within(&sandbox, args, Duration::from_secs(5));
        assert!(
            out.is_some(),
            "`stopguard {}` waited behind the probes for over 5 s",
            args.join(" ")
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    let started = Instant::now();
    let out = within(&sandbox, &["explain", "sgdaemon"], Duration::from_secs(25))
        .expect("explain did not answer within 25 s");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "explain took {:?}: {}",
        started.elapsed(),
        text(&out)
    );
    unsafe { libc::kill(daemon as i32, libc::SIGKILL) };
}

/// Chat markup and terminal escapes, as a command line or a reason holds
/// them.
const MARKUP: &str = "<!channel> @here <https://evil.example|click> [x](https://evil.example)";

#[test]
fn chat_markup_in_what_people_and_processes_wrote_is_shown_not_obeyed() {
    let Some(_probes) =
        root_test("chat_markup_in_what_people_and_processes_wrote_is_shown_not_obeyed")
    else {
        return;
    };
    let receiver = Receiver::start();
    let mut sandbox = Sandbox::new("hostile-markup");
    let running = sandbox.start_runsv();
    let extra = sinks(
        &receiver,
        &[("slack", "/slack", ""), ("teams", "/teams", "")],
    );
    sandbox.start_agent_with("alert", "", &extra);
    sandbox.ok(&["window", "open", "sgdaemon", "--reason", MARKUP]);
    operator_kill(running);
    let got = receiver.wait_for(2, Duration::from_secs(15));
    let body = |path: &str| -> Value {
        got.iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("nothing at {path}: {got:#?}"))
            .json()
    };
    let slack = body("/slack").to_string();
    for raw in ["<!channel>", "<https://evil.example|click>"] {
        assert!(!slack.contains(raw), "Slack obeys {raw}: {slack}");
    }
    assert!(slack.contains("&lt;!channel&gt;"), "{slack}");
    let teams = body("/teams").to_string();
    assert!(
        !teams.contains("[x](https://evil.example)"),
        "Teams renders the link: {teams}"
    );
    sandbox.ok(&["window", "close", "sgdaemon"]);
}

#[test]
fn terminal_escapes_in_argv_and_reasons_are_shown_not_obeyed() {
    let Some(_probes) = root_test("terminal_escapes_in_argv_and_reasons_are_shown_not_obeyed")
    else {
        return;
    };
    let mut sandbox = Sandbox::new("hostile-escapes");
    // The service's command line carries an OSC title and a screen clear.
    fs::write(
        sandbox.dir.join("sv/run"),
        format!(
            "#!/bin/sh\nexec {} {} \"$(printf '\\033]0;owned\\007\\033[2J\\nfake line')\"\n",
            sandbox.dir.join("bin/sgdaemon").display(),
            sandbox.dir.join("data").display()
        ),
    )
    .unwrap();
    sandbox.start_runsv();
    sandbox.start_agent("alert");
    let reason = "one\x1b]0;owned\x07\nfake: line";
    sandbox.ok(&["window", "open", "sgdaemon", "--reason", reason]);
    for args in [
        &["explain", "sgdaemon"][..],
        &["window", "list"],
        &["status"],
        &["audit"],
    ] {
        let out = text(&sandbox.client(args));
        assert!(
            !out.contains('\x1b') && !out.contains('\x07'),
            "`stopguard {}` prints raw escapes: {out:?}",
            args.join(" ")
        );
        assert!(
            !out.lines().any(|l| l.starts_with("fake")),
            "`stopguard {}` prints a forged line: {out:?}",
            args.join(" ")
        );
    }
    sandbox.ok(&["window", "close", "sgdaemon"]);
}

/// Where the cgroup v2 hierarchy is mounted.
fn cgroup2_root() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find_map(|l| {
            let (before, after) = l.split_once(" - ")?;
            (after.split_whitespace().next() == Some("cgroup2"))
                .then(|| PathBuf::from(before.split_whitespace().nth(4).unwrap()))
        })
        .expect("no cgroup v2 hierarchy is mounted")
}

/// A process of root's that is nothing of stopguard's.
fn bystander() -> Child {
    Command::new("sleep").arg("300").spawn().unwrap()
}

fn start_ticks(pid: u32) -> u64 {
    stat_fields(pid)[19].parse().unwrap()
}

#[test]
fn a_tampered_state_neither_kills_nor_moves_other_processes() {
    let Some(_probes) = root_test("a_tampered_state_neither_kills_nor_moves_other_processes")
    else {
        return;
    };
    let mut sandbox = Sandbox::new("hostile-state");
    sandbox.start_runsv();
    sandbox.start_agent("freeze");
    sandbox.ok(&["window", "open", "sgdaemon", "--reason", "upgrade"]);
    sandbox.agent.as_mut().unwrap().terminate();

    // Two of root's processes, one in a cgroup of its own outside
    // stopguard's tree.
    let mut killed = bystander();
    let mut moved = bystander();
    let cgroup = cgroup2_root().join(format!("sg-hostile-{}/inner", std::process::id()));
    fs::create_dir_all(&cgroup).unwrap();
    fs::write(cgroup.join("cgroup.procs"), moved.id().to_string()).unwrap();
    let path = sandbox.dir.join("state/state.json");
    let mut state: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    state["held"] = serde_json::json!([
        ["sgdaemon", {"pid": killed.id(), "start_ticks": start_ticks(killed.id()), "cgroup": null, "previous_cgroup": null}],
        ["sgdaemon", {"pid": moved.id(), "start_ticks": start_ticks(moved.id()), "cgroup": cgroup, "previous_cgroup": ""}],
    ]);
    fs::write(&path, state.to_string()).unwrap();
    sandbox.start_agent("freeze");

    let _ = sandbox.client(&["thaw", &moved.id().to_string()]);
    let _ = sandbox.client(&["window", "close", "sgdaemon", "--kill"]);
    std::thread::sleep(Duration::from_millis(300));
    let in_cgroup = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
    let moved_stays = in_cgroup.contains(&moved.id().to_string());
    let killed_lives = killed.try_wait().unwrap().is_none();
    let _ = (killed.kill(), moved.kill(), killed.wait(), moved.wait());
    let _ = fs::remove_dir(&cgroup);
    let _ = fs::remove_dir(cgroup.parent().unwrap());
    assert!(
        killed_lives,
        "window close --kill killed a process the state named"
    );
    assert!(
        moved_stays,
        "thaw moved a process out of a cgroup outside stopguard's tree"
    );
    let refused = sandbox
        .audit()
        .iter()
        .filter(|e| e["event"] == "saved_hold_refused")
        .count();
    assert_eq!(refused, 2, "{:#?}", sandbox.audit());
}

#[test]
fn a_reload_that_drops_a_service_keeps_its_held_respawn_in_status() {
    let Some(_probes) = root_test("a_reload_that_drops_a_service_keeps_its_held_respawn_in_status")
    else {
        return;
    };
    let mut sandbox = Sandbox::new("hostile-reload");
    let running = sandbox.start_runsv();
    sandbox.start_agent("freeze");
    operator_kill(running);
    let alert = sandbox
        .next_alert(Duration::from_secs(10))
        .expect("no alert for the respawn");
    let held = alert["process"]["pid"].as_u64().unwrap();
    // The service taken out of the configuration, reloaded.
    let config = sandbox.dir.join("stopguard.toml");
    let text = fs::read_to_string(&config)
        .unwrap()
        .replace("name = \"sgdaemon\"", "name = \"other\"")
        .replace("bin/sgdaemon\"]", "bin/other\"]");
    fs::write(&config, text).unwrap();
    unsafe { libc::kill(sandbox.agent.as_ref().unwrap().pid() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_secs(1));
    let status = sandbox.ok(&["status"]);
    assert!(
        status.contains(&held.to_string()),
        "status does not list the held pid {held}:\n{status}"
    );
    sandbox.ok(&["thaw", &held.to_string()]);
}

#[test]
fn small_things_read_right_and_nothing_is_left_behind() {
    let Some(_probes) = root_test("small_things_read_right_and_nothing_is_left_behind") else {
        return;
    };
    // An empty frozen cgroup left by a process that ended while no agent ran.
    let stale = cgroup2_root().join("stopguard/frozen-4194303");
    fs::create_dir_all(&stale).unwrap();
    let mut sandbox = Sandbox::new("hostile-small");
    let running = sandbox.start_runsv();
    sandbox.start_agent("alert");
    assert!(
        !stale.exists(),
        "an empty frozen cgroup outlives the agent's start"
    );
    // A respawn by no supervisor: runsv stopped first, then the operator's
    // stop, then a plain shell starts it again.
    let supervisor = sandbox.supervisor_pid().unwrap();
    unsafe { libc::kill(supervisor as i32, libc::SIGSTOP) };
    operator_kill(running);
    std::thread::sleep(Duration::from_millis(500));
    bash(&format!(
        "setsid {} {} </dev/null >/dev/null 2>&1 &",
        sandbox.dir.join("bin/sgdaemon").display(),
        sandbox.dir.join("data").display()
    ));
    let _ = sandbox.next_alert(Duration::from_secs(10));
    unsafe { libc::kill(supervisor as i32, libc::SIGCONT) };
    let audit = sandbox.ok(&["audit"]);
    assert!(
        !audit.contains("respawned no supervisor"),
        "the audit text reads wrong:\n{audit}"
    );
    assert!(audit.contains("with no supervisor known"), "{audit}");
}

#[test]
fn after_a_window_ends_the_next_stop_and_pause_switches_off_again() {
    let Some(_probes) = root_test("after_a_window_ends_the_next_stop_and_pause_switches_off_again")
    else {
        return;
    };
    let mut sandbox = Sandbox::new("hostile-pause-again");
    let mut running = sandbox.start_runsv();
    sandbox.start_agent("freeze");
    // Closed by hand, then by its expiry: either way the maintenance is
    // over, the supervisor is back on and the service runs again.
    for ending in ["close", "expiry"] {
        let mut args = vec![
            "stop",
            "sgdaemon",
            "--and-pause",
            "--reason",
            ending,
            "--wait",
            "10s",
        ];
        if ending == "expiry" {
            args.extend(["--for", "3s"]);
        }
        let out = text(&sandbox.client(&args));
        assert!(
            out.contains("runit switched off"),
            "stop --and-pause after the window's {ending} switched nothing off:\n{out}"
        );
        match ending {
            "close" => {
                let closed = sandbox.ok(&["window", "close", "sgdaemon"]);
                assert!(
                    closed.contains("runit switched back on")
                        && !closed.contains("NOT switched back on"),
                    "{closed}"
                );
            }
            _ => std::thread::sleep(Duration::from_secs(4)),
        }
        running = sandbox.wait_for_daemon(Some(running));
        std::thread::sleep(Duration::from_secs(1));
        let status = sandbox.json(&["status"]);
        assert_eq!(
            status["services"][0]["state"], "running",
            "after the window's {ending}: {status:#}"
        );
        assert_eq!(status["frozen"], serde_json::json!([]), "{status:#}");
    }
}
