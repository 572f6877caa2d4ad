//! The `checkoutd` binary: parse the command line, set up logging, hand over
//! to the library.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use checkoutd::cli::{CertsCommand, Cli, Command};
use checkoutd::config::{Settings, StoreSettings};
use checkoutd::{app::Application, pki::DevPki, server, store, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The full cause chain, once. Error types carry no input values.
            let mut text = format!("checkoutd: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                text.push_str(&format!("\n  caused by: {cause}"));
                source = cause.source();
            }
            let _ = writeln!(std::io::stderr(), "{text}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Serve(args) => {
            let settings = Settings::from_args(&args)?;
            telemetry::init(settings.store.log_format);
            let app = Application::build(&settings).await?;
            for notice in app.first_run_notices() {
                let _ = writeln!(std::io::stderr(), "{notice}");
            }
            app.run_until(server::shutdown_signal()).await;
        }
        Command::Migrate(args) => {
            let settings = StoreSettings::from_args(&args)?;
            telemetry::init(settings.log_format);
            let store = store::open(&settings.database).await?;
            store.close().await;
            tracing::info!(database = ?settings.database, "migrations applied");
        }
        Command::Certs(CertsCommand::Dev { out }) => {
            telemetry::init(Default::default());
            DevPki::generate()?.write_to(&out)?;
            let _ = writeln!(
                std::io::stderr(),
                "wrote a DEVELOPMENT PKI to {} (ca.pem, server.pem, server-key.pem, <role>.pem, <role>-key.pem); never use it in production",
                out.display()
            );
        }
    }
    Ok(())
}
