//! What the doubles use instead of client-go informers: watches that only wake a level-triggered loop.
//! Every wake-up (an event on any watched collection, or the resync period) makes the loop list what it
//! needs from the apiserver and reconcile, so a missed or reordered event costs nothing but a pass.

use std::{sync::Arc, time::Duration};

use tokio::sync::Notify;

use crate::{kubeconfig::ApiClient, log};

/// Wakes a reconcile loop on changes to the watched collections.
pub struct Wakeup {
    notify: Arc<Notify>,
}

impl Wakeup {
    /// Starts one watch per collection path (e.g. `/api/v1/pods` or
    /// `/api/v1/pods?fieldSelector=spec.nodeName%3Dnode1`); each reconnects on its own when it ends.
    pub fn new(client: &ApiClient, paths: &[String]) -> Self {
        let notify = Arc::new(Notify::new());
        for path in paths {
            tokio::spawn(watch_loop(client.clone(), path.clone(), notify.clone()));
        }
        Self { notify }
    }

    /// Returns on the next change, or after `resync`; bursts of events are coalesced into one wake-up.
    pub async fn wait(&self, resync: Duration) {
        let _ = tokio::time::timeout(resync, self.notify.notified()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn watch_loop(client: ApiClient, path: String, notify: Arc<Notify>) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let url = format!("{path}{sep}watch=true&timeoutSeconds=300");
    let mut backoff = Duration::from_millis(200);
    loop {
        let failure = match client.stream(&url).await {
            Ok(mut resp) if resp.status().is_success() => {
                notify.notify_one();
                while let Ok(Some(_)) = resp.chunk().await {
                    notify.notify_one();
                }
                backoff = Duration::from_millis(200);
                None
            }
            Ok(resp) => Some(format!("HTTP {}", resp.status())),
            Err(e) => Some(e),
        };
        if let Some(err) = failure {
            log::warn("reflector.go:1", "failed to watch", &[("path", path.clone()), ("err", err)]);
            backoff = (backoff * 2).min(Duration::from_secs(8));
        }
        notify.notify_one();
        tokio::time::sleep(backoff).await;
    }
}
