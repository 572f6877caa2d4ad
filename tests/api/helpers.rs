//! `spawn_app()` and TLS clients for the integration tests.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use checkoutd::app::Application;
use checkoutd::cli::{ServeArgs, StoreArgs};
use checkoutd::config::Settings;
use checkoutd::pki::DevPki;
use checkoutd::server::identity::Role;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Everything the server logged during this test binary's run, for leak
/// scans. Installed once as the global subscriber.
pub fn captured_logs() -> String {
    let buf = log_buffer().lock().unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| Arc::new(Mutex::new(Vec::new())))
}

#[derive(Clone)]
struct BufWriter(Arc<Mutex<Vec<u8>>>);

impl Write for BufWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let buf = log_buffer().clone();
        let _ = tracing_subscriber::fmt()
            // Everything the server side logs (our crate at debug, its libraries at
            // info); the test clients' own protocol chatter (DevTools over
            // WebSocket, reqwest) is not server output and stays out.
            .with_env_filter(
                "info,checkoutd=debug,tungstenite=warn,tokio_tungstenite=warn,reqwest=warn",
            )
            .json()
            .with_writer(move || BufWriter(buf.clone()))
            .try_init();
    });
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub pki: DevPki,
    pub dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    pub server: Option<JoinHandle<()>>,
}

/// Options for [`spawn_app_with`].
#[derive(Default)]
pub struct Options {
    pub serve: ServeArgs,
    /// Extra routes merged into the real router (e.g. a slow one).
    pub extra_routes: Option<axum::Router>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let pki = DevPki::generate().unwrap();
    pki.write_to(&certs).unwrap();
    let mut args = options.serve;
    args.listen = Some("127.0.0.1:0".into());
    args.certs_dir = Some(certs);
    args.store = StoreArgs {
        data_dir: Some(dir.path().join("data")),
        ..args.store
    };
    let settings = Settings::from_args(&args).unwrap();
    let app = Application::build(&settings).await.unwrap();
    let addr = app.local_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    };
    let server = match options.extra_routes {
        None => tokio::spawn(app.run_until(shutdown)),
        Some(extra) => {
            let router = checkoutd::routes::router(app.state().clone(), Duration::from_secs(30))
                .merge(extra);
            tokio::spawn(app.run_router_until(router, shutdown))
        }
    };
    TestApp {
        addr,
        pki,
        dir,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{}", self.addr.port(), path)
    }

    /// A client presenting the certificate of `role`.
    pub fn client(&self, role: Role) -> reqwest::Client {
        let cert = self.pki.client(role).unwrap();
        client_with(
            &self.pki,
            Some((&cert.cert_pem, &cert.key_pem)),
            Versions::Both,
        )
    }

    /// GET `path` as `role`; the JSON body.
    pub async fn get_json(&self, role: Role, path: &str) -> serde_json::Value {
        self.client(role)
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A client with no certificate.
    pub fn anonymous(&self) -> reqwest::Client {
        client_with(&self.pki, None, Versions::Both)
    }

    /// Begins graceful shutdown.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[derive(Clone, Copy)]
pub enum Versions {
    Both,
    Tls12,
    Tls13,
}

/// A reqwest client trusting only the test CA of `pki`, optionally
/// presenting a client certificate.
pub fn client_with(
    pki: &DevPki,
    cert: Option<(&str, &str)>,
    versions: Versions,
) -> reqwest::Client {
    let config = rustls_client_config(pki, cert, versions);
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

pub fn rustls_client_config(
    pki: &DevPki,
    cert: Option<(&str, &str)>,
    versions: Versions,
) -> rustls::ClientConfig {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&'static rustls::SupportedProtocolVersion] = match versions {
        Versions::Both => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Versions::Tls12 => &[&rustls::version::TLS12],
        Versions::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match cert {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// Asserts a problem+json answer with `status` and returns its body.
pub async fn expect_problem(response: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "problem documents use application/problem+json"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(
        body["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:checkoutd:problem:")
    );
    assert!(body["title"].is_string());
    body
}

/// A raw TLS connection to the app (handshake done, nothing sent), with or
/// without a client certificate.
pub async fn tls_connect(
    app: &TestApp,
    role: Option<Role>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let cert = role.map(|r| app.pki.client(r).unwrap());
    let config = rustls_client_config(
        &app.pki,
        cert.map(|c| (c.cert_pem.as_str(), c.key_pem.as_str())),
        Versions::Both,
    );
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}
