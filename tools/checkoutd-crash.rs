//! The crash-safety harness (issue #10): `kill -9` under load loses no
//! acknowledged order and duplicates none.
//!
//!     cargo build --release --features failpoints --bin checkoutd --bin checkoutd-crash
//!     target/release/checkoutd-crash --kills 24
//!     target/release/checkoutd-crash --engine postgres --database-url postgres://…/empty_db
//!
//! Starts the `checkoutd serve` beside it, built with the `failpoints` feature
//! (fresh data directory; SQLite, or the empty PostgreSQL database named by
//! `--database-url`), and drives it with `--clients` concurrent storefront
//! clients. Each client posts distinct orders, each with its own
//! Idempotency-Key and storefront reference, and retries an unanswered or
//! 503/409-answered request with the same key and body until it gets a 2xx.
//! Meanwhile the server is killed with SIGKILL `--kills` times and
//! restarted each time. The kills land at three kinds of moment:
//! - at a random moment under load;
//! - at the **after-commit failpoint** (every third kill): the server runs
//!   with `CHECKOUTD_FAILPOINT_AFTER_COMMIT=N`, so its group-commit writer
//!   stops right after its N-th batch is durable and before any of its
//!   requests is answered; the harness kills it once it logs so. Those
//!   orders must come back as replays of the same order;
//! - during start-up, before the server is ready (every eighth kill).
//!
//! Pass (exit 0) only if: every key that got a 2xx is stored exactly once
//! under the order id it was answered with; no key is stored twice; nothing
//! is stored that no client sent; no client got an unexpected answer; every
//! order written by a batch held at the failpoint (the failpoint logs their
//! ids) was answered to its client's retry as a replay of that very order;
//! and the offline audit (`checkoutd
//! audit`: opens every envelope, checks every MAC and chain) is clean. The
//! counts are printed either way.
//!
//! What it does not prove: SIGKILL ends the checkoutd process, not the
//! machine, so the operating system's page cache survives it and a missing
//! fsync would go unnoticed here; durability across power loss rests on
//! SQLite's `synchronous=FULL` / PostgreSQL's `fsync` + `synchronous_commit`
//! (checked at start-up), not on this harness. PostgreSQL itself is not
//! killed.
#![allow(clippy::print_stdout)]

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use clap::Parser;

use common::{BoxError, client_as, free_port, order, serve_command, wait_ready, work_dir};

#[derive(Parser, Debug)]
#[command(about = "checkoutd crash-safety harness: kill -9 under load, restart, verify")]
struct Args {
    /// sqlite, or postgres (with --database-url naming an empty database).
    #[arg(long, default_value = "sqlite")]
    engine: String,
    /// PostgreSQL URL of an empty database, for --engine postgres.
    #[arg(long, env = "CHECKOUTD_CRASH_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// How many times the server is killed with SIGKILL (at least 20 for
    /// the check).
    #[arg(long, default_value_t = 24)]
    kills: usize,
    /// Concurrent storefront clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seed of the random kill moments (printed, to reproduce a run).
    #[arg(long)]
    seed: Option<u64>,
}

/// The line the failpoint logs (src/failpoint.rs).
const FAILPOINT_LINE: &str = "failpoint after_commit reached";
/// … and what precedes the held batch's order ids in it.
const HELD_ORDERS: &str = "answers held; orders ";

/// What kind of moment a kill lands at.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Moment {
    UnderLoad,
    AfterCommit,
    StartUp,
}

fn moment(kill: usize) -> Moment {
    if kill % 3 == 2 {
        Moment::AfterCommit
    } else if kill % 8 == 5 {
        Moment::StartUp
    } else {
        Moment::UnderLoad
    }
}

/// A 2xx a client received.
struct Ack {
    order_id: String,
    /// Answered `Idempotent-Replayed: true`: the order was committed by an
    /// earlier attempt whose answer the client never got.
    replayed: bool,
}

/// What the clients saw, shared with the verifier.
#[derive(Default)]
struct Ledger {
    next_key: AtomicU64,
    acks: Mutex<HashMap<u64, Ack>>,
    retries: AtomicU64,
    unexpected: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Ledger {
    fn acked(&self) -> usize {
        self.acks.lock().map_or(0, |a| a.len())
    }
}

/// A running server whose stderr is watched for the failpoint line.
struct Proc {
    child: Child,
    /// The ids of the orders the held batch wrote, once the failpoint is
    /// reached.
    failpoint: mpsc::Receiver<Vec<String>>,
}

impl Proc {
    fn start(
        args: &Args,
        work: &Path,
        port: u16,
        fail_at_batch: Option<u64>,
    ) -> Result<Self, BoxError> {
        let mut cmd = serve_command(work, port, database_url(args)?)?;
        // Only warnings and the failpoint's line: the harness reads them all.
        cmd.env("RUST_LOG", "warn").stderr(Stdio::piped());
        if let Some(n) = fail_at_batch {
            cmd.env("CHECKOUTD_FAILPOINT_AFTER_COMMIT", n.to_string());
        }
        let mut child = cmd.spawn()?;
        let (tx, failpoint) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains(FAILPOINT_LINE) {
                        let held = line
                            .split_once(HELD_ORDERS)
                            .map(|(_, ids)| {
                                ids.split(',')
                                    .map(|id| id.trim().to_owned())
                                    .filter(|id| !id.is_empty())
                                    .collect()
                            })
                            .unwrap_or_default();
                        let _ = tx.send(held);
                    }
                }
            });
        }
        Ok(Proc { child, failpoint })
    }

    fn kill9(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    fn stop(mut self) {
        let _ = common::stop(&mut self.child);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn database_url(args: &Args) -> Result<Option<&str>, BoxError> {
    match args.engine.as_str() {
        "sqlite" => Ok(None),
        "postgres" => {
            Ok(Some(args.database_url.as_deref().ok_or(
                "--engine postgres needs --database-url (an empty database)",
            )?))
        }
        other => Err(format!("unknown engine {other}").into()),
    }
}

/// xorshift64*: enough randomness for kill moments, reproducible by seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    if args.kills < 3 {
        return Err(
            "--kills must be at least 3 (every third kill is at the after-commit failpoint)".into(),
        );
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    let mut rng = Rng(seed);
    let work = work_dir("checkoutd-crash")?;
    let certs = work.join("certs");
    let port = free_port()?;
    println!(
        "crash harness ({}): {} kills, {} clients, seed {seed}",
        args.engine, args.kills, args.clients
    );

    // The server that kill number `kill` will hit; the last one (after
    // every kill) runs without a failpoint, to let the clients finish.
    let kills = args.kills;
    let fail_at = |rng: &mut Rng, kill: usize| {
        (kill < kills && moment(kill) == Moment::AfterCommit).then(|| 1 + rng.below(12))
    };
    let mut server = Proc::start(&args, &work, port, fail_at(&mut rng, 0))?;
    wait_ready(&mut server.child, port, &certs).await?;

    let ledger = Arc::new(Ledger::default());
    let run = format!("{seed:x}");
    let clients: Vec<_> = (0..args.clients)
        .map(|_| {
            let client = client_as(&certs, "storefront")?;
            Ok(tokio::spawn(drive(
                client,
                port,
                run.clone(),
                ledger.clone(),
            )))
        })
        .collect::<Result<_, BoxError>>()?;

    let mut kinds: HashMap<&str, usize> = HashMap::new();
    // The orders written by the batches held at the failpoint.
    let mut held: Vec<String> = Vec::new();
    let mut restart_ms = Vec::new();
    for kill in 0..args.kills {
        let now = moment(kill);
        match now {
            Moment::AfterCommit => {
                // The writer stops after its N-th batch; wait for its line.
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    if let Ok(ids) = server.failpoint.try_recv() {
                        held.extend(ids);
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err("the after-commit failpoint was never reached (was the server built with --features failpoints?)".into());
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Moment::StartUp => tokio::time::sleep(Duration::from_millis(rng.below(15))).await,
            Moment::UnderLoad => {
                tokio::time::sleep(Duration::from_millis(100 + rng.below(900))).await;
            }
        }
        server.kill9();
        *kinds.entry(kind_name(now)).or_default() += 1;
        let next = fail_at(&mut rng, kill + 1);
        let started = Instant::now();
        server = Proc::start(&args, &work, port, next)?;
        if moment(kill + 1) != Moment::StartUp || kill + 1 == args.kills {
            wait_ready(&mut server.child, port, &certs).await?;
            restart_ms.push(started.elapsed().as_millis());
        }
    }
    // A little more load on the last server, then let every client finish
    // the order it is on (each retries until it is answered).
    tokio::time::sleep(Duration::from_millis(500)).await;
    ledger.stop.store(true, Ordering::SeqCst);
    for c in clients {
        tokio::time::timeout(Duration::from_secs(120), c).await??;
    }
    server.stop();

    let mut verdict = verify(&args, &work, &ledger).await?;
    let replayed = ledger
        .acks
        .lock()
        .map_or(0, |a| a.values().filter(|a| a.replayed).count());
    // Every order a held batch wrote was committed and never answered: its
    // client's retry must have been answered as a replay of that order.
    let (held_replayed, held_missed) = {
        let acks = ledger.acks.lock().map_err(|_| "ledger poisoned")?;
        let replayed_ids: std::collections::HashSet<&str> = acks
            .values()
            .filter(|a| a.replayed)
            .map(|a| a.order_id.as_str())
            .collect();
        let found = held
            .iter()
            .filter(|id| replayed_ids.contains(id.as_str()))
            .count();
        (found, held.len() - found)
    };
    verdict.replays_short = held.is_empty() || held_missed > 0;
    println!(
        "  kills: {} ({} under load, {} at the after-commit failpoint, {} during start-up)",
        args.kills,
        kinds.get("load").copied().unwrap_or(0),
        kinds.get("failpoint").copied().unwrap_or(0),
        kinds.get("startup").copied().unwrap_or(0)
    );
    restart_ms.sort_unstable();
    println!(
        "  restarts to ready: median {} ms, max {} ms",
        restart_ms.get(restart_ms.len() / 2).copied().unwrap_or(0),
        restart_ms.last().copied().unwrap_or(0)
    );
    println!(
        "  keys sent: {}, acknowledged: {} ({} only by a replay after a kill: committed, answer lost), retries: {}",
        ledger.next_key.load(Ordering::SeqCst),
        ledger.acked(),
        replayed,
        ledger.retries.load(Ordering::SeqCst)
    );
    println!(
        "  orders stored: {}, acknowledged but lost: {}, stored twice: {}, stored but never sent: {}, wrong order id: {}, unexpected answers: {}",
        verdict.stored,
        verdict.lost,
        verdict.duplicates,
        verdict.phantoms,
        verdict.wrong_id,
        verdict.unexpected
    );
    println!(
        "  orders held at the failpoint (committed, unanswered): {}, each answered to its retry as a replay of itself: {held_replayed}",
        held.len()
    );
    println!("  audit: {}", verdict.audit);
    if verdict.replays_short {
        println!(
            "  FAIL: {held_missed} of {} orders held at the failpoint were not answered as replays of themselves (or none was held)",
            held.len()
        );
    }
    if verdict.passed() {
        println!("crash harness: 1 passed, 0 failed");
        Ok(())
    } else {
        for line in ledger
            .unexpected
            .lock()
            .map(|u| u.clone())
            .unwrap_or_default()
            .iter()
            .take(10)
        {
            println!("  unexpected: {line}");
        }
        println!("crash harness: 0 passed, 1 failed");
        Err("crash safety violated".into())
    }
}

fn kind_name(m: Moment) -> &'static str {
    match m {
        Moment::UnderLoad => "load",
        Moment::AfterCommit => "failpoint",
        Moment::StartUp => "startup",
    }
}

/// One client: distinct orders, one key each, retried until answered.
async fn drive(client: reqwest::Client, port: u16, run: String, ledger: Arc<Ledger>) {
    let url = format!("https://localhost:{port}/v1/orders");
    while !ledger.stop.load(Ordering::SeqCst) {
        let n = ledger.next_key.fetch_add(1, Ordering::SeqCst);
        let Ok(body) = serde_json::to_vec(&order(&format!("CRASH-{n}"), n)) else {
            return;
        };
        let key = format!("crash-{run}-{n}");
        loop {
            let sent = client
                .post(&url)
                .header("content-type", "application/json")
                .header("idempotency-key", &key)
                .timeout(Duration::from_secs(20))
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    let replayed = r.headers().contains_key("idempotent-replayed");
                    let order_id = r
                        .headers()
                        .get("location")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|l| l.strip_prefix("/v1/orders/"))
                        .unwrap_or_default()
                        .to_owned();
                    if let Ok(mut acks) = ledger.acks.lock() {
                        acks.insert(n, Ack { order_id, replayed });
                    }
                    break;
                }
                // In flight elsewhere, or the database is not ready: retry.
                Ok(r) if matches!(r.status().as_u16(), 409 | 429 | 503) => {
                    ledger.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    if let Ok(mut u) = ledger.unexpected.lock() {
                        u.push(format!("key {n}: {status} {text}"));
                    }
                    break;
                }
                // Killed mid-request, refused while restarting: retry.
                Err(_) => {
                    ledger.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

struct Verdict {
    stored: usize,
    lost: usize,
    duplicates: usize,
    phantoms: usize,
    wrong_id: usize,
    unexpected: usize,
    /// Fewer replays than failpoint kills.
    replays_short: bool,
    audit: String,
    audit_clean: bool,
}

impl Verdict {
    fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.phantoms == 0
            && self.wrong_id == 0
            && self.unexpected == 0
            && !self.replays_short
            && self.audit_clean
            && self.stored > 0
    }
}

async fn verify(args: &Args, work: &Path, ledger: &Ledger) -> Result<Verdict, BoxError> {
    sqlx::any::install_default_drivers();
    let url = match database_url(args)? {
        Some(url) => url.to_owned(),
        None => format!(
            "sqlite://{}?mode=ro",
            work.join("data").join("checkoutd.db").display()
        ),
    };
    let pool = sqlx::AnyPool::connect(&url).await?;
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT id, storefront_ref FROM orders")
            .fetch_all(&pool)
            .await?;
    pool.close().await;

    let mut stored: HashMap<u64, Vec<String>> = HashMap::new();
    let mut phantoms = 0;
    for (id, reference) in &rows {
        match reference
            .as_deref()
            .and_then(|r| r.strip_prefix("CRASH-"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            Some(n) if n < ledger.next_key.load(Ordering::SeqCst) => {
                stored.entry(n).or_default().push(id.clone())
            }
            _ => phantoms += 1,
        }
    }
    let acks = ledger.acks.lock().map_err(|_| "ledger poisoned")?;
    let (mut lost, mut wrong_id) = (0, 0);
    for (n, ack) in acks.iter() {
        match stored.get(n).map(Vec::as_slice) {
            None | Some([]) => lost += 1,
            Some([id]) if *id != ack.order_id => wrong_id += 1,
            _ => {}
        }
    }
    // A stored order no client heard of is fine only if its client is
    // still waiting — never, once every client finished its key.
    phantoms += stored.keys().filter(|n| !acks.contains_key(n)).count();
    let duplicates = stored.values().filter(|ids| ids.len() > 1).count();

    let (audit_clean, audit) = audit(args, work, rows.len())?;
    Ok(Verdict {
        stored: rows.len(),
        lost,
        duplicates,
        phantoms,
        wrong_id,
        unexpected: ledger.unexpected.lock().map_or(1, |u| u.len()),
        replays_short: false,
        audit,
        audit_clean,
    })
}

/// `checkoutd audit` on the data the kills left: exit 0, a clean report,
/// and every stored order checked.
fn audit(args: &Args, work: &Path, stored: usize) -> Result<(bool, String), BoxError> {
    let out = work.join("audit.json");
    let mut cmd = Command::new(std::env::current_exe()?.with_file_name("checkoutd"));
    cmd.arg("audit")
        .arg("--data-dir")
        .arg(work.join("data"))
        .arg("--out")
        .arg(&out)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(url) = database_url(args)? {
        cmd.env("CHECKOUTD_DATABASE_URL", url);
    }
    let status = cmd.status()?;
    let signed: serde_json::Value = serde_json::from_slice(&std::fs::read(&out)?)?;
    let report = &signed["report"];
    let failures = report["failure_count"].as_u64();
    let orders = report["orders_checked"].as_u64().unwrap_or(0);
    let records = report["records_checked"].as_u64().unwrap_or(0);
    let clean = status.success()
        && failures == Some(0)
        && report["verified"] == serde_json::Value::Bool(true)
        && orders as usize == stored;
    Ok((
        clean,
        format!(
            "exit {}, {orders} orders and {records} records opened and checked, {} failures, verified={}",
            status.code().unwrap_or(-1),
            failures.map_or("?".to_owned(), |f| f.to_string()),
            report["verified"]
        ),
    ))
}
