//! Holds many UDP sockets open at once and queries a service on each, for the end-to-end test
//! of reverse-NAT lifetimes: one process may hold only so many descriptors, so the test runs
//! several of these.
//!
//! `weft-udp-clients SERVICE COUNT SOURCE`: opens COUNT sockets bound to the address SOURCE
//! (each source address has only ~28,000 ephemeral ports) and queries once on each as it opens; prints `ready <tally>`; then, for each line on stdin, queries once more on every
//! socket and prints `done <tally>`. A tally is `from_service from_elsewhere missing`.

use std::{
    io::{BufRead as _, Write as _},
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(service), Some(count), Some(source), Some(burst)) =
        (args.next(), args.next(), args.next(), args.next())
    else {
        eprintln!("usage: weft-udp-clients SERVICE COUNT SOURCE BURST");
        std::process::exit(2);
    };
    let service: SocketAddr = service.parse().expect("SERVICE is an address:port");
    let count: usize = count.parse().expect("COUNT is a number");
    let source: IpAddr = source.parse().expect("SOURCE is an address");
    let burst: usize = burst.parse().expect("BURST is a number");
    let sockets: Vec<UdpSocket> = (0..count).map(|_| socket(source)).collect();
    let stdout = std::io::stdout();
    let tally = query_all(&sockets, service, burst);
    writeln!(stdout.lock(), "ready {tally}").expect("stdout");
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        let tally = query_all(&sockets, service, burst);
        writeln!(stdout.lock(), "done {tally}").expect("stdout");
    }
}

fn socket(source: IpAddr) -> UdpSocket {
    let socket = UdpSocket::bind(SocketAddr::new(source, 0)).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    socket
}

/// Queries `burst` sockets before reading their answers, as a burst of clients does: their
/// reverse-NAT entries are then all in use at once, and none has been read yet.
fn query_all(sockets: &[UdpSocket], service: SocketAddr, burst: usize) -> String {
    let (mut from_service, mut from_elsewhere, mut missing) = (0, 0, 0);
    for chunk in sockets.chunks(burst.max(1)) {
        for socket in chunk {
            socket.send_to(b"q", service).expect("send_to the service");
        }
        for socket in chunk {
            let mut buf = [0u8; 64];
            match socket.recv_from(&mut buf) {
                Ok((_, from)) if from == service => from_service += 1,
                Ok(_) => from_elsewhere += 1,
                Err(_) => missing += 1,
            }
        }
    }
    format!("{from_service} {from_elsewhere} {missing}")
}
