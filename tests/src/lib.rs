//! Helpers for stopguard's end-to-end tests: the real agent binary, run as
//! root against the real kernel.
//!
//! One module per thing a test drives: the agent (`agent`, `trace`), the
//! world it watches (`sandbox`, `supervisor`, `operator`, `cgroup`, and
//! `ha` for the HA tools that restart a database themselves) and what it
//! alerts (`receiver`, `alertmanager`), and the etcd it records to
//! (`etcd`, with `pki` for its TLS and `partition` to cut an agent off it).

mod agent;
mod alertmanager;
mod cgroup;
pub mod etcd;
mod ha;
mod host;
mod operator;
pub mod partition;
mod pki;
mod receiver;
mod sandbox;
mod supervisor;
mod trace;

pub use agent::Agent;
pub use alertmanager::Alertmanager;
pub use cgroup::{
    in_frozen_cgroup, in_frozen_v1_cgroup, peak_rss_kib, remove_frozen_cgroups, stat_fields,
    state_of,
};
pub use etcd::{Etcd, etcd_test};
pub use ha::{Mariadb, Patroni, PatroniCluster, poll, within};
pub use host::{
    Stopped, bash, fixture, free_port, root_test, stopguard_bin, stopguard_next_bin, workspace_root,
};
pub use operator::{as_operator, as_person, operator_kill, operator_signal, person, respawns};
pub use receiver::{Received, Receiver, sinks, webhook_signature_valid};
pub use sandbox::{Sandbox, assert_clean, left_behind};
pub use supervisor::{Supervisor, Verb, start_monit};
pub use trace::{Trace, Traced};
