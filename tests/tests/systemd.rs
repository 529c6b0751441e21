//! The agent as systemd runs it (`Type=notify`): READY=1 once it watches,
//! RELOADING=1 then READY=1 around a SIGHUP, STOPPING=1 at SIGTERM, over a
//! socket standing in for systemd's; and a `stop_command` that does not
//! inherit $NOTIFY_SOCKET.

use std::{os::unix::net::UnixDatagram, time::Duration};

use stopguard_tests::{Agent, Sandbox, root_test};

fn receive(manager: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = manager
        .recv(&mut buf)
        .expect("the agent tells the socket in NOTIFY_SOCKET within 10 s");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[test]
fn the_agent_tells_systemd_it_is_ready_reloading_and_stopping() {
    let Some(_probes) = root_test("the_agent_tells_systemd_it_is_ready_reloading_and_stopping")
    else {
        return;
    };
    let mut sandbox = Sandbox::new("notify");
    let path = sandbox.dir.join("notify");
    let manager = UnixDatagram::bind(&path).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let env_file = sandbox.dir.join("stop-env");
    let config = sandbox.config(
        "alert",
        "",
        &format!(
            "stop_command = [\"/bin/sh\", \"-c\", \"env > {}\"]",
            env_file.display()
        ),
    );
    sandbox.agent = Some(Agent::start_with(
        &sandbox.dir.join("stopguard.toml"),
        &config,
        |cmd| {
            cmd.env("NOTIFY_SOCKET", &path)
                .env("WATCHDOG_USEC", "600000000");
        },
    ));
    let pid = sandbox.agent.as_ref().unwrap().pid() as i32;
    assert_eq!(
        receive(&manager),
        "READY=1\nSTATUS=watching 1 service (sgdaemon)"
    );
    assert_eq!(
        receive(&manager),
        "WATCHDOG=1",
        "the first ping comes at once"
    );

    unsafe { libc::kill(pid, libc::SIGHUP) };
    let reloading = receive(&manager);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    assert_eq!(
        receive(&manager),
        "READY=1\nSTATUS=watching 1 service (sgdaemon)"
    );

    sandbox.ok(&["stop", "sgdaemon"]);
    let env = std::fs::read_to_string(&env_file).unwrap();
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC"] {
        assert!(
            !env.lines().any(|l| l.starts_with(&format!("{var}="))),
            "stop_command inherited {var}:\n{env}"
        );
    }

    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(receive(&manager), "STOPPING=1");
}
