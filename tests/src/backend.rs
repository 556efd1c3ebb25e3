//! Real backends that answer with their own name: TCP (name line, then echo), UDP (name per
//! datagram) and HTTP (a status the test controls, name as body). Each runs on threads
//! inside the test's network namespace and stops when told or dropped.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
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
    running: Vec<Server>,
}

impl Backends {
    /// Starts a TCP backend; the returned index can `stop` it.
    pub fn tcp(&mut self, netns: &NetNs, addr: &str, name: &str) -> usize {
        let line = format!("{name}\n");
        self.start(netns, addr, move |stream, stop| echo(stream, &line, stop))
    }

    /// Starts an HTTP backend answering every request with `status` and its name.
    pub fn http(&mut self, netns: &NetNs, addr: &str, name: &str, status: Arc<AtomicU16>) {
        let name = name.to_string();
        self.start(netns, addr, move |stream, _| {
            answer_http(stream, &name, status.load(Ordering::Relaxed))
        });
    }

    pub fn udp(&mut self, netns: &NetNs, addr: &str, name: &str) {
        let addr = parse(addr);
        let name = name.to_string();
        let server = Server::start(
            netns,
            move || {
                let socket = UdpSocket::bind(addr).expect("backend bind");
                // Bursts of tens of thousands of queries must queue, not drop.
                force_receive_buffer(&socket, 64 << 20);
                socket
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .expect("timeout");
                socket
            },
            move |socket, _| {
                let mut buf = [0u8; 1500];
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(name.as_bytes(), from);
                }
            },
        );
        self.running.push(server);
    }

    /// Stops one backend: its listener closes, so connects to it are refused.
    pub fn stop(&mut self, index: usize) {
        self.running[index].stop();
    }

    pub fn stop_all(&mut self) {
        self.running.iter_mut().for_each(Server::stop);
        self.running.clear();
    }

    /// A TCP listener whose accepted connections each get a thread running `handle`.
    fn start(
        &mut self,
        netns: &NetNs,
        addr: &str,
        handle: impl Fn(TcpStream, &AtomicBool) + Clone + Send + 'static,
    ) -> usize {
        let addr = parse(addr);
        let server = Server::start(
            netns,
            move || {
                let listener = TcpListener::bind(addr).expect("backend bind");
                listener.set_nonblocking(true).expect("nonblocking");
                listener
            },
            move |listener, stop| match listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    let (handle, stop) = (handle.clone(), Arc::clone(stop));
                    std::thread::spawn(move || handle(stream, &stop));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            },
        );
        self.running.push(server);
        self.running.len() - 1
    }
}

/// SO_RCVBUFFORCE: beyond net.core.rmem_max, which root may do.
fn force_receive_buffer(socket: &UdpSocket, bytes: libc::c_int) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: setsockopt reads one c_int we own, on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const bytes).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

fn parse(addr: &str) -> SocketAddr {
    addr.parse().expect("backend address")
}

/// Sends the name line, then echoes until the client closes or the backend stops.
fn echo(mut stream: TcpStream, line: &str, stop: &AtomicBool) {
    if stream.write_all(line.as_bytes()).is_err() {
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
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// Reads one request head and answers it with `code` and the name, then closes.
fn answer_http(mut stream: TcpStream, name: &str, code: u16) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut request = [0u8; 1024];
    let mut read = 0;
    while read < request.len() {
        match stream.read(&mut request[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
        if request[..read].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let response = format!(
        "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
        name.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

/// A thread in the namespace that binds once, then runs `serve` until stopped. `start`
/// returns only once the socket is bound, so a test never races its own backend.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start<S: 'static>(
        netns: &NetNs,
        bind: impl FnOnce() -> S + Send + 'static,
        mut serve: impl FnMut(&mut S, &Arc<AtomicBool>) + Send + 'static,
    ) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stop_flag = Arc::clone(&stop);
        let thread = netns.spawn(move || {
            let mut socket = bind();
            ready_tx.send(()).expect("ready");
            while !stop_flag.load(Ordering::Relaxed) {
                serve(&mut socket, &stop_flag);
            }
        });
        ready_rx.recv().expect("backend started");
        Server {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
