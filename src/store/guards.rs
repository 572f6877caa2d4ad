//! The database's own guards — the triggers the migrations create (ledgers
//! append-only, orders never deleted, no record under a retired KEK, a
//! dispatch never undone, heads that only move forward …) — as the audit
//! checks them.
//!
//! Every other check of the audit finds what was done *while* a guard was
//! off; this one finds a guard that is off *now*: dropped, replaced by one
//! that does something else (its definition or its function changed), or
//! on PostgreSQL disabled (`ALTER TABLE … DISABLE TRIGGER`, or enabled for
//! replication sessions only) or gone around: row-level security on a
//! guarded table (a policy can hide rows from a guard's own queries — the
//! retired versions from the retired-KEK check), a rule rewriting its
//! statements, or a table inheriting from it (rows written there fire none
//! of its row triggers). Someone who switched a guard off, did their edit
//! and switched it back on is not found here.
//!
//! What a guard should be is pinned below, per engine, as a digest of its
//! definition: [`SQLITE`] and [`POSTGRES`] list every trigger a fresh
//! migration of this release creates, and a test on each engine
//! (`guards_are_what_a_fresh_migration_creates` in `tests/api/audit.rs`)
//! fails — printing the new list — when a migration changes them. A
//! trigger added beside ours (a DBA's own) is no finding.

use ring::digest;

/// A trigger as the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    /// The guarded table, by the name the service's statements use.
    pub table: String,
    pub name: String,
    /// SQLite: the `CREATE TRIGGER` statement as stored. PostgreSQL: see
    /// [`postgres_definition`].
    pub definition: String,
    /// PostgreSQL: fires in ordinary sessions (`tgenabled` `O` or `A`).
    /// SQLite's triggers cannot be disabled.
    pub enabled: bool,
}

impl Guard {
    /// The digest [`SQLITE`] and [`POSTGRES`] pin: SHA-256 of the
    /// definition, in hex.
    pub fn digest(&self) -> String {
        crate::hex::encode(digest::digest(&digest::SHA256, self.definition.as_bytes()).as_ref())
    }
}

/// What on a guarded table lets a write past its triggers (PostgreSQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    /// Row-level security enabled on it (forced alone does nothing).
    RowSecurity,
    /// A rule (`CREATE RULE`) rewrites statements on it.
    Rule,
    /// Another table inherits from it, or is a partition of it: a
    /// statement run on that table directly fires none of its statement
    /// triggers (and an inheriting table's rows none of its row triggers).
    Inherited,
}

/// What an engine's reader saw of the guarded tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub triggers: Vec<Guard>,
    /// `(table, what)`, the table by the name the service uses.
    pub bypasses: Vec<(String, Bypass)>,
}

/// What is wrong with one guard, or with a guarded table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardProblem {
    /// No trigger of that name on that table.
    Missing,
    /// It exists, but its definition or its function is not the one the
    /// migrations create.
    Altered,
    /// It exists and is as created, but does not fire (PostgreSQL).
    Disabled,
    /// The table's writes can go around its guards (PostgreSQL).
    Bypassed(Bypass),
}

/// A guard that is not as the migrations left it (`trigger`), or a table
/// whose guards can be gone around (`trigger` is `None`). `table` and
/// `trigger` come from the pinned lists, never from the database under
/// audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardFinding {
    pub table: &'static str,
    pub trigger: Option<&'static str>,
    pub problem: GuardProblem,
}

/// `(table, trigger, digest)` of a guard.
pub type Pin<'a> = (&'static str, &'static str, &'a str);

/// The tables `pinned` guards, each once, in order.
pub fn tables(pinned: &[Pin<'_>]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for &(table, _, _) in pinned {
        if !out.contains(&table) {
            out.push(table);
        }
    }
    out
}

/// Each pinned guard compared with what the database has (`seen`, read
/// from it): missing, altered or disabled; then each guarded table that
/// can be gone around.
pub fn compare(pinned: &[Pin<'_>], seen: &Seen) -> Vec<GuardFinding> {
    let mut found = Vec::new();
    for &(table, trigger, want) in pinned {
        let problem = match seen
            .triggers
            .iter()
            .find(|g| g.table == table && g.name == trigger)
        {
            None => Some(GuardProblem::Missing),
            Some(g) if g.digest() != want => Some(GuardProblem::Altered),
            Some(g) if !g.enabled => Some(GuardProblem::Disabled),
            Some(_) => None,
        };
        if let Some(problem) = problem {
            found.push(GuardFinding {
                table,
                trigger: Some(trigger),
                problem,
            });
        }
    }
    for table in tables(pinned) {
        for (_, bypass) in seen.bypasses.iter().filter(|(t, _)| t == table) {
            found.push(GuardFinding {
                table,
                trigger: None,
                problem: GuardProblem::Bypassed(*bypass),
            });
        }
    }
    found
}

/// A PostgreSQL trigger's definition as pinned: the statement PostgreSQL
/// prints for it (`pg_get_triggerdef` with `search_path` set to
/// `pg_catalog` alone, so its table and function come schema-qualified —
/// when it fires and on what, for each row or statement, its condition,
/// transition tables, function and arguments), then its function's
/// language, whether it runs as its owner, its body and its settings, each
/// after its length. The schema's name (as `quote_ident` gives it) is replaced by
/// `$schema` where it names the schema — the table's and the function's
/// qualifiers, an element of the function's `search_path` — and nowhere
/// else (a schema named `old` must not rewrite `old.id` in a condition),
/// so that the pins hold in any schema.
pub fn postgres_definition(
    statement: &str,
    table_schema: &str,
    function_schema: &str,
    language: &str,
    security_definer: bool,
    body: &str,
    settings: &[String],
) -> String {
    let statement = statement
        .replacen(&format!(" ON {table_schema}."), " ON $schema.", 1)
        .replacen(
            &format!(" EXECUTE FUNCTION {function_schema}."),
            " EXECUTE FUNCTION $schema.",
            1,
        );
    let settings: Vec<String> = settings
        .iter()
        .map(|setting| match setting.strip_prefix("search_path=") {
            Some(path) => {
                let path: Vec<&str> = path
                    .split(", ")
                    .map(|element| {
                        if element == table_schema || element == function_schema {
                            "$schema"
                        } else {
                            element
                        }
                    })
                    .collect();
                format!("search_path={}", path.join(", "))
            }
            None => setting.clone(),
        })
        .collect();
    // Each field after its length: no edit of one can pass for another.
    let mut out = String::new();
    for field in [
        statement,
        language.to_owned(),
        security_definer.to_string(),
        body.to_owned(),
    ]
    .into_iter()
    .chain(settings)
    {
        out.push_str(&format!("{}:{field}\n", field.len()));
    }
    out
}

/// The SQLite guards of this release's migrations.
pub const SQLITE: &[Pin<'static>] = &[
    (
        "access_log",
        "access_log_never_replaced",
        "bef108637ef45f78db3812c26b2ecaf21ecc7f99c172f7aefd46b2abb41afd1d",
    ),
    (
        "access_log",
        "access_log_no_delete",
        "faf7d8b333f10618f9f8be38e58b3340754debb0a7aa22cf72b5c33344d485de",
    ),
    (
        "access_log",
        "access_log_no_update",
        "caf4c9549214d6de7d0af88d10797a8171739187e06026f80b336519b4014139",
    ),
    (
        "access_log",
        "access_log_numbered_from_one",
        "3c645b0c572d4a68ab5584f382ea31f9dd71e5605303b130bbaf6b3e585fd0d2",
    ),
    (
        "access_log_head",
        "access_log_head_insert_moves_forward",
        "ac7489dc13d9941136261716897f7779c5a7cbff111958c09dc628e6ce6e4474",
    ),
    (
        "access_log_head",
        "access_log_head_no_delete",
        "0cecd07f95402a0917da48537d02d17799f9285814807a7110a69ae4eed245ec",
    ),
    (
        "access_log_head",
        "access_log_head_update_moves_forward",
        "fae2ceac021da6cdcd6e615ffcc6cfaf513ad2e9335fd435949508f500fb457d",
    ),
    (
        "billing_details",
        "billing_details_no_retired_kek",
        "b0b7f37fe159afbb6853c8d01c8b3199d10577b054aaacfa97985dc331e52295",
    ),
    (
        "billing_details",
        "billing_details_no_retired_kek_update",
        "b1ad52758341e53ddcdaada71a10c6419c03f48ba03207dc93a18d7de53c58f1",
    ),
    (
        "consent_events",
        "consent_events_never_replaced",
        "3621f6464d66b34c101be65c3c51c5b0f59b613128f4b90017ef25ba8cb6b53c",
    ),
    (
        "consent_events",
        "consent_events_no_delete",
        "e4164dea95e9c3449f73252dd0c80db900ff61e48b085a6fea46b3694b7a4620",
    ),
    (
        "consent_events",
        "consent_events_no_retired_kek",
        "c2f5892edc6cfd7ebb7336f5eed0a9d5e8e23de91bb6f995b797470f8c2a286e",
    ),
    (
        "consent_events",
        "consent_events_no_retired_kek_update",
        "c1d2b6fd8f11b831bef84e251d33f643225d4f30ea884d762c5574653cad4595",
    ),
    (
        "consent_events",
        "consent_events_no_update",
        "b545b00318f7fd20ad401076ae8cc2f3d3b95115ab6afd3ea523c944ccd0b4d3",
    ),
    (
        "consent_events_head",
        "consent_events_head_insert_moves_forward",
        "8a76d20c74110b5266d6f2dcb760ec9a3355bef2bef471e072f01c87971854dc",
    ),
    (
        "consent_events_head",
        "consent_events_head_no_delete",
        "a6fab7b41843a02f06e5bef0c93405d881ce97ba28664738496e4f889e077ee9",
    ),
    (
        "consent_events_head",
        "consent_events_head_update_moves_forward",
        "47181d29f24a3f2f96157047b35f122b5d44925d0907d75cc862862ef92f0f8e",
    ),
    (
        "consent_tags",
        "consent_tags_keys_never_change",
        "2b7bb63def6df09d892733d4d487acd378cbb330a7e4321a83dccf0ba698e307",
    ),
    (
        "consent_tags",
        "consent_tags_never_deleted",
        "2568293970e1e407734fdfae8c5a26ab09666e93b2a61a9efc489594fc234191",
    ),
    (
        "contact_emails",
        "contact_emails_no_retired_kek",
        "c1698aca1be692d156ce0fdbd8a28cf19fc57c5bbce6bc8578f3426a215f64ab",
    ),
    (
        "contact_emails",
        "contact_emails_no_retired_kek_update",
        "ccf30a4e2789a9bf2b03bc31e4f8bc5688f25ef3914b2198d0f5831fb8f4de10",
    ),
    (
        "gift_recipients",
        "gift_recipients_no_retired_kek",
        "0d51cd557cb4d4835ee216d29d716f8bbcb573f837669b32cec72efddc8ee5e7",
    ),
    (
        "gift_recipients",
        "gift_recipients_no_retired_kek_update",
        "33b759883d3fd3f9454837fd33f81783b7d4a3a4ca9b9da2fbc4e7d1ece530c4",
    ),
    (
        "idempotency_keys",
        "idempotency_keys_answer_never_changes",
        "cf337f763ac3b61d6d69e090b600cd2ec3eb81ba7d31a238214b38b37da3aac3",
    ),
    (
        "idempotency_keys",
        "idempotency_keys_never_deleted",
        "3df62f187e7cd57c1f4317c783fb1542fe184221fe8c4c1a199c3a1d8afcce36",
    ),
    (
        "kek_retirements",
        "kek_retirements_never_changed",
        "c0cfc5db22a576789b2417807fabf834e6ee96c69213090959bf03ecae2e8786",
    ),
    (
        "kek_retirements",
        "kek_retirements_never_deleted",
        "37d7bb3f30e5b2fc75edf8eb81b7c979a3c0ff2dea45508a0024dcfe5e2c23a1",
    ),
    (
        "kek_retirements",
        "kek_retirements_never_replaced",
        "67142d065f8c45e243a3ec0a0e64fa22def3437abac397e139008ecec9fdadd2",
    ),
    (
        "orders",
        "orders_dispatch_never_undone",
        "fb279d8ac6eded5842615987a0d0a98cff6c3b335547954346f6e92769e2e595",
    ),
    (
        "orders",
        "orders_id_never_changes",
        "a691637495784e4474246820ae496b8f782665592705a481eefb5ab42a91dd11",
    ),
    (
        "orders",
        "orders_never_deleted",
        "6e6ae77346e725b82b76d556d7fdc72b159d2a709ab383eacf81b61cb44297cf",
    ),
    (
        "orders",
        "orders_never_replaced",
        "21c1ebfdaab046c17d5a3b514f5826364824beb139b6c6e104502cdf7769610d",
    ),
    (
        "payment_cards",
        "payment_cards_no_retired_kek",
        "a978002231f5b6ff7001699a95afb535fa933e2d6e39ed6c30fadb01a5f037ac",
    ),
    (
        "payment_cards",
        "payment_cards_no_retired_kek_update",
        "cd8d1520ecdf492fd011340cb88f2de56de7f94e698888e9e8a28d3985b9a740",
    ),
    (
        "purges",
        "purges_never_replaced",
        "ebfeaf48c21172478245c691195a6af4f68f4b5205cfce569d45b3a0ed4cbf53",
    ),
    (
        "purges",
        "purges_no_delete",
        "a8f7a7b15c4b9a333226949f451286b5d5eea36449469fab3180589d8024539a",
    ),
    (
        "purges",
        "purges_no_update",
        "dddb86df5668c62981cb5110414720a08e294993d9091553b94631384bc17312",
    ),
    (
        "shipping_details",
        "shipping_details_no_retired_kek",
        "f275c5d5b174d5554a578e5d2d3e4c5f910615ff4318fd2e064fdb5e36bcb0f2",
    ),
    (
        "shipping_details",
        "shipping_details_no_retired_kek_update",
        "35e9f770f70e683bcfe5d189f9b7db6fef2ef1ead998cb37007d6a9a5de1b411",
    ),
];

/// The PostgreSQL guards of this release's migrations.
pub const POSTGRES: &[Pin<'static>] = &[
    (
        "access_log",
        "access_log_never_truncated",
        "10921c5b364b5218d0830fbfe35a37bd2bc320adbf0db935219e5ac155ac5ae8",
    ),
    (
        "access_log",
        "access_log_no_update",
        "4e0b11bd64139f152e0dc7a7eaa41edb1158dd525f723ebfd5bbd4d7c8f1faa7",
    ),
    (
        "access_log_head",
        "access_log_head_moves_forward",
        "1562a25be8ca39dd1224b489f80efa2d156fa97134c182ce39b86bfe2fdbe68d",
    ),
    (
        "access_log_head",
        "access_log_head_never_truncated",
        "a7438fbee2e89cd1478b233b62fe76cae470b20838155004ce6c115f3511fcf7",
    ),
    (
        "billing_details",
        "billing_details_no_retired_kek",
        "aec02dd9a56227cb8b0a1bc85fccbf076aa691b53915024ae012b755061a9307",
    ),
    (
        "billing_details",
        "billing_details_no_retired_kek_update",
        "942ea4bb68785264a2048b5950f335adce51171efb8c30fa651b9eb6b48b2996",
    ),
    (
        "billing_details",
        "billing_details_own_tag_on_insert",
        "7127dbb31dc34c9772bbd034d2b37de53259c06999bfb98f72db0c2a69244ca2",
    ),
    (
        "billing_details",
        "billing_details_own_tag_on_update",
        "5c480f1418be6fd90a236261e47b7ef8a51d10ba3695fbd8b87f7674226b295d",
    ),
    (
        "consent_events",
        "consent_events_never_truncated",
        "43959805d291259ba97e586248381e8fa999d82e13a9f097d0639f3c96fc19c6",
    ),
    (
        "consent_events",
        "consent_events_no_delete",
        "c320961c3377b0808c4737917417de76a991847ef200add30e86376a539213dc",
    ),
    (
        "consent_events",
        "consent_events_no_retired_kek",
        "d48df39412b2a649e696e05c3f69ca074564b9674b1d8e558eb45365d018ce43",
    ),
    (
        "consent_events",
        "consent_events_no_retired_kek_update",
        "cfd049237c5f9e8a39d01532093a403671cb77dea35bdb27c0a2f3a0e14ab32f",
    ),
    (
        "consent_events",
        "consent_events_no_update",
        "b31e9209122c97a8e72ad188dcd49acbe773d06e8cf4b0c15b71302da6f63274",
    ),
    (
        "consent_events_head",
        "consent_events_head_moves_forward",
        "0a8a03d932168815260d26c8ee45c6917757ec62852c6894869d4d06cb70ac8e",
    ),
    (
        "consent_events_head",
        "consent_events_head_never_truncated",
        "c0c11a08782a607c8e1038e8a814865d36680fef90f23439acefa6ac528a8699",
    ),
    (
        "consent_tags",
        "consent_tags_keys_never_change",
        "8dd5e7812601868751e359396afd9f308af828738f97f5d9f0e4d930b4810049",
    ),
    (
        "consent_tags",
        "consent_tags_never_deleted",
        "af404444739d6b1094fc927370ad6ccd357dc574bc3f83fe9691f5d1ec861e2a",
    ),
    (
        "consent_tags",
        "consent_tags_never_truncated",
        "56bf95e910c7d5ff1766111018baa655667a89e26a61fbc630116efca5a5746e",
    ),
    (
        "consent_tags",
        "consent_tags_order_exists_on_insert",
        "ee3dca52b1e2ee6bca1c4db654d83a06fb53b102e892b050c08911238823f677",
    ),
    (
        "contact_emails",
        "contact_emails_no_retired_kek",
        "ebd92aaa095033088340eef55cc3e0c1ff1186cc697ceb4aeb31b2f3bf1dae84",
    ),
    (
        "contact_emails",
        "contact_emails_no_retired_kek_update",
        "d719941f2734bac1f40bfc3d1e2ea917d0f71f65daef073b460fe822b02e53bd",
    ),
    (
        "contact_emails",
        "contact_emails_own_tag_on_insert",
        "b761c7d3a10e78dca23ea8d12cd50eb3328d0d9c01a83f7a09b2fedf0ccd1a63",
    ),
    (
        "contact_emails",
        "contact_emails_own_tag_on_update",
        "3e4ba2ed52c0e26e08f8b63006832893df797d9559b34fc11691ddaa0f53e06b",
    ),
    (
        "gift_recipients",
        "gift_recipients_no_retired_kek",
        "dde9b8e30b78c9ea3c8f8ef146b78b31b482106b61e8801a35d9071859859fa7",
    ),
    (
        "gift_recipients",
        "gift_recipients_no_retired_kek_update",
        "f7ec64306ba475d72241cca6e2ed4303799d1f7e815602113036f929b8b99408",
    ),
    (
        "gift_recipients",
        "gift_recipients_own_tag_on_insert",
        "c5233a5713ae83da930b6abdc70eb1937b5276695a0f746dbee75c099b4b40d1",
    ),
    (
        "gift_recipients",
        "gift_recipients_own_tag_on_update",
        "1caaca61c22b9843889bb9d4b79e72a532a4f4b4b703246917b4aad30ac88085",
    ),
    (
        "idempotency_keys",
        "idempotency_keys_answer_never_changes",
        "1b103ca089929beb4fb2e994c5772a7ecfe5221fa7298a48b3c5d41e36bb7b13",
    ),
    (
        "idempotency_keys",
        "idempotency_keys_never_deleted",
        "f85757c074ed4a17a5691590199e6a8e86f074f552ee4f598e10d4215557fdcd",
    ),
    (
        "idempotency_keys",
        "idempotency_keys_never_truncated",
        "0c55b80c920f5366c9c21aee7abc83e1a86779a19d1d6151e0d12424450facd8",
    ),
    (
        "kek_retirements",
        "kek_retirements_append_only",
        "f0b5b05174868051642ec03d45b9852af585fb1aceee045a6e6d7465211ebc13",
    ),
    (
        "kek_retirements",
        "kek_retirements_never_truncated",
        "0f6e07cd95919a2d47db23b0e22e34e57d2d2d77e77746002a128edf28657a9b",
    ),
    (
        "orders",
        "orders_dispatch_never_undone",
        "a25070dca4aea54eb1e3a9bf27d76646ad28e06b05e95895981f1e6eb335f7da",
    ),
    (
        "orders",
        "orders_id_never_changes",
        "1ccc454a71d1c5e3d45a4309e5d662b2acd437d441d9ff6f991f076bf7c3543e",
    ),
    (
        "orders",
        "orders_never_deleted",
        "d1ad022c8bd4de787db6482b04828c599f644bebac4fbaa46518c864e33538c4",
    ),
    (
        "orders",
        "orders_never_truncated",
        "0f06818e600ff774c9fa81d1f7aac7b271d96350f8846fe0dc7e7f4c1386ad88",
    ),
    (
        "payment_cards",
        "payment_cards_no_retired_kek",
        "52142c27e153ffb099c4ac1db2770d09f27e39613920ace67f68b4524aac7341",
    ),
    (
        "payment_cards",
        "payment_cards_no_retired_kek_update",
        "0dc6ae06f8a5098f27b80eaebe803dd8792abfb6d50440fceb13555817868170",
    ),
    (
        "payment_cards",
        "payment_cards_own_tag_on_insert",
        "22a440645032e6c5e0ccf5bdfea0af1a6aad09a578f32d7c03390d564b857a4e",
    ),
    (
        "payment_cards",
        "payment_cards_own_tag_on_update",
        "c94c2b832b0f6f81806d05f627e486bf225ba9c224a3bfe814e536b9f79fa5be",
    ),
    (
        "purges",
        "purges_never_truncated",
        "c9a95b3c7b033b74a12a48777863ebb419fc9f3ab0b986d5d5144820cff9d34f",
    ),
    (
        "purges",
        "purges_no_update_or_delete",
        "da2493b61825754c687d6556334178066ce5dfa83834e454b3fea72e1e3a192a",
    ),
    (
        "shipping_details",
        "shipping_details_no_retired_kek",
        "e2b087ae1cf26d8408e7db81f52379c79cd3e74cb9bd6c8aba3b68a31b41066c",
    ),
    (
        "shipping_details",
        "shipping_details_no_retired_kek_update",
        "0acc29981000ae5599542e7ecc52f6f062addf550ed3867e9fa30d145a6f09c3",
    ),
    (
        "shipping_details",
        "shipping_details_own_tag_on_insert",
        "586141ef8e64ec56bfa096f240ea0bb2f819783ff6d99bdf51dd7557ed62a803",
    ),
    (
        "shipping_details",
        "shipping_details_own_tag_on_update",
        "ceda9f91abf19689a334b109334684cf8778ce5f3c7513f6b3e9f7d6687e8519",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(table: &str, name: &str, definition: &str, enabled: bool) -> Guard {
        Guard {
            table: table.into(),
            name: name.into(),
            definition: definition.into(),
            enabled,
        }
    }

    #[test]
    fn each_pinned_guard_is_found_missing_altered_disabled_or_fine() {
        // The digests as a fresh migration would have them.
        let d = guard("t", "x", "CREATE TRIGGER x", true).digest();
        let pinned: Vec<Pin<'_>> = ["fine", "gone", "changed", "off"]
            .into_iter()
            .map(|n| ("t", n, d.as_str()))
            .chain([("u", "elsewhere", d.as_str())])
            .collect();
        let seen = Seen {
            triggers: vec![
                guard("t", "fine", "CREATE TRIGGER x", true),
                guard("t", "changed", "CREATE TRIGGER x WHEN 0", true),
                guard("t", "off", "CREATE TRIGGER x", false),
                // Same name, other table: not the guard of `u`.
                guard("t", "elsewhere", "CREATE TRIGGER x", true),
                // A trigger of someone else's: no finding.
                guard("t", "dbas_own", "CREATE TRIGGER y", true),
            ],
            bypasses: vec![
                ("u".into(), Bypass::Rule),
                // Not a guarded table: no finding.
                ("v".into(), Bypass::RowSecurity),
            ],
        };
        let found = compare(&pinned, &seen);
        let got: Vec<(&str, Option<&str>, GuardProblem)> = found
            .iter()
            .map(|f| (f.table, f.trigger, f.problem))
            .collect();
        assert_eq!(
            got,
            vec![
                ("t", Some("gone"), GuardProblem::Missing),
                ("t", Some("changed"), GuardProblem::Altered),
                ("t", Some("off"), GuardProblem::Disabled),
                ("u", Some("elsewhere"), GuardProblem::Missing),
                ("u", None, GuardProblem::Bypassed(Bypass::Rule)),
            ]
        );
    }

    /// The schema's name is replaced where it names the schema only: a
    /// schema named like a word of the definition (`old`, `pg`) leaves the
    /// rest as it is, so a definition reads the same in every schema.
    #[test]
    fn a_postgres_definition_reads_the_same_in_any_schema() {
        let in_schema = |s: &str| {
            postgres_definition(
                &format!(
                    "CREATE TRIGGER t BEFORE UPDATE OF id ON {s}.orders FOR EACH ROW \
                     WHEN ((old.id IS DISTINCT FROM new.id)) EXECUTE FUNCTION {s}.refuse()"
                ),
                s,
                s,
                "plpgsql",
                false,
                "BEGIN RAISE EXCEPTION 'old.id'; END",
                &[
                    format!("search_path={s}, pg_temp"),
                    "enable_seqscan=off".into(),
                ],
            )
        };
        let public = in_schema("public");
        assert!(public.contains("WHEN ((old.id IS DISTINCT FROM new.id))"));
        assert!(public.contains(":search_path=$schema, pg_temp\n"));
        assert!(public.contains(":enable_seqscan=off\n"));
        for other in ["old", "new", "pg", "temp", "off", "d", "\"My Schema\""] {
            assert_eq!(in_schema(other), public, "{other}");
        }
        // What does change it: another function, security, settings.
        let changed = postgres_definition(
            "CREATE TRIGGER t BEFORE UPDATE OF id ON public.orders FOR EACH ROW \
             WHEN ((old.id IS DISTINCT FROM new.id)) EXECUTE FUNCTION public.refuse()",
            "public",
            "public",
            "plpgsql",
            true,
            "BEGIN RAISE EXCEPTION 'old.id'; END",
            &[
                "search_path=public, pg_temp".into(),
                "enable_seqscan=off".into(),
            ],
        );
        assert_ne!(changed, public);
    }

    #[test]
    fn the_pinned_lists_name_each_guard_once() {
        for list in [SQLITE, POSTGRES] {
            let mut seen = std::collections::HashSet::new();
            for &(table, trigger, digest) in list {
                assert!(seen.insert((table, trigger)), "{table}.{trigger} twice");
                assert_eq!(digest.len(), 64, "{trigger}");
            }
        }
    }
}
