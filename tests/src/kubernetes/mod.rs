//! Kubernetes for the end-to-end tests. The scenarios (`scenarios`) run against a `Cluster`:
//! the fake API server of `fake_api` in the test's network namespace, or a real cluster
//! (`real`, opt-in, reached through a relay the test can cut).

pub mod fake_api;
pub mod real;
pub mod scenarios;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::NetNs;
pub use fake_api::{FakeApiServer, Kind};

/// An API server the scenarios write objects to and the agent watches.
pub trait Cluster {
    /// Creates or replaces `object` in the test's namespace; returns it as stored (with
    /// its resourceVersion, and a Service with its cluster IP).
    fn apply(&self, object: Value) -> Value;
    fn delete(&self, kind: Kind, name: &str);
    /// The namespace the scenarios' objects live in.
    fn namespace(&self) -> &str;
    /// A kubeconfig that reaches this API server from inside the test's network namespace.
    fn kubeconfig(&self) -> &Path;
    /// The agent can no longer reach the API server (it is killed, or its path is cut).
    fn cut(&mut self);
    /// It can again.
    fn restore(&mut self, netns: &NetNs);
    /// Makes every watch start over with a list (`410 Gone`); false where the cluster
    /// cannot be made to.
    fn expire(&self) -> bool;
    /// Requests the API server saw (`METHOD path?query`), where the test can know them.
    fn requests(&self) -> Option<Vec<String>>;
}

/// The fake API server as a cluster.
pub struct FakeCluster {
    pub server: FakeApiServer,
    dir: PathBuf,
    kubeconfig: PathBuf,
}

impl FakeCluster {
    /// Starts the fake API server (plain HTTP) in `netns`; its kubeconfig goes to `dir`.
    pub fn start(netns: &NetNs, dir: &Path) -> FakeCluster {
        FakeCluster::with(FakeApiServer::start(netns), dir)
    }

    /// The same over TLS, as a real API server serves.
    pub fn start_tls(netns: &NetNs, dir: &Path) -> FakeCluster {
        FakeCluster::with(FakeApiServer::start_tls(netns), dir)
    }

    fn with(server: FakeApiServer, dir: &Path) -> FakeCluster {
        std::fs::create_dir_all(dir).expect("creating kubeconfig dir");
        let kubeconfig = dir.join("kubeconfig");
        server.write_kubeconfig(&kubeconfig);
        FakeCluster {
            server,
            dir: dir.to_path_buf(),
            kubeconfig,
        }
    }
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster for FakeCluster {
    fn apply(&self, mut object: Value) -> Value {
        object["metadata"]["namespace"] = self.namespace().into();
        self.server.apply(object)
    }

    fn delete(&self, kind: Kind, name: &str) {
        self.server.delete(kind, self.namespace(), name);
    }

    fn namespace(&self) -> &str {
        "shop"
    }

    fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    fn cut(&mut self) {
        self.server.stop();
    }

    fn restore(&mut self, netns: &NetNs) {
        self.server.start_again(netns);
    }

    fn expire(&self) -> bool {
        self.server.expire();
        true
    }

    fn requests(&self) -> Option<Vec<String>> {
        Some(self.server.requests())
    }
}
