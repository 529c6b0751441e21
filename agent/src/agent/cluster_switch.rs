//! `stop --and-pause --cluster`: Patroni's maintenance mode switched on
//! once for a whole cluster window (not by each host), carried in the
//! window's record, and switched off again by whoever ends the window: the
//! host that closes it for the cluster, or the host that switched it on
//! when the closing host cannot (no such user or program there) or nobody
//! closed it (its lease ran out). Every run, and every run that could not
//! be, is audited.

use std::{ffi::CString, path::Path, time::Duration};

use super::{
    Agent,
    fleet_requests::{FLEET_OFF, open_asked, who},
    stop::{credentials_of, run_switch},
};
use crate::{
    audit::{AgentEvent, AuditLog},
    control::{OpenClusterWindow, Peer, server::Answer, server::Reply},
    detect::SwitchedOff,
    fleet::records::{ClusterSwitch, Verdict, WindowRecord},
    monitor::Monitor,
    supervisors::{
        bounded::{Credentials, SwitchRun},
        patroni::PATRONI,
        watch::{Watcher, shell_words},
    },
    sys::identity::user_name,
};

/// How long a closing host waits for every host to let go of the window
/// before it switches Patroni back on.
pub(super) const LET_GO: Duration = Duration::from_secs(10);

impl Agent {
    /// `window open --cluster` for `stop --and-pause --cluster`: refused
    /// unless Patroni would start the service again on this host (and this
    /// host is among the window's); then the window, carrying Patroni's
    /// switch, and `patronictl pause` run once, as Patroni's user. A pause
    /// that fails is taken out of the record: nobody is to resume it.
    pub(super) fn open_cluster_paused(
        &mut self,
        monitor: &mut Monitor,
        open: OpenClusterWindow,
        peer: Peer,
    ) -> Reply<OpenClusterWindow> {
        let Some(fleet) = &self.fleet else {
            return Answer::refuse(FLEET_OFF);
        };
        let cluster = fleet.cluster().clone();
        if glob::Pattern::new(&open.hosts).is_ok_and(|p| !p.matches(&self.host)) {
            return Answer::refuse(format!(
                "--hosts `{}` does not match this host ({}), whose {} it stops",
                open.hosts, self.host, open.service
            ));
        }
        let (_, subject, main) = match self.explanation(monitor, &open.service) {
            Ok(explained) => explained,
            Err(why) => return Answer::refuse(why),
        };
        let watchers = self.watchers.clone();
        let by = who(peer, &self.host);
        let audit = self.audit.clone();
        Answer::later(async move {
            let found = tokio::task::spawn_blocking(move || {
                let mut subject = subject;
                watchers.look(&mut subject, main)
            })
            .await
            .unwrap_or_default();
            let switch = patroni_switch(&found, &open.service)?;
            let name = cluster.name.clone();
            let (store, carried) = (cluster.clone(), switch.clone());
            let opened =
                tokio::task::spawn_blocking(move || open_asked(&store, &open, by, Some(carried)))
                    .await;
            let mut opened = match opened {
                Ok(Ok(opened)) => opened,
                Ok(Err(e)) => return Err(format!("{e:#}")),
                Err(e) => return Err(e.to_string()),
            };
            let SwitchedOff {
                supervisor,
                off,
                run_as,
                ..
            } = &switch.switch;
            let run = run_switch(supervisor, off, peer.loginuid, run_as.as_ref()).await;
            audit.write(switched(
                &opened.window,
                &name,
                &run,
                false,
                peer.loginuid,
                run_as,
            ));
            if run.error.is_some() {
                let window = opened.window.clone();
                let dropped =
                    tokio::task::spawn_blocking(move || cluster.drop_switch(&window)).await;
                if !matches!(dropped, Ok(Ok(()))) {
                    tracing::warn!(
                        "cluster window {}: `{}` failed, yet its record still says to resume it",
                        opened.window.id,
                        run.command
                    );
                }
            }
            opened.paused = Some(run);
            Ok(opened)
        })
    }

    /// A window record seen: one this host switched Patroni off for is
    /// remembered until the window ends; when it is closed by a host that
    /// cannot switch Patroni back on, this host does.
    pub(super) fn track_switch(&mut self, id: &str, record: &WindowRecord, verdict: &Verdict) {
        let Some(fleet) = &mut self.fleet else { return };
        let ours = record.by.host == self.host && !matches!(verdict, Verdict::Refuse(_));
        if !ours || record.switch.is_none() {
            fleet.switched.remove(id);
            return;
        }
        match &record.closing {
            None => {
                fleet.switched.insert(id.to_string(), record.clone());
            }
            Some(closing) => {
                fleet.switched.remove(id);
                if !closing.switches_on {
                    self.resume_cluster(record.clone());
                }
            }
        }
    }

    /// Window `id` gone from etcd with no closer that switched its Patroni
    /// back on (its lease ran out, or it went while this host was away):
    /// this host, which switched it off, switches it back on.
    pub(super) fn switch_gone(&mut self, id: &str) {
        let Some(fleet) = &mut self.fleet else { return };
        if let Some(record) = fleet.switched.remove(id) {
            self.resume_cluster(record);
        }
    }

    fn resume_cluster(&self, record: WindowRecord) {
        let Some(fleet) = &self.fleet else { return };
        let (audit, name) = (self.audit.clone(), fleet.cluster().name.clone());
        tokio::spawn(async move {
            let Some(switch) = &record.switch else { return };
            let here = runs_here(switch);
            let _ = switch_on(&audit, &name, &record, here, record.by.loginuid).await;
        });
    }
}

/// The Patroni among `found` (what watches the service here) whose
/// maintenance mode keeps it from starting the service again, with the
/// credentials its switches run with; why not when there is none.
fn patroni_switch(found: &[Watcher], service: &str) -> Result<ClusterSwitch, String> {
    let Some(watcher) = found
        .iter()
        .find(|w| w.supervisor == PATRONI.name && w.trusted)
    else {
        return Err(format!(
            "{service} is not under Patroni on this host: --cluster --and-pause pauses \
             Patroni for the whole cluster; `stopguard explain {service}` says what \
             would start it again here"
        ));
    };
    if !watcher.would_restart {
        return Err(format!(
            "Patroni ({}) is {}: there is nothing to switch off",
            watcher.name, watcher.state
        ));
    }
    let (Some(off), Some(on)) = (watcher.off.clone(), watcher.on.clone()) else {
        return Err(format!("no switch is known for Patroni ({})", watcher.name));
    };
    let run_as = credentials_of(watcher).map_err(|e| format!("Patroni ({}): {e}", watcher.name))?;
    Ok(ClusterSwitch {
        user: run_as.as_ref().and_then(|c| user_name(c.uid)),
        switch: SwitchedOff {
            supervisor: watcher.supervisor.clone(),
            off,
            on,
            run_as,
        },
    })
}

/// The credentials a cluster switch runs with on this host: its user's
/// as this host knows them (none for root); why it cannot run here when
/// this host has no such user, program or config file.
pub(super) fn runs_here(switch: &ClusterSwitch) -> Result<Option<Credentials>, String> {
    let argv = &switch.switch.on;
    let program = argv.first().map(String::as_str).unwrap_or_default();
    if !on_path(program) {
        return Err(format!("no `{program}` on this host"));
    }
    if let Some(at) = argv.iter().position(|a| a == "-c")
        && let Some(file) = argv.get(at + 1)
        && !Path::new(file).exists()
    {
        return Err(format!("no {file} on this host"));
    }
    // Ids from another host's record name nobody here: only a user name
    // is looked up, and no name with ids is refused rather than guessed.
    let Some(name) = &switch.user else {
        return match &switch.switch.run_as {
            None => Ok(None),
            Some(c) => Err(format!(
                "its user (uid {}) has no name to look up on this host",
                c.uid
            )),
        };
    };
    let user = nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .ok_or_else(|| format!("no user `{name}` on this host"))?;
    let groups = CString::new(name.as_str())
        .ok()
        .and_then(|c| nix::unistd::getgrouplist(&c, user.gid).ok())
        .unwrap_or_default();
    let credentials = Credentials {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups: groups.into_iter().map(|g| g.as_raw()).collect(),
    };
    Ok(Some(credentials).filter(|c| !c.is_root()))
}

/// Whether `program` is a file here: a path, or a name on `PATH`.
fn on_path(program: &str) -> bool {
    if program.is_empty() {
        return false;
    }
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
}

/// Switches a cluster window's supervisor back on here, with `here`'s
/// credentials, as `loginuid`; audited. Err: it could not run here (the
/// run says why).
pub(super) async fn switch_on(
    audit: &AuditLog,
    cluster: &str,
    window: &WindowRecord,
    here: Result<Option<Credentials>, String>,
    loginuid: Option<u32>,
) -> Result<SwitchRun, SwitchRun> {
    let Some(switch) = &window.switch else {
        return Err(SwitchRun {
            supervisor: String::new(),
            command: String::new(),
            error: Some("the window carries no switch".into()),
        });
    };
    let SwitchedOff { supervisor, on, .. } = &switch.switch;
    let (run, ran) = match &here {
        Ok(run_as) => (
            run_switch(supervisor, on, loginuid, run_as.as_ref()).await,
            true,
        ),
        Err(why) => (
            SwitchRun {
                supervisor: supervisor.clone(),
                command: shell_words(on),
                error: Some(why.clone()),
            },
            false,
        ),
    };
    tracing::info!(
        "cluster window {}: {}",
        window.id,
        run.line("switched back on")
    );
    let run_as = here.ok().flatten();
    audit.write(switched(window, cluster, &run, true, loginuid, &run_as));
    if ran { Ok(run) } else { Err(run) }
}

/// The audit entry of a cluster window's switch run (`on`: back on).
fn switched(
    window: &WindowRecord,
    cluster: &str,
    run: &SwitchRun,
    on: bool,
    loginuid: Option<u32>,
    run_as: &Option<Credentials>,
) -> AgentEvent {
    AgentEvent::SupervisorSwitched {
        service: window.service.clone(),
        window: window.id.clone(),
        supervisor: run.supervisor.clone(),
        on,
        command: run.command.clone(),
        loginuid,
        error: run.error.clone(),
        uid: run_as.as_ref().map(|c| c.uid),
        cluster: Some(cluster.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn switch(program: &str, config: &str, user: Option<&str>) -> ClusterSwitch {
        let argv = |verb: &str| {
            [program, "-c", config, verb, "--wait"]
                .iter()
                .map(|w| w.to_string())
                .collect()
        };
        ClusterSwitch {
            switch: SwitchedOff {
                supervisor: "patroni".into(),
                off: argv("pause"),
                on: argv("resume"),
                run_as: None,
            },
            user: user.map(str::to_string),
        }
    }

    #[test]
    fn a_host_without_the_user_or_the_program_says_so() {
        let here = |s: ClusterSwitch| runs_here(&s);
        assert_eq!(
            here(switch("/bin/true", "/etc/hostname", Some("root"))),
            Ok(None),
            "root runs as root"
        );
        let err = here(switch(
            "/bin/true",
            "/etc/hostname",
            Some("no-such-user-sg"),
        ));
        assert_eq!(err, Err("no user `no-such-user-sg` on this host".into()));
        let err = here(switch("no-such-program-sg", "/etc/hostname", None));
        assert_eq!(err, Err("no `no-such-program-sg` on this host".into()));
        let err = here(switch("/bin/true", "/nonexistent/patroni.yml", None));
        assert_eq!(err, Err("no /nonexistent/patroni.yml on this host".into()));
        let mut nameless = switch("/bin/true", "/etc/hostname", None);
        nameless.switch.run_as = Some(Credentials {
            uid: 4242,
            gid: 4242,
            groups: vec![],
        });
        assert_eq!(
            here(nameless),
            Err("its user (uid 4242) has no name to look up on this host".into()),
            "a record's ids are not taken as this host's"
        );
    }

    #[test]
    fn only_a_patroni_that_would_restart_it_is_switched() {
        let patroni = |would_restart, trusted| Watcher {
            supervisor: "patroni".into(),
            pid: None,
            name: "demo".into(),
            would_restart,
            state: if would_restart {
                "active"
            } else {
                "paused (maintenance mode)"
            }
            .into(),
            how: String::new(),
            off: Some(vec!["patronictl".into(), "pause".into(), "--wait".into()]),
            on: Some(vec!["patronictl".into(), "resume".into(), "--wait".into()]),
            off_stops: false,
            uid: None,
            trusted,
        };
        let switch = patroni_switch(&[patroni(true, true)], "postgres").unwrap();
        assert_eq!(switch.switch.on[1], "resume");
        assert_eq!(switch.user, None, "no process: root");
        let none = patroni_switch(&[], "postgres").unwrap_err();
        assert!(none.contains("not under Patroni"), "{none}");
        let untrusted = patroni_switch(&[patroni(true, false)], "postgres").unwrap_err();
        assert!(untrusted.contains("not under Patroni"), "{untrusted}");
        let paused = patroni_switch(&[patroni(false, true)], "postgres").unwrap_err();
        assert!(paused.contains("nothing to switch off"), "{paused}");
    }
}
