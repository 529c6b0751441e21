//! s6: s6-supervise restarts its service; `s6-svc` takes one-letter flags:
//! -d down, -u up, -o once, -r restart, -t and -k signals that end it.

use super::{Control, Intent, Subject, Supervisor, Watcher, flags, watch};

pub const S6: Supervisor = Supervisor {
    name: "s6",
    comms: &["s6-supervise"],
    control: &[Control {
        comm: "s6-svc",
        intent: s6_svc,
        units: None,
    }],
    watching: Some(watching),
};

fn s6_svc(args: &[String]) -> Intent {
    flags(args, |flag| match flag {
        'd' | 't' | 'k' => Some(Intent::Stop),
        'u' | 'o' => Some(Intent::Start),
        'r' => Some(Intent::Restart),
        _ => None,
    })
}

/// The s6-supervise that runs the service, and what `s6-svstat` says of it.
fn watching(subject: &Subject) -> Vec<Watcher> {
    watch::Supervise {
        supervisor: S6.name,
        comm: "s6-supervise",
        status: &["s6-svstat"],
        control: "s6-svc",
        down: "-d",
        up: "-u",
    }
    .watching(subject)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisors::args;

    #[test]
    fn s6_svc_flags() {
        let svc = |a: &[&str]| s6_svc(&args(a));
        assert_eq!(svc(&["-d", "/run/s6/pg"]), Intent::Stop);
        assert_eq!(svc(&["-wd", "/run/s6/pg"]), Intent::Stop);
        assert_eq!(svc(&["-k", "/run/s6/pg"]), Intent::Stop);
        assert_eq!(svc(&["-u", "/run/s6/pg"]), Intent::Start);
        assert_eq!(svc(&["-o", "/run/s6/pg"]), Intent::Start);
        assert_eq!(svc(&["-r", "/run/s6/pg"]), Intent::Restart);
        assert_eq!(svc(&["-h", "/run/s6/pg"]), Intent::Other, "a reload");
        assert_eq!(svc(&["down"]), Intent::Other, "flags, not verbs");
    }
}
