//! The `checkoutd` binary: parse the command line, set up logging, hand over
//! to the library.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use checkoutd::cli::{CertsCommand, Cli, Command};
use checkoutd::config::{Settings, StoreSettings};
use checkoutd::{app::Application, audit, pki::DevPki, server, store, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // `checkoutd audit` reports a usage or I/O error as 2 (1 means "the
    // audit found failures"); every other command as 1.
    let error_code = if matches!(cli.command, Command::Audit(_)) {
        2
    } else {
        1
    };
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            // The full cause chain, once. Error types carry no input values.
            let mut text = format!("checkoutd: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                text.push_str(&format!("\n  caused by: {cause}"));
                source = cause.source();
            }
            let _ = writeln!(std::io::stderr(), "{text}");
            ExitCode::from(error_code)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.command {
        Command::Audit(args) => {
            let settings = StoreSettings::from_args(&args.store)?;
            telemetry::init(settings.log_format);
            let bar = indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::stderr(),
            );
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "verifying {bar:40} {pos}/{len} orders ({eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let progress = |done: u64, total: u64| {
                bar.set_length(total);
                bar.set_position(done);
            };
            let verified =
                audit::offline(&settings, &args.out, args.html.as_deref(), &progress).await?;
            bar.finish_and_clear();
            let _ = writeln!(
                std::io::stderr(),
                "{}: report written to {}",
                if verified {
                    "everything verifies"
                } else {
                    "FAILURES FOUND"
                },
                args.out.display()
            );
            return Ok(if verified {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
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
    Ok(ExitCode::SUCCESS)
}
