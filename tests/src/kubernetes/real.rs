//! A real cluster for the opt-in suite: the one `KUBECONFIG` (or `~/.kube/config`) names,
//! written to with `kubectl`, in a namespace of the test's own (deleted at the end). The
//! agent runs in the test's network namespace, so it reaches the API server through a relay
//! listening there; cutting the relay is how the scenarios take the API server away. The
//! agent authenticates with a ServiceAccount token (no exec plugins needed in its netns)
//! limited to the DaemonSet's permissions.

use std::{
    io::Write as _,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use serde_json::{Value, json};

use super::{Cluster, Kind};
use crate::NetNs;

pub struct RealCluster {
    namespace: String,
    kubeconfig: PathBuf,
    /// The ClusterRole (and its binding) made for the agent's ServiceAccount.
    role: String,
    relay: Relay,
}

fn kubectl(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new("kubectl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running kubectl (the real-cluster suite needs it): {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("writing to kubectl");
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().expect("kubectl output");
    assert!(
        output.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

impl RealCluster {
    /// Connects to the cluster of the current kubeconfig context. The agent gets a
    /// kubeconfig of its own (written to `dir`): the cluster's CA, the relay in `netns` as
    /// its server, and the token of a ServiceAccount allowed exactly what the DaemonSet's
    /// ClusterRole allows (list and watch Services and EndpointSlices), so the suite also
    /// checks that those permissions are enough.
    pub fn connect(netns: &NetNs, dir: &Path) -> RealCluster {
        let config: Value = serde_json::from_slice(&kubectl(
            &[
                "config",
                "view",
                "--raw",
                "--minify",
                "--flatten",
                "-o",
                "json",
            ],
            None,
        ))
        .expect("kubeconfig as JSON");
        let cluster = &config["clusters"][0]["cluster"];
        let server = cluster["server"]
            .as_str()
            .expect("the kubeconfig's cluster has a server")
            .to_string();
        let (scheme, rest) = server.split_once("://").expect("server URL");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = host_port(authority, if scheme == "https" { 443 } else { 80 });
        let upstream = (host.as_str(), port)
            .to_socket_addrs()
            .expect("resolving the API server")
            .next()
            .expect("an API server address");

        let id = std::process::id();
        let namespace = format!("weft-e2e-{id}");
        let role = format!("weft-e2e-{id}");
        kubectl(&["create", "namespace", &namespace], None);
        // Created before anything can fail, so that Drop removes them whatever happens.
        let relay = Relay::start(netns, upstream);
        let real = RealCluster {
            namespace: namespace.clone(),
            kubeconfig: dir.join("kubeconfig"),
            role: role.clone(),
            relay,
        };
        kubectl(
            &[
                "create",
                "clusterrole",
                &role,
                "--verb=list,watch",
                "--resource=services,endpointslices.discovery.k8s.io",
            ],
            None,
        );
        kubectl(
            &["create", "serviceaccount", "weft-agent", "-n", &namespace],
            None,
        );
        kubectl(
            &[
                "create",
                "clusterrolebinding",
                &role,
                "--clusterrole",
                &role,
                "--serviceaccount",
                &format!("{namespace}:weft-agent"),
            ],
            None,
        );
        let token = String::from_utf8(kubectl(
            &[
                "create",
                "token",
                "weft-agent",
                "-n",
                &namespace,
                "--duration=1h",
            ],
            None,
        ))
        .expect("token");

        let mut agent_cluster = json!({
            "server": format!("{scheme}://{}/{path}", real.relay.addr).trim_end_matches('/'),
        });
        for field in ["certificate-authority-data", "insecure-skip-tls-verify"] {
            if !cluster[field].is_null() {
                agent_cluster[field] = cluster[field].clone();
            }
        }
        if scheme == "https" {
            // The certificate names the real server, not the relay.
            agent_cluster["tls-server-name"] = json!(host);
        }
        let agent_config = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{ "name": "e2e", "cluster": agent_cluster }],
            "users": [{ "name": "weft-agent", "user": { "token": token.trim() } }],
            "contexts": [{ "name": "e2e", "context": { "cluster": "e2e", "user": "weft-agent" } }],
            "current-context": "e2e",
        });
        std::fs::create_dir_all(dir).expect("creating kubeconfig dir");
        std::fs::write(
            &real.kubeconfig,
            serde_json::to_vec_pretty(&agent_config).unwrap(),
        )
        .expect("writing kubeconfig");
        real
    }
}

/// Host and port of a URL's authority (`host`, `host:port`, `[v6]:port`).
fn host_port(authority: &str, default_port: u16) -> (String, u16) {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').expect("an IPv6 literal");
        let port = after
            .strip_prefix(':')
            .map_or(default_port, |p| p.parse().expect("port"));
        return (host.to_string(), port);
    }
    match authority.split_once(':') {
        Some((host, port)) => (host.to_string(), port.parse().expect("port")),
        None => (authority.to_string(), default_port),
    }
}

impl Cluster for RealCluster {
    fn apply(&self, mut object: Value) -> Value {
        object["metadata"]["namespace"] = json!(self.namespace);
        let text = serde_json::to_vec(&object).unwrap();
        let stored = kubectl(&["apply", "-f", "-", "-o", "json"], Some(&text));
        serde_json::from_slice(&stored).expect("kubectl apply output")
    }

    fn delete(&self, kind: Kind, name: &str) {
        let kind = match kind {
            Kind::Service => "service",
            Kind::EndpointSlice => "endpointslice.discovery.k8s.io",
        };
        kubectl(
            &["delete", kind, name, "-n", &self.namespace, "--wait=false"],
            None,
        );
    }

    fn namespace(&self) -> &str {
        &self.namespace
    }

    fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    fn cut(&mut self) {
        self.relay.stop();
    }

    fn restore(&mut self, netns: &NetNs) {
        self.relay.start_again(netns);
    }

    fn expire(&self) -> bool {
        false
    }

    fn requests(&self) -> Option<Vec<String>> {
        None
    }
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        for args in [
            ["delete", "namespace", &self.namespace, "--wait=false"],
            ["delete", "clusterrolebinding", &self.role, "--wait=false"],
            ["delete", "clusterrole", &self.role, "--wait=false"],
        ] {
            let _ = Command::new("kubectl")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Forwards TCP connections from an address in the test's namespace to `upstream`.
struct Relay {
    addr: SocketAddr,
    upstream: SocketAddr,
    stopped: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Relay {
    fn start(netns: &NetNs, upstream: SocketAddr) -> Relay {
        let listener = netns.bind_tcp("127.0.0.1:0".parse().unwrap());
        let mut relay = Relay {
            addr: listener.local_addr().expect("relay address"),
            upstream,
            stopped: Arc::default(),
            connections: Arc::default(),
            acceptor: None,
        };
        relay.serve(listener);
        relay
    }

    fn serve(&mut self, listener: TcpListener) {
        listener.set_nonblocking(true).expect("nonblocking");
        let (stopped, connections, upstream) = (
            Arc::clone(&self.stopped),
            Arc::clone(&self.connections),
            self.upstream,
        );
        self.acceptor = Some(std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                let Ok((inside, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = inside.set_nonblocking(false);
                let Ok(outside) = TcpStream::connect(upstream) else {
                    continue;
                };
                let mut held = connections.lock().unwrap_or_else(|p| p.into_inner());
                held.extend(inside.try_clone().ok());
                held.extend(outside.try_clone().ok());
                drop(held);
                pipe(
                    inside.try_clone().expect("clone"),
                    outside.try_clone().expect("clone"),
                );
                pipe(outside, inside);
            }
        }));
    }

    fn stop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for c in std::mem::take(&mut *self.connections.lock().unwrap_or_else(|p| p.into_inner())) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn start_again(&mut self, netns: &NetNs) {
        self.stopped.store(false, Ordering::SeqCst);
        let listener = netns.bind_tcp(self.addr);
        self.serve(listener);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}
