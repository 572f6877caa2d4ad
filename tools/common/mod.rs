//! What the tool binaries (`checkoutd-bench`, `checkoutd-crash`) share:
//! starting and stopping a `checkoutd serve` child, waiting for it to be
//! ready, mutual-TLS clients from the development certificates, and a
//! realistic order. Included by each tool with `#[path]`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A fresh working directory under the system temp dir.
pub fn work_dir(tool: &str) -> Result<WorkDir, BoxError> {
    let dir = std::env::temp_dir().join(format!("{tool}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(WorkDir(dir))
}

/// A tool's working directory (its server's data: a database of a few
/// hundred MB after a benchmark run), removed when the tool ends — every
/// run left one behind in the temporary directory until the disk was full.
/// `CHECKOUTD_KEEP_WORK_DIR=1` keeps it, for a look afterwards.
pub struct WorkDir(PathBuf);

impl std::ops::Deref for WorkDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::env::var_os("CHECKOUTD_KEEP_WORK_DIR").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `checkoutd serve` (the binary next to this one) on 127.0.0.1:`port` with
/// `work/data` and `work/certs`; SQLite unless `database_url` names a
/// PostgreSQL database. Output is discarded unless the caller says else.
pub fn serve_command(
    work: &Path,
    port: u16,
    database_url: Option<&str>,
) -> Result<Command, BoxError> {
    let exe = std::env::current_exe()?.with_file_name("checkoutd");
    let mut cmd = Command::new(exe);
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ])
    .arg(work.join("data"))
    .arg("--certs-dir")
    .arg(work.join("certs"))
    // The production log level (info: one access-log line per request),
    // unless the caller says otherwise.
    .env_remove("RUST_LOG")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(url) = database_url {
        // In the environment, not the argument list (`ps` shows that).
        cmd.env("CHECKOUTD_DATABASE_URL", url);
    }
    Ok(cmd)
}

/// SIGTERM (a graceful stop: drain, close the database), then SIGKILL if
/// it has not exited within 10 s. Returns how long the graceful stop took,
/// or `None` if it had to be killed.
pub fn stop(child: &mut Child) -> Option<Duration> {
    let started = Instant::now();
    terminate(child);
    let deadline = started + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Sends SIGTERM to the child, from this process (no `kill` program
/// needed: minimal images lack procps, and a stop that never arrived would
/// be waited out and then killed, making the next start-up one after a
/// crash). Elsewhere than Linux, nothing: `stop` kills after its wait.
pub fn terminate(child: &Child) {
    #[cfg(target_os = "linux")]
    {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(child),
            rustix::process::Signal::TERM,
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = child;
}

/// A child server that is stopped however this process leaves `main`.
#[allow(dead_code)] // not every tool uses it
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        // Not again if it was stopped already (`try_wait` answers from the
        // status `wait` recorded: no signal can reach a reused pid).
        if !matches!(self.0.try_wait(), Ok(Some(_))) {
            let _ = stop(&mut self.0);
        }
    }
}

/// Milliseconds from now until `/readyz` answers 200 (certificates may not
/// exist yet on a first run).
///
/// An error as soon as `server` exits before it is ready (a database URL
/// that does not connect, a port taken…) instead of after the 60 s; its
/// output is not shown, so the error says how to see it.
pub async fn wait_ready(server: &mut Child, port: u16, certs: &Path) -> Result<u128, BoxError> {
    let started = Instant::now();
    loop {
        if let Some(status) = server.try_wait()? {
            return Err(format!(
                "checkoutd exited ({status}) before it was ready; its output is not shown here: \
                 run `checkoutd serve` with the same settings by hand to see why"
            )
            .into());
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err("the server did not become ready within 60 s".into());
        }
        if let Ok(client) = client_as(certs, "storefront") {
            let url = format!("https://localhost:{port}/readyz");
            if let Ok(r) = client.get(url).send().await
                && r.status() == 200
            {
                return Ok(started.elapsed().as_millis());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A keep-alive client presenting `role`'s development certificate.
pub fn client_as(certs: &Path, role: &str) -> Result<reqwest::Client, BoxError> {
    Ok(client_builder_as(certs, role)?.build()?)
}

/// The builder behind [`client_as`], for a caller that sets more.
pub fn client_builder_as(certs: &Path, role: &str) -> Result<reqwest::ClientBuilder, BoxError> {
    let ca = std::fs::read(certs.join("ca.pem"))?;
    let mut identity = std::fs::read(certs.join(format!("{role}.pem")))?;
    identity.extend(std::fs::read(certs.join(format!("{role}-key.pem")))?);
    Ok(reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .identity(reqwest::Identity::from_pem(&identity)?)
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(30)))
}

/// A realistic order of about 1 KB with storefront reference `reference`;
/// every tenth `i` a gift.
pub fn order(reference: &str, i: u64) -> Value {
    let mut o = json!({
        "storefront_order_ref": reference,
        "customer": {"name": "Ada Lovelace", "email": format!("customer{}@example.com", i % 5000),
                     "phone": "+1 949 555 0100"},
        "billing_address": {"line1": "51 Columbia", "line2": "Suite 200", "city": "Aliso Viejo",
                            "region": "CA", "postal_code": "92656", "country": "US"},
        "shipping_address": {"line1": "1200 Harbor Boulevard", "city": "Weehawken",
                             "region": "NJ", "postal_code": "07086", "country": "US"},
        "items": [
            {"sku": "FAXSTF-PRO", "description": "Fax stand, professional", "quantity": 1, "unit_price_minor": 4999},
            {"sku": "TONER-XL", "description": "Toner cartridge, extra large", "quantity": 2, "unit_price_minor": 2599},
            {"sku": "PAPER-A4-500", "description": "Paper, A4, 500 sheets", "quantity": 3, "unit_price_minor": 799}
        ],
        "currency": "USD",
        "card": {"number": "4012888888881881", "exp_month": 12, "exp_year": time::OffsetDateTime::now_utc().year() + 4, "cvc": "123",
                 "holder_name": "Ada Lovelace"},
        "consent": {"product_updates": i.is_multiple_of(2), "new_offerings": false, "partnerships": false,
                    "special_offers": i.is_multiple_of(3), "third_party_sharing": false,
                    "policy_version": "2002-06-05"}
    });
    if i.is_multiple_of(10) {
        o["gift_recipient"] = json!({
            "name": "Charles Babbage",
            "address": {"line1": "1 Dorset Street", "city": "London", "postal_code": "W1U 4EG", "country": "GB"},
            "phone": "+44 20 7946 0000",
            "message": "Happy birthday!"
        });
    }
    o
}
