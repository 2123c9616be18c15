//! The in-process runtime: start, listen addresses, stats, reload, start
//! errors. Every test runs once per packet I/O back end (modules `mmsg` and
//! `uring` at the bottom); one the kernel cannot run is skipped with a note.

mod ports;
use ports::free_relay_ports;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use tern::config::IoBackend;
use tern::{Config, Relay, StartError};

fn config(io_backend: IoBackend) -> Config {
    Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        realm: "tern.test".to_owned(),
        user: vec![("a".to_owned(), "b".to_owned())],
        relay_ports: free_relay_ports(200),
        workers: 2,
        io_backend,
        ..Config::default()
    }
}

/// Whether the kernel can run `backend`; says so on stderr when not.
fn available(backend: IoBackend) -> bool {
    match backend.requested().map(|k| k.probe()) {
        Some(Err(e)) => {
            eprintln!("skipping: {e}");
            false
        }
        _ => true,
    }
}

fn starts_reports_and_stops(backend: IoBackend) {
    let config = || config(backend);
    let relay = Relay::start(config()).unwrap();
    assert_eq!(relay.backend().name(), backend.name());
    let listen = relay.listen_addrs();
    assert_eq!(listen.len(), 1);
    assert_ne!(listen[0].port(), 0, "port 0 is resolved");
    assert_eq!(relay.workers(), 2);

    // Every worker shares the resolved address and answers a Binding request.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut req = [0u8; 20];
    req[..2].copy_from_slice(&0x0001u16.to_be_bytes());
    req[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    req[8..20].copy_from_slice(&[7; 12]);
    client.send_to(&req, listen[0]).unwrap();
    let mut buf = [0u8; 512];
    let (n, from) = client.recv_from(&mut buf).unwrap();
    assert_eq!(from, listen[0]);
    assert_eq!(
        &buf[..2],
        &0x0101u16.to_be_bytes(),
        "Binding success ({n} bytes)"
    );

    let stats = relay.stats();
    assert_eq!(stats.workers, 2);
    assert_eq!(stats.workers_reporting, 2);
    assert_eq!(
        stats.binding_requests, 1,
        "Deref to the merged tern_turn::Stats"
    );
    assert!(stats.io.rx_datagrams >= 1 && stats.io.tx_datagrams >= 1);
    assert!(stats.loop_turn_ns.as_ref().is_some_and(|h| !h.is_empty()));

    let mut reloaded = config();
    reloaded.user.push(("c".to_owned(), "d".to_owned()));
    relay.reload(&reloaded).unwrap();
    reloaded.auth_secret = vec![String::new()];
    let err = relay.reload(&reloaded).unwrap_err();
    assert_eq!(err.key(), Some("auth-secret"));

    relay.shutdown();
    // The address is free again once every worker closed its socket.
    UdpSocket::bind(listen[0]).unwrap();
}

fn listen_address_taken_is_a_bind_error(backend: IoBackend) {
    let config = || config(backend);
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = taken.local_addr().unwrap();
    let err = Relay::start(Config {
        listen: vec![addr],
        ..config()
    })
    .unwrap_err();
    assert!(
        matches!(err, StartError::Bind { addr: a, .. } if a == addr),
        "{err}"
    );
}

fn invalid_config_is_refused_before_binding(backend: IoBackend) {
    let config = || config(backend);
    let err = Relay::start(Config {
        realm: String::new(),
        ..config()
    })
    .unwrap_err();
    assert!(
        matches!(err, StartError::Config(ref e) if e.key() == Some("realm")),
        "{err}"
    );
}

fn more_workers_than_ports_runs_fewer_workers(backend: IoBackend) {
    let config = || config(backend);
    let relay = Relay::start(Config {
        relay_ports: free_relay_ports(2),
        workers: 4,
        ..config()
    })
    .unwrap();
    assert_eq!(relay.workers(), 2);
}

#[test]
fn forcing_an_unavailable_backend_names_what_is_missing() {
    if let Err(e) = tern_io::BackendKind::Uring.probe() {
        let err = Relay::start(config(IoBackend::Uring)).unwrap_err();
        assert!(matches!(err, StartError::Backend(_)), "{err}");
        assert!(err.to_string().contains(&e.reason), "{err}");
    } else {
        let relay = Relay::start(config(IoBackend::Uring)).unwrap();
        assert_eq!(relay.backend(), tern_io::BackendKind::Uring);
        relay.shutdown();
    }
}

/// Instantiate every test above once per back end.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod mmsg {
            $( #[test] fn $name() { super::$name(super::IoBackend::Mmsg) } )*
        }
        mod uring {
            $(
                #[test]
                fn $name() {
                    if super::available(super::IoBackend::Uring) {
                        super::$name(super::IoBackend::Uring)
                    }
                }
            )*
        }
    };
}

on_every_backend!(
    starts_reports_and_stops,
    listen_address_taken_is_a_bind_error,
    invalid_config_is_refused_before_binding,
    more_workers_than_ports_runs_fewer_workers,
);
