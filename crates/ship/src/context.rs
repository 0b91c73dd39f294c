//! What every task of the ship shares and never changes: options, paths, names, and the
//! clients of the outside (git, the OCI runtime, the builder, the proxy, the log store).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use starphleet_build::Builder;
use starphleet_git::Git;
use starphleet_proxy::ProxyClient;
use starphleet_runtime::Runtime;

use crate::certs::CertsShared;
use crate::layout::Layout;
use crate::names::Names;
use crate::telemetry::Telemetry;
use crate::ShipOptions;

/// The ship's immutable context.
pub(crate) struct Ctx {
    /// How the ship was started.
    pub opts: ShipOptions,
    /// The state dir.
    pub layout: Layout,
    /// The naming scheme.
    pub names: Names,
    /// git with the ship's ssh identity and timeouts.
    pub git: Git,
    /// The OCI runtime.
    pub runtime: Runtime,
    /// The build layer cache.
    pub builder: Builder,
    /// Reads the proxy's counters and waits for drains (the route programmer has its own
    /// connection).
    pub proxy: ProxyClient,
    /// Logs and events.
    pub telemetry: Telemetry,
    /// The certificate task's statuses and forced renewals.
    pub certs: CertsShared,
    locks: KeyedLocks,
}

impl Ctx {
    /// Assembles the context.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        opts: ShipOptions,
        layout: Layout,
        names: Names,
        git: Git,
        runtime: Runtime,
        builder: Builder,
        proxy: ProxyClient,
        telemetry: Telemetry,
    ) -> Self {
        Ctx {
            opts,
            layout,
            names,
            git,
            runtime,
            builder,
            proxy,
            telemetry,
            certs: CertsShared::default(),
            locks: KeyedLocks::default(),
        }
    }

    /// Ports orders may not publish on this ship, with what holds them.
    pub fn reserved_ports(&self) -> Vec<(u16, String)> {
        self.opts
            .admin
            .iter()
            .map(|a| (a.port(), "the ship's admin endpoint (--admin)".to_string()))
            .collect()
    }

    /// Serialises work on one shared thing (a repository mirror, a build layer) across deploys.
    pub async fn lock(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.locks.get(name).lock_owned().await
    }
}

/// One async lock per name; the map lock is held only to look a name up.
#[derive(Default)]
struct KeyedLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

/// Past this many names, names nobody holds are forgotten.
const KEEP_LOCKS: usize = 256;

impl KeyedLocks {
    fn get(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > KEEP_LOCKS {
            map.retain(|_, l| Arc::strong_count(l) > 1);
        }
        map.entry(name.to_string()).or_default().clone()
    }
}
