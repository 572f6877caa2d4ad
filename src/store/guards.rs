//! The database's own guards — the triggers the migrations create (ledgers
//! append-only, orders never deleted, no record under a retired KEK, a
//! dispatch never undone, heads that only move forward …) — as the audit
//! checks them.
//!
//! Every other check of the audit finds what was done *while* a guard was
//! off; this one finds a guard that is off *now*: dropped, replaced by one
//! that does something else (its definition or its function's body
//! changed), or on PostgreSQL disabled (`ALTER TABLE … DISABLE TRIGGER`, or
//! enabled for replication sessions only). Someone who switched a guard
//! off, did their edit and switched it back on is not found here.
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
    pub table: String,
    pub name: String,
    /// SQLite: the `CREATE TRIGGER` statement as stored. PostgreSQL: when
    /// it fires and on what, its arguments, columns and condition, and its
    /// function's name, body and settings (the schema's own name replaced
    /// by `$schema`: a function's `search_path` names it).
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

/// The rows of an engine's trigger query: columns `t` (table), `n`
/// (name), `d` (definition) and `on_` (1 when it fires).
pub(crate) fn from_rows(rows: &[sqlx::any::AnyRow]) -> Result<Vec<Guard>, super::StoreError> {
    use sqlx::Row;
    let text = |r: &sqlx::any::AnyRow, c: &str| -> Result<String, super::StoreError> {
        r.try_get(c).map_err(super::StoreError::from_sqlx)
    };
    rows.iter()
        .map(|r| {
            Ok(Guard {
                table: text(r, "t")?,
                name: text(r, "n")?,
                definition: text(r, "d")?,
                enabled: r
                    .try_get::<i64, _>("on_")
                    .map_err(super::StoreError::from_sqlx)?
                    == 1,
            })
        })
        .collect()
}

/// What is wrong with one guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardProblem {
    /// No trigger of that name on that table.
    Missing,
    /// It exists, but its definition or its function is not the one the
    /// migrations create.
    Altered,
    /// It exists and is as created, but does not fire (PostgreSQL).
    Disabled,
}

/// A guard that is not as the migrations left it. `table` and `trigger`
/// come from the pinned lists, never from the database under audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardFinding {
    pub table: &'static str,
    pub trigger: &'static str,
    pub problem: GuardProblem,
}

/// `(table, trigger, digest)` of a guard.
pub type Pin<'a> = (&'static str, &'static str, &'a str);

/// Each pinned guard compared with what the database has (`actual`, read
/// from it): missing, altered or disabled.
pub fn compare(pinned: &[Pin<'_>], actual: &[Guard]) -> Vec<GuardFinding> {
    let mut found = Vec::new();
    for &(table, trigger, want) in pinned {
        let problem = match actual
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
                trigger,
                problem,
            });
        }
    }
    found
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
        "e4c5fe3579777ef57c24d0be229d2504e21c3ea52c0cfe2ab4c7693ea744983c",
    ),
    (
        "access_log",
        "access_log_no_update",
        "fb252a97204d7072d4b1fac0dd890ac33b1a54e4a61143065746a9e6e5a73f2f",
    ),
    (
        "access_log_head",
        "access_log_head_moves_forward",
        "ead80b21053aa79d076af65cc00f3a67385201a0a09124bca6b0414b8e88830b",
    ),
    (
        "access_log_head",
        "access_log_head_never_truncated",
        "eb002531e25e5a074b22614527da732ebfee82ab15e0503937f1c546d6bd7933",
    ),
    (
        "billing_details",
        "billing_details_no_retired_kek",
        "4c5c4d9f814b61883a20cc021dc86b1d76113488f8969858847a2f1b77c28a1e",
    ),
    (
        "billing_details",
        "billing_details_no_retired_kek_update",
        "0b5751d354fc4961f6ebcf2f72a87ada85254e4a370fd405bc7ccfec2cecfca3",
    ),
    (
        "billing_details",
        "billing_details_own_tag_on_insert",
        "d6295741588c2c194707ce00564607e3205ce392faafd209bd1f01ecfc26559a",
    ),
    (
        "billing_details",
        "billing_details_own_tag_on_update",
        "585278361d09fa8b5d0bb20071148c113b52a1c33aef9b4aae487715db68ca05",
    ),
    (
        "consent_events",
        "consent_events_never_truncated",
        "71809ab87fabff2cc86388ee07f376467c014a2f3ea7b243fcada16c430710de",
    ),
    (
        "consent_events",
        "consent_events_no_delete",
        "933eedc572f3bfe70bcc59b1a4f10aaca653600a48d80a5c1292938089d7d27d",
    ),
    (
        "consent_events",
        "consent_events_no_retired_kek",
        "056bf9bb30583b4621c44b3d60a080eadf6c42fd80ff66a5f60aeaebde77da14",
    ),
    (
        "consent_events",
        "consent_events_no_retired_kek_update",
        "c68b2467cd86347929027422d623c1172073892b72904eba9dbe0ae571002093",
    ),
    (
        "consent_events",
        "consent_events_no_update",
        "44ecffb684e65ada0c00c910b130358244a541c67352515ecc977eb4bcb69648",
    ),
    (
        "consent_events_head",
        "consent_events_head_moves_forward",
        "845f056526201fffbeb0e26fa94b425f0a8e0e868351475b69372395f36b96bd",
    ),
    (
        "consent_events_head",
        "consent_events_head_never_truncated",
        "ccb84e2d4a00673b788e5ad6314e7a08b0e30d6e00fc5dce6e70b4a61400c812",
    ),
    (
        "consent_tags",
        "consent_tags_keys_never_change",
        "a51b9e0b8773b5e1192aee9c189b2adef60b9ec647f28bbc4e83365f116dc298",
    ),
    (
        "consent_tags",
        "consent_tags_never_deleted",
        "b1a5f7343928c55b335a617b2733d03ee013099a7d2098628987eeb46432d1d8",
    ),
    (
        "consent_tags",
        "consent_tags_never_truncated",
        "e08c7190f67019e6c4d8493d902a974c2f625b00e3ac752c79792fa541660f47",
    ),
    (
        "consent_tags",
        "consent_tags_order_exists_on_insert",
        "4137d95e60adb7be915b1f94a2822aafd69bb2d7146242661f7904e24610e2b5",
    ),
    (
        "contact_emails",
        "contact_emails_no_retired_kek",
        "539f4b9eaa65a881f34895a7989ece3c8a9e7ede15710790eefd8a232b8c0884",
    ),
    (
        "contact_emails",
        "contact_emails_no_retired_kek_update",
        "245d78282e118d21c74d0967fd26ae5fc064f1443af16783ccfe0fe7a67e6070",
    ),
    (
        "contact_emails",
        "contact_emails_own_tag_on_insert",
        "1aec0459101af5417dcb8c70d28c381e06d2dae1e08004502ffe89f20aff54b4",
    ),
    (
        "contact_emails",
        "contact_emails_own_tag_on_update",
        "5c53a5eaf227f027663aa22c7bbc1d2569aa22efd1ffd65aba410db5998ff8c1",
    ),
    (
        "gift_recipients",
        "gift_recipients_no_retired_kek",
        "4e4adf6e025e8e984c0accdca1288b6b1d953db46c9f106ed38d8b9482770123",
    ),
    (
        "gift_recipients",
        "gift_recipients_no_retired_kek_update",
        "8f622223039d5079832edbbceb2d9d307af36318ddd4efe2f212ba2c292353d0",
    ),
    (
        "gift_recipients",
        "gift_recipients_own_tag_on_insert",
        "909d991d33aff49e51fe64f26ba1c07b1ae5947a456da122f3ce13a252ead7bf",
    ),
    (
        "gift_recipients",
        "gift_recipients_own_tag_on_update",
        "de5977b8a05349fa5061739a86709d9c9501704032b2a846fbb0f5bc0265ebd2",
    ),
    (
        "idempotency_keys",
        "idempotency_keys_answer_never_changes",
        "d012503d3e852a218ba8b8b09c758eccfe935f628eb8c8dad22d5628775f8dc5",
    ),
    (
        "idempotency_keys",
        "idempotency_keys_never_deleted",
        "9889b63c3673578e5ffb12abf7891a6f307fe4c433aeee147a182d3f47b2dc73",
    ),
    (
        "idempotency_keys",
        "idempotency_keys_never_truncated",
        "0b47d33553b27364c29c940125dcfe24cef84fc03de3bd5ed4488ea282124398",
    ),
    (
        "kek_retirements",
        "kek_retirements_append_only",
        "60b22e8936eb93e636143dd8ec9edeb684d6b3d099ae81bcbc6f514a8f000615",
    ),
    (
        "kek_retirements",
        "kek_retirements_never_truncated",
        "5d4f889ea23507af188702bc0ce30895f9be09b395fd461afba50739d057814f",
    ),
    (
        "orders",
        "orders_dispatch_never_undone",
        "bd77057d149db7b5c75676eca8e3f409178a955ad0890e0538e17f1629c590d3",
    ),
    (
        "orders",
        "orders_id_never_changes",
        "cb7c14ea50a0764cc124e2daee869ee5b4e15e7912b85ab117909dac0495493f",
    ),
    (
        "orders",
        "orders_never_deleted",
        "1642167a8e74c2ee2f834c9e254757f97825c7241244b390f7714011189fd1ca",
    ),
    (
        "orders",
        "orders_never_truncated",
        "7528cd31de9e50886af76298383fa4a09c6e8f1e8f7d1535337502cde7c6f9a6",
    ),
    (
        "payment_cards",
        "payment_cards_no_retired_kek",
        "731aea44be615b8ed0502ddaf54e5f2a0659fc3233b3980710982067c243e76b",
    ),
    (
        "payment_cards",
        "payment_cards_no_retired_kek_update",
        "9356b597a99e4f45aa6a54462b6d186881768b782715cb467173b2236206f658",
    ),
    (
        "payment_cards",
        "payment_cards_own_tag_on_insert",
        "19a1d4749e7a575f346c4f31a3c440336f50c96f3afbb6f9401080eaaa4b5f03",
    ),
    (
        "payment_cards",
        "payment_cards_own_tag_on_update",
        "eef2c10854dcc689064afcf422e984fa764293c751d86b794083416451193707",
    ),
    (
        "purges",
        "purges_never_truncated",
        "15d5fd9ca3159ba9cc5dc5f90e287568c5b9f7127b42f57df81eb4c6effd4fb8",
    ),
    (
        "purges",
        "purges_no_update_or_delete",
        "e49f3f347933a1e4947f214adfaf9a9ebff3d4ca369017502bfabb0216f7f364",
    ),
    (
        "shipping_details",
        "shipping_details_no_retired_kek",
        "ea484d5c0603240b39025ded2da8924523da1dbbbb3b38e37d59d6d72abef293",
    ),
    (
        "shipping_details",
        "shipping_details_no_retired_kek_update",
        "9d87c5132c2e58d3467919bd5eb5b99e2b53e67839a0961e0c30fcd6b1c741e4",
    ),
    (
        "shipping_details",
        "shipping_details_own_tag_on_insert",
        "60cdf3e0845f1221561360f05838ac46622cd652836c7398b56c3ffbc1f61ea3",
    ),
    (
        "shipping_details",
        "shipping_details_own_tag_on_update",
        "114c3fd4a9fe91062719585ee8206e8ae25ad5ba400fba015b2d6b6b16cfbe7d",
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
        let actual = vec![
            guard("t", "fine", "CREATE TRIGGER x", true),
            guard("t", "changed", "CREATE TRIGGER x WHEN 0", true),
            guard("t", "off", "CREATE TRIGGER x", false),
            // Same name, other table: not the guard of `u`.
            guard("t", "elsewhere", "CREATE TRIGGER x", true),
            // A trigger of someone else's: no finding.
            guard("t", "dbas_own", "CREATE TRIGGER y", true),
        ];
        let found = compare(&pinned, &actual);
        let got: Vec<(&str, GuardProblem)> = found.iter().map(|f| (f.trigger, f.problem)).collect();
        assert_eq!(
            got,
            vec![
                ("gone", GuardProblem::Missing),
                ("changed", GuardProblem::Altered),
                ("off", GuardProblem::Disabled),
                ("elsewhere", GuardProblem::Missing),
            ]
        );
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
