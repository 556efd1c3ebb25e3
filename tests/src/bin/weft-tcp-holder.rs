//! Opens connections to a service and holds them until it is killed, for the end-to-end
//! test that a killed client's connections give their counts back.
//!
//! `weft-tcp-holder SERVICE COUNT`: connects COUNT times (each connection answered by the
//! backend's name), prints `ready OPENED FAILED`, then waits for stdin to close.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(service), Some(count)) = (args.next(), args.next()) else {
        eprintln!("usage: weft-tcp-holder SERVICE COUNT");
        std::process::exit(2);
    };
    let service: SocketAddr = service.parse().expect("SERVICE is an address:port");
    let count: usize = count.parse().expect("COUNT is a number");
    let mut held = Vec::with_capacity(count);
    let mut failed = 0;
    for _ in 0..count {
        match TcpStream::connect_timeout(&service, Duration::from_secs(2)) {
            Ok(stream) => {
                let mut line = String::new();
                let _ = BufReader::new(&stream).read_line(&mut line);
                held.push(stream);
            }
            Err(_) => failed += 1,
        }
    }
    println!("ready {} {failed}", held.len());
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}
