//! A TCP relay on 127.0.0.1 that paces what a real server sends back: the slow link that a
//! registry on loopback never is, so a test can act while a transfer is in flight (kill a
//! replica mid-fill, start one mid-run). Requests pass through unpaced.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Throttle {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Throttle {
    /// Relays connections to `target` (`host:port`), each answer paced at `bytes_per_sec`.
    pub async fn start(target: &str, bytes_per_sec: u64) -> Throttle {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = target.to_string();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&target).await {
                        relay(client, server, bytes_per_sec).await;
                    }
                });
            }
        });
        Throttle { addr, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, bytes_per_sec: u64) {
    let _ = client.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    });
    let mut started = Instant::now();
    let mut sent = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let asked = Instant::now();
        let n = match server_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // A kept-alive connection that sat idle earns no burst: pace from here.
        if asked.elapsed() > Duration::from_millis(50) {
            (started, sent) = (Instant::now(), 0);
        }
        if client_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
        sent += n as u64;
        let due = Duration::from_secs_f64(sent as f64 / bytes_per_sec as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    let _ = client_write.shutdown().await;
    up.abort();
}
