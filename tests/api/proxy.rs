//! A TCP proxy a test can pull the plug on: an outage of Postgres or
//! Redis for one app, while the shared servers (and every other test) go
//! on undisturbed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy to one address.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    target: String,
    cut: watch::Sender<u64>,
    accepting: Mutex<Option<JoinHandle<()>>>,
    /// Connections being forwarded now.
    open: Arc<AtomicUsize>,
}

/// Counts a forwarded connection while it lives.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Proxy {
    /// Forwards connections to `target` (`host:port`).
    pub async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (cut, _) = watch::channel(0u64);
        let proxy = Proxy {
            addr,
            target,
            cut,
            accepting: Mutex::new(None),
            open: Arc::new(AtomicUsize::new(0)),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let (target, cuts) = (self.target.clone(), self.cut.subscribe());
        let open = self.open.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (target, mut cuts) = (target.clone(), cuts.clone());
                open.fetch_add(1, Ordering::SeqCst);
                let counted = Open(open.clone());
                tokio::spawn(async move {
                    let _counted = counted;
                    let Ok(mut server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        *self.accepting.lock().expect("lock") = Some(task);
    }

    /// An outage: open connections are cut and new ones refused (nothing
    /// listens on the port). Returns once every connection is closed, so
    /// nothing more gets through.
    pub async fn down(&self) {
        if let Some(task) = self.accepting.lock().expect("lock").take() {
            task.abort();
        }
        self.cut.send_modify(|n| *n += 1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.open.load(Ordering::SeqCst) > 0 {
            assert!(std::time::Instant::now() < deadline, "connections not cut");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Serving again, on the same port.
    pub async fn up(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(err) if std::time::Instant::now() < deadline => {
                    let _ = err;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(err) => panic!("rebinding {}: {err}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// A proxy to the server `url` names, and `url` pointed at it.
    pub async fn to(url: &str) -> (Proxy, String) {
        let parsed = url::Url::parse(url).expect("url");
        let host = parsed.host_str().expect("host").to_owned();
        let port = parsed
            .port_or_known_default()
            .unwrap_or(match parsed.scheme() {
                "redis" => 6379,
                _ => 5432,
            });
        let proxy = Proxy::start(format!("{host}:{port}")).await;
        let mut through = parsed.clone();
        through.set_host(Some("127.0.0.1")).expect("host");
        through.set_port(Some(proxy.addr.port())).expect("port");
        (proxy, through.to_string())
    }
}
