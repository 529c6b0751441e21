//! Fleet mode's control requests: a cluster window opened or closed, the
//! cluster's windows and hosts. Each waits on etcd, so each is answered
//! from a thread of its own, never in the event loop.

use std::time::Duration;

use super::Agent;
use crate::{
    control::{
        CloseClusterWindow, GetFleetStatus, OpenClusterWindow, Peer, WindowList,
        server::{Answer, Reply},
    },
    fleet::{
        Cluster,
        records::{Closing, Who},
    },
    sys::identity::user_name,
};

/// Who asked, as a cluster record names them.
fn who(peer: Peer, host: &str) -> Who {
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

const FLEET_OFF: &str = "fleet mode is off: the config has no [fleet] table";

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
        self.on_cluster(move |cluster| {
            cluster.open(
                &open.service,
                &open.hosts,
                &open.reason,
                Duration::from_secs(open.for_secs),
                by,
                Duration::from_secs(open.wait_secs),
            )
        })
    }

    pub(super) fn close_cluster(
        &mut self,
        close: CloseClusterWindow,
        peer: Peer,
    ) -> Reply<CloseClusterWindow> {
        let closing = Closing {
            by: who(peer, &self.host),
            thaw: close.thaw,
            kill: close.kill,
        };
        self.on_cluster(move |cluster| cluster.close(&close.target, closing))
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
