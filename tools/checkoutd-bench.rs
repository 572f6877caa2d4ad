//! The intake load benchmark (docs/performance.md).
//!
//!     cargo build --release && target/release/checkoutd-bench --concurrency 64 --duration 10
//!
//! (`cargo run --release --bin checkoutd-bench -- …` works too: run by
//! cargo, it builds the `checkoutd` beside it first.) A run in which any
//! request of either server failed still prints its figures, then exits
//! non-zero: they leave the failures out.
//!
//! Starts a release `checkoutd serve` (fresh data directory; SQLite, or a
//! PostgreSQL database named by --database-url) as a child process, drives
//! it with N keep-alive TLS connections presenting the storefront
//! certificate, each posting distinct valid ~1 KB orders (unique
//! Idempotency-Keys, every tenth a gift), and reports orders/s, latency
//! percentiles, server CPU and peak RSS, its own CPU and the machine's idle
//! share, and the CPU each answered request cost: the server's (by thread,
//! with each thread's wait for a core), its own, the whole machine's. Then
//! it runs the **ceiling**: this binary started as a minimal
//! server with the same rustls configuration, whose handler only parses
//! the JSON and answers 201, under the same client — twice, the faster
//! counting (the ceiling is bimodal on a 2-vCPU machine). The last two lines are
//! `ratio=<orders/s ÷ ceiling/s>` and `p99=<ms> ms` (checkoutd's). `--idle
//! N` instead holds N idle TLS connections and reports the server's RSS,
//! and the start-up time to ready on the existing database. The client
//! speaks HTTP/2 (ALPN's first choice); `--http1` makes both runs HTTP/1.1
//! keep-alive instead.
#![allow(clippy::print_stdout)]

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;

use common::{BoxError, Server, client_as, free_port, order, serve_command, wait_ready, work_dir};

#[derive(Parser, Debug)]
#[command(about = "checkoutd intake load benchmark")]
struct Args {
    /// Concurrent keep-alive TLS connections.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds of load per run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// sqlite, or postgres (with --database-url naming an empty database).
    #[arg(long, default_value = "sqlite")]
    engine: String,
    /// PostgreSQL URL for --engine postgres.
    #[arg(long, env = "CHECKOUTD_BENCH_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Hold this many idle TLS connections and report the server's memory.
    #[arg(long)]
    idle: Option<usize>,
    /// Skip the ceiling run.
    #[arg(long)]
    no_ceiling: bool,
    /// Speak HTTP/1.1 (keep-alive) instead of HTTP/2, to both servers.
    #[arg(long)]
    http1: bool,
    /// Internal: run as the ceiling server on this address.
    #[arg(long, hide = true)]
    serve_ceiling: Option<String>,
    /// Internal: the certificates directory of the ceiling server.
    #[arg(long, hide = true)]
    certs: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    if let (Some(addr), Some(certs)) = (&args.serve_ceiling, &args.certs) {
        return serve_ceiling(addr, certs).await;
    }
    checkoutd_built()?;
    let work = work_dir("checkoutd-bench")?;
    let port = free_port()?;
    let mut server = start_checkoutd(&args, &work, port)?;
    let ready_ms = wait_ready(&mut server.0, port, &work.join("certs")).await?;
    println!("machine: {}", machine());
    println!("checkoutd ready after {ready_ms} ms (fresh data directory)");
    if let Some(n) = args.idle {
        idle_run(server.0.id(), port, &work, n).await?;
        drop(server);
        let mut again = start_checkoutd(&args, &work, port)?;
        let ready = wait_ready(&mut again.0, port, &work.join("certs")).await?;
        println!("start-up to ready on the existing database: {ready} ms");
        drop(again);
        return Ok(());
    }
    let wal_before = PgWal::of(&args).await;
    let run = load(&args, port, &work.join("certs"), server.0.id()).await?;
    let wal_after = PgWal::of(&args).await;
    print_commit_stats(port, &work.join("certs")).await;
    let stopped = common::stop(&mut server.0);
    run.print(&format!("checkoutd ({})", args.engine));
    if let (Some(before), Some(after)) = (&wal_before, &wal_after) {
        after.print_since(before, run.orders);
    }
    match stopped {
        Some(took) => println!("graceful stop after the run: {} ms", took.as_millis()),
        None => println!("graceful stop after the run: none within 10 s (killed)"),
    }
    let mut restarted = start_checkoutd(&args, &work, port)?;
    let ready = wait_ready(&mut restarted.0, port, &work.join("certs")).await?;
    println!("start-up to ready on the existing database: {ready} ms");
    drop(restarted);
    if args.no_ceiling {
        println!("p99={:.2} ms", run.p99_ms());
        return no_errors(&run, None);
    }
    // Twice, each with a ceiling server of its own, and the faster counts:
    // on the 2-vCPU machine of docs/performance.md the ceiling is bimodal —
    // the same binaries give 21–24 k/s in some runs and 35–37 k/s in others
    // (its load generator then costs 51–58 µs a request instead of 31), a
    // mode that lasts as long as the ceiling process — and a ratio against
    // the slow mode would overstate checkoutd by half.
    let mut runs = Vec::new();
    for _ in 0..2 {
        runs.push(ceiling_run(&args, &work.join("certs")).await?);
    }
    println!(
        "ceiling runs: {:.0}/s and {:.0}/s; the faster is the ceiling",
        runs[0].rate(),
        runs[1].rate()
    );
    let ceil = runs
        .into_iter()
        .max_by(|a, b| a.rate().total_cmp(&b.rate()))
        .ok_or("no ceiling run")?;
    ceil.print("ceiling (TLS + JSON parse + 201)");
    println!("ratio={:.3}", run.rate() / ceil.rate());
    println!("p99={:.2} ms", run.p99_ms());
    no_errors(&run, Some(&ceil))
}

/// A run's figures leave its failed requests out (a 503 answered at once
/// would flatter p99): a run with any is reported, then exits non-zero.
fn no_errors(run: &Run, ceiling: Option<&Run>) -> Result<(), BoxError> {
    if run.errors > 0 || run.orders == 0 {
        return Err(format!(
            "checkoutd answered {} order(s) 201 and {} request(s) otherwise: its figures above leave the failures out",
            run.orders, run.errors
        )
        .into());
    }
    if let Some(ceiling) = ceiling.filter(|c| c.errors > 0 || c.orders == 0) {
        return Err(format!(
            "the ceiling server failed {} request(s): its figure, and so the ratio, is not comparable",
            ceiling.errors
        )
        .into());
    }
    Ok(())
}

/// Makes sure the `checkoutd` next to this binary is there and current.
/// Run by `cargo run` (`cargo run --release --bin checkoutd-bench` builds
/// the benchmark alone), it builds checkoutd first, in the same profile,
/// with its default features — so neither a missing server nor a stale
/// one (or the crash harness's failpoints build) is what gets measured.
/// Run directly, the binary must be there.
fn checkoutd_built() -> Result<(), BoxError> {
    let exe = std::env::current_exe()?;
    let server = exe.with_file_name("checkoutd");
    if let (Some(cargo), Some(manifest_dir)) = (
        std::env::var_os("CARGO"),
        std::env::var_os("CARGO_MANIFEST_DIR"),
    ) {
        let profile = exe
            .parent()
            .and_then(|dir| dir.file_name())
            .and_then(|name| name.to_str())
            .unwrap_or("debug");
        eprintln!("checkoutd-bench: building checkoutd ({profile}) first");
        // From the package's directory, so that its `.cargo/config.toml`
        // (how SQLite is compiled) applies as it does to every build.
        let mut build = Command::new(cargo);
        build
            .current_dir(manifest_dir)
            .args(["build", "--quiet", "--bin", "checkoutd"]);
        if profile != "debug" {
            build.args(["--profile", profile]);
        }
        if !build.status()?.success() {
            return Err("building checkoutd failed".into());
        }
    }
    if !server.is_file() {
        return Err(format!(
            "{} is missing: build it first (`cargo build --release`, then run {})",
            server.display(),
            exe.display()
        )
        .into());
    }
    Ok(())
}

/// One ceiling run: this binary as the minimal server, on a port of its
/// own, under the same load as checkoutd's run.
async fn ceiling_run(args: &Args, certs: &Path) -> Result<Run, BoxError> {
    let cport = free_port()?;
    let ceiling = Command::new(std::env::current_exe()?)
        .args(["--serve-ceiling", &format!("127.0.0.1:{cport}"), "--certs"])
        .arg(certs)
        .stdin(Stdio::piped()) // closed when this process ends: the ceiling exits
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut ceiling = Server(ceiling);
    wait_ready(&mut ceiling.0, cport, certs).await?;
    load(args, cport, certs, ceiling.0.id()).await
}

fn start_checkoutd(args: &Args, work: &Path, port: u16) -> Result<Server, BoxError> {
    let url = match args.engine.as_str() {
        "sqlite" => None,
        "postgres" => Some(
            args.database_url
                .as_deref()
                .ok_or("--engine postgres needs --database-url (an empty database)")?,
        ),
        other => return Err(format!("unknown engine {other}").into()),
    };
    let mut serve = serve_command(work, port, url)?;
    // Every connection comes from one address (127.0.0.1): the per-address
    // handshake limit, meant for one host among many, would pace the idle
    // mode's thousand connections to 200 a second.
    serve.args(["--max-handshakes-per-ip", "1000000"]);
    Ok(Server(serve.spawn()?))
}

fn client(certs: &Path, http1: bool) -> Result<reqwest::Client, BoxError> {
    if http1 {
        return common::client_builder_as(certs, "storefront")?
            .http1_only()
            .build()
            .map_err(Into::into);
    }
    client_as(certs, "storefront")
}

/// What PostgreSQL's write-ahead log looked like at one moment: how much
/// had been written, and how many segment files `pg_wal` held (when the
/// role may list it: `pg_monitor`).
///
/// Why the benchmark reports it: a cluster creates each 16-MB segment
/// file — zero-filled (with `wal_init_zero` on) and synced, under the lock
/// every commit waits for — when it has no spare segment to recycle. A new
/// cluster has none, and a cluster just started or idle a while keeps only
/// `min_wal_size` of them. Then it is twice a second at this load, and
/// that, not checkoutd, sets the p99 (docs/performance.md, twenty-fifth
/// and twenty-sixth sessions).
struct PgWal {
    bytes: f64,
    files: Option<i64>,
    segment_bytes: f64,
    init_zero: String,
    /// The spare segments a cluster keeps at least (`min_wal_size`), and
    /// all it keeps after a start or an idle spell: a checkpoint sizes the
    /// spares by the WAL recent checkpoints saw, and removes the rest.
    min_wal_size: String,
}

impl PgWal {
    /// `None` for SQLite, or when the database cannot be read (reported
    /// as such; the run goes on).
    async fn of(args: &Args) -> Option<PgWal> {
        use sqlx::Connection;
        let url = args
            .database_url
            .as_deref()
            .filter(|_| args.engine == "postgres")?;
        let snapshot = async {
            let mut conn = sqlx::PgConnection::connect(url).await?;
            let (bytes, segment_bytes, init_zero, min_wal_size): (f64, f64, String, String) =
                sqlx::query_as(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8, \
                        (SELECT setting::float8 FROM pg_settings WHERE name = 'wal_segment_size'), \
                        current_setting('wal_init_zero'), current_setting('min_wal_size')",
                )
                .fetch_one(&mut conn)
                .await?;
            let files = sqlx::query_scalar("SELECT count(*) FROM pg_ls_waldir()")
                .fetch_one(&mut conn)
                .await
                .ok();
            // What was read stands even if the goodbye fails.
            let _ = conn.close().await;
            Ok::<_, sqlx::Error>(PgWal {
                bytes,
                files,
                segment_bytes,
                init_zero,
                min_wal_size,
            })
        };
        match snapshot.await {
            Ok(wal) => Some(wal),
            Err(error) => {
                println!("  (PostgreSQL's WAL position could not be read: {error})");
                None
            }
        }
    }

    fn print_since(&self, before: &PgWal, orders: u64) {
        for line in self.report_since(before, orders) {
            println!("  {line}");
        }
    }

    /// The report's lines: what the run wrote, and — when `pg_wal` grew —
    /// that its p99 includes the cluster creating segment files (net
    /// growth: a checkpoint during the run may have removed some too).
    fn report_since(&self, before: &PgWal, orders: u64) -> Vec<String> {
        let written = self.bytes - before.bytes;
        let segments = written / self.segment_bytes.max(1.0);
        let files = match (before.files, self.files) {
            (Some(b), Some(a)) => format!("segment files in pg_wal {b} -> {a}"),
            _ => "segment files not listable by this role (pg_monitor)".to_owned(),
        };
        let mut lines = vec![format!(
            "PostgreSQL WAL (the whole cluster's): {:.0} MB written, {:.1} KB an order, \
             {:.1} segments; {files}; \
             wal_init_zero = {}",
            written / 1e6,
            written / 1e3 / orders.max(1) as f64,
            segments,
            self.init_zero
        )];
        let why = "a segment PostgreSQL has no spare for is created, written and synced \
                   while every commit waits; checkpoints under this load keep spares (DROP \
                   DATABASE takes one), so a second run on a new database shows the steady state";
        match (before.files, self.files) {
            (Some(b), Some(a)) if a - b >= 2 => lines.push(format!(
                "note: pg_wal grew by {} segment files during the run: {why}",
                a - b
            )),
            (Some(_), Some(_)) => {}
            // Not listable: whether they were created cannot be told, only
            // how many there could have been.
            _ if segments >= 2.0 => lines.push(format!(
                "note: if pg_wal held fewer spare segments than that before the run — a new \
                 cluster, or one just started or idle, which keeps min_wal_size ({}) — up to \
                 {segments:.0} segment files were created during the run: {why}",
                self.min_wal_size
            )),
            _ => {}
        }
        lines
    }
}

/// Group-commit figures from the server's own metrics (auditor role).
async fn print_commit_stats(port: u16, certs: &Path) {
    let Ok(client) = client_as(certs, "auditor") else {
        return;
    };
    let url = format!("https://localhost:{port}/metrics");
    let Ok(text) = async { client.get(url).send().await?.text().await }.await else {
        return;
    };
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let batches = value("checkoutd_commit_batch_orders_count");
    if batches > 0.0 {
        println!(
            "  group commit: {batches:.0} batches, {:.1} orders per batch, {:.2} ms per commit, \
             99 % of commits within {} ms",
            value("checkoutd_commit_batch_orders_sum") / batches,
            1000.0 * value("checkoutd_commit_duration_seconds_sum") / batches,
            bucket_bound_ms(&text, "checkoutd_commit_duration_seconds", 0.99)
                .map_or_else(|| "?".to_owned(), |ms| format!("{ms}"))
        );
    }
}

/// The smallest histogram bucket bound (in ms) holding `share` of all
/// samples of `name` (Prometheus text, seconds): a coarse percentile, as
/// fine as the server's buckets.
fn bucket_bound_ms(text: &str, name: &str, share: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| {
            let (le, rest) = l.split_once('"')?;
            let count = rest.rsplit(' ').next()?.parse::<f64>().ok()?;
            Some((le.parse::<f64>().ok()?, count))
        })
        .collect();
    let total = buckets.iter().map(|b| b.1).fold(0.0, f64::max);
    buckets
        .iter()
        .filter(|(_, count)| *count >= share * total)
        .map(|(le, _)| le * 1000.0)
        .fold(None, |best: Option<f64>, le| {
            Some(best.map_or(le, |b| b.min(le)))
        })
}

struct Run {
    orders: u64,
    errors: u64,
    seconds: f64,
    latencies_us: Vec<u64>,
    cpu_seconds: f64,
    /// This process's own CPU (the load generator's), user + system.
    client_cpu_seconds: f64,
    /// The share of the whole machine's CPU time that was idle.
    idle_share: f64,
    /// The whole machine's busy CPU time (every process, the kernel), in
    /// seconds of one core.
    machine_busy_seconds: f64,
    /// The server's threads, by name (see [`ThreadTimes`]).
    threads: Vec<ThreadShare>,
    peak_rss_kib: u64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.orders as f64 / self.seconds
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }

    fn p99_ms(&self) -> f64 {
        self.percentile_ms(0.99)
    }

    fn print(&self, what: &str) {
        println!("{what}:");
        println!(
            "  {} answered 201 in {:.1} s = {:.0}/s, {} errors",
            self.orders,
            self.seconds,
            self.rate(),
            self.errors
        );
        println!(
            "  latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.percentile_ms(0.5),
            self.percentile_ms(0.9),
            self.p99_ms(),
            self.percentile_ms(1.0)
        );
        println!(
            "  server CPU {:.2} cores, peak RSS {:.1} MiB",
            self.cpu_seconds / self.seconds,
            self.peak_rss_kib as f64 / 1024.0
        );
        // Whether the run was short of cores: what is neither the server
        // nor this load generator (a database server, the kernel's
        // threads) is the rest of the busy share.
        println!(
            "  load generator CPU {:.2} cores; the machine {:.0} % idle",
            self.client_cpu_seconds / self.seconds,
            self.idle_share * 100.0
        );
        self.print_cpu_per_request();
    }

    /// Where each answered request's CPU went: the server (by thread, with
    /// how long those threads waited in the run queue for a core), the
    /// load generator, and the whole machine (a database server and the
    /// kernel included). The one budget both runs are drawn from.
    fn print_cpu_per_request(&self) {
        if self.orders == 0 {
            return;
        }
        let us = |seconds: f64| seconds * 1e6 / self.orders as f64;
        println!(
            "  CPU per request: server {:.0} µs, load generator {:.0} µs, whole machine {:.0} µs",
            us(self.cpu_seconds),
            us(self.client_cpu_seconds),
            us(self.machine_busy_seconds)
        );
        if self.threads.is_empty() {
            return;
        }
        let threads: Vec<String> = self
            .threads
            .iter()
            .filter(|t| us(t.ran_seconds) >= 0.5)
            .map(|t| {
                format!(
                    "{} ×{} {:.0} µs (waited {:.0} µs for a core)",
                    t.name,
                    t.count,
                    us(t.ran_seconds),
                    us(t.waited_seconds)
                )
            })
            .collect();
        println!("  server threads per request: {}", threads.join(", "));
    }
}

/// One name's share of the server's threads over a run.
struct ThreadShare {
    name: String,
    /// Threads of that name that ran during the run.
    count: usize,
    ran_seconds: f64,
    waited_seconds: f64,
}

/// Run and run-queue wait time of each of a process's threads, by thread
/// id, from `/proc/<pid>/task/<tid>/schedstat` (nanoseconds; Linux with
/// scheduler statistics, else empty). Threads are named by the server
/// (`sqlite-orders`, `tokio-rt-worker`, …).
struct ThreadTimes(std::collections::HashMap<u64, (String, u64, u64)>);

impl ThreadTimes {
    fn of(pid: u32) -> Self {
        let mut threads = std::collections::HashMap::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return ThreadTimes(threads);
        };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let dir = task.path();
            let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
            let mut fields = stat.split_whitespace().map(|v| v.parse::<u64>().ok());
            if let (Some(Some(ran)), Some(Some(waited))) = (fields.next(), fields.next()) {
                threads.insert(tid, (name.trim().to_owned(), ran, waited));
            }
        }
        ThreadTimes(threads)
    }

    /// What each thread name ran and waited since `before` (threads started
    /// since count from zero; threads that ended are not counted).
    fn since(&self, before: &ThreadTimes) -> Vec<ThreadShare> {
        let mut by_name = std::collections::HashMap::<&str, ThreadShare>::new();
        for (tid, (name, ran, waited)) in &self.0 {
            let (ran0, waited0) = before.0.get(tid).map_or((0, 0), |t| (t.1, t.2));
            let (ran, waited) = (ran.saturating_sub(ran0), waited.saturating_sub(waited0));
            if ran == 0 {
                continue;
            }
            let share = by_name.entry(name).or_insert_with(|| ThreadShare {
                name: name.clone(),
                count: 0,
                ran_seconds: 0.0,
                waited_seconds: 0.0,
            });
            share.count += 1;
            share.ran_seconds += ran as f64 / 1e9;
            share.waited_seconds += waited as f64 / 1e9;
        }
        let mut shares: Vec<ThreadShare> = by_name.into_values().collect();
        shares.sort_by(|a, b| b.ran_seconds.total_cmp(&a.ran_seconds));
        shares
    }
}

async fn load(args: &Args, port: u16, certs: &Path, pid: u32) -> Result<Run, BoxError> {
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let cpu_before = cpu_seconds(pid);
    let client_before = cpu_seconds(std::process::id());
    let machine_before = machine_ticks();
    let threads_before = ThreadTimes::of(pid);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..args.concurrency as u64 {
        let client = client(certs, args.http1)?;
        let url = format!("https://localhost:{port}/v1/orders");
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut latencies) = (0u64, 0u64, Vec::new());
            let mut i = 0u64;
            while Instant::now() < deadline {
                let n = worker * 100_000_000 + i;
                i += 1;
                let body = serde_json::to_vec(&order(&format!("BENCH-{n}"), n)).unwrap_or_default();
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header(
                        "idempotency-key",
                        format!("bench-{}-{n}", std::process::id()),
                    )
                    .body(body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        let _ = r.bytes().await;
                        latencies.push(t.elapsed().as_micros() as u64);
                        ok += 1;
                    }
                    _ => errors += 1,
                }
            }
            (ok, errors, latencies)
        }));
    }
    let mut run = Run {
        orders: 0,
        errors: 0,
        seconds: 0.0,
        latencies_us: Vec::new(),
        cpu_seconds: 0.0,
        client_cpu_seconds: 0.0,
        idle_share: 0.0,
        machine_busy_seconds: 0.0,
        threads: Vec::new(),
        peak_rss_kib: 0,
    };
    for t in tasks {
        let (ok, errors, latencies) = t.await?;
        run.orders += ok;
        run.errors += errors;
        run.latencies_us.extend(latencies);
    }
    run.seconds = started.elapsed().as_secs_f64();
    run.cpu_seconds = cpu_seconds(pid) - cpu_before;
    run.client_cpu_seconds = cpu_seconds(std::process::id()) - client_before;
    run.threads = ThreadTimes::of(pid).since(&threads_before);
    let (idle, total) = machine_ticks();
    let (idle, total) = (idle - machine_before.0, total - machine_before.1);
    run.idle_share = if total > 0.0 { idle / total } else { 0.0 };
    // Ticks are 1/100 s of one core.
    run.machine_busy_seconds = (total - idle) / 100.0;
    run.peak_rss_kib = status_kib(pid, "VmHWM:");
    run.latencies_us.sort_unstable();
    Ok(run)
}

async fn idle_run(pid: u32, port: u16, work: &Path, n: usize) -> Result<(), BoxError> {
    let certs = work.join("certs");
    let before = status_kib(pid, "VmRSS:");
    let config = Arc::new(tls_client_config(&certs)?);
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name = rustls_pki_types::ServerName::try_from("localhost")?;
        held.push(
            tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await?,
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = status_kib(pid, "VmRSS:");
    println!(
        "{n} idle TLS connections (storefront certificate): server RSS {:.1} MiB (was {:.1} MiB idle)",
        rss as f64 / 1024.0,
        before as f64 / 1024.0
    );
    println!("rss={:.1} MiB", rss as f64 / 1024.0);
    drop(held);
    Ok(())
}

fn tls_client_config(certs: &Path) -> Result<rustls::ClientConfig, BoxError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(certs.join("ca.pem"))?)?;
    let chain = vec![CertificateDer::from_pem_file(certs.join("storefront.pem"))?];
    let key = PrivateKeyDer::from_pem_file(certs.join("storefront-key.pem"))?;
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?)
}

/// user + system CPU seconds of a process (Linux /proc).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the ")" that ends the command name; utime and stime are
    // fields 14 and 15 (clock ticks, 100 per second on Linux).
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// The whole machine's idle (idle + I/O wait) and total CPU ticks, from the
/// first line of /proc/stat (`cpu user nice system idle iowait irq softirq
/// steal …`; guest time is already in user). (0, 0) off Linux.
fn machine_ticks() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let idle = ticks.get(3).unwrap_or(&0.0) + ticks.get(4).unwrap_or(&0.0);
    (idle, ticks.iter().sum())
}

/// A `kB` line of /proc/<pid>/status.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cpus} cores, {model}")
}

/// The ceiling: the same rustls configuration as checkoutd (mutual TLS,
/// the same suites), a handler that parses the JSON body and answers 201.
async fn serve_ceiling(addr: &str, certs: &Path) -> Result<(), BoxError> {
    use hyper::body::Incoming;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    let files = checkoutd::server::tls::TlsFiles::in_dir(certs, None, None);
    let config = checkoutd::server::tls::server_config(&files)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    // End with the parent: its end of our stdin closes when it exits.
    tokio::spawn(async {
        use tokio::io::AsyncReadExt;
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
        std::process::exit(0);
    });
    loop {
        let (tcp, _) = listener.accept().await?;
        // As checkoutd's own listener does (`server::run`).
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(|req: hyper::Request<Incoming>| async move {
                use http_body_util::BodyExt;
                // GET: the readiness probe. POST: parse the order, 201.
                let status = if req.method() == hyper::Method::GET {
                    200
                } else {
                    match req.into_body().collect().await.map(|b| b.to_bytes()) {
                        Ok(body) if serde_json::from_slice::<Value>(&body).is_ok() => 201,
                        _ => 400,
                    }
                };
                hyper::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal(bytes: f64, files: Option<i64>) -> PgWal {
        PgWal {
            bytes,
            files,
            segment_bytes: 16.0 * 1024.0 * 1024.0,
            init_zero: "on".to_owned(),
            min_wal_size: "80MB".to_owned(),
        }
    }

    #[test]
    fn the_wal_report_says_what_the_run_wrote_and_when_segments_were_created() {
        let before = wal(1e9, Some(2));
        let created = wal(1e9 + 320e6, Some(22)).report_since(&before, 64_000);
        assert_eq!(
            created[0],
            "PostgreSQL WAL (the whole cluster's): 320 MB written, 5.0 KB an order, \
             19.1 segments; segment files in pg_wal 2 -> 22; wal_init_zero = on"
        );
        assert!(
            created[1].contains("grew by 20 segment files"),
            "{created:?}"
        );
        // Recycled segments (the steady state): no note.
        let recycled = wal(1e9 + 320e6, Some(23)).report_since(&wal(1e9, Some(22)), 64_000);
        assert_eq!(recycled.len(), 1);
        // A role that may not list pg_wal: said, with what may have been
        // created; a run too short to fill two segments, no note.
        let hidden = wal(1e9 + 320e6, None).report_since(&wal(1e9, None), 0);
        assert!(hidden[1].contains("up to 19 segment files"), "{hidden:?}");
        assert!(hidden[1].contains("min_wal_size (80MB)"), "{hidden:?}");
        assert!(
            hidden[0].contains("not listable by this role"),
            "{hidden:?}"
        );
        assert_eq!(hidden.len(), 2);
        let short = wal(1e9 + 20e6, None).report_since(&wal(1e9, None), 0);
        assert_eq!(short.len(), 1);
    }

    fn times(threads: &[(u64, &str, u64, u64)]) -> ThreadTimes {
        ThreadTimes(
            threads
                .iter()
                .map(|&(tid, name, ran, waited)| (tid, (name.to_owned(), ran, waited)))
                .collect(),
        )
    }

    #[test]
    fn thread_shares_are_the_differences_summed_by_name() {
        let before = times(&[
            (1, "tokio-rt-worker", 1_000_000_000, 500_000_000),
            (2, "tokio-rt-worker", 2_000_000_000, 0),
            (3, "sqlite-orders", 0, 0),
            (4, "idle", 7_000_000_000, 1),
        ]);
        let after = times(&[
            (1, "tokio-rt-worker", 3_000_000_000, 1_500_000_000),
            (2, "tokio-rt-worker", 2_500_000_000, 250_000_000),
            (3, "sqlite-orders", 4_000_000_000, 2_000_000_000),
            (4, "idle", 7_000_000_000, 1),
            // Started during the run: counted from zero.
            (5, "sqlite-orders", 1_000_000_000, 0),
        ]);
        let shares = after.since(&before);
        let summary: Vec<(&str, usize, f64, f64)> = shares
            .iter()
            .map(|s| (s.name.as_str(), s.count, s.ran_seconds, s.waited_seconds))
            .collect();
        // Largest first; a thread that did not run is left out.
        assert_eq!(
            summary,
            vec![
                ("sqlite-orders", 2, 5.0, 2.0),
                ("tokio-rt-worker", 2, 2.5, 1.25),
            ]
        );
    }
}
