//! A TCP forwarder from a loopback port to a target, for tests that take
//! an endpoint down and bring it back, or put it far away.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP forwarder from a loopback port to `target`: an endpoint the test
/// can take down (listener and every connection closed) and bring back on
/// the same port. Counts the bytes it forwarded towards `target`, and can
/// hold each read towards it for a while (a far-away `target`).
pub struct Forwarder {
    pub port: u16,
    target: SocketAddr,
    delay: Duration,
    pub bytes_up: Arc<AtomicU64>,
    runtime: tokio::runtime::Runtime,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Forwarder {
    pub fn start(target: SocketAddr) -> Forwarder {
        Self::start_delayed(target, Duration::ZERO)
    }

    /// Like [`Forwarder::start`], holding every read from a client `delay`
    /// before passing it on: each request-and-answer takes at least that.
    pub fn start_delayed(target: SocketAddr, delay: Duration) -> Forwarder {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let f = Forwarder {
            port: free_port(),
            target,
            delay,
            bytes_up: Arc::new(AtomicU64::new(0)),
            runtime,
            tasks: Mutex::new(Vec::new()),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        f.resume();
        f
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Listens (again) on `port`.
    pub fn resume(&self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let listener = self
            .runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .expect("bind the forwarder port");
        let (target, bytes, conns) = (self.target, self.bytes_up.clone(), self.conns.clone());
        let delay = self.delay;
        let accept = self.runtime.spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let bytes = bytes.clone();
                let conn = tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.split();
                    let (mut ro, mut wo) = outbound.split();
                    let up = async {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            match ri.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                                    if !delay.is_zero() {
                                        tokio::time::sleep(delay).await;
                                    }
                                    if wo.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    };
                    let down = tokio::io::copy(&mut ro, &mut wi);
                    tokio::select! { _ = up => {}, _ = down => {} }
                });
                conns.lock().unwrap().push(conn.abort_handle());
            }
        });
        self.tasks.lock().unwrap().push(accept.abort_handle());
    }

    /// Closes the listener and every forwarded connection.
    pub fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
        // Let the aborted tasks drop their sockets.
        self.runtime
            .block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let end = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).is_ok() {
            assert!(Instant::now() < end, "forwarder port still open");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes_up.load(Ordering::Relaxed)
    }
}
