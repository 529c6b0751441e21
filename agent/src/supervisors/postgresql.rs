//! PostgreSQL's own control tools: they stop and start the server, and
//! nothing of PostgreSQL's restarts it behind the operator's back.

use super::{Control, Supervisor, verb};

pub const POSTGRESQL: Supervisor = Supervisor {
    name: "postgresql",
    comms: &[],
    control: &[
        Control {
            comm: "pg_ctl",
            intent: verb,
        },
        Control {
            comm: "pg_ctlcluster",
            intent: verb,
        },
    ],
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisors::{Intent, args};

    #[test]
    fn pg_ctl_verbs_among_options() {
        let [pg_ctl, pg_ctlcluster] = POSTGRESQL.control else {
            panic!("pg_ctl and pg_ctlcluster");
        };
        let of = |c: &Control, a: &[&str]| (c.intent)(&args(a));
        // -o passes options, -t is a timeout: neither is a verb.
        assert_eq!(
            of(
                pg_ctl,
                &["-D", "/srv/pg", "-o", "-p 5433", "-t", "60", "stop"]
            ),
            Intent::Stop
        );
        assert_eq!(of(pg_ctl, &["start", "-D", "/srv/pg"]), Intent::Start);
        assert_eq!(of(pg_ctl, &["restart", "-m", "fast"]), Intent::Restart);
        assert_eq!(of(pg_ctl, &["status"]), Intent::Other);
        assert_eq!(of(pg_ctlcluster, &["15", "main", "stop"]), Intent::Stop);
        assert_eq!(of(pg_ctlcluster, &["15", "main", "start"]), Intent::Start);
    }
}
