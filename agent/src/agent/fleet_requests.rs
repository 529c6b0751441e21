//! Fleet mode's control requests: a cluster window opened or closed (and
//! the supervisor switch it carries switched back on), the cluster's
//! windows and hosts. Each waits on etcd, so each is answered from a
//! thread of its own, never in the event loop.

use std::time::Duration;

use super::{Agent, cluster_switch};
use crate::{
    control::{
        CloseClusterWindow, GetFleetStatus, OpenClusterWindow, Peer, WindowList,
        server::{Answer, Reply},
    },
    fleet::{
        Cluster, ClusterOpened,
        records::{Closing, ClusterSwitch, Who},
    },
    sys::identity::user_name,
};

/// `open` as asked, by `by`, the record carrying `switch` if any; blocks
/// on etcd.
pub(super) fn open_asked(
    cluster: &Cluster,
    open: &OpenClusterWindow,
    by: Who,
    switch: Option<ClusterSwitch>,
) -> anyhow::Result<ClusterOpened> {
    cluster.open(
        &open.service,
        &open.hosts,
        &open.reason,
        Duration::from_secs(open.for_secs),
        by,
        Duration::from_secs(open.wait_secs),
        switch,
    )
}

/// Who asked, as a cluster record names them.
pub(super) fn who(peer: Peer, host: &str) -> Who {
    Who {
        uid: peer.uid,
        loginuid: peer.loginuid,
        user: user_name(peer.loginuid.unwrap_or(peer.uid)),
        host: host.to_string(),
    }
}

/// Runs `work` on a thread of its own (it waits on etcd), as the answer.
fn blocking<T: serde::Serialize + Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Answer<T> {
    Answer::later(async move {
        match tokio::task::spawn_blocking(work).await {
            Ok(result) => result.map_err(|e| format!("{e:#}")),
            Err(e) => Err(format!("{e}")),
        }
    })
}

pub(super) const FLEET_OFF: &str = "fleet mode is off: the config has no [fleet] table";

impl Agent {
    /// `work` on the cluster's store, on a thread of its own; refused when
    /// fleet mode is off.
    fn on_cluster<T: serde::Serialize + Send + 'static>(
        &self,
        work: impl FnOnce(Cluster) -> anyhow::Result<T> + Send + 'static,
    ) -> Answer<T> {
        match &self.fleet {
            None => Answer::refuse(FLEET_OFF),
            Some(fleet) => {
                let cluster = fleet.cluster().clone();
                blocking(move || work(cluster))
            }
        }
    }

    pub(super) fn open_cluster_window(
        &mut self,
        open: OpenClusterWindow,
        peer: Peer,
    ) -> Reply<OpenClusterWindow> {
        let by = who(peer, &self.host);
        self.on_cluster(move |cluster| open_asked(&cluster, &open, by, None))
    }

    /// Ends a cluster window on every host. The switch it carries is
    /// switched back on here once every host has let go of the window,
    /// or, when this host cannot run it, left to the host that switched
    /// it off (the record says which).
    pub(super) fn close_cluster(
        &mut self,
        close: CloseClusterWindow,
        peer: Peer,
    ) -> Reply<CloseClusterWindow> {
        let by = who(peer, &self.host);
        let audit = self.audit.clone();
        let Some(fleet) = &self.fleet else {
            return Answer::refuse(FLEET_OFF);
        };
        let cluster = fleet.cluster().clone();
        Answer::later(async move {
            let name = cluster.name.clone();
            let ended = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let found = cluster.find(&close.target)?;
                let here = found.window.switch.as_ref().map(cluster_switch::runs_here);
                let closing = Closing {
                    by,
                    thaw: close.thaw,
                    kill: close.kill,
                    switches_on: matches!(here, Some(Ok(_))),
                };
                let closed = cluster.close(found, closing)?;
                if matches!(here, Some(Ok(_))) {
                    // What it switches back on may start the service
                    // again: not while a host's window still holds it.
                    cluster.wait_let_go(&closed.window.id, cluster_switch::LET_GO)?;
                }
                Ok((closed, here))
            })
            .await;
            let (mut closed, here) = match ended {
                Ok(Ok(ended)) => ended,
                Ok(Err(e)) => return Err(format!("{e:#}")),
                Err(e) => return Err(e.to_string()),
            };
            if let Some(here) = here {
                let run =
                    cluster_switch::switch_on(&audit, &name, &closed.window, here, peer.loginuid)
                        .await;
                if run.is_err() {
                    closed.resume_left_to = Some(closed.window.by.host.clone());
                }
                closed.resumed = Some(run.unwrap_or_else(|run| run));
            }
            Ok(closed)
        })
    }

    pub(super) fn fleet_status(&self, _: GetFleetStatus) -> Reply<GetFleetStatus> {
        self.on_cluster(|cluster| cluster.view())
    }

    /// `window list`: this host's windows, and in fleet mode the cluster's.
    pub(super) fn window_list(&self) -> Answer<WindowList> {
        let windows = self.window_infos();
        let Some(fleet) = &self.fleet else {
            return Answer::Now(Ok(WindowList {
                windows,
                cluster: None,
                cluster_error: None,
            }));
        };
        let cluster = fleet.cluster().clone();
        Answer::later(async move {
            let listed = tokio::task::spawn_blocking(move || cluster.windows()).await;
            let (cluster, cluster_error) = match listed {
                Ok(Ok(list)) => (Some(list), None),
                Ok(Err(e)) => (None, Some(format!("{e:#}"))),
                Err(e) => (None, Some(e.to_string())),
            };
            Ok(WindowList {
                windows,
                cluster,
                cluster_error,
            })
        })
    }
}
