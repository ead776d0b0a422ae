//! Forming a cluster: every pair of processes connects over TCP and proves, before timely sees
//! the socket, that both ends are processes of this run (SPEC 3.10).
//!
//! Process `j` connects to every process `i < j` (timely's convention) and opens two
//! connections: one for timely's data, one for heartbeats ([`super::health`]). On each, a
//! mutual challenge–response with HMAC-SHA256 under the run's key:
//!
//! ```text
//! j → i  hello:  "MARSCL01", kind (D|H), from j, to i, nonce_j (16 bytes), fingerprint
//! i → j  reply:  "MARSCL01", nonce_i, fingerprint_i, HMAC(key, "listener" ‖ hello ‖ nonce_i ‖ fingerprint_i)
//! j → i  proof:  HMAC(key, "connector" ‖ hello ‖ reply)
//! i → j  verdict: 1 accepted | 2 plans differ | 3 that process is already connected
//! ```
//!
//! The key comes from the run token (a shared secret file, or the token process 0 of
//! `--local-cluster` generates for its children); without one it is a constant every `marsc`
//! knows. A listener drops a connection that fails any step, logs it, and keeps
//! accepting; each handshake runs on a thread of its own with a read timeout, so an idle or
//! slow stranger cannot hold forming up. Plans that differ between authenticated processes end
//! forming with an error naming both. The links are not encrypted, and nothing after the
//! handshake is authenticated.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"MARSCL01";
/// The longest fingerprint a peer may send.
const MAX_FINGERPRINT: usize = 512;
/// How long a connecting stranger may take over its part of the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once on a listener; connections beyond are dropped at once.
const MAX_PENDING: usize = 64;

const ACCEPTED: u8 = 1;
const PLANS_DIFFER: u8 = 2;
const ALREADY_CONNECTED: u8 = 3;

/// What a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Data,
    Heartbeat,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Data => b'D',
            Kind::Heartbeat => b'H',
        }
    }
    fn of(b: u8) -> Option<Kind> {
        match b {
            b'D' => Some(Kind::Data),
            b'H' => Some(Kind::Heartbeat),
            _ => None,
        }
    }
}

/// The secret every process of a run shares: the HMAC key of the handshake.
#[derive(Clone)]
pub struct RunKey([u8; 32]);

impl RunKey {
    /// From a run token (the contents of a secret file, or a generated token).
    pub fn from_token(token: &[u8]) -> RunKey {
        let mut h = Sha256::new();
        h.update(b"mars cluster run token\0");
        h.update(token);
        RunKey(h.finalize().into())
    }

    /// Without a token: the key every `marsc` knows. It keeps out what does not speak the
    /// handshake (scanners, garbage, other protocols), not other Mars processes.
    pub fn without_token() -> RunKey {
        RunKey::from_token(b"mars cluster without a run token")
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        hmac_sha256(&self.0, parts)
    }
}

/// A fresh random run token (32 bytes, hex), for `--local-cluster` children.
pub fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    random_bytes(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn random_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// HMAC-SHA256 (RFC 2104) over the concatenation of `parts`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Comparison that does not stop at the first differing byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The established, authenticated connections of this process: `data[p]` and `heartbeat[p]`
/// for every other process `p` (`None` at this process's own index).
pub struct Links {
    pub data: Vec<Option<TcpStream>>,
    pub heartbeat: Vec<Option<TcpStream>>,
}

/// This process's part in forming the cluster.
pub struct Forming<'a> {
    pub hosts: &'a [String],
    pub process: usize,
    pub key: RunKey,
    /// What every process must agree on (plan, Mars version, threads).
    pub fingerprint: String,
    /// Forming gives up (an error naming the processes still missing) after this long.
    pub timeout: Duration,
}

/// Why the cluster did not form (diagnostic code `mars::cluster::connect`, or
/// `mars::cluster::plan` when authenticated processes run different plans).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormError(pub String);

pub const CONNECT: &str = "mars::cluster::connect";
pub const PLAN: &str = "mars::cluster::plan";

impl FormError {
    pub fn code(&self) -> &'static str {
        if self.0.contains("start every process with the same plan") {
            PLAN
        } else {
            CONNECT
        }
    }
}

impl std::fmt::Display for FormError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn host(hosts: &[String], p: usize) -> String {
    hosts.get(p).cloned().unwrap_or_else(|| "?".into())
}

impl Forming<'_> {
    /// Listen (before connecting anywhere, so that a second cluster on the same hosts file
    /// fails to bind instead of joining this one), connect to the lower processes, accept the
    /// higher ones, and return the authenticated links.
    pub fn form(&self) -> Result<Links, FormError> {
        let n = self.hosts.len();
        let me = self.process;
        let listeners = self.hosts[me]
            .split_whitespace()
            .map(|a| {
                TcpListener::bind(a).map_err(|e| {
                    FormError(format!(
                        "process {me} cannot listen on {a}: {e} (is another cluster using this hosts file?)"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let deadline = Instant::now() + self.timeout;
        let (found_tx, found) =
            crossbeam_channel::unbounded::<Result<(usize, Kind, TcpStream), FormError>>();
        // Accept the higher processes on a thread of its own while connecting to the lower.
        let acceptor = {
            let ctx = Listening {
                key: self.key.clone(),
                fingerprint: self.fingerprint.clone(),
                hosts: self.hosts.to_vec(),
                me,
                pending: Arc::new(AtomicUsize::new(0)),
            };
            let found_tx = found_tx.clone();
            let expected = n - me - 1;
            std::thread::Builder::new()
                .name("mars:cluster-accept".into())
                .spawn(move || ctx.accept(listeners, expected, deadline, &found_tx))
                .map_err(|e| FormError(format!("cannot start a thread: {e}")))?
        };
        let mut connectors = Vec::new();
        for peer in 0..me {
            for kind in [Kind::Data, Kind::Heartbeat] {
                let found_tx = found_tx.clone();
                let key = self.key.clone();
                let fingerprint = self.fingerprint.clone();
                let hosts = self.hosts.to_vec();
                connectors.push(
                    std::thread::Builder::new()
                        .name(format!("mars:cluster-connect-{peer}"))
                        .spawn(move || {
                            // At the deadline a connector just stops: the forming loop
                            // reports every process still missing.
                            match connect(&hosts, me, peer, kind, &key, &fingerprint, deadline) {
                                Ok(Some(s)) => {
                                    let _ = found_tx.send(Ok((peer, kind, s)));
                                }
                                Ok(None) => {}
                                Err(e) => {
                                    let _ = found_tx.send(Err(e));
                                }
                            }
                        })
                        .map_err(|e| FormError(format!("cannot start a thread: {e}")))?,
                );
            }
        }
        drop(found_tx);
        let mut links: BTreeMap<(usize, Kind), TcpStream> = BTreeMap::new();
        let wanted = 2 * (n - 1);
        let result = loop {
            if links.len() == wanted {
                break Ok(());
            }
            match found.recv_deadline(deadline) {
                Ok(Ok((p, kind, s))) => {
                    links.insert((p, kind), s);
                }
                Ok(Err(e)) => break Err(e),
                Err(_) => {
                    let missing: Vec<String> = (0..n)
                        .filter(|&p| p != me && !links.contains_key(&(p, Kind::Data)))
                        .map(|p| format!("process {p} ({})", host(self.hosts, p)))
                        .collect();
                    break Err(FormError(format!(
                        "process {me} waited {:.0} s and the cluster did not form: not connected to {}",
                        self.timeout.as_secs_f64(),
                        missing.join(", ")
                    )));
                }
            }
        };
        // Threads still trying end at the deadline on their own; they are not waited for.
        drop(acceptor);
        drop(connectors);
        result?;
        let mut out = Links {
            data: (0..n).map(|_| None).collect(),
            heartbeat: (0..n).map(|_| None).collect(),
        };
        for ((p, kind), s) in links {
            match kind {
                Kind::Data => out.data[p] = Some(s),
                Kind::Heartbeat => out.heartbeat[p] = Some(s),
            }
        }
        Ok(out)
    }
}

fn hello(kind: Kind, from: usize, to: usize, nonce: &[u8; 16], fingerprint: &str) -> Vec<u8> {
    let mut h = Vec::with_capacity(64 + fingerprint.len());
    h.extend_from_slice(MAGIC);
    h.push(kind.byte());
    h.extend_from_slice(&(from as u32).to_be_bytes());
    h.extend_from_slice(&(to as u32).to_be_bytes());
    h.extend_from_slice(nonce);
    put_text(&mut h, fingerprint);
    h
}

fn put_text(buf: &mut Vec<u8>, text: &str) {
    let bytes = &text.as_bytes()[..text.len().min(MAX_FINGERPRINT)];
    buf.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    buf.extend_from_slice(bytes);
}

fn read_text(s: &mut TcpStream) -> std::io::Result<(Vec<u8>, String)> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let n = usize::from(u16::from_be_bytes(len));
    if n > MAX_FINGERPRINT {
        return Err(std::io::Error::other("fingerprint too long"));
    }
    let mut text = vec![0u8; n];
    s.read_exact(&mut text)?;
    let mut raw = len.to_vec();
    raw.extend_from_slice(&text);
    Ok((raw, String::from_utf8_lossy(&text).into_owned()))
}

/// Connect to `peer` until `deadline` and authenticate both ways.
fn connect(
    hosts: &[String],
    me: usize,
    peer: usize,
    kind: Kind,
    key: &RunKey,
    fingerprint: &str,
    deadline: Instant,
) -> Result<Option<TcpStream>, FormError> {
    let address = host(hosts, peer);
    let not_ours = |why: &str| {
        FormError(format!(
            "process {me}: the process listening at {address} (process {peer} in the hosts file) is not part of this run ({why}); is another cluster using these addresses, or was it started with another --cluster-secret?"
        ))
    };
    loop {
        if Instant::now() >= deadline {
            return Ok(None);
        }
        let stream = address
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).ok());
        let Some(mut s) = stream else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
        let mut nonce = [0u8; 16];
        random_bytes(&mut nonce).map_err(|e| FormError(format!("no randomness: {e}")))?;
        let hello = hello(kind, me, peer, &nonce, fingerprint);
        let mut reply = [0u8; 24];
        let step = (|| -> std::io::Result<(Vec<u8>, String, [u8; 32])> {
            s.write_all(&hello)?;
            s.read_exact(&mut reply)?;
            let (raw, theirs) = read_text(&mut s)?;
            let mut mac = [0u8; 32];
            s.read_exact(&mut mac)?;
            Ok((raw, theirs, mac))
        })();
        let (raw, theirs, mac) = match step {
            Ok(x) => x,
            // The listener went away or stalled mid-handshake (it may be restarting, or not
            // be ours): try again until the deadline.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if &reply[..8] != MAGIC {
            return Err(not_ours("it does not speak the Mars handshake"));
        }
        let expected = key.mac(&[b"listener", &hello, &reply[8..], &raw]);
        if !same(&mac, &expected) {
            return Err(not_ours("it does not know this run's token"));
        }
        let mut answer = reply.to_vec();
        answer.extend_from_slice(&raw);
        answer.extend_from_slice(&mac);
        let proof = key.mac(&[b"connector", &hello, &answer]);
        let mut verdict = [0u8; 1];
        s.write_all(&proof)
            .and_then(|()| s.read_exact(&mut verdict))
            .map_err(|e| {
                FormError(format!(
                    "process {me}: process {peer} ({address}) dropped the handshake: {e}"
                ))
            })?;
        match verdict[0] {
            ACCEPTED if theirs == fingerprint => {
                let _ = s.set_read_timeout(None);
                return Ok(Some(s));
            }
            ACCEPTED | PLANS_DIFFER => return Err(differ(me, fingerprint, peer, &address, &theirs)),
            ALREADY_CONNECTED => {
                return Err(FormError(format!(
                    "process {me}: process {peer} ({address}) already has a process {me} of this run connected; is the same process index started twice?"
                )))
            }
            other => return Err(not_ours(&format!("verdict {other}"))),
        }
    }
}

fn differ(me: usize, mine: &str, peer: usize, address: &str, theirs: &str) -> FormError {
    FormError(format!(
        "process {peer} ({address}) runs {theirs}, but process {me} runs {mine}; start every process with the same plan, the same marsc and the same --workers"
    ))
}

/// What a listener's handshake threads share.
#[derive(Clone)]
struct Listening {
    key: RunKey,
    fingerprint: String,
    hosts: Vec<String>,
    me: usize,
    pending: Arc<AtomicUsize>,
}

type Found = crossbeam_channel::Sender<Result<(usize, Kind, TcpStream), FormError>>;

impl Listening {
    fn accept(
        self,
        listeners: Vec<TcpListener>,
        expected: usize,
        deadline: Instant,
        found: &Found,
    ) {
        for l in &listeners {
            let _ = l.set_nonblocking(true);
        }
        let claimed = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        while accepted.load(Ordering::SeqCst) < 2 * expected && Instant::now() < deadline {
            let mut any = false;
            for l in &listeners {
                match l.accept() {
                    Ok((s, from)) => {
                        any = true;
                        if self.pending.load(Ordering::SeqCst) >= MAX_PENDING {
                            tracing::warn!("cluster: refused a connection from {from}: too many handshakes in progress");
                            continue;
                        }
                        self.pending.fetch_add(1, Ordering::SeqCst);
                        let ctx = self.clone();
                        let found = found.clone();
                        let claimed = Arc::clone(&claimed);
                        let accepted = Arc::clone(&accepted);
                        let _ = std::thread::Builder::new()
                            .name("mars:cluster-handshake".into())
                            .spawn(move || {
                                match ctx.handshake(s, expected, &claimed) {
                                    Ok(Some(link)) => {
                                        accepted.fetch_add(1, Ordering::SeqCst);
                                        let _ = found.send(Ok(link));
                                    }
                                    Ok(None) => {}
                                    Err(Refused::Stranger(why)) => {
                                        tracing::warn!("cluster: refused a connection from {from}: {why}");
                                        eprintln!("warning[mars::cluster::refused]: process {} refused a connection from {from}: {why}", ctx.me);
                                    }
                                    Err(Refused::Fatal(e)) => {
                                        let _ = found.send(Err(e));
                                    }
                                }
                                ctx.pending.fetch_sub(1, Ordering::SeqCst);
                            });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => tracing::warn!("cluster: accept failed: {e}"),
                }
            }
            if !any {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Listeners close here: once the cluster has formed, nobody else can connect.
    }

    /// One connection's handshake. `Ok(None)`: a duplicate of an established link, refused.
    fn handshake(
        &self,
        mut s: TcpStream,
        expected: usize,
        claimed: &std::sync::Mutex<std::collections::BTreeSet<(usize, Kind)>>,
    ) -> Result<Option<(usize, Kind, TcpStream)>, Refused> {
        let stranger = |why: &str| Refused::Stranger(why.to_string());
        let io = |e: std::io::Error| Refused::Stranger(format!("handshake not completed ({e})"));
        let _ = s.set_nonblocking(false);
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
        let _ = s.set_write_timeout(Some(HANDSHAKE_TIMEOUT));
        let mut head = [0u8; 8 + 1 + 4 + 4 + 16];
        s.read_exact(&mut head).map_err(io)?;
        if &head[..8] != MAGIC {
            return Err(stranger("not a Mars cluster greeting"));
        }
        let kind = Kind::of(head[8]).ok_or_else(|| stranger("unknown connection kind"))?;
        let from = u32::from_be_bytes([head[9], head[10], head[11], head[12]]) as usize;
        let to = u32::from_be_bytes([head[13], head[14], head[15], head[16]]) as usize;
        if to != self.me || from <= self.me || from > self.me + expected {
            return Err(stranger(&format!(
                "it claims to be process {from} connecting to process {to}"
            )));
        }
        let (raw_fp, theirs) = read_text(&mut s).map_err(io)?;
        let mut hello = head.to_vec();
        hello.extend_from_slice(&raw_fp);
        let mut nonce = [0u8; 16];
        random_bytes(&mut nonce).map_err(io)?;
        let mut reply = MAGIC.to_vec();
        reply.extend_from_slice(&nonce);
        let mut mine_raw = Vec::new();
        put_text(&mut mine_raw, &self.fingerprint);
        let mac = self.key.mac(&[b"listener", &hello, &nonce, &mine_raw]);
        let mut answer = reply;
        answer.extend_from_slice(&mine_raw);
        answer.extend_from_slice(&mac);
        s.write_all(&answer).map_err(io)?;
        let mut proof = [0u8; 32];
        s.read_exact(&mut proof).map_err(io)?;
        if !same(&proof, &self.key.mac(&[b"connector", &hello, &answer])) {
            return Err(stranger("it does not know this run's token"));
        }
        // An authenticated process of this run from here on.
        if theirs != self.fingerprint {
            let _ = s.write_all(&[PLANS_DIFFER]);
            return Err(Refused::Fatal(differ(
                self.me,
                &self.fingerprint,
                from,
                &host(&self.hosts, from),
                &theirs,
            )));
        }
        let fresh = claimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((from, kind));
        if !fresh {
            let _ = s.write_all(&[ALREADY_CONNECTED]);
            tracing::warn!("cluster: refused a second process {from} of this run");
            eprintln!("warning[mars::cluster::refused]: process {} refused a second process {from} of this run", self.me);
            return Ok(None);
        }
        s.write_all(&[ACCEPTED]).map_err(io)?;
        let _ = s.set_read_timeout(None);
        let _ = s.set_write_timeout(None);
        Ok(Some((from, kind, s)))
    }
}

enum Refused {
    /// Not a process of this run: logged, and forming goes on.
    Stranger(String),
    /// A process of this run that cannot run with this one.
    Fatal(FormError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
