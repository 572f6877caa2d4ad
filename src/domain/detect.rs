//! Detectors for card numbers and email addresses in text that should hold
//! neither: intake refuses them in the fields that are stored in clear (SKU,
//! item description, storefront reference) and in personal details (which
//! the warehouse and marketing read), and the audit scans every clear column
//! of the database with them.
//!
//! The base rule ([`contains_pan`]): a card number is a maximal *run* of
//! 13–19 digits, optionally grouped by single spaces or dashes, that passes
//! the Luhn check. UUIDs and long hex strings (digests such as certificate
//! fingerprints) are blanked first: their digit stretches would otherwise
//! look like numbers about once in two hundred.
//!
//! A person types a card number in more ways than that: grouped by dots,
//! slashes or several spaces, or followed by more digits (the expiry, the
//! CVC) in the same run, where the run as a whole fails the Luhn check. The
//! other detectors also look at the *groups* of a run (the digits between
//! two separators) and test the whole groups at its start, or anywhere in
//! it, against [`is_card_number`] — a brand we know, a length valid for it,
//! the Luhn check — not against the bare Luhn check, which one run of digits
//! in ten passes: order references such as `2026/11/30/123456` must not be
//! refused one time in ten.

use super::pan::{is_card_number, luhn_valid};

/// True when `text` holds something shaped like a card number: the base
/// rule, for text written by machines (ids, findings) as well as people.
pub fn contains_pan(text: &str) -> bool {
    if fewer_digits_than_a_card(text) {
        return false;
    }
    runs(&blank_uuids(text.as_bytes(), Ids::Blanked))
        .iter()
        .any(|(groups, _)| loose(groups))
}

/// For free text typed by a person into a personal detail (a name, an
/// address line, a gift message): the base rule after the typed grouping
/// (runs of any whitespace, line breaks included, dots, slashes,
/// underscores and dashes are one separator; full-width digits count), and
/// a card number made of any whole groups of a run — "4012 8888 8888 1881
/// 12/27 123", card then expiry and CVC; "exp 12/27 4012 8888 8888 1881".
pub fn contains_pan_typed(text: &str) -> bool {
    if fewer_digits_than_a_card(text) {
        return false;
    }
    both_readings(text, |ids| {
        readings(text, Separators::Wide, ids)
            .any(|typed| candidates(&typed).any(|groups| loose(&groups) || card_within(&groups)))
    })
}

/// For text stored in clear (a SKU, an item description, a storefront
/// reference; the audit's scan of every clear column): the base rule, a
/// card number however a person grouped it, alone or at the start of a
/// longer run ("4012.8888.8888.1881", "4012 8888 8888 1881 123"), and a
/// card number *printed as cards are* anywhere in a run, after other
/// groups ("A-1001-4012-8888-8888-1881", "REF 2026 4012888888881881"): see
/// [`card_printed_within`]. Not any whole groups anywhere: in a reference
/// such as `ORDER-2026-11-30-300001234564`, `30 300001234564` passes for a
/// Diners Club number.
///
/// Intake reads the groups as a person may type them in any field
/// ([`Separators::Wide`]: `4012:8888:8888:1881`, `4012|8888|…`).
pub fn contains_pan_clear(text: &str) -> bool {
    pan_clear(text, Separators::Wide)
}

/// [`contains_pan_clear`] with `separators`: the wide reading is intake's,
/// which blanks no UUID that starts with a card number; the narrow one the
/// audit's, which blanks every one (never stricter than intake was).
fn pan_clear(text: &str, separators: Separators) -> bool {
    if fewer_digits_than_a_card(text) {
        return false;
    }
    let holds = |ids: Ids| {
        candidates(&blank_uuids(text.as_bytes(), ids)).any(|groups| loose(&groups))
            || readings(text, separators, ids).any(|typed| {
                candidates(&typed)
                    .any(|groups| card_leading(&groups) || card_printed_within(&groups))
            })
    };
    match separators {
        // Intake reads the text the audit's way too: the wide reading
        // joins groups that the narrow one keeps apart (`1:4012.88888888.1881`
        // is one run widely, a run that starts with a card number narrowly).
        Separators::Wide => {
            both_readings(text, holds)
                || (has_wide_only_separator(text) && pan_clear(text, Separators::Narrow))
        }
        Separators::Narrow => holds(Ids::Blanked),
    }
}

/// `holds` with every UUID blanked, and (if `text` has one) again with the
/// card-dressed ones kept ([`Ids::UnlessCard`]): a kept one's digits may
/// join the run before it, which must not hide what the first reading —
/// the audit's — finds there.
fn both_readings(text: &str, holds: impl Fn(Ids) -> bool) -> bool {
    // Only a text long enough for a UUID, with its dashes, can have one.
    let may_have_uuid = text.len() >= 36 && text.contains('-');
    holds(Ids::Blanked)
        || (may_have_uuid
            && blank_uuids(text.as_bytes(), Ids::UnlessCard)
                != blank_uuids(text.as_bytes(), Ids::Blanked)
            && holds(Ids::UnlessCard))
}

/// For a dispatch fact the warehouse sends (carrier, tracking number),
/// stored in clear: a card number of a brand we know, at a length valid for
/// it and passing Luhn, of whole groups anywhere ([`contains_card_typed`]).
/// Not the base rule: tracking numbers of 15–19 digits (FedEx Ground,
/// Canada Post, DHL eCommerce) pass the bare Luhn check one time in ten,
/// and the warehouse could not dispatch those orders. The audit scans the
/// dispatch columns with this rule ([`clear_column_holds_card`]), so a
/// dispatch accepted here never fails it.
///
/// Read with the wide separators too (`4012:8888:8888:1881`,
/// `(4012)(8888)(8888)(1881)`): a tracking number has letters and digits,
/// not colons, bars or brackets between groups of four.
pub fn dispatch_fact_holds_card(text: &str) -> bool {
    contains_card_typed(text) || card_in_whole_groups(text, Separators::Wide)
}

/// The audit's rule for one clear column: never stricter than the rule
/// the value was written under, so a clean database has no finding — the
/// dispatch facts (`orders.carrier`, `orders.tracking`) with
/// [`dispatch_fact_holds_card`], every other clear column with
/// [`contains_pan_clear`] read with [`Separators::Narrow`]: the columns
/// checkoutd writes itself hold text that the wide reading would join into
/// card numbers (an IPv6 address in `access_log.origin_ip`,
/// `2600:1700:5200:1006::1`, reads as a Mastercard number), and what
/// intake accepted under the wide reading passes the narrow one too.
pub fn clear_column_holds_card(table: &str, column: &str, value: &str) -> bool {
    match (table, column) {
        ("orders", "carrier" | "tracking") => dispatch_fact_holds_card(value),
        _ => pan_clear(value, Separators::Narrow),
    }
}

/// For a phone number or a whole email address: a card number of a brand
/// we know, at a length valid for it and passing Luhn, made of whole groups
/// anywhere in a run as a person types one (`+1 5105 1051 0510 5100`,
/// `ada@5105105105105100.example`). Not the bare Luhn rule: one run of
/// digits in ten passes it, and extensions, international prefixes without
/// `+` and hosts such as `ec2-203-113-145-104` would be refused.
pub fn contains_card_typed(text: &str) -> bool {
    card_in_whole_groups(text, Separators::Narrow)
}

/// A card number of a brand we know made of whole groups anywhere in a run
/// of `text` read with `separators`.
fn card_in_whole_groups(text: &str, separators: Separators) -> bool {
    if fewer_digits_than_a_card(text) {
        return false;
    }
    candidates(&typed(text, separators, Marks::Dropped, Ids::UnlessCard))
        .any(|groups| card_within(&groups))
}

/// For the local part of an email address: a card number, however
/// grouped, alone or at the start of a run (`4012888888881881@…`).
pub fn contains_card_number(text: &str) -> bool {
    if fewer_digits_than_a_card(text) {
        return false;
    }
    runs(&typed(
        text,
        Separators::Narrow,
        Marks::Dropped,
        Ids::UnlessCard,
    ))
    .iter()
    .any(|(groups, _)| card_leading(groups))
}

/// For a phone number: its digits, separators aside, are a card number. A
/// phone number has at most 15 digits (E.164) and card numbers of 13 and 14
/// digits share their first digits with phone numbers that long (Germany's
/// `+49 1…` mobiles have 13 digits, and Visa's numbers start with 4), so
/// only 15 digits and more count.
pub fn phone_is_card_number(phone: &str) -> bool {
    let digits: Vec<u8> = phone.bytes().filter(u8::is_ascii_digit).collect();
    digits.len() >= 15 && is_card_number(&digits)
}

/// The fewest digits any rule here reads as a card number.
const CARD_DIGITS_MIN: usize = 13;

/// True when `text` has fewer decimal digits, of every script
/// [`decimal_digit`] reads, than the shortest card number: then no reading
/// of it holds one (blanking ids and digests, dropping invisible characters
/// and marks, and reading separators only ever remove or keep digits).
/// Most fields (names, streets, descriptions) end here, before any copy.
fn fewer_digits_than_a_card(text: &str) -> bool {
    text.chars()
        .filter(|&c| decimal_digit(c).is_some())
        .take(CARD_DIGITS_MIN)
        .count()
        < CARD_DIGITS_MIN
}

/// The runs of `bytes` that may hold a card number in an order's fields
/// (the clear-text and the personal-text detectors; the base rule, for
/// machine text, takes every run), each as its groups.
/// Two shapes shorter than 15 digits are left out, where the Luhn check
/// alone (one run in ten passes it, and so do 13- and 14-digit numbers of
/// Visa's and Maestro's prefixes) would refuse ordinary orders:
/// - a **product code**: one unbroken group of 13 or 14 digits whose GS1
///   check digit holds (EAN-13, GTIN-14: SKUs are often barcodes). Only
///   legacy 13-digit Visa and 14-digit Diners Club numbers have that
///   length, and one in ten of them that check digit;
/// - a **phone number written internationally**: a run right after `+`
///   of at most 14 digits, as [`phone_is_card_number`] reads the phone
///   field (`Ring me on +49 151 1234 5678`).
fn candidates(bytes: &[u8]) -> impl Iterator<Item = Vec<&[u8]>> {
    runs(bytes).into_iter().filter_map(|(groups, after_plus)| {
        let digits: usize = groups.iter().map(|g| g.len()).sum();
        let product_code = groups.len() == 1 && gtin_valid(groups[0]);
        let phone = after_plus && digits <= 14;
        (!product_code && !phone).then_some(groups)
    })
}

/// A GTIN-13 or GTIN-14 (EAN-13, ITF-14): the GS1 mod-10 check digit,
/// weights 3 and 1 alternating from the digit left of it.
fn gtin_valid(digits: &[u8]) -> bool {
    let Some((check, body)) = digits.split_last() else {
        return false;
    };
    if !matches!(digits.len(), 13 | 14) || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let sum: u32 = body
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| u32::from(d - b'0') * if i % 2 == 0 { 3 } else { 1 })
        .sum();
    (10 - sum % 10) % 10 == u32::from(check - b'0')
}

/// The base rule on one run: all its digits are 13–19 digits and pass Luhn.
fn loose(groups: &[&[u8]]) -> bool {
    let digits = groups.concat();
    (CARD_DIGITS_MIN..=19).contains(&digits.len()) && luhn_valid(&digits)
}

/// Some leading whole groups of the run are a card number. Stops at 19
/// digits, so a run of many short groups costs no more than 19 steps per
/// start (`card_within`).
fn card_leading(groups: &[&[u8]]) -> bool {
    let mut len = 0;
    for end in 1..=groups.len() {
        len += groups[end - 1].len();
        if len > 19 {
            return false;
        }
        if len >= CARD_DIGITS_MIN && is_card_number(&groups[..end].concat()) {
            return true;
        }
    }
    false
}

/// Some whole groups of the run, anywhere in it, are a card number.
fn card_within(groups: &[&[u8]]) -> bool {
    (0..groups.len()).any(|start| card_leading(&groups[start..]))
}

/// How card numbers are printed and typed from a card: all digits in one
/// group, in groups of four (the last of a 17–19-digit number shorter),
/// 4-6-5 (American Express) or 4-6-4 (Diners Club).
const PRINTED: [&[usize]; 6] = [
    &[4, 4, 4, 4],
    &[4, 4, 4, 4, 1],
    &[4, 4, 4, 4, 2],
    &[4, 4, 4, 4, 3],
    &[4, 6, 5],
    &[4, 6, 4],
];

/// Some whole groups of the run, anywhere in it, printed as a card is
/// ([`PRINTED`], or one group of 13–19 digits that is no GTIN), are a card number (a brand
/// we know, a length valid for it, Luhn). A run of other groups before it —
/// a reference's prefix, a date — does not hide it; two groups of
/// arbitrary lengths ("30 300001234564") are not a card's print.
fn card_printed_within(groups: &[&[u8]]) -> bool {
    (0..groups.len()).any(|start| {
        let rest = &groups[start..];
        // A product code after other groups ("V2-4006381333023") stays
        // one, as it does alone (`candidates`).
        let one = (CARD_DIGITS_MIN..=19).contains(&rest[0].len())
            && !gtin_valid(rest[0])
            && is_card_number(rest[0]);
        one || PRINTED.iter().any(|shape| {
            rest.len() >= shape.len()
                && rest
                    .iter()
                    .zip(shape.iter())
                    .all(|(g, len)| g.len() == *len)
                && is_card_number(&rest[..shape.len()].concat())
        })
    })
}

/// The runs of `bytes`, each as its groups (maximal stretches of ASCII
/// digits joined by a single space or dash) and whether a `+` comes right
/// before it.
fn runs(bytes: &[u8]) -> Vec<(Vec<&[u8]>, bool)> {
    let mut runs: Vec<(Vec<&[u8]>, bool)> = Vec::new();
    let mut i = 0;
    let mut joined = false;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let group = &bytes[start..i];
        match runs.last_mut() {
            Some((run, _)) if joined => run.push(group),
            _ => runs.push((
                vec![group],
                start > 0 && bytes.get(start - 1) == Some(&b'+'),
            )),
        }
        // A single separator followed by a digit continues the run.
        joined = matches!(bytes.get(i), Some(b' ' | b'-'))
            && bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
        if joined {
            i += 1;
        }
    }
    runs
}

/// How widely [`typed`] reads separators.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Separators {
    /// Whitespace, `.`, `/`, `_`, `,`, dashes and the middle dot and
    /// bullet: for the audit's scan of clear columns (an IPv6 address's
    /// `:` must not join digits into a card number), and for phones,
    /// emails (an email's `@` and `.` must not either) and dispatch facts.
    Narrow,
    /// Every character that is neither a letter, a digit nor `+`: for
    /// what a person types into the order's free text, clear (a SKU, a
    /// description, a reference) or personal (names, addresses, a gift
    /// message), where a card number may be grouped with anything
    /// (`4012:8888:8888:1881`).
    Wide,
}

/// What [`typed`] makes of a combining mark.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Marks {
    /// Part of the character before it: `4⃣0⃣1⃣2⃣` is `4012`.
    Dropped,
    /// A separator, as any other character that is neither a letter nor a
    /// digit is in the wide reading: `4012\u{301}8888…` may be the groups
    /// `4012 8888…` of a printed card number.
    Separators,
}

/// The readings of `text` a person's typing may mean: marks dropped, and
/// (in the wide reading, when `text` has a combining mark) marks as
/// separators as well.
fn readings(text: &str, separators: Separators, ids: Ids) -> impl Iterator<Item = Vec<u8>> + '_ {
    let both = separators == Separators::Wide && text.chars().any(is_combining_mark);
    std::iter::once(Marks::Dropped)
        .chain(both.then_some(Marks::Separators))
        .map(move |marks| typed(text, separators, marks, ids))
}

/// What [`blank_uuids`] blanks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ids {
    /// Every UUID and digest: for text checkoutd writes itself (the base
    /// rule, the audit's scan of clear columns).
    Blanked,
    /// Every digest, and every UUID but one that is no RFC 9562 UUID and
    /// starts with a card number (`40128888-8888-1881-0000-000000000000`:
    /// a card number dressed as an id): for what a client sends.
    UnlessCard,
}

/// `text` as a person's typing is read: UUIDs and digests blanked (before
/// their dashes become separators), every listed script's decimal digits
/// made ASCII (`۴۰۱۲`, full-width, mathematical), invisible format
/// characters dropped (a soft hyphen or an invisible separator between
/// digits joins them, as it looks), combining marks as `marks` says, and
/// every run of separators (see
/// [`Separators`]) made one space. (`+` is one only between two digits,
/// `4012+8888+8888+1881`: elsewhere it marks a phone number written
/// internationally, see [`candidates`].)
fn typed(text: &str, separators: Separators, marks: Marks, ids: Ids) -> Vec<u8> {
    let blanked = blank_uuids(text.as_bytes(), ids);
    let text = String::from_utf8_lossy(&blanked);
    let mut normal = Vec::with_capacity(text.len());
    let mut separator = false;
    let mut chars = text
        .chars()
        .filter(|&c| {
            !((is_invisible_format(c) && decimal_digit(c).is_none())
                || (marks == Marks::Dropped && is_combining_mark(c)))
        })
        .peekable();
    while let Some(c) = chars.next() {
        let between_digits = c == '+'
            && normal.last().is_some_and(u8::is_ascii_digit)
            && chars.peek().is_some_and(|&n| decimal_digit(n).is_some());
        let c = match decimal_digit(c) {
            Some(d) => char::from(b'0' + d),
            None if between_digits
                || is_blank(c)
                || (marks == Marks::Separators && is_combining_mark(c))
                || match separators {
                    Separators::Wide => (!c.is_alphanumeric() && c != '+') || dash_letter(c),
                    Separators::Narrow => narrow_separator(c),
                } =>
            {
                if !separator {
                    normal.push(b' ');
                }
                separator = true;
                continue;
            }
            None => c,
        };
        separator = false;
        let mut utf8 = [0u8; 4];
        normal.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
    }
    normal
}

/// Letters (`Lm`) a person types as a dash between groups of digits: the
/// katakana prolonged sound mark `ー` (what a Japanese keyboard gives for
/// `-` while typing kana) and its half-width form `ｰ`. The wide reading
/// takes them as separators.
fn dash_letter(c: char) -> bool {
    matches!(c, '\u{30fc}' | '\u{ff70}')
}

/// A separator of the narrow reading ([`Separators::Narrow`]), whitespace
/// aside.
fn narrow_separator(c: char) -> bool {
    matches!(
        c,
        '.' | '/' | '_' | ',' | '-' | '\u{2010}'..='\u{2015}' | '\u{00b7}' | '\u{2022}'
    )
}

/// Whether the wide reading of `text` may join groups the narrow one keeps
/// apart: it has a character that only the wide one reads as a separator
/// (`:`, `#`, `|`, an emoji…). Without one, both readings are the same.
fn has_wide_only_separator(text: &str) -> bool {
    text.chars().any(|c| {
        dash_letter(c)
            || (!c.is_alphanumeric()
                && !is_blank(c)
                && c != '+'
                && !narrow_separator(c)
                && !is_invisible_format(c)
                && !is_combining_mark(c))
    })
}

/// The first code point of each run of ten decimal digits (Unicode's
/// `Nd`), every script of Unicode 16: Arabic-Indic and its extended
/// (Persian, Urdu) form, N'Ko, the Indic scripts and those of South-East
/// Asia, full-width, the mathematical sets, the historic and minority
/// scripts of the supplementary planes (Brahmi, Chakma, Hanifi Rohingya,
/// Kawi, Nag Mundari…). Generated from the Unicode Character Database (a
/// character whose `Nd` value is 0); a script missing here would let a card
/// number typed in its digits through.
const DIGIT_ZEROS: [u32; 75] = [
    0x660, 0x6f0, 0x7c0, 0x966, 0x9e6, 0xa66, 0xae6, 0xb66, 0xbe6, 0xc66, 0xce6, 0xd66, 0xde6,
    0xe50, 0xed0, 0xf20, 0x1040, 0x1090, 0x17e0, 0x1810, 0x1946, 0x19d0, 0x1a80, 0x1a90, 0x1b50,
    0x1bb0, 0x1c40, 0x1c50, 0xa620, 0xa8d0, 0xa900, 0xa9d0, 0xa9f0, 0xaa50, 0xabf0, 0xff10,
    0x104a0, 0x10d30, 0x10d40, 0x11066, 0x110f0, 0x11136, 0x111d0, 0x112f0, 0x11450, 0x114d0,
    0x11650, 0x116c0, 0x116d0, 0x116da, 0x11730, 0x118e0, 0x11950, 0x11bf0, 0x11c50, 0x11d50,
    0x11da0, 0x11f50, 0x16130, 0x16a60, 0x16ac0, 0x16b50, 0x16d70, 0x1ccf0, 0x1d7ce, 0x1d7d8,
    0x1d7e2, 0x1d7ec, 0x1d7f6, 0x1e140, 0x1e2f0, 0x1e4f0, 0x1e5f1, 0x1e950, 0x1fbf0,
];

/// Characters with a digit value that are not `Nd` and whose compatibility
/// form is not one ASCII digit (so [`decimal_digit`]'s decomposition does
/// not find them): `(first, last, value of first)`, each range counting up
/// by one. Dingbat and double-circled digits (`❹⓿❶❷…`), parenthesized and
/// full-stop digits (`⑷`, `⒋`), digit-comma forms, and the digits of the
/// Ethiopic, Kharoshthi, Rumi and Brahmi number systems — each reads as the
/// digit it shows.
const DIGIT_LIKE: [(u32, u32, u8); 14] = [
    (0x1369, 0x1371, 1),
    (0x19da, 0x19da, 1),
    (0x2474, 0x247c, 1),
    (0x2488, 0x2490, 1),
    (0x24f5, 0x24fd, 1),
    (0x24ff, 0x24ff, 0),
    (0x2776, 0x277e, 1),
    (0x2780, 0x2788, 1),
    (0x278a, 0x2792, 1),
    (0x10a40, 0x10a43, 1),
    (0x10e60, 0x10e68, 1),
    (0x11052, 0x1105a, 1),
    (0x1f100, 0x1f100, 0),
    (0x1f101, 0x1f10a, 0),
];

/// The value of a decimal digit of any script listed in [`DIGIT_ZEROS`]
/// (ASCII included), or of a character whose compatibility form is one
/// ASCII digit: superscripts and subscripts (`⁴⁰¹²`), circled and
/// parenthesis-free enclosed digits (`④`), the segmented digits of the
/// legacy-computing block — each looks like the digit it stands for.
fn decimal_digit(c: char) -> Option<u8> {
    if c.is_ascii() {
        return c.is_ascii_digit().then(|| c as u8 - b'0');
    }
    let code = u32::from(c);
    // Tag digits show nothing, but spell digits to whoever reads the
    // text's code points.
    if (0xe0030..=0xe0039).contains(&code) {
        return u8::try_from(code - 0xe0030).ok();
    }
    if let Some(zero) = DIGIT_ZEROS
        .iter()
        .find(|&&zero| (zero..zero + 10).contains(&code))
    {
        return u8::try_from(code - zero).ok();
    }
    if let Some((first, _, value)) = DIGIT_LIKE
        .iter()
        .find(|(first, last, _)| (*first..=*last).contains(&code))
    {
        return u8::try_from(code - first).ok().map(|n| n + value);
    }
    let mut parts = 0;
    let mut digit = None;
    unicode_normalization::char::decompose_compatible(c, |d| {
        parts += 1;
        digit = d.is_ascii_digit().then(|| d as u8 - b'0');
    });
    if parts == 1 { digit } else { None }
}

/// What shows as blank space: whitespace, and the characters Unicode does
/// not call whitespace that show as nothing else — the Hangul fillers
/// (letters, `Lo`: `4012ㅤ8888ㅤ8888ㅤ1881` looks like four groups
/// with spaces between them) and the blank Braille pattern (a symbol).
/// Both readings take them as spaces.
pub(super) fn is_blank(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\u{115f}' | '\u{1160}' | '\u{3164}' | '\u{ffa0}' | '\u{2800}'
        )
}

/// Unicode format characters (`Cf`) that show nothing: the soft hyphen,
/// the invisible operators and separators, the Mongolian vowel separator,
/// the interlinear annotation marks and the tag characters. (ZWJ and ZWNJ
/// are `Cf` too; bidi controls and zero-width spaces are refused outright
/// by `text::check`.)
pub(super) fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}'
            | '\u{034f}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2060}'..='\u{2064}'
            | '\u{206a}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{e0000}'..='\u{e007f}'
    )
}

/// A combining mark (Unicode's `M`: an accent written as its own code
/// point, a vowel sign or virama of the Indic scripts, an enclosing
/// keycap): part of the letter or digit before it.
pub(super) fn is_combining_mark(c: char) -> bool {
    unicode_normalization::char::is_combining_mark(c)
}

/// True when `text` holds something shaped like an email address
/// (`local@domain.tld`, the top-level domain starting with two letters:
/// `100@2.5mm` in an item description is a measurement).
pub fn contains_email(text: &str) -> bool {
    // Internationalised addresses too (`josé@bücher.de`): a letter or digit
    // of any script counts on either side (a currency sign or a dash does
    // not), and the full-width and small commercial ats count as `@`.
    if !text.contains(['@', '\u{ff20}', '\u{fe6b}']) {
        return false;
    }
    // Invisible format characters show nothing, so they join what is
    // around them (`ada\u{ad}@example.com` reads as `ada@example.com`).
    let chars: Vec<char> = text
        .chars()
        .filter(|&c| !is_invisible_format(c))
        .map(|c| match c {
            '\u{ff20}' | '\u{fe6b}' => '@',
            c => c,
        })
        .collect();
    // A combining mark belongs to the letter before it (`jose\u{301}@…`
    // is `josé@…` as typed on some keyboards; Devanagari writes its vowel
    // signs and virama so: `संपर्क@डाटामेल.भारत`).
    let word = |c: char| c.is_alphanumeric() || is_combining_mark(c);
    chars.iter().enumerate().any(|(at, c)| {
        if *c != '@' {
            return false;
        }
        let local_ok = at > 0 && {
            let before = chars[at - 1];
            if before.is_ascii() {
                is_local(before as u8)
            } else {
                word(before)
            }
        };
        let domain: Vec<char> = chars[at + 1..]
            .iter()
            .copied()
            .take_while(|&c| word(c) || c == '-' || c == '.')
            .collect();
        let domain = domain.strip_suffix(&['.']).unwrap_or(&domain);
        let dot = domain.iter().rposition(|c| *c == '.');
        local_ok
            && dot.is_some_and(|d| {
                let tld = &domain[d + 1..];
                // Starts with two letters (what follows may be text run on
                // after the address: `jo@shop.com-1001`), or is an
                // internationalised one in its ASCII form.
                let tld_ok = tld.len() >= 2
                    && tld[0].is_alphabetic()
                    && (tld[1].is_alphabetic() || is_combining_mark(tld[1]))
                    || tld
                        .strip_prefix(&['x', 'n', '-', '-'])
                        .is_some_and(|rest| !rest.is_empty());
                d > 0 && tld_ok
            })
    })
}

/// True when `text` holds a phone number written internationally, as a
/// person writes one: `+` (or its full-width or small form) at the start of
/// a word, right before a digit, then 8 to 15 digits (E.164's most) of any
/// script in groups joined by spaces, dots, dashes, slashes or parentheses
/// (`+1 949 555 0100`, `+44 (0)20 7946 0958`, `+49-151-1234-5678`,
/// `+33.1.23.45.67.89`, `+34 912 345 678`, `+49 30/1234567`). A phone number is personal data: text stored in
/// clear refuses it. Not read as one, so that product text is never
/// refused for it:
/// - digits without the `+` (as likely a product or order number), `+`
///   after a letter or digit (`ABC+12345678`, `C++`), or with a space
///   before the digits (`bundle + 10 000 000 points`);
/// - what a sign after a space or a slash ends: tolerances and
///   coordinates (`+0.021/-0.000`, `+51.5074 -0.1278`);
/// - a quantity grouped in thousands, ten digits at most (`+10 000 000
///   XP`, `+1.000.000.000`), a decimal number (`+123.45678`) or an ISO 6709
///   position (`+40.6894-074.0447/`).
pub fn contains_phone(text: &str) -> bool {
    if !text.contains(['+', '\u{ff0b}', '\u{fe62}']) {
        return false;
    }
    let chars: Vec<char> = text
        .chars()
        .filter(|&c| !is_invisible_format(c) && !is_combining_mark(c))
        .collect();
    chars.iter().enumerate().any(|(i, &c)| {
        let plus = matches!(c, '+' | '\u{ff0b}' | '\u{fe62}');
        let word_start = i == 0 || !chars[i - 1].is_alphanumeric();
        let digit_next = chars
            .get(i + 1)
            .is_some_and(|&c| decimal_digit(c).is_some());
        plus && word_start && digit_next && is_phone_number(&chars[i + 1..])
    })
}

/// Whether the digits at the start of `chars` (right after a `+`) read as
/// a phone number: see [`contains_phone`].
fn is_phone_number(chars: &[char]) -> bool {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Joint {
        Space,
        Dot,
        Dash,
        Other,
    }
    let mut groups: Vec<usize> = vec![0];
    // How each group after the first was joined to the one before.
    let mut joints: Vec<Joint> = Vec::new();
    let mut joint: Option<Joint> = None;
    let mut after_space = false;
    let mut ended_by_slash = false;
    for (i, &c) in chars.iter().enumerate() {
        if decimal_digit(c).is_some() {
            if let Some(j) = joint.take() {
                groups.push(0);
                joints.push(j);
            }
            if let Some(last) = groups.last_mut() {
                *last += 1;
            }
            // More digits than any phone number has: not one, whatever
            // follows (and the scan from each `+` stays short).
            if groups.iter().sum::<usize>() > 15 {
                return false;
            }
            after_space = false;
            continue;
        }
        let sign = matches!(c, '-' | '+' | '\u{2212}' | '\u{2010}'..='\u{2015}');
        // A sign after a space starts another value (`+51.5074 -0.1278`).
        if sign && after_space {
            break;
        }
        // A slash joins a city code to its number (`+49 30/1234567`, `+43
        // 1/234 56 78`): after the country code, with no space before it,
        // before a number of four digits or more. Any other slash ends the number: lists of values (`+128/256
        // GB`, `+1.00/1.50/2.00`, `+0.021/-0.000`), a second number (`+49
        // 170 1234567 / 0171 7654321`), an ISO 6709 position's end.
        if c == '/' {
            // The digits of the number after it (`1234567`, `234 56 78`).
            let digits_next = chars[i + 1..]
                .iter()
                .take_while(|&&n| decimal_digit(n).is_some() || n == ' ' || n == '-')
                .filter(|&&n| decimal_digit(n).is_some())
                .count();
            if groups.len() < 2 || after_space || digits_next < 4 {
                ended_by_slash = true;
                break;
            }
        }
        let this = match c {
            c if is_blank(c) => Joint::Space,
            '.' => Joint::Dot,
            _ if sign => Joint::Dash,
            '(' | ')' | '/' => Joint::Other,
            _ => break,
        };
        // A run of separators is one joint, named by its strongest mark.
        joint = Some(match joint {
            Some(j) if j != Joint::Space => j,
            _ => this,
        });
        after_space = is_blank(c);
    }
    let digits: usize = groups.iter().sum();
    // `+10 000 000`, `+1.000.000.000`: a quantity in thousands (a phone
    // number of ten digits or fewer is never written so; longer ones are,
    // `+34 912 345 678`).
    let thousands = groups.len() >= 3
        && groups[0] <= 3
        && groups[1..].iter().all(|&g| g == 3)
        && joints.iter().all(|&j| j == Joint::Space || j == Joint::Dot)
        && digits <= 10;
    // `+123.45678`: a decimal number; `+40.6894-074.0447`, `+4041-07400/`:
    // a position (ISO 6709: a signed latitude and longitude, often ended
    // by a slash).
    let decimal = joints == [Joint::Dot];
    let position = joints == [Joint::Dot, Joint::Dash, Joint::Dot]
        || (ended_by_slash && joints.contains(&Joint::Dash));
    (8..=15).contains(&digits) && !thousands && !decimal && !position
}

fn is_local(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b".!#$%&'*+/=?^_`{|}~-".contains(&c)
}

/// Replaces every `8-4-4-4-12` hex UUID, and every run of 32 or more hex
/// characters that contains a letter (a digest), with `x`s — with
/// [`Ids::UnlessCard`], every UUID but one that is no RFC 9562 UUID (its
/// variant is not `10xx`, or its version is not 1–8) and whose first three
/// groups are digits that make a card number
/// (`40128888-8888-1881-0000-000000000000`: a brand we know, Luhn). That
/// one is written as its card number's 16 digits, then `x`s: read alone,
/// not joined to digits around it. A UUID any library makes (random,
/// time-ordered) is always blanked. Digests are blanked in either case:
/// one with a card number's digits somewhere among its letters is what
/// random data makes every few thousand digests, and a storefront's
/// reference may well be one.
fn blank_uuids(text: &[u8], ids: Ids) -> Vec<u8> {
    let card_dressed = |uuid: &[u8]| -> Option<Vec<u8>> {
        let well_formed = matches!(uuid[14], b'1'..=b'8')
            && matches!(uuid[19], b'8' | b'9' | b'a'..=b'b' | b'A'..=b'B');
        let leading = [&uuid[0..8], &uuid[9..13], &uuid[14..18]].concat();
        (ids == Ids::UnlessCard
            && !well_formed
            && leading.iter().all(u8::is_ascii_digit)
            && is_card_number(&leading))
        .then_some(leading)
    };
    let mut out = text.to_vec();
    let mut start = 0;
    while start < out.len() {
        let len = out[start..]
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if len >= 32 && out[start..start + len].iter().any(u8::is_ascii_alphabetic) {
            out[start..start + len].fill(b'x');
        }
        start += len.max(1);
    }
    let shape = [8usize, 4, 4, 4, 12];
    let mut i = 0;
    while i + 36 <= out.len() {
        let mut p = i;
        let mut ok = true;
        for (n, len) in shape.iter().enumerate() {
            if !out[p..p + len].iter().all(u8::is_ascii_hexdigit) {
                ok = false;
                break;
            }
            p += len;
            if n < 4 {
                if out[p] != b'-' {
                    ok = false;
                    break;
                }
                p += 1;
            }
        }
        if ok {
            let card = card_dressed(&out[i..i + 36]);
            out[i..i + 36].fill(b'x');
            if let Some(card) = card {
                out[i..i + card.len()].copy_from_slice(&card);
            }
            i += 36;
        } else {
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_grouped_by_plus_dressed_as_ids_or_in_look_alike_digits() {
        for text in [
            "4012+8888+8888+1881",
            "SKU 4012+8888+8888+1881",
            "40128888-8888-1881-0000-000000000000",
            "⁴⁰¹²⁸⁸⁸⁸⁸⁸⁸⁸¹⁸⁸¹",
            "④⓪①②⑧⑧⑧⑧⑧⑧⑧⑧①⑧⑧①",
            "\u{1fbf4}\u{1fbf0}\u{1fbf1}\u{1fbf2}888888881881",
            // Digits of every script and digit-valued signs (review):
            // Brahmi, Chakma, Kawi (Unicode 15), Garay (Unicode 16),
            // dingbat and double-circled digits, parenthesized ones.
            "𑁪𑁦𑁧𑁨𑁮𑁮𑁮𑁮𑁮𑁮𑁮𑁮𑁧𑁮𑁮𑁧",
            "\u{1113a}\u{11136}\u{11137}\u{11138}888888881881",
            "\u{11f54}\u{11f50}\u{11f51}\u{11f52}888888881881",
            "\u{10d44}\u{10d40}\u{10d41}\u{10d42}888888881881",
            "❹⓿❶❷❽❽❽❽❽❽❽❽❶❽❽❶",
            "401➁888888881881",
            "⑷⓪⑴⑵888888881881",
            // A Japanese keyboard's dash while typing kana.
            "４０１２ー８８８８ー８８８８ー１８８１",
            "4012ｰ8888ｰ8888ｰ1881",
            // Blank letters between the groups (review): the Hangul fillers
            // and the blank Braille pattern look like spaces.
            "4012\u{3164}8888\u{3164}8888\u{3164}1881",
            "4012\u{ffa0}8888\u{ffa0}8888\u{ffa0}1881",
            "4012\u{115f}8888\u{1160}8888\u{2800}1881",
        ] {
            assert!(contains_pan_clear(text), "clear: {text:?}");
            assert!(contains_pan_typed(text), "typed: {text:?}");
        }
        assert!(contains_card_number("4012+8888+8888+1881"));
        assert!(contains_card_typed("4012+8888+8888+1881@example.com"));
        assert!(contains_card_number("40128888-8888-1881-0000-000000000000"));
        // A `+` that starts a word still marks a phone number; one after a
        // letter is no separator.
        assert!(!contains_pan_clear("+49+151+1234+5678"));
        assert!(!contains_pan_typed("Ring +49 151 1234 5678"));
        assert!(!contains_pan_clear("C++ 2026"));
        // The audit's reading of the columns checkoutd writes blanks every
        // UUID (never stricter than intake), and random UUIDs stay ids.
        assert!(!clear_column_holds_card(
            "access_log",
            "object",
            "40128888-8888-1881-0000-000000000000"
        ));
        assert!(!contains_pan_clear("0192f8a0-1234-4abc-8123-123456789012"));
        assert!(!contains_pan_clear("12345678-1234-1234-1234-123456789012"));
        // A kept one is read alone: digits before it do not hide it, nor
        // does it hide a number the audit's reading finds before it.
        for text in [
            "v1-40128888-8888-1881-0000-000000000000",
            "1234567812345670-40128888-8888-1881-0000-000000000000",
        ] {
            assert!(contains_pan_clear(text), "clear: {text:?}");
            assert!(contains_pan_typed(text), "typed: {text:?}");
        }
        assert!(clear_column_holds_card(
            "orders",
            "storefront_ref",
            "1234567812345670-40128888-8888-1881-0000-000000000000"
        ));
        // What the audit's narrow reading finds, intake finds too.
        for text in [
            "4012\u{3164}8888\u{3164}8888\u{3164}1881",
            "1:4012.88888888.1881",
            "7#4012.8888.8888.1881",
            "1|4012 88888888 1881",
        ] {
            assert!(
                clear_column_holds_card("orders", "items", text),
                "audit: {text:?}"
            );
            assert!(contains_pan_clear(text), "intake: {text:?}");
        }
        // A well-formed UUID (version 4, variant 10xx) is an id, whatever
        // its digits: a random one may start with 16 of them.
        assert!(!contains_pan_clear("40128888-8888-4881-8000-000000000000"));
        assert!(!contains_pan_typed("40128888-8888-4881-8000-000000000000"));
    }

    #[test]
    fn invisible_characters_do_not_hide_an_email() {
        assert!(contains_email("ada\u{00ad}@example.com"));
        assert!(contains_email("ada@\u{2063}example.com"));
        assert!(contains_email("ada\u{200d}@example.com"));
        // Tag digits spell a card number to whoever reads code points.
        let tags: String = "4012888888881881"
            .chars()
            .map(|d| char::from_u32(0xe0000 + u32::from(d)).unwrap())
            .collect();
        assert!(contains_pan_typed(&format!(
            "flag \u{1f3f4}{tags}\u{e007f}"
        )));
    }

    #[test]
    fn card_numbers() {
        assert!(contains_pan("ref 4012 8888 8888 1881 end"));
        assert!(contains_pan("4012-8888-8888-1881"));
        assert!(contains_pan("x4012888888881881y"));
        assert!(contains_pan("378282246310005"));
        assert!(!contains_pan("4111 1111 1111 1112"), "Luhn fails");
        assert!(!contains_pan("4012888888881881111111"), "too long a run");
        assert!(!contains_pan("2026-11-29T05:33:45.551Z"));
        assert!(!contains_pan("order 12345"));
        assert!(
            !contains_pan(r#"["0192f8a0-0000-4a00-8123-123456789012"]"#),
            "UUIDs are not card numbers"
        );
        assert!(
            !contains_pan("4012  8888 8888 1881"),
            "two spaces break a run"
        );
    }

    #[test]
    fn card_numbers_typed_into_free_text() {
        for typed in [
            "4012888888881881",
            "Ada 4012 8888 8888 1881",
            "4012-8888-8888-1881",
            "4012  8888\n8888\t1881",
            "4012.8888.8888.1881",
            "4012 - 8888 - 8888 - 1881",
            "\u{ff14}\u{ff10}\u{ff11}\u{ff12}888888881881",
            "3782 822463 10005",
            // Other scripts' digits, invisible characters and other
            // separators.
            "کارت ۴۰۱۲ ۸۸۸۸ ۸۸۸۸ ۱۸۸۱",
            "\u{0664}\u{0660}\u{0661}\u{0662}888888881881",
            "\u{0966}4012888888881881",
            "4012\u{00ad}8888\u{00ad}8888\u{00ad}1881",
            "4012\u{2063}8888\u{2063}8888\u{2063}1881",
            "4\u{e0020}012888888881881",
            "4012,8888,8888,1881",
            "4012·8888·8888·1881",
            "4012\u{2022}8888\u{2022}8888\u{2022}1881",
            "\u{1d7d2}012888888881881",
            // Combining marks over digits: a keycap, an accent.
            "4\u{20e3}0\u{20e3}1\u{20e3}2\u{20e3} 8888 8888 1881",
            "4\u{301}012 8888 8888 1881",
        ] {
            assert!(contains_pan_typed(typed), "{typed:?}");
            assert!(contains_pan_clear(typed), "clear: {typed:?}");
        }
        // A mark between two groups may separate them, as the wide reading
        // takes any other mark: both readings are tried.
        assert!(contains_pan_clear("REF 2026 4012\u{301}8888 8888 1881"));
        assert!(contains_pan_typed(
            "exp 12/27 4012\u{301}8888\u{301}8888 1881"
        ));
        for marked in [
            "4\u{20e3}0\u{20e3}1\u{20e3}2\u{20e3} 8888 8888 1881",
            "4\u{301}012 8888 8888 1881",
        ] {
            assert!(
                clear_column_holds_card("orders", "items", marked),
                "{marked:?}"
            );
        }
        // Any other punctuation groups digits in what a person types, clear
        // or personal; the audit's scan of the columns checkoutd writes
        // itself, and phones and emails, read it narrowly: an IPv6 address
        // or an email's `@` and `.` must not join digits.
        for typed in [
            "4012:8888:8888:1881",
            "4012|8888|8888|1881",
            "4012 * 8888 * 8888 * 1881",
            "(4012)8888-8888-1881",
            "4012\u{2212}8888\u{2212}8888\u{2212}1881",
            "\u{ff14}\u{ff10}\u{ff11}\u{ff12}\u{ff0d}8888\u{ff0d}8888\u{ff0d}1881",
        ] {
            assert!(contains_pan_typed(typed), "{typed:?}");
            assert!(contains_pan_clear(typed), "clear: {typed:?}");
        }
        for machine in ["2600:1700:5200:1006::1", "2400:cb00:2048:1001::6810:1f2b"] {
            assert!(
                !clear_column_holds_card("access_log", "origin_ip", machine),
                "{machine:?}"
            );
            assert!(!contains_card_typed(machine), "{machine:?}");
        }
        assert!(!contains_card_typed("4123456787@163.com"));
        for fine in [
            "Ada Lovelace",
            "12 Rue de la Paix, 75002 Paris",
            "Flat 4012, 8888 Long Road",
            "4012 8888 8888 1882",
        ] {
            assert!(!contains_pan_typed(fine), "{fine:?}");
        }
    }

    #[test]
    fn card_numbers_in_clear_text_however_grouped() {
        for clear in [
            "4012.8888.8888.1881",
            "4012/8888/8888/1881",
            "4012_8888_8888_1881",
            "4012  8888 8888 1881",
            "card 4012.8888.8888.1881, thanks",
            "4012 8888 8888 1881 123",
            "4012888888881881 12/27",
            "3782 822463 10005 1234",
        ] {
            assert!(contains_pan_clear(clear), "{clear:?}");
        }
        for fine in [
            "A-1001",
            "2026/11/30/123456",
            "2026.11.30.4012",
            // A Diners-shaped number inside, not at the start.
            "ORDER-2026-11-30-300001234564",
            // A USPS tracking number and an IBAN: grouped, long, no card
            // number at the start.
            "9400 1000 0000 0000 0000 00",
            "DE89 3704 0044 0532 0130 00",
            "SKU 12.345.678",
            "4012 8888 8888 1882",
        ] {
            assert!(!contains_pan_clear(fine), "{fine:?}");
        }
    }

    /// A card number after other groups of a reference, printed as cards
    /// are, is found; arbitrary groups that happen to make one are not.
    #[test]
    fn card_numbers_printed_after_other_groups_in_clear_text() {
        for clear in [
            "A-1001-4012-8888-8888-1881",
            "REF 2026 4012888888881881",
            "order 2026/11/30 4012 8888 8888 1881",
            "INV-7-3782-822463-10005",
            "X 12 3056 930902 5904",
            "1001_4000_0566_5566_5556_123",
        ] {
            assert!(contains_pan_clear(clear), "{clear:?}");
        }
        for fine in [
            // Groups of other lengths that happen to make a card number.
            "ORDER-2026-11-30-300001234564",
            "A 10 40128888 88881881",
            // Four groups of four that are no card number.
            "2026 1130 0000 1234 5678",
            "4012 8888 8888 1882 2",
            // A GTIN-13 that passes Luhn and is Visa-shaped, after another
            // group: a product code, as it is alone.
            "V2-4006381333023",
            "Set 3 - 4006381333023",
        ] {
            assert!(!contains_pan_clear(fine), "{fine:?}");
        }
        assert!(crate::domain::pan::is_card_number(b"30569309025904"));
        assert!(crate::domain::pan::is_card_number(b"4000056655665556"));
    }

    /// The warehouse's tracking numbers of 15–19 digits pass the bare Luhn
    /// check one time in ten; only a card number of a known brand is
    /// refused in a dispatch, and the audit scans those columns with the
    /// same rule, so an accepted dispatch never fails the audit.
    #[test]
    fn dispatch_facts_refuse_card_numbers_of_known_brands_only() {
        // A 15-digit FedEx Ground-style number that passes Luhn, no brand.
        assert!(luhn_valid(b"961234567890126"));
        for tracking in [
            "961234567890126",
            "1Z999AA10123456784",
            "9400 1000 0000 0000 0000 00",
        ] {
            assert!(!dispatch_fact_holds_card(tracking), "{tracking:?}");
            assert!(!clear_column_holds_card("orders", "tracking", tracking));
        }
        assert!(
            contains_pan_clear("961234567890126"),
            "other clear columns stay strict"
        );
        assert!(clear_column_holds_card(
            "orders",
            "storefront_ref",
            "961234567890126"
        ));
        for card in [
            "4012888888881881",
            "UPS 4012 8888 8888 1881",
            "ref-1-4012-8888-8888-1881",
            // Grouped as the wide reading groups (review).
            "4012:8888:8888:1881",
            "4012|8888|8888|1881",
            "(4012)(8888)(8888)(1881)",
        ] {
            assert!(dispatch_fact_holds_card(card), "{card:?}");
            assert!(clear_column_holds_card("orders", "carrier", card));
        }
    }

    /// Barcodes as SKUs and phone numbers in messages are not card
    /// numbers; a card number beside them still is.
    #[test]
    fn product_codes_and_international_phone_numbers_are_not_card_numbers() {
        // EAN-13s that pass the Luhn check too (GS1's own example, a
        // Belgian soft drink), and a 14-digit GTIN.
        for sku in ["5901234123457", "5449000000996", "SKU 5901234123457"] {
            assert!(crate::domain::pan::luhn_valid(b"5901234123457"));
            assert!(!contains_pan_clear(sku), "{sku:?}");
            assert!(!contains_pan_typed(sku), "{sku:?}");
        }
        assert!(gtin_valid(b"10614141000415"));
        assert!(gtin_valid(b"5901234123457") && !gtin_valid(b"5901234123458"));
        // A German mobile number: 13 digits, Visa's prefix, passes Luhn.
        assert!(crate::domain::pan::luhn_valid(b"4915112345678"));
        assert!(!contains_pan_typed("Ring me on +49 151 1234 5678"));
        assert!(!contains_pan_clear("+49 151 1234 5678"));
        // The base rule (machine text, the audit's findings) keeps both.
        assert!(contains_pan("5901234123457"));
        assert!(contains_pan("4012888888881"));
        // Card numbers stay card numbers, also after a `+` or beside a
        // barcode, and a 13-digit one not shaped like a GTIN.
        for card in [
            "+4012888888881881",
            "4012888888881881 5901234123457",
            "4222222222222",
        ] {
            assert!(contains_pan_typed(card), "{card:?}");
            assert!(contains_pan_clear(card), "{card:?}");
        }
        // Anywhere in a run: the detector for personal text.
        for card in [
            "5901234123457 4012888888881881",
            "+49 151 1234 5678 4012 8888 8888 1881",
        ] {
            assert!(contains_pan_typed(card), "{card:?}");
        }
        assert!(contains_pan_typed("4012 8888 8888 1881 +49 151 1234 5678"));
    }

    #[test]
    fn card_numbers_typed_with_more_digits_around_them() {
        for typed in [
            "4012 8888 8888 1881 12/27 123",
            "exp 12/27 4012 8888 8888 1881",
            "my card: 4012.8888.8888.1881.123",
            "ORDER-2026-11-30-300001234564",
        ] {
            assert!(contains_pan_typed(typed), "{typed:?}");
        }
        // The same digits, not a card number at any grouping.
        assert!(!contains_pan_typed("12/27 4012 8888 8888 1882 123"));
    }

    #[test]
    fn phones_and_email_local_parts_that_are_card_numbers() {
        for card in [
            "4012888888881881",
            "4012 8888 8888 1881",
            "+378282246310005",
        ] {
            assert!(phone_is_card_number(card), "{card:?}");
        }
        for phone in [
            "+1 949 555 0100",
            "+44 20 7946 0958",
            // 13 digits: like a German mobile number, never taken for a
            // (13-digit Visa) card number.
            "+49 151 2345 6789",
            "4222222222222",
            "4012 8888 8888 1882",
        ] {
            assert!(!phone_is_card_number(phone), "{phone:?}");
        }
        for local in [
            "4012888888881881",
            "ada.4012.8888.8888.1881",
            "4012888888881881.ada",
        ] {
            assert!(contains_card_number(local), "{local:?}");
        }
        for local in [
            "ada",
            "ada.lovelace+1815",
            "20231234567890",
            "4012888888881882",
        ] {
            assert!(!contains_card_number(local), "{local:?}");
        }
    }

    #[test]
    fn a_long_run_of_short_groups_is_read_whole() {
        // A gift message's worth of single digits in one run: every start
        // is tried (each for at most 19 digits, see `card_leading`).
        let run = "1 ".repeat(500);
        assert!(!contains_pan_typed(&run));
        assert!(!contains_pan_clear(&run));
        let with_card = format!("{run}4 0 1 2 8 8 8 8 8 8 8 8 1 8 8 1 {run}");
        assert!(contains_pan_typed(&with_card));
    }

    #[test]
    fn random_digests_and_ids_are_never_card_numbers() {
        use ring::rand::SecureRandom;
        let rng = ring::rand::SystemRandom::new();
        for _ in 0..5000 {
            let mut d = [0u8; 32];
            rng.fill(&mut d).unwrap();
            let hex = crate::hex::encode(&d);
            for detector in [contains_pan, contains_pan_clear, contains_pan_typed] {
                assert!(!detector(&hex), "{hex}");
                let id = crate::ids::new_id(&rng).unwrap().to_string();
                assert!(!detector(&format!("[\"{id}\"]")), "{id}");
                assert!(!detector(&format!("order {id} ok")), "{id}");
            }
        }
    }

    #[test]
    fn phones_written_internationally() {
        for phone in [
            "+1 949 555 0100",
            "call +44 (0)20 7946 0958",
            "+49-151-1234-5678",
            "ref:+33.1.23.45.67.89",
            "\u{ff0b}81 3 1234 5678",
            "+\u{0661}\u{0662}\u{0663}\u{0664}\u{0665}\u{0666}\u{0667}\u{0668}",
            "+4915\u{00ad}112345678",
            "+7 495 123-45-67",
            "+86 138 0013 8000",
            "+61 (2) 9876 5432",
            // Country code, then groups of three (Spain, Poland, Czechia,
            // Portugal), and a city code before a slash.
            "+34 912 345 678",
            "+48 512 345 678",
            "+420 601 123 456",
            "Tel. (+351 912 345 678)",
            "+34-912-345-678",
            "+49 30/1234567",
            "+43 1/234 56 78",
            "Mobil +49 170 1234567 / 0171 7654321",
            // Blank letters (Hangul fillers) between the groups.
            "+49\u{3164}170\u{3164}1234567",
        ] {
            assert!(contains_phone(phone), "{phone:?}");
        }
        for not_phone in [
            "FAXSTF-PRO",
            "949 555 0100",
            "ABC+12345678",
            "C++ 2024 12345",
            "bundle + 10 000 000 points",
            "+1234567 pcs",
            "+ 1 949 555 0100",
            "Size +2, 3/4",
            // Tolerances, coordinates, quantities, prescriptions.
            "Bore 20 H7 +0.021/-0.000",
            "Dowel pin +0.015/-0.006",
            "Star map, London +51.5074 -0.1278",
            "+40.7128 -74.0060",
            "Gold pack +10.000.000 coins",
            "+10 000 000 XP",
            "+2.00/-1.25/180",
            "+123.45678",
            "+1234567890123456789",
            "+40.6894-074.0447/",
            "+1.000.000.000 points",
            "Version +2.0.1",
            "+10 mm, +3 -1",
            // Lists of values after a +, and ISO 6709 in degrees and
            // minutes.
            "Storage +128/256/512 GB",
            "Upgrade +100/200/300 GB",
            "Reading glasses, strengths +1.00/1.50/2.00",
            "Lens +0.50/0.75/1.00 D",
            "EU sizes +36/38/40/42",
            "Ref +12/2024/0001",
            "+4041-07400/",
            "+401213-0750015/",
        ] {
            assert!(!contains_phone(not_phone), "{not_phone:?}");
        }
    }

    #[test]
    fn emails() {
        assert!(contains_email("contact ada@example.com please"));
        assert!(contains_email("ADA@EXAMPLE.CO.UK"));
        assert!(!contains_email("no at sign"));
        assert!(!contains_email("@handle"));
        assert!(!contains_email("a@b"));
        assert!(!contains_email("urn:checkoutd:role:storefront"));
        assert!(contains_email("ada@xn--e1afmkfd.xn--p1ai"));
        assert!(contains_email("ada@example.museum."));
        assert!(contains_email("ORDER jo@shop.com-1001"));
        assert!(contains_email("jo@shop.de2"));
        for international in [
            "josé@example.com",
            "Geschenk für anna@bücher.de",
            "ada\u{ff20}example.com",
            "ada@example.рф",
            "пример@пример.рф",
            // Accents and vowel signs as combining marks.
            "jose\u{301}@example.com",
            "anna@bu\u{308}cher.de",
            "संपर्क@डाटामेल.भारत",
            "उदाहरण@उदाहरण.कॉम",
            "ஒன்று@எடுத்துக்காட்டு.இந்தியா",
        ] {
            assert!(contains_email(international), "{international:?}");
        }
        for measure in [
            "Cable ties 100@2.5mm",
            "2@1.25kg",
            "a@b.c",
            "x@1.2",
            "5 € @ 2.5mm",
        ] {
            assert!(!contains_email(measure), "{measure:?}");
        }
    }
}
