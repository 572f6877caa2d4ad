//! Start-up: from validated settings to a bound, ready service.
//!
//! `Application::build` does everything that can fail *before* the port is
//! opened to clients — certificates (creating a development PKI on a first
//! run), database and migrations, TLS configuration — then binds. Tests use
//! the same builder with `--listen 127.0.0.1:0` and read `local_addr()`.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Settings;
use crate::crypto::keyring::{self, Keyring, KeyringError};
use crate::intake::Intake;
use crate::pki::{self, DevPki};
use crate::routes::{self, AppState};
use crate::server::{self, ConnectionLimits, tls};
use crate::store::{self, Store};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    state: AppState,
    store: Arc<dyn Store>,
    limits: ConnectionLimits,
    request_timeout: std::time::Duration,
}

impl Application {
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        ensure_certificates(settings)?;
        let tls_files = tls::TlsFiles::in_dir(&settings.certs_dir, settings.client_ca.as_deref());
        let tls = tls::server_config(&tls_files)?;
        let keyring = Arc::new(load_keyring(settings)?);
        let store = store::open(&settings.store.database).await?;
        let intake = Arc::new(Intake::new(
            keyring,
            store.clone(),
            settings.policy_versions.clone(),
        ));
        let state = AppState {
            store: store.clone(),
            intake,
        };
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| StartupError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| StartupError::Bind {
            addr: settings.listen,
            source,
        })?;
        Ok(Application {
            listener,
            local_addr,
            tls,
            state,
            store,
            limits: settings.limits,
            request_timeout: settings.request_timeout,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The handler state, e.g. to build the router with extra test routes.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, drains, then closes the database.
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()>) {
        let router = routes::router(self.state.clone(), self.request_timeout);
        self.run_router_until(router, shutdown).await;
    }

    /// As [`run_until`](Self::run_until) with a caller-built router (tests
    /// add a slow route to observe draining).
    pub async fn run_router_until(
        self,
        router: axum::Router,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tracing::info!(listen = %self.local_addr, "checkoutd serving (TLS only)");
        server::run(self.listener, self.tls, router, self.limits, shutdown).await;
        self.store.close().await;
        tracing::info!("checkoutd stopped");
    }
}

/// Loads `<data-dir>/keyring.json`, creating a development keyring (with a
/// loud warning) on a first run.
pub fn load_keyring(settings: &Settings) -> Result<Keyring, KeyringError> {
    let path = settings.store.data_dir.join(keyring::FILE_NAME);
    let (ring, created) = Keyring::load_or_create(&path, &crate::ids::now())?;
    if created {
        let _ = writeln!(
            std::io::stderr(),
            "\n\
             ************************************************************************\n\
             *  WARNING: created a DEVELOPMENT KEYRING at {:<27}*\n\
             *  It is stored unencrypted (mode 0600). Anyone who can read it and    *\n\
             *  the database can read every card. Never use it for real cards.      *\n\
             ************************************************************************\n",
            path.display().to_string()
        );
        tracing::warn!(path = %path.display(), "created a development keyring");
    }
    Ok(ring)
}

/// On a first run with no server certificate, creates the development PKI
/// and says so loudly.
fn ensure_certificates(settings: &Settings) -> Result<(), StartupError> {
    if pki::server_cert_present(&settings.certs_dir) {
        return Ok(());
    }
    DevPki::generate()?.write_to(&settings.certs_dir)?;
    let _ = writeln!(
        std::io::stderr(),
        "\n\
         ************************************************************************\n\
         *  WARNING: no server certificate was found, so checkoutd created a     *\n\
         *  DEVELOPMENT PKI in {:<50}*\n\
         *  (ca.pem, server.pem, <role>.pem ...). It is for development only:   *\n\
         *  never use these certificates for real cards or customers.           *\n\
         ************************************************************************\n",
        settings.certs_dir.display().to_string()
    );
    tracing::warn!(certs_dir = %settings.certs_dir.display(), "created a development PKI");
    Ok(())
}
