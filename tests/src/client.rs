//! Client side: what an application in the cgroup sees.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

/// Connects, reads the backend's name line, returns it with the peer address the socket
/// reports (getpeername).
pub fn connect_once(service: SocketAddr) -> std::io::Result<(String, SocketAddr, TcpStream)> {
    let stream = TcpStream::connect_timeout(&service, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let peer = stream.peer_addr()?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    Ok((line.trim().to_string(), peer, stream))
}

/// `count` short connections; tallies which backend answered. Panics on any failure, and if
/// getpeername ever shows something other than the service address.
pub fn tally_tcp(service: SocketAddr, count: usize) -> BTreeMap<String, usize> {
    let mut tally = BTreeMap::new();
    for i in 0..count {
        let (name, peer, _stream) =
            connect_once(service).unwrap_or_else(|e| panic!("connect #{i} to {service}: {e}"));
        assert_eq!(peer, service, "getpeername must show the service address");
        *tally.entry(name).or_insert(0) += 1;
    }
    tally
}

/// One datagram from each of `sockets` fresh unconnected sockets; tallies who answered and
/// checks every reply came from the service address.
pub fn tally_udp(service: SocketAddr, sockets: usize) -> BTreeMap<String, usize> {
    let bind: SocketAddr = if service.is_ipv4() {
        "127.0.0.1:0".parse().unwrap()
    } else {
        "[::1]:0".parse().unwrap()
    };
    tally_udp_from(bind, service, sockets)
}

/// `tally_udp` from sockets bound to `bind` (the unspecified address for a client whose
/// datagrams leave its namespace: a loopback-bound socket cannot send off the host).
pub fn tally_udp_from(
    bind: SocketAddr,
    service: SocketAddr,
    sockets: usize,
) -> BTreeMap<String, usize> {
    let mut tally = BTreeMap::new();
    for i in 0..sockets {
        let socket = UdpSocket::bind(bind).expect("client bind");
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        socket.send_to(b"hi", service).expect("send_to service");
        let mut buf = [0u8; 256];
        let (n, from) = socket
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("reply #{i} from {service}: {e}"));
        assert_eq!(
            from, service,
            "UDP reply must come from the service address"
        );
        let name = String::from_utf8_lossy(&buf[..n]).to_string();
        *tally.entry(name).or_insert(0) += 1;
    }
    tally
}

/// One HTTP request to the service; returns the body (the backend's name).
pub fn http_get_name(service: SocketAddr) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = TcpStream::connect_timeout(&service, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: service\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string())
}

/// `count` HTTP requests; tallies which backend answered.
pub fn tally_http(service: SocketAddr, count: usize) -> BTreeMap<String, usize> {
    let mut tally = BTreeMap::new();
    for i in 0..count {
        let name =
            http_get_name(service).unwrap_or_else(|e| panic!("request #{i} to {service}: {e}"));
        *tally.entry(name).or_insert(0) += 1;
    }
    tally
}

/// How a connect to `target` fails; panics if it succeeds.
pub fn connect_error_kind(target: SocketAddr) -> std::io::ErrorKind {
    match TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
        Ok(_) => panic!("connect to {target} succeeded; expected it to fail"),
        Err(e) => e.kind(),
    }
}

/// Share of `name` in a tally, in percent.
pub fn share(tally: &BTreeMap<String, usize>, name: &str) -> f64 {
    let total: usize = tally.values().sum();
    100.0 * *tally.get(name).unwrap_or(&0) as f64 / total.max(1) as f64
}
