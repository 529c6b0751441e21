//! Simulated hosts: the real fleet link (lease, presence, watch, acks)
//! without probes, each applying cluster windows to a list of its own.
//! The peers of the fleet tests and the load of `cargo xtask fleet-bench`.

use std::{
    collections::BTreeMap,
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use tokio::sync::mpsc;

use super::{
    Cluster, Link, News,
    records::{Ack, Presence, ServiceBrief, Verdict, Who, WindowBrief},
    unix_now,
};
use crate::config::Fleet;

/// What the simulated hosts did, counted across them.
#[derive(Default)]
pub struct Tally {
    /// Hosts whose link to etcd is up now.
    pub reachable: AtomicUsize,
}

/// Runs one simulated host until the runtime ends; prints a JSON line on
/// stdout for each window it applies or closes when `print`.
async fn host(
    cluster: Cluster,
    name: String,
    fleet: Fleet,
    services: Vec<String>,
    tally: Arc<Tally>,
    print: bool,
) {
    let (tx, mut news) = mpsc::channel(64);
    let link = Link::start(
        cluster,
        name.clone(),
        fleet.heartbeat,
        env!("CARGO_PKG_VERSION").to_string(),
        tx,
    );
    // Reachable until the link says otherwise.
    tally.reachable.fetch_add(1, Ordering::Relaxed);
    let mut reachable = true;
    let mut applied: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut next = 1;
    let presence = |applied: &BTreeMap<String, (String, String)>| Presence {
        host: name.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        pinned: false,
        services: services
            .iter()
            .map(|s| ServiceBrief {
                name: s.clone(),
                state: "running".into(),
                pid: None,
                frozen: Vec::new(),
            })
            .collect(),
        windows: applied
            .iter()
            .map(|(id, (local, service))| WindowBrief {
                id: local.clone(),
                service: service.clone(),
                cluster: Some(id.clone()),
            })
            .collect(),
        held: Vec::new(),
        last_alert: None,
        seen_at: 0,
    };
    link.presence(presence(&applied));
    let say = |what: &str, id: &str| {
        if print {
            let line = serde_json::json!({"host": name, "event": what, "id": id, "at": unix_now()});
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        }
    };
    let mut revision = 0;
    while let Some(item) = news.recv().await {
        let mut received = Vec::new();
        match item {
            News::Reachable { reachable: now, .. } => {
                if now != reachable {
                    reachable = now;
                    if now {
                        tally.reachable.fetch_add(1, Ordering::Relaxed);
                    } else {
                        tally.reachable.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                continue;
            }
            News::Sync {
                windows,
                revision: at,
            } if at >= revision => {
                revision = at;
                let gone: Vec<String> = applied
                    .keys()
                    .filter(|id| !windows.iter().any(|w| &&w.id == id))
                    .cloned()
                    .collect();
                for id in gone {
                    applied.remove(&id);
                    link.unack(&id);
                    say("closed", &id);
                }
                received = windows;
            }
            News::Put(r) if r.revision > revision => {
                revision = r.revision;
                received.push(*r);
            }
            News::Delete { id, revision: at } if at > revision => {
                revision = at;
                if applied.remove(&id).is_some() {
                    link.unack(&id);
                    say("closed", &id);
                }
            }
            _ => continue,
        }
        for r in received {
            let Some(record) = r.record else { continue };
            if record.closing.is_some() {
                if applied.remove(&r.id).is_some() {
                    link.unack(&r.id);
                    say("closed", &r.id);
                }
                continue;
            }
            if r.verdict != Verdict::Apply || applied.contains_key(&r.id) {
                continue;
            }
            let (window, error) = if services.contains(&record.service) {
                let local = format!("w{next}");
                next += 1;
                applied.insert(r.id.clone(), (local.clone(), record.service.clone()));
                (Some(local), None)
            } else {
                (
                    None,
                    Some(format!("no service `{}` is watched", record.service)),
                )
            };
            link.ack(
                &r.id,
                Ack {
                    host: name.clone(),
                    window,
                    error,
                    at: unix_now(),
                },
            );
            say("applied", &r.id);
        }
        link.presence(presence(&applied));
    }
}

/// Starts `hosts` simulated hosts of `fleet`'s cluster, each watching
/// `services`; they run until the runtime ends.
pub fn start(
    fleet: &Fleet,
    hosts: &[String],
    services: &[String],
    print: bool,
) -> Result<Arc<Tally>> {
    let tally = Arc::new(Tally::default());
    for name in hosts {
        super::super::config::fleet::check_name("host", name).map_err(anyhow::Error::msg)?;
        let cluster = Cluster::new(fleet)?;
        tokio::spawn(host(
            cluster,
            name.clone(),
            fleet.clone(),
            services.to_vec(),
            tally.clone(),
            print,
        ));
    }
    Ok(tally)
}

/// Percentile `p` (0..=100) of sorted `values`.
fn percentile(values: &[Duration], p: usize) -> Duration {
    values[((values.len() - 1) * p).div_ceil(100)]
}

/// `fleet bench`: `hosts` simulated hosts; `rounds` cluster windows, each
/// timed from its open to the last host's acknowledgement; then the store's
/// writes at rest; then, while the caller restarts etcd, the time until
/// every host is linked again. Prints what it measures, a line each.
pub async fn bench(fleet: &Fleet, hosts: usize, rounds: usize, rest: Duration) -> Result<()> {
    crate::sys::raise_fd_limit();
    let names: Vec<String> = (1..=hosts).map(|i| format!("sim{i}")).collect();
    let service = "postgres".to_string();
    let started = Instant::now();
    let tally = start(fleet, &names, std::slice::from_ref(&service), false)?;
    let cluster = Cluster::new(fleet)?;
    let live = |cluster: &Cluster| {
        cluster
            .store
            .list(&cluster.keys.hosts())
            .map(|l| l.kvs.len())
    };
    loop {
        let probe = cluster.clone();
        let n = tokio::task::spawn_blocking(move || live(&probe)).await??;
        if n >= hosts {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("only {n} of {hosts} hosts present after 5 min");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "present: {hosts} hosts in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut times = Vec::new();
    for round in 0..rounds {
        let opener = cluster.clone();
        let (took, missing) = tokio::task::spawn_blocking(move || -> Result<(Duration, usize)> {
            let at = Instant::now();
            let opened = opener.open(
                "postgres",
                "*",
                &format!("bench round {round}"),
                Duration::from_secs(600),
                Who {
                    uid: 0,
                    loginuid: None,
                    user: Some("bench".into()),
                    host: "sim1".into(),
                },
                Duration::from_secs(10),
                None,
            )?;
            let took = at.elapsed();
            opener.close(
                opener.find(&opened.window.id)?,
                super::records::Closing {
                    by: opened.window.by.clone(),
                    thaw: false,
                    kill: false,
                    switches_on: false,
                },
            )?;
            Ok((took, opened.missing.len()))
        })
        .await??;
        if missing > 0 {
            println!("round {round}: {missing} hosts did not acknowledge within 10 s");
        }
        if round == 0 {
            // The first window is the first news of its opener's
            // membership: each host reads it once.
            println!(
                "first window after the hosts joined: {:.0} ms to all {hosts} acks (each host reads the opener's membership once)",
                took.as_secs_f64() * 1000.0
            );
        } else {
            times.push(took);
        }
        // One window at a time: the hosts' presence writes of the last
        // one (at most every 2 s) are done before the next.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    times.sort();
    if times.is_empty() {
        bail!("--rounds: at least 2 (the first is the cold one)");
    }
    println!(
        "window open -> all {hosts} acks: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} rounds after the first)",
        percentile(&times, 50).as_secs_f64() * 1000.0,
        percentile(&times, 99).as_secs_f64() * 1000.0,
        times.last().map_or(0.0, |t| t.as_secs_f64() * 1000.0),
        times.len()
    );
    // Settle: the last presence writes of the rounds go out first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!("resting {} s", rest.as_secs());
    let revision = |cluster: &Cluster| {
        cluster
            .store
            .list("/stopguard-bench-revision")
            .map(|l| l.revision)
    };
    let probe = cluster.clone();
    let before = tokio::task::spawn_blocking(move || revision(&probe)).await??;
    tokio::time::sleep(rest).await;
    let probe = cluster.clone();
    let after = tokio::task::spawn_blocking(move || revision(&probe)).await??;
    let writes = (after - before) as f64 / rest.as_secs_f64();
    println!(
        "at rest: {writes:.2} writes/s in all, {:.4} per host ({} s)",
        writes / hosts as f64,
        rest.as_secs()
    );
    println!("stop etcd now");
    let stopped = Instant::now();
    while tally.reachable.load(Ordering::Relaxed) > 0 {
        if stopped.elapsed() > Duration::from_secs(120) {
            bail!(
                "{} of {hosts} hosts still linked 2 min after etcd stopped",
                tally.reachable.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "every host noticed etcd gone within {:.1} s; start etcd now",
        stopped.elapsed().as_secs_f64()
    );
    // etcd is started as soon as the line above is read.
    let back = Instant::now();
    while tally.reachable.load(Ordering::Relaxed) < hosts {
        if back.elapsed() > Duration::from_secs(300) {
            bail!(
                "{} of {hosts} hosts linked again 5 min after etcd answered",
                tally.reachable.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "reconnect: every host linked again {:.1} s after etcd was started again",
        back.elapsed().as_secs_f64()
    );
    Ok(())
}
