//! A relay between an agent and etcd that a test cuts: a partition.

use crate::free_port;

/// A TCP relay on loopback between an agent and etcd that a test can cut
/// and restore: the agent's own partition from etcd, while the test still
/// reaches etcd directly.
pub struct Partition {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Partition {
    /// Relays 127.0.0.1:PORT to 127.0.0.1:`to`.
    pub fn start(to: u16) -> Partition {
        use std::{
            net::{Shutdown, TcpListener, TcpStream},
            sync::{Arc, Mutex, atomic::AtomicBool, atomic::Ordering},
        };
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("binding the relay");
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (cut2, open2) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                if cut2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                let mut open = open2.lock().unwrap();
                for (mut from, mut into) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(Shutdown::Both);
                    });
                }
                open.push(client);
                open.push(server);
            }
        });
        Partition { port, cut, open }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Cuts every connection through it, and refuses new ones until `heal`.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}
