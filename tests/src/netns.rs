//! A network namespace of the test's own, with loopback up and extra local addresses.

use std::{fs::File, os::fd::AsRawFd as _, process::Command, sync::Arc};

pub struct NetNs {
    pub name: String,
    file: Arc<File>,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("running ip");
    assert!(status.success(), "ip {args:?} failed");
}

impl NetNs {
    pub fn create(test: &str) -> NetNs {
        let name = format!(
            "weft-{}-{}",
            &test[..test.len().min(20)],
            std::process::id()
        );
        // A leftover from a crashed earlier run would make `add` fail.
        if std::path::Path::new(&format!("/run/netns/{name}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        // IPv6 endpoints; IPv4 ones use 127.0.0.0/8, which loopback already owns.
        for addr in ["fd00::2/128", "fd00::3/128", "fd00::4/128"] {
            ip(&["-n", &name, "addr", "add", addr, "dev", "lo", "nodad"]);
        }
        let file = File::open(format!("/run/netns/{name}")).expect("opening netns");
        NetNs {
            name,
            file: Arc::new(file),
        }
    }

    /// Runs `ip ARGS` inside this namespace.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full);
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Enters this namespace on the calling thread only.
    pub fn enter_current_thread(&self) {
        // SAFETY: setns on a valid netns fd affects only the calling thread.
        let rc = unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }

    /// Runs `f` on a fresh thread inside the namespace and returns its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = Arc::clone(&self.file);
        std::thread::spawn(move || {
            // SAFETY: as in enter_current_thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Like `run`, but in the background.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let file = Arc::clone(&self.file);
        std::thread::spawn(move || {
            // SAFETY: as in enter_current_thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// A TCP listener bound to `addr` inside this namespace (its threads may run anywhere:
    /// a socket stays in the namespace it was made in).
    pub fn bind_tcp(&self, addr: std::net::SocketAddr) -> std::net::TcpListener {
        self.run(move || {
            std::net::TcpListener::bind(addr)
                .unwrap_or_else(|e| panic!("binding {addr} in the test namespace: {e}"))
        })
    }

    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}

/// Makes `cmd`'s process enter the network namespace open as `netns_fd` before it runs
/// (the fd must stay open in the parent until the spawn).
pub fn enter_before_exec(cmd: &mut Command, netns_fd: i32) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: setns is async-signal-safe and touches only the child between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
