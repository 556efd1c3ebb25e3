//! Real backends that answer with their own name: TCP (name line, then echo) and UDP (name
//! per datagram). Each runs on threads inside the test's network namespace.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU16, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::NetNs;

#[derive(Default)]
pub struct Backends {
    running: Vec<Box<dyn Stoppable>>,
}

impl Backends {
    /// Starts a TCP backend; the returned index can `stop` it.
    pub fn tcp(&mut self, netns: &NetNs, addr: &str, name: &str) -> usize {
        self.running
            .push(Box::new(TcpBackend::start(netns, addr, name)));
        self.running.len() - 1
    }

    /// Starts an HTTP backend answering every request with `status` and its name.
    pub fn http(&mut self, netns: &NetNs, addr: &str, name: &str, status: Arc<AtomicU16>) {
        self.running
            .push(Box::new(HttpBackend::start(netns, addr, name, status)));
    }

    /// Stops one backend: its listener closes, so connects to it are refused.
    pub fn stop(&mut self, index: usize) {
        self.running[index].stop();
    }

    pub fn udp(&mut self, netns: &NetNs, addr: &str, name: &str) {
        self.running
            .push(Box::new(UdpBackend::start(netns, addr, name)));
    }

    pub fn stop_all(&mut self) {
        self.running.drain(..).for_each(|mut b| b.stop());
    }
}

trait Stoppable {
    fn stop(&mut self);
}

pub struct TcpBackend {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpBackend {
    pub fn start(netns: &NetNs, addr: &str, name: &str) -> TcpBackend {
        let addr: SocketAddr = addr.parse().expect("backend address");
        let stop = Arc::new(AtomicBool::new(false));
        let name = format!("{name}\n");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stop_flag = Arc::clone(&stop);
        let thread = netns.spawn(move || {
            let listener = TcpListener::bind(addr).expect("backend bind");
            listener.set_nonblocking(true).expect("nonblocking");
            ready_tx.send(()).expect("ready");
            while !stop_flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let name = name.clone();
                        let stop = Arc::clone(&stop_flag);
                        std::thread::spawn(move || {
                            let _ = stream.set_nonblocking(false);
                            if stream.write_all(name.as_bytes()).is_err() {
                                return;
                            }
                            let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                            let mut buf = [0u8; 4096];
                            while !stop.load(Ordering::Relaxed) {
                                match stream.read(&mut buf) {
                                    Ok(0) => return,
                                    Ok(n) => {
                                        if stream.write_all(&buf[..n]).is_err() {
                                            return;
                                        }
                                    }
                                    Err(e)
                                        if e.kind() == std::io::ErrorKind::WouldBlock
                                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                                    Err(_) => return,
                                }
                            }
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        ready_rx.recv().expect("backend started");
        TcpBackend {
            stop,
            thread: Some(thread),
        }
    }
}

impl Stoppable for TcpBackend {
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub struct UdpBackend {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpBackend {
    pub fn start(netns: &NetNs, addr: &str, name: &str) -> UdpBackend {
        let addr: SocketAddr = addr.parse().expect("backend address");
        let stop = Arc::new(AtomicBool::new(false));
        let name = name.to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stop_flag = Arc::clone(&stop);
        let thread = netns.spawn(move || {
            let socket = UdpSocket::bind(addr).expect("backend bind");
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            ready_tx.send(()).expect("ready");
            let mut buf = [0u8; 1500];
            while !stop_flag.load(Ordering::Relaxed) {
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(name.as_bytes(), from);
                }
            }
        });
        ready_rx.recv().expect("backend started");
        UdpBackend {
            stop,
            thread: Some(thread),
        }
    }
}

impl Stoppable for UdpBackend {
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TcpBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A minimal HTTP/1.1 server: every request gets `status` and the backend's name as body,
/// and the connection closes. Lets a test make a backend fail its HTTP health check.
pub struct HttpBackend {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpBackend {
    pub fn start(netns: &NetNs, addr: &str, name: &str, status: Arc<AtomicU16>) -> HttpBackend {
        let addr: SocketAddr = addr.parse().expect("backend address");
        let stop = Arc::new(AtomicBool::new(false));
        let name = name.to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stop_flag = Arc::clone(&stop);
        let thread = netns.spawn(move || {
            let listener = TcpListener::bind(addr).expect("backend bind");
            listener.set_nonblocking(true).expect("nonblocking");
            ready_tx.send(()).expect("ready");
            while !stop_flag.load(Ordering::Relaxed) {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                let mut request = [0u8; 1024];
                let mut read = 0;
                // Read up to the end of the request head.
                while read < request.len() {
                    match stream.read(&mut request[read..]) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read += n,
                    }
                    if request[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let code = status.load(Ordering::Relaxed);
                let response = format!(
                    "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                    name.len()
                );
                let _ = stream.write_all(response.as_bytes());
            }
        });
        ready_rx.recv().expect("backend started");
        HttpBackend {
            stop,
            thread: Some(thread),
        }
    }
}

impl Stoppable for HttpBackend {
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
