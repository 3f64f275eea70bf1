//! `tls-overhead`: the `overhead` comparison over TLS. The same hello
//! service on bare hyper-util + tokio-rustls (`hyper-peer --tls`) and on
//! lameduck's `Server::tls` (`lameduck-peer --tls`), with the same
//! self-signed certificate (P-256, made once per run with the `openssl`
//! CLI), the same rustls 0.23 with the *ring* provider, ALPN `h2` and
//! `http/1.1`, and stateless session tickets on both.
//!
//! Four measurements per peer and round, each `--seconds` long:
//! - HTTP/1.1 requests/s with keep-alive: `wrk -t2 -c64 https://…`;
//! - HTTP/2 requests/s: `h2load -c16 -m16 -t1 https://…` (h2 by ALPN);
//! - full handshakes/s: this program's own client (rustls, ring), N
//!   concurrent connections each doing connect, a TLS handshake with
//!   resumption disabled, one `Connection: close` request, the response
//!   read to the end, close, again; every handshake is checked to be full;
//! - resumed handshakes/s: the same client with a rustls session cache per
//!   client connection, so that every connection after each client's first
//!   resumes with a ticket from its previous one; checked too.
//!
//! wrk and h2load are not used for handshakes: both resume sessions when
//! they reconnect after `Connection: close` (wrk keeps the session through
//! `SSL_clear`, h2load `--h1` likewise), as hyper-peer's own count of
//! handshake kinds shows. The client skips certificate and signature
//! checks, so that most of the CPU goes to the servers.
//!
//! Besides the rates, the server process's CPU time (user + system, from
//! `/proc/PID/stat`) per request or handshake: less sensitive than the
//! rates to what else runs on the machine.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{run_h2load_url, run_wrk_url, target_dir};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Rounds; the two peers take turns within each round, and which goes
    /// first alternates from round to round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per measurement (four per peer and round).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent connections of the handshake client.
    #[arg(long, default_value_t = 16)]
    handshake_clients: usize,
}

/// The measurements, in the order they run against each peer.
const MEASURES: [&str; 4] = [
    "HTTP/1.1 req/s",
    "HTTP/2 req/s",
    "full handshakes/s",
    "resumed handshakes/s",
];

/// One measurement: operations per second, and the server's CPU time per
/// operation in microseconds.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rate: f64,
    cpu_us: f64,
}

/// Handshake kinds seen, summed over a peer's runs.
#[derive(Debug, Default, Clone, Copy)]
struct Kinds {
    full: u64,
    resumed: u64,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let Args {
        rounds,
        seconds,
        handshake_clients,
    } = args;
    if rounds == 0 || seconds == 0 || handshake_clients == 0 {
        bail!("--rounds, --seconds and --handshake-clients must be at least 1");
    }
    let dir = std::env::temp_dir().join(format!("lameduck-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&dir, rounds, seconds, handshake_clients);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(dir: &Path, rounds: usize, seconds: u64, clients: usize) -> anyhow::Result<()> {
    let (cert, key) = self_signed(dir)?;
    let tls_arg = format!("{},{}", cert.display(), key.display());
    let peers = [
        ("bare hyper-util + tokio-rustls", "hyper-peer"),
        ("lameduck", "lameduck-peer"),
    ];
    for (_, bin) in &peers {
        if !target_dir().join(bin).exists() {
            bail!("{bin} not built: run `cargo build --release -p lameduck-bench` first");
        }
    }
    let load_before = loadavg();
    // samples[peer][measure]: one per round.
    let mut samples = vec![vec![Vec::<Sample>::new(); MEASURES.len()]; peers.len()];
    let mut client_full = vec![Kinds::default(); peers.len()];
    let mut client_resumed = vec![Kinds::default(); peers.len()];
    let mut server_kinds: Vec<Option<Kinds>> = vec![None; peers.len()];
    for round in 0..rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..peers.len()).collect()
        } else {
            (0..peers.len()).rev().collect()
        };
        for i in order {
            let (name, bin) = peers[i];
            let peer = TlsPeer::start(name, &target_dir().join(bin), &tls_arg)?;
            let url = format!("https://{}/", peer.addr);

            let cpu = peer.cpu()?;
            let w = run_wrk_url(&url, 64, seconds, false)?;
            if w.connect + w.read + w.write + w.timeout + w.non_2xx > 0 {
                bail!("{name}: wrk saw errors: {w:?}");
            }
            samples[i][0].push(Sample::new(
                w.requests,
                seconds_f(seconds),
                peer.cpu()? - cpu,
            ));

            let cpu = peer.cpu()?;
            let (rps, _, text) = run_h2load_url(&url, seconds)?;
            if !text.contains("Application protocol: h2") || !text.contains("TLS Protocol: TLSv1.3")
            {
                bail!("{name}: h2load did not negotiate h2 over TLS 1.3:\n{text}");
            }
            let cpu = peer.cpu()? - cpu;
            // h2load gives requests/s; the count is rate × duration.
            samples[i][1].push(Sample {
                rate: rps,
                cpu_us: cpu * 1e6 / (rps * seconds_f(seconds)).max(1.0),
            });

            for (m, resume) in [(2, false), (3, true)] {
                let cpu = peer.cpu()?;
                let h = handshakes(peer.addr, clients, seconds, resume)
                    .with_context(|| format!("{name}: handshake client"))?;
                let cpu = peer.cpu()? - cpu;
                let total = h.kinds.full + h.kinds.resumed;
                if !resume && h.kinds.resumed > 0 {
                    bail!(
                        "{name}: {} handshakes resumed with resumption disabled",
                        h.kinds.resumed
                    );
                }
                if resume && h.kinds.full > clients as u64 {
                    bail!(
                        "{name}: {} of {total} handshakes were full with resumption enabled \
                         (at most one per client expected)",
                        h.kinds.full
                    );
                }
                let kinds = if resume {
                    &mut client_resumed[i]
                } else {
                    &mut client_full[i]
                };
                kinds.full += h.kinds.full;
                kinds.resumed += h.kinds.resumed;
                samples[i][m].push(Sample::new(total, h.elapsed.as_secs_f64(), cpu));
            }

            let seen = peer.stop()?;
            if let Some(k) = seen {
                let s = server_kinds[i].get_or_insert_with(Kinds::default);
                s.full += k.full;
                s.resumed += k.resumed;
            }
        }
    }
    let load_after = loadavg();

    println!("## TLS overhead\n");
    println!(
        "The same hello-world service (`bench/src/bin/*-peer.rs`) over TLS on bare hyper-util + tokio-rustls \
         (`hyper-peer --tls`) and on lameduck (`lameduck-peer --tls`, `Server::tls`): one self-signed P-256 \
         certificate, rustls 0.23 with the *ring* provider, ALPN h2 and http/1.1, session tickets on both; TLS 1.3 \
         (checked for h2load and the handshake client). HTTP/1.1: `wrk -t2 -c64 -d{seconds}s https://…` (keep-alive); HTTP/2: \
         `h2load -c16 -m16 -t1 -D {seconds} https://…` (h2 by ALPN); handshakes: `lameduck-bench`'s own \
         rustls client, {clients} connections at a time for {seconds} s, each a TCP connect, a TLS handshake \
         and one `Connection: close` request, with resumption disabled (full) or enabled (resumed), every \
         handshake's kind checked. Median of {rounds} interleaved rounds (min–max); the load generators share \
         the machine's 2 cores with the server. Ratio: lameduck's median against bare's in the same run. \
         Target: ≥ 0.97. Load average (1, 5, 15 min) before: {load_before}; after: {load_after}.\n"
    );
    print!("| server |");
    for m in MEASURES {
        print!(" {m} | ratio |");
    }
    println!();
    println!("|---|{}", "---|---|".repeat(MEASURES.len()));
    for (i, (name, _)) in peers.iter().enumerate() {
        print!("| {name} |");
        for (m, _) in MEASURES.iter().enumerate() {
            let (med, lo, hi) = median(samples[i][m].iter().map(|s| s.rate));
            let base = median(samples[0][m].iter().map(|s| s.rate)).0;
            print!(" {med:.0} ({lo:.0}–{hi:.0}) | {:.2} |", med / base);
        }
        println!();
    }
    println!(
        "\nServer CPU time (user + system, `/proc/PID/stat`, 10 ms ticks) per request or handshake, µs, \
         median of the same runs; ratio: lameduck's against bare's (above 1: lameduck spends more).\n"
    );
    print!("| server |");
    for m in MEASURES {
        print!(" {} | ratio |", m.trim_end_matches("/s"));
    }
    println!();
    println!("|---|{}", "---|---|".repeat(MEASURES.len()));
    for (i, (name, _)) in peers.iter().enumerate() {
        print!("| {name} |");
        for (m, _) in MEASURES.iter().enumerate() {
            let med = median(samples[i][m].iter().map(|s| s.cpu_us)).0;
            let base = median(samples[0][m].iter().map(|s| s.cpu_us)).0;
            print!(" {med:.1} | {:.2} |", med / base);
        }
        println!();
    }
    println!("\nHandshake kinds, all rounds:\n");
    for (i, (name, _)) in peers.iter().enumerate() {
        let (f, r) = (client_full[i], client_resumed[i]);
        print!(
            "- {name}: the client saw {} full and {} resumed with resumption disabled, {} full and {} resumed \
             with it enabled",
            f.full, f.resumed, r.full, r.resumed
        );
        match server_kinds[i] {
            Some(s) => println!(
                "; the server counted {} full and {} resumed (its full ones include wrk's 64 and h2load's 16 \
                 connections per round).",
                s.full, s.resumed
            ),
            None => println!("."),
        }
    }
    Ok(())
}

impl Sample {
    fn new(ops: u64, seconds: f64, cpu: f64) -> Self {
        let ops = ops.max(1) as f64;
        Sample {
            rate: ops / seconds,
            cpu_us: cpu * 1e6 / ops,
        }
    }
}

fn seconds_f(s: u64) -> f64 {
    Duration::from_secs(s).as_secs_f64()
}

fn median(v: impl Iterator<Item = f64>) -> (f64, f64, f64) {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    match (v.first(), v.get(v.len() / 2), v.last()) {
        (Some(&lo), Some(&mid), Some(&hi)) => (mid, lo, hi),
        _ => (f64::NAN, f64::NAN, f64::NAN),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|_| "unknown".into())
}

/// A self-signed P-256 certificate for `localhost`, valid 2 days.
fn self_signed(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("run openssl (apt-get install openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((cert, key))
}

/// A peer started with `--tls`; its stderr is kept for the handshake
/// count hyper-peer prints on exit.
struct TlsPeer {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    stderr: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Drop for TlsPeer {
    /// A run that failed half-way leaves no peer behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl TlsPeer {
    fn start(name: &'static str, bin: &Path, tls: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .args(["127.0.0.1:0", "--tls", tls])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {name}"))?;
        let stderr = child.stderr.take().context("stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let Some(line) = lines.next() else {
                let _ = child.wait();
                bail!("{name} exited before ready");
            };
            let line = line?;
            if let Some(rest) = line.split("https://").nth(1) {
                let a = rest.split_whitespace().next().unwrap_or_default();
                break a.parse::<SocketAddr>()?;
            }
        };
        // Keep draining stderr so the peer never blocks on it.
        let stderr = Some(std::thread::spawn(move || {
            lines.map_while(Result::ok).collect()
        }));
        Ok(TlsPeer {
            name,
            child,
            addr,
            stderr,
        })
    }

    /// CPU time the peer has used so far, in seconds.
    fn cpu(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // The fields after the command name (in parentheses): state is the
        // 3rd field, utime the 14th and stime the 15th.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> anyhow::Result<u64> {
            Ok(f.get(i - 3).context("short /proc stat")?.parse()?)
        };
        // USER_HZ is 100 on Linux.
        Ok((ticks(14)? + ticks(15)?) as f64 / 100.0)
    }

    /// SIGTERM, wait (10 s at most, then SIGKILL); the handshake count the
    /// peer printed, if it prints one.
    fn stop(mut self) -> anyhow::Result<Option<Kinds>> {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("{} did not exit within 10 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let lines = self
            .stderr
            .take()
            .context("stopped twice")?
            .join()
            .map_err(|_| anyhow::anyhow!("stderr reader panicked"))?;
        // "hyper peer: TLS handshakes: N full, M resumed"
        Ok(lines.iter().find_map(|l| {
            let rest = l.split("TLS handshakes:").nth(1)?;
            let mut nums = rest
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<u64>().ok());
            Some(Kinds {
                full: nums.next()??,
                resumed: nums.next()??,
            })
        }))
    }
}

struct HandshakeRun {
    kinds: Kinds,
    elapsed: Duration,
}

/// `clients` connections at a time, for `seconds`: connect, handshake, one
/// `Connection: close` request, read the response to the end. Each
/// connection counts by the kind of handshake the client saw. The first
/// error ends the run with that error.
fn handshakes(
    addr: SocketAddr,
    clients: usize,
    seconds: u64,
    resume: bool,
) -> anyhow::Result<HandshakeRun> {
    // One configuration, and so one session cache, per client: each
    // resumes with a ticket from its own previous connection. (A shared
    // cache keeps 8 tickets per server, fewer than 16 clients can take at
    // once.)
    let connectors = (0..clients)
        .map(|_| {
            Ok(tokio_rustls::TlsConnector::from(Arc::new(client_config(
                resume,
            )?)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let full = Arc::new(AtomicU64::new(0));
        let resumed = Arc::new(AtomicU64::new(0));
        let error: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
        let start = Instant::now();
        let deadline = start + Duration::from_secs(seconds);
        let mut tasks = Vec::with_capacity(clients);
        for connector in connectors {
            let (full, resumed, error) =
                (Arc::clone(&full), Arc::clone(&resumed), Arc::clone(&error));
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let one = tokio::time::timeout(
                        Duration::from_secs(5),
                        one_connection(&connector, addr),
                    );
                    match one.await {
                        Ok(Ok(HandshakeKind::Resumed)) => resumed.fetch_add(1, Ordering::Relaxed),
                        Ok(Ok(_)) => full.fetch_add(1, Ordering::Relaxed),
                        Ok(Err(e)) => {
                            error
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(e);
                            return;
                        }
                        Err(_) => {
                            error
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(anyhow::anyhow!("a connection took over 5 s"));
                            return;
                        }
                    };
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        let elapsed = start.elapsed();
        if let Some(e) = error.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(e);
        }
        Ok(HandshakeRun {
            kinds: Kinds {
                full: full.load(Ordering::Relaxed),
                resumed: resumed.load(Ordering::Relaxed),
            },
            elapsed,
        })
    })
}

async fn one_connection(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
) -> anyhow::Result<HandshakeKind> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost")?;
    let mut tls = connector.connect(name, tcp).await?;
    let conn = tls.get_ref().1;
    if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        bail!("negotiated {:?}, not TLS 1.3", conn.protocol_version());
    }
    let kind = conn
        .handshake_kind()
        .context("no handshake kind after the handshake")?;
    tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await?;
    let mut response = Vec::with_capacity(256);
    match tls.read_to_end(&mut response).await {
        Ok(_) => {}
        // A close without close_notify after a whole response is a close.
        Err(e)
            if e.kind() == std::io::ErrorKind::UnexpectedEof && response.ends_with(b"hello\n") => {}
        Err(e) => return Err(e.into()),
    }
    if !response.starts_with(b"HTTP/1.1 200") || !response.ends_with(b"hello\n") {
        bail!(
            "unexpected response: {:?}",
            String::from_utf8_lossy(&response)
        );
    }
    Ok(kind)
}

fn client_config(resume: bool) -> anyhow::Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoChecks(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = if resume {
        Resumption::in_memory_sessions(256)
    } else {
        Resumption::disabled()
    };
    Ok(config)
}

/// Accepts any certificate and any handshake signature: a load generator's
/// verifier, so that the client spends as little CPU as it can.
#[derive(Debug)]
struct NoChecks(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoChecks {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
