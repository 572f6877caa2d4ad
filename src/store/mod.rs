//! Storage: one [`Store`] trait, one file per engine.
//!
//! The engine is chosen by the database URL's scheme (see
//! [`crate::config::DatabaseUrl`]); an unknown scheme never reaches this
//! module. Everything a store persists is already encrypted or free of
//! personal data: sealing happens in the request task (see `crate::intake`),
//! so the store only writes rows. Writes take *batches* so that concurrent
//! orders can share one synced commit (group commit) without an interface
//! change.

pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::DatabaseUrl;

/// Storage failures. Variants carry no row contents.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("a database query failed")]
    Query(#[source] sqlx::Error),
    #[error("applying migrations failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create the data directory {path}")]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("PostgreSQL is not supported by this build yet; use a sqlite:// URL")]
    PostgresNotYet,
    #[error("a stored row is malformed ({0})")]
    Corrupt(&'static str),
}

impl StoreError {
    /// Maps a driver error: connection-level failures are `Unavailable`
    /// (answered 503), everything else `Query` (answered 500).
    pub fn from_sqlx(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(error),
            other => StoreError::Query(other),
        }
    }
}

/// The persistence interface of checkoutd.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap round trip for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Flushes and closes connections; called once on shutdown.
    async fn close(&self);
}

/// Opens the store named by `url`, creating an SQLite file (and its
/// directory) on first use, and applies pending migrations.
pub async fn open(url: &DatabaseUrl) -> Result<Arc<dyn Store>, StoreError> {
    match url {
        DatabaseUrl::Sqlite { path } => Ok(Arc::new(sqlite::SqliteStore::open(path).await?)),
        DatabaseUrl::Postgres { .. } => Err(StoreError::PostgresNotYet),
    }
}
