//! A TCP relay a test can cut and restore: a real network outage for the clients behind it.

use std::{
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
};

use anyhow::Result;

/// A TCP relay between clients and a server that a test can cut and restore: a real network
/// outage for the clients behind it (their connections drop, new ones are refused), while the
/// server and everyone else stay up.
pub struct Relay {
    /// Where clients connect instead of the server.
    address: SocketAddr,
    /// Shared with the accept thread.
    state: Arc<RelayState>,
}

struct RelayState {
    /// While set, open connections are closed and new ones are dropped at once.
    cut: AtomicBool,
    /// Both ends of every open connection, to close them on a cut.
    open: Mutex<Vec<TcpStream>>,
}

impl Relay {
    /// Relays `127.0.0.1:<free port>` to `target` (`host:port`, or a URL such as `ws://host:port`).
    pub fn start(target: &str) -> Result<Self> {
        let target = target.rsplit("://").next().unwrap_or(target).to_owned();
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let state = Arc::new(RelayState { cut: AtomicBool::new(false), open: Mutex::new(Vec::new()) });
        let accepting = state.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if accepting.cut.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else { continue };
                let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                accepting
                    .open
                    .lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                thread::spawn(move || pipe(client, server_copy));
                thread::spawn(move || pipe(server, client_copy));
            }
        });
        Ok(Relay { address, state })
    }

    /// The relay's address as a URL with the given scheme (`ws`, `nats`).
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.address)
    }

    /// Drops every open connection and refuses new ones until [`Relay::restore`].
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        for stream in self.state.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies one direction of a relayed connection until either side closes.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Both);
}
