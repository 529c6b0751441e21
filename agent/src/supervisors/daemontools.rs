//! daemontools: supervise restarts its service; `svc` takes one-letter
//! flags: -d down, -u up, -o once, -t and -k signals that end it (-p, -c,
//! -h, -a, -i send other signals, -x makes supervise exit).

use super::{Control, Intent, Subject, Supervisor, Watcher, flags, watch};

pub const DAEMONTOOLS: Supervisor = Supervisor {
    name: "daemontools",
    comms: &["supervise"],
    control: &[Control {
        comm: "svc",
        intent: svc,
        units: None,
    }],
    watching: Some(watching),
};

fn svc(args: &[String]) -> Intent {
    flags(args, |flag| match flag {
        'd' | 't' | 'k' => Some(Intent::Stop),
        'u' | 'o' => Some(Intent::Start),
        _ => None,
    })
}

/// The supervise that runs the service, and what `svstat` says of it.
fn watching(subject: &Subject) -> Vec<Watcher> {
    watch::Supervise {
        supervisor: DAEMONTOOLS.name,
        comm: "supervise",
        status: &["svstat"],
        control: "svc",
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
    fn svc_flags() {
        let of = |a: &[&str]| svc(&args(a));
        assert_eq!(of(&["-d", "/service/pg"]), Intent::Stop);
        assert_eq!(of(&["-dx", "/service/pg"]), Intent::Stop);
        assert_eq!(of(&["-t", "/service/pg"]), Intent::Stop);
        assert_eq!(of(&["-u", "/service/pg"]), Intent::Start);
        assert_eq!(of(&["-o", "/service/pg"]), Intent::Start);
        assert_eq!(of(&["-h", "/service/pg"]), Intent::Other, "a reload");
        assert_eq!(
            Intent::of("svc", &args(&["svc", "-d", "/service/pg"])),
            Intent::Stop,
            "registered"
        );
    }
}
