//! The load generator of `marsc bench serve`: HTTP/1.1 keep-alive clients on tokio that POST
//! request bodies to one URL path, closed-loop (a fixed number of clients, each sending its
//! next request when the last is answered) or open-loop (Poisson arrivals at a fixed rate,
//! latency counted from each request's scheduled arrival so that a slow server cannot hide
//! its queueing). It speaks just enough HTTP/1.1 to do this cheaply: one small client is what
//! lets a 2-core machine measure the server rather than the client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// How to load the server.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// This many clients, each with one request outstanding.
    Closed { clients: usize },
    /// Poisson arrivals at this many requests per second (at most `connections` open).
    Open { rate: f64, connections: usize },
}

/// What one load run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub load: String,
    pub seconds: f64,
    pub sent: u64,
    pub ok: u64,
    /// 503 answers (admission refused).
    pub refused: u64,
    /// Other non-200 answers and broken connections.
    pub errors: u64,
    /// Answered with 200, per second.
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Latency of refusals (how quickly overload is answered).
    pub refused_p99_ms: f64,
}

/// One keep-alive connection.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Send one POST and read its answer; the status.
    async fn post(&mut self, head: &[u8], body: &[u8]) -> std::io::Result<u16> {
        let mut msg = Vec::with_capacity(head.len() + body.len() + 32);
        msg.extend_from_slice(head);
        msg.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        msg.extend_from_slice(body);
        self.stream.write_all(&msg).await?;
        let end = loop {
            if let Some(k) = find(&self.buf, b"\r\n\r\n") {
                break k + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("no HTTP status"))?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while self.buf.len() < end + length {
            self.fill().await?;
        }
        self.buf.drain(..end + length);
        Ok(status)
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("the server closed the connection"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(Default)]
struct Tally {
    ok: Vec<Duration>,
    refused: Vec<Duration>,
    errors: u64,
}

impl Tally {
    fn add(&mut self, status: std::io::Result<u16>, took: Duration) {
        match status {
            Ok(200) => self.ok.push(took),
            Ok(503) => self.refused.push(took),
            _ => self.errors += 1,
        }
    }
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let k = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[k].as_secs_f64() * 1000.0
}

/// A tiny deterministic generator (SplitMix64) for arrival times and body choice.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

/// Load `addr` at `path` for `seconds` with `bodies` (taken in turn).
pub async fn run_load(
    addr: SocketAddr,
    path: &str,
    bodies: Arc<Vec<Vec<u8>>>,
    load: Load,
    seconds: f64,
) -> LoadReport {
    let head: Arc<Vec<u8>> = Arc::new(
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n")
            .into_bytes(),
    );
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(seconds);
    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    let mut sent = 0u64;
    match load {
        Load::Closed { clients } => {
            let mut tasks = Vec::new();
            // Every request takes the next body in turn, whichever client sends it: the mix
            // answered is the sample's. (Client c taking bodies c, c + clients, … would pin
            // each client to one body when the count divides the clients, and the clients
            // with the cheapest bodies would then answer most of the requests.)
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            for _ in 0..clients {
                let (head, bodies, tally, next) = (
                    Arc::clone(&head),
                    Arc::clone(&bodies),
                    Arc::clone(&tally),
                    Arc::clone(&next),
                );
                tasks.push(tokio::spawn(async move {
                    let mut n = 0u64;
                    let mut conn = Conn::open(addr).await.ok();
                    while Instant::now() < until {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let t0 = Instant::now();
                        let status = match conn.as_mut() {
                            Some(cn) => cn.post(&head, &bodies[k % bodies.len()]).await,
                            None => Err(std::io::Error::other("no connection")),
                        };
                        if status.is_err() {
                            conn = Conn::open(addr).await.ok();
                        }
                        tally
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .add(status, t0.elapsed());
                        n += 1;
                    }
                    n
                }));
            }
            for t in tasks {
                sent += t.await.unwrap_or(0);
            }
        }
        Load::Open { rate, connections } => {
            let pool: Arc<Mutex<Vec<Conn>>> = Arc::new(Mutex::new(Vec::new()));
            let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut rng = Rng(0x5EED);
            let mut next = start;
            let mut tasks = Vec::new();
            let mut k = 0usize;
            while next < until {
                tokio::time::sleep_until(next.into()).await;
                let scheduled = next;
                let (head, bodies, tally, pool, open) = (
                    Arc::clone(&head),
                    Arc::clone(&bodies),
                    Arc::clone(&tally),
                    Arc::clone(&pool),
                    Arc::clone(&open),
                );
                let body = k % bodies.len();
                tasks.push(tokio::spawn(async move {
                    let conn = pool.lock().await.pop();
                    let conn = match conn {
                        Some(c) => Some(c),
                        None if open.load(std::sync::atomic::Ordering::Relaxed) < connections => {
                            open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            Conn::open(addr).await.ok()
                        }
                        None => None,
                    };
                    let Some(mut conn) = conn else {
                        // Every connection is busy: the client is saturated, count it.
                        tally
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .errors += 1;
                        return;
                    };
                    let status = conn.post(&head, &bodies[body]).await;
                    let ok = status.is_ok();
                    tally
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .add(status, scheduled.elapsed());
                    if ok {
                        pool.lock().await.push(conn);
                    } else {
                        open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }));
                sent += 1;
                k += 1;
                next += Duration::from_secs_f64(-rng.unit().ln() / rate);
                // Reap finished tasks now and then, so the list stays small.
                if tasks.len() > 4096 {
                    tasks.retain(|t| !t.is_finished());
                }
            }
            for t in tasks {
                let _ = t.await;
            }
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let mut t = std::mem::take(
        &mut *tally
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    t.ok.sort();
    t.refused.sort();
    LoadReport {
        load: match load {
            Load::Closed { clients } => format!("closed loop, {clients} clients"),
            Load::Open { rate, .. } => format!("open loop, Poisson {rate:.0} req/s"),
        },
        seconds: wall,
        sent,
        ok: t.ok.len() as u64,
        refused: t.refused.len() as u64,
        errors: t.errors,
        throughput: t.ok.len() as f64 / wall,
        p50_ms: quantile(&t.ok, 0.5),
        p99_ms: quantile(&t.ok, 0.99),
        p999_ms: quantile(&t.ok, 0.999),
        refused_p99_ms: quantile(&t.refused, 0.99),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_ranked_sample() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&d, 0.5), 50.0);
        assert_eq!(quantile(&d, 0.99), 99.0);
        assert_eq!(quantile(&d, 0.999), 100.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    /// A server that answers body `f` at once and body `s` after 5 ms, counting each.
    async fn fast_and_slow() -> (SocketAddr, Arc<[std::sync::atomic::AtomicU64; 2]>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("an address");
        let seen = Arc::new([
            std::sync::atomic::AtomicU64::new(0),
            std::sync::atomic::AtomicU64::new(0),
        ]);
        let counts = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counts = Arc::clone(&counts);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // Each request here ends with its one-byte body.
                        while !find(&buf, b"\r\n\r\n").is_some_and(|k| buf.len() > k + 4) {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = find(&buf, b"\r\n\r\n").expect("a head") + 4;
                        let slow = buf[end] == b's';
                        buf.drain(..=end);
                        counts[usize::from(slow)]
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if slow {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                        if stream.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn a_closed_loop_sends_the_bodies_in_turn_whatever_each_costs() {
        let (addr, seen) = fast_and_slow().await;
        let bodies = Arc::new(vec![b"f".to_vec(), b"s".to_vec()]);
        // Two clients, two bodies: taking bodies c, c + clients, … would pin client 0 to the
        // fast body, and it would answer ~5 ms / its round trip times as many requests.
        let r = run_load(addr, "/", bodies, Load::Closed { clients: 2 }, 0.5).await;
        let fast = seen[0].load(std::sync::atomic::Ordering::Relaxed);
        let slow = seen[1].load(std::sync::atomic::Ordering::Relaxed);
        assert!(r.ok >= 20, "{r:?}");
        assert!(fast.abs_diff(slow) <= 2, "fast {fast}, slow {slow}");
    }

    #[test]
    fn arrivals_average_the_rate() {
        let mut r = Rng(1);
        let n = 20000;
        let mean: f64 = (0..n).map(|_| -r.unit().ln() / 100.0).sum::<f64>() / n as f64;
        assert!((mean - 0.01).abs() < 0.0005, "{mean}");
    }
}
