//! The `checkoutd` binary: parse the command line, set up logging, hand over
//! to the library.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use checkoutd::cli::{CertsCommand, Cli, Command, KeysCommand, OrdersCommand};
use checkoutd::config::{Settings, StoreSettings};
use checkoutd::{app::Application, audit, pki::DevPki, server, store, telemetry};

/// jemalloc instead of glibc's malloc: ≈ 13 % less CPU per order under load
/// for ≈ 2 MiB more resident memory (docs/performance.md), wrapped so that
/// every heap block is wiped before it is freed or moved (a reallocation
/// copies to a new block and wipes the old). Secrets are wiped by their own
/// types too; this catches the copies no type of ours owns — a library's
/// scratch buffer that grew, a `Vec` that moved — see docs/encryption.md.
///
/// The wipe needs x86-64 or AArch64 (`secmem-alloc`'s barrier is inline
/// assembly); elsewhere the plain allocator is used, and only our own types
/// wipe (docs/encryption.md).
#[cfg(all(
    feature = "jemalloc",
    target_os = "linux",
    not(target_env = "musl"),
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
#[global_allocator]
static ALLOCATOR: secmem_alloc::zeroizing_alloc::ZeroizeAlloc<tikv_jemallocator::Jemalloc> =
    secmem_alloc::zeroizing_alloc::ZeroizeAlloc::new(tikv_jemallocator::Jemalloc);

/// Not Linux with glibc (or built without the `jemalloc` feature): the
/// system allocator, wiped the same way.
#[cfg(all(
    not(all(feature = "jemalloc", target_os = "linux", not(target_env = "musl"))),
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
#[global_allocator]
static ALLOCATOR: secmem_alloc::zeroizing_alloc::ZeroizeAlloc<std::alloc::System> =
    secmem_alloc::zeroizing_alloc::ZeroizeAlloc::new(std::alloc::System);

/// Linux with glibc on another architecture: jemalloc, not wiped.
#[cfg(all(
    feature = "jemalloc",
    target_os = "linux",
    not(target_env = "musl"),
    not(any(target_arch = "x86_64", target_arch = "aarch64"))
))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // Before anything is read: no key or card number ever in a core dump.
    if let Err(error) = checkoutd::hardening::forbid_memory_dumps() {
        let _ = writeln!(
            std::io::stderr(),
            "checkoutd: cannot turn core dumps off ({error}); refusing to start"
        );
        return ExitCode::from(1);
    }
    let renamed = checkoutd::cli::renamed_variables(std::env::vars_os().map(|(name, _)| name));
    if !renamed.is_empty() {
        for (old, new) in renamed {
            let _ = writeln!(
                std::io::stderr(),
                "checkoutd: {old} is set, but this release reads {new} (DESIGN: CHECKOUTD_<FLAG>, the flag is --master-key-share); rename it"
            );
        }
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    // A misspelled variable would be ignored without a word (a typo in
    // CHECKOUTD_CLIENT_CRL leaves revocation out): named, never its value.
    for name in checkoutd::cli::unread_variables(std::env::vars_os().map(|(name, _)| name)) {
        let _ = writeln!(
            std::io::stderr(),
            "checkoutd: warning: {name} is set, but no setting reads it (misspelled?); ignored"
        );
    }
    // Exit status: 2 for a usage error — a flag or setting that is wrong,
    // as clap itself reports (`Usage`, `ConfigError`) — and for every
    // error of `checkoutd audit` (whose 1 means "the audit found
    // failures"); 1 for any other failure.
    let audit = matches!(cli.command, Command::Audit(_));
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            let usage = error.is::<Usage>() || error.is::<checkoutd::config::ConfigError>();
            let error_code = if usage || audit { 2 } else { 1 };
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

/// The keyring and the store an operator's `orders` command works with
/// (logging set up first).
async fn operator_session(
    args: &checkoutd::cli::StoreArgs,
) -> Result<
    (
        checkoutd::crypto::keyring::Keyring,
        std::sync::Arc<dyn checkoutd::store::Store>,
    ),
    Box<dyn std::error::Error>,
> {
    let settings = StoreSettings::from_args(args)?;
    telemetry::init(settings.log_format);
    let master =
        checkoutd::crypto::master::resolve(&settings.data_dir, &settings.master_key_shares)?;
    let keyring = checkoutd::crypto::keyring::Keyring::load(
        &settings
            .data_dir
            .join(checkoutd::crypto::keyring::FILE_NAME),
        &master,
    )?;
    let store = store::open_existing(&settings.database).await?;
    Ok((keyring, store))
}

/// An `--order` value: an order id (UUID), in its canonical form.
fn order_id(raw: &str) -> Result<String, Usage> {
    uuid::Uuid::parse_str(raw)
        .map(|id| id.to_string())
        .map_err(|_| Usage("--order must be an order id (UUID)"))
}

/// A stored hold time as it may be shown: one that is no timestamp
/// (written around the service) is withheld.
fn shown_at(at: &str) -> &str {
    if checkoutd::ids::parse_timestamp(at).is_some() {
        at
    } else {
        "(withheld: not a timestamp)"
    }
}

/// A stored hold reference as it may be shown: one that is not what
/// `orders hold` accepts (written around the service) is withheld.
fn shown_reference(reference: &str) -> &str {
    if checkoutd::retention::hold_reference_problem(reference).is_none() {
        reference
    } else {
        "(withheld: not a reference checkoutd accepts)"
    }
}

/// A command-line value that is not what the flag takes (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(&'static str);

async fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.command {
        Command::Orders(OrdersCommand::Purge {
            store: args,
            order,
            dispatched_before,
        }) => {
            // The values first: a usage error before any key is touched.
            let order = order.as_deref().map(order_id).transpose()?;
            let dispatched_before = dispatched_before
                .map(|date| {
                    time::Date::parse(
                        &date,
                        time::macros::format_description!("[year]-[month]-[day]"),
                    )
                    .map(|day| (date, day))
                })
                .transpose()
                .map_err(|_| Usage("--dispatched-before must be YYYY-MM-DD"))?;
            // A date after today would purge every dispatched order, card
            // data still inside its chargeback window included: a typo
            // (2062 for 2026) must not crypto-shred the whole shop.
            if dispatched_before
                .as_ref()
                .is_some_and(|(_, day)| *day > time::OffsetDateTime::now_utc().date())
            {
                return Err(Usage(
                    "--dispatched-before is after today: that would purge every dispatched order; give a date up to today (UTC)",
                )
                .into());
            }
            let (keyring, store) = operator_session(&args).await?;
            let who = checkoutd::keys::operator();
            let all = checkoutd::crypto::DataClass::ALL;
            let mut out = std::io::stdout();
            match (order, dispatched_before) {
                (Some(id), _) => {
                    // An unknown id is a typo, not a purge: nothing to log.
                    if !store.order_exists(&id).await? {
                        return Err(format!("no such order {id}; nothing was purged").into());
                    }
                    // Nor is a held order's purge (the store refuses it
                    // too, should a hold land meanwhile).
                    if let Some(hold) = store.holds().await?.iter().find(|h| h.order_id == id) {
                        return Err(format!(
                            "order {id} is under a legal hold (case {}, since {}); nothing was \
                             purged: `checkoutd orders release --order {id}` ends the hold",
                            shown_reference(&hold.reference),
                            shown_at(&hold.placed_at)
                        )
                        .into());
                    }
                    let done = checkoutd::retention::purge_order(
                        store.as_ref(),
                        &keyring,
                        &id,
                        &all,
                        "operator",
                        ("operator", &who),
                    )
                    .await?;
                    if done.is_empty() {
                        // Also how a purge that ended `Incomplete` is
                        // finished: this run emptied the WAL.
                        writeln!(out, "nothing left to purge of {id}: it was purged before")?;
                    } else {
                        writeln!(out, "purged {id}: {}", done.join(", "))?;
                    }
                }
                (None, Some((date, day))) => {
                    let before = checkoutd::ids::timestamp(day.midnight().assume_utc());
                    let mut purged = 0;
                    let mut outcome = Ok(());
                    for class in all {
                        outcome = checkoutd::retention::purge_before(
                            store.as_ref(),
                            &keyring,
                            &[class],
                            (checkoutd::retention::Clock::Dispatch, &before),
                            "operator",
                            ("operator", &who),
                            &mut purged,
                        )
                        .await;
                        if outcome.is_err() {
                            break;
                        }
                    }
                    // `always`: run again after an `Incomplete` purge, this
                    // finds nothing to delete and empties the WAL.
                    let total =
                        checkoutd::retention::finish_purges(store.as_ref(), purged, outcome, true)
                            .await?;
                    writeln!(
                        out,
                        "purged {total} record set(s) of orders dispatched before {date}"
                    )?;
                    let held = store.holds().await?.len();
                    if held > 0 {
                        writeln!(
                            out,
                            "{held} order(s) under a legal hold were passed over if due \
                             (`checkoutd orders holds` lists them)"
                        )?;
                    }
                }
                (None, None) => {
                    return Err(Usage("give --order ID or --dispatched-before DATE").into());
                }
            }
            store.close().await;
        }
        Command::Orders(OrdersCommand::Hold {
            store: args,
            order,
            reference,
        }) => {
            let id = order_id(&order)?;
            if let Some(problem) = checkoutd::retention::hold_reference_problem(&reference) {
                return Err(Usage(problem).into());
            }
            let (keyring, store) = operator_session(&args).await?;
            if !store.order_exists(&id).await? {
                return Err(format!("no such order {id}; no hold was placed").into());
            }
            let who = checkoutd::keys::operator();
            let placed = checkoutd::retention::place_hold(
                store.as_ref(),
                &keyring,
                (&id, &reference),
                checkoutd::ids::now(),
                ("operator", &who),
            )
            .await?;
            let mut out = std::io::stdout();
            match placed {
                checkoutd::store::rows::HoldPlaced::Placed { classes_held } => {
                    writeln!(
                        out,
                        "held {id} (case {reference}): keeps {}",
                        if classes_held.is_empty() {
                            "nothing — every class was purged before".to_owned()
                        } else {
                            classes_held.join(", ")
                        }
                    )?;
                }
                checkoutd::store::rows::HoldPlaced::AlreadyHeld(hold) => {
                    store.close().await;
                    return Err(format!(
                        "order {id} is already held (case {}, since {}); release it first to \
                         hold it for another case",
                        shown_reference(&hold.reference),
                        shown_at(&hold.placed_at)
                    )
                    .into());
                }
                checkoutd::store::rows::HoldPlaced::NoSuchOrder => {
                    store.close().await;
                    return Err(format!("no such order {id}; no hold was placed").into());
                }
            }
            store.close().await;
        }
        Command::Orders(OrdersCommand::Release { store: args, order }) => {
            let id = order_id(&order)?;
            let (keyring, store) = operator_session(&args).await?;
            // Nothing to release is a typo, not a release: nothing to log.
            if !store.holds().await?.iter().any(|h| h.order_id == id) {
                store.close().await;
                return Err(format!("order {id} is not under a legal hold").into());
            }
            let who = checkoutd::keys::operator();
            let released = checkoutd::retention::release_hold(
                store.as_ref(),
                &keyring,
                &id,
                &checkoutd::ids::now(),
                ("operator", &who),
            )
            .await?;
            store.close().await;
            match released {
                Some(hold) => writeln!(
                    std::io::stdout(),
                    "released {id} (held since {} for case {}); retention takes it up at its next pass",
                    shown_at(&hold.placed_at),
                    shown_reference(&hold.reference)
                )?,
                None => return Err(format!("order {id} is not under a legal hold").into()),
            }
        }
        Command::Orders(OrdersCommand::Holds { store: args }) => {
            let (keyring, store) = operator_session(&args).await?;
            let holds = store.holds().await?;
            store.close().await;
            let key = keyring.consent_tag_key();
            let mut out = std::io::stdout();
            if holds.is_empty() {
                writeln!(out, "no legal holds")?;
            }
            for hold in &holds {
                let verifies = key.verify(
                    &[&checkoutd::retention::hold_canonical_bytes(hold)],
                    &hold.mac,
                );
                writeln!(
                    out,
                    "{}  since {}  case {}{}",
                    uuid::Uuid::parse_str(&hold.order_id).map_or_else(
                        |_| "(withheld: not an order id)".to_owned(),
                        |id| id.to_string()
                    ),
                    shown_at(&hold.placed_at),
                    shown_reference(&hold.reference),
                    if verifies {
                        ""
                    } else {
                        "  (DOES NOT VERIFY: not placed by checkoutd; run `checkoutd audit`)"
                    }
                )?;
            }
        }
        Command::Keys(command) => {
            run_keys(command).await?;
        }
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
            let verified = audit::offline(
                &settings,
                &args.out,
                args.html.as_deref(),
                args.since.as_deref(),
                &progress,
            )
            .await?;
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
            // Each notice as soon as it is found: one about development
            // material made on this start is not lost to a later failure.
            let app = Application::build_telling(&settings, &mut |notice| {
                let _ = writeln!(std::io::stderr(), "{notice}");
            })
            .await?;
            app.run_until(server::shutdown_signal()).await;
        }
        Command::Migrate(args) => {
            let settings = StoreSettings::from_args(&args)?;
            telemetry::init(settings.log_format);
            let store = store::open(&settings.database).await?;
            store.close().await;
            tracing::info!(database = ?settings.database, "migrations applied");
        }
        Command::Certs(CertsCommand::Dev { out, replace }) => {
            telemetry::init(Default::default());
            if replace {
                checkoutd::pki::replace_dev_pki(&out)?;
            } else {
                DevPki::generate()?.write_to(&out)?;
            }
            let _ = writeln!(
                std::io::stderr(),
                "wrote a DEVELOPMENT PKI to {} (ca.pem, server.pem, server-key.pem, <role>.pem, <role>-key.pem); never use it in production",
                out.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `checkoutd keys …`: offline key operations on the data directory's
/// keyring and database (never migrated, but a new one by `keys init`).
async fn run_keys(command: KeysCommand) -> Result<(), Box<dyn std::error::Error>> {
    use checkoutd::crypto::keyring::{FILE_NAME, Keyring};
    let args = match &command {
        KeysCommand::Init { store, .. }
        | KeysCommand::Status { store }
        | KeysCommand::Rotate { store, .. }
        | KeysCommand::Rewrap { store, .. }
        | KeysCommand::Destroy { store, .. } => store.clone(),
    };
    let settings = StoreSettings::from_args(&args)?;
    telemetry::init(settings.log_format);
    let path = settings.data_dir.join(FILE_NAME);
    // Only `keys init` may begin a new database (and migrates only a new
    // one); the others act on the service's own, which must exist.
    let store = if matches!(command, KeysCommand::Init { .. }) {
        store::open_new_or_current(&settings.database).await?
    } else {
        store::open_existing(&settings.database).await?
    };
    let classes = |text: &str| {
        checkoutd::keys::parse_classes(text).ok_or(Usage(
            "--class must be card, billing, shipping, recipient, contact or all",
        ))
    };
    let mut out = std::io::stdout();
    if let KeysCommand::Init {
        custodians,
        shares_dir,
        ..
    } = &command
    {
        let paths = checkoutd::keys::init(store.as_ref(), &path, *custodians, shares_dir).await?;
        for (i, p) in paths.iter().enumerate() {
            writeln!(out, "custodian {}: {}", i + 1, p.display())?;
        }
        writeln!(
            out,
            "keyring sealed at {}; start with every share: --master-key-share FILE (repeat)",
            path.display()
        )?;
        store.close().await;
        return Ok(());
    }
    let master =
        checkoutd::crypto::master::resolve(&settings.data_dir, &settings.master_key_shares)?;
    match command {
        KeysCommand::Init { .. } => {}
        KeysCommand::Status { .. } => {
            let keyring = Keyring::load(&path, &master)?;
            let status = checkoutd::keys::status(store.as_ref(), &keyring).await?;
            writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
        }
        KeysCommand::Rotate {
            class,
            after_keyring_restore,
            ..
        } => {
            let made = checkoutd::keys::rotate(
                store.as_ref(),
                &path,
                &master,
                &classes(&class)?,
                after_keyring_restore,
            )
            .await?;
            writeln!(out, "new active versions: {}", made.join(", "))?;
        }
        KeysCommand::Rewrap { class, batch, .. } => {
            let bar = indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::stderr(),
            );
            let progress = |done: u64| bar.set_position(done);
            let done = checkoutd::keys::rewrap(
                store.as_ref(),
                &path,
                &master,
                &classes(&class)?,
                batch.max(1),
                &progress,
            )
            .await?;
            bar.finish_and_clear();
            writeln!(out, "re-wrapped {done} record(s)")?;
            let classes = classes(&class)?;
            for (name, records) in
                checkoutd::keys::not_held(store.as_ref(), &path, &master, &classes).await?
            {
                writeln!(
                    out,
                    "left {records} record(s) under {name}, which this keyring does not hold: they stay unreadable"
                )?;
            }
        }
        KeysCommand::Destroy { class, version, .. } => {
            let class = checkoutd::crypto::DataClass::parse(&class).ok_or(Usage(
                "--class must be card, billing, shipping, recipient or contact",
            ))?;
            checkoutd::keys::destroy(store.as_ref(), &path, &master, class, version).await?;
            writeln!(out, "destroyed {}/v{version}", class.as_str())?;
        }
    }
    store.close().await;
    Ok(())
}
