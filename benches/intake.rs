//! Micro-benchmarks of the intake path (docs/performance.md):
//! `cargo bench --bench intake`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use checkoutd::crypto::DataClass;
use checkoutd::crypto::envelope::{self, Binding};
use checkoutd::crypto::keyring::Keyring;
use checkoutd::domain::json::parse_strict;
use checkoutd::domain::order::{Rules, Source, parse};
use checkoutd::intake::IdempotencyKey;
use checkoutd::intake::seal::seal_order;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ring::rand::SystemRandom;
use std::hint::black_box;

const ORDER: &str = r#"{"storefront_order_ref":"A-1001",
 "customer":{"name":"Ada Lovelace","email":"ada@example.com","phone":"+1 949 555 0100"},
 "billing_address":{"line1":"51 Columbia","line2":"Suite 200","city":"Aliso Viejo","region":"CA","postal_code":"92656","country":"US"},
 "shipping_address":{"line1":"1200 Harbor Boulevard","city":"Weehawken","region":"NJ","postal_code":"07086","country":"US"},
 "items":[{"sku":"FAXSTF-PRO","description":"Fax stand, professional","quantity":1,"unit_price_minor":4999},
          {"sku":"TONER-XL","description":"Toner cartridge, extra large","quantity":2,"unit_price_minor":2599},
          {"sku":"PAPER-A4-500","description":"Paper, A4, 500 sheets","quantity":3,"unit_price_minor":799}],
 "currency":"USD",
 "card":{"number":"4012888888881881","exp_month":12,"exp_year":2030,"cvc":"123","holder_name":"Ada Lovelace"},
 "gift_recipient":{"name":"Charles Babbage","address":{"line1":"1 Dorset Street","city":"London","postal_code":"W1U 4EG","country":"GB"},"message":"Happy birthday!"},
 "consent":{"product_updates":true,"special_offers":true,"policy_version":"2002-06-05"}}"#;

fn rules(versions: &[String]) -> Rules<'_> {
    Rules {
        policy_versions: versions,
        // A fixed day (the order's card stays valid whenever this runs).
        now: time::OffsetDateTime::from_unix_timestamp(1_795_910_400)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
    }
}

fn benches(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let keyring = Keyring::generate(&rng, "2026-11-29T00:00:00.000Z").unwrap();
    let versions = vec!["2002-06-05".to_owned()];

    c.bench_function("order parse+validate (JSON, ~1 KB, gift)", |b| {
        b.iter(|| {
            let tree = parse_strict(black_box(ORDER.as_bytes())).unwrap();
            black_box(parse(tree, Source::Json, &rules(&versions)).unwrap())
        })
    });

    let record = vec![0x5au8; 200];
    let mut group = c.benchmark_group("envelope");
    for class in DataClass::ALL {
        let binding = Binding {
            class,
            order_id: uuid::Uuid::from_u128(1),
            record_id: uuid::Uuid::from_u128(2),
        };
        group.bench_with_input(
            BenchmarkId::new("seal", class.as_str()),
            &binding,
            |b, binding| {
                b.iter(|| black_box(envelope::seal(&rng, &keyring, binding, &record).unwrap()))
            },
        );
        let sealed = envelope::seal(&rng, &keyring, &binding, &record).unwrap();
        group.bench_with_input(
            BenchmarkId::new("open", class.as_str()),
            &binding,
            |b, binding| b.iter(|| black_box(envelope::open(&keyring, binding, &sealed).unwrap())),
        );
    }
    group.finish();

    let key = IdempotencyKey::parse(b"bench-key").unwrap();
    let order = seal_order(
        &rng,
        &keyring,
        parse(
            parse_strict(ORDER.as_bytes()).unwrap(),
            Source::Json,
            &rules(&versions),
        )
        .unwrap(),
        [1; 32],
        &key,
        [2; 32],
    )
    .unwrap();
    let tag = order.customer_tag.clone();
    c.bench_function("consent-tag MAC", |b| {
        b.iter(|| black_box(keyring.consent_tag_key().sign(&[&tag.canonical_bytes()])))
    });

    c.bench_function(
        "order -> encrypted rows (parse, validate, seal 5 records, MACs)",
        |b| {
            b.iter(|| {
                let tree = parse_strict(ORDER.as_bytes()).unwrap();
                let form = parse(tree, Source::Json, &rules(&versions)).unwrap();
                black_box(seal_order(&rng, &keyring, form, [1; 32], &key, [2; 32]).unwrap())
            })
        },
    );
}

criterion_group!(intake, benches);
criterion_main!(intake);
