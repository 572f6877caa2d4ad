//! Bounded text fields.
//!
//! [`Personal`] holds a personal detail (a name, an address line, a phone
//! number, an email, a gift message): zeroized on drop, `Debug` prints
//! `Personal(<redacted>)`, no `Display`/`Serialize`/`Clone`; read it with
//! [`Personal::expose`] only to seal it. [`Plain`] holds text that is not
//! personal (a SKU, an item description, a storefront reference).
//!
//! Both are trimmed, non-empty, at most `max` characters, and free of
//! control characters (a gift message may hold line breaks).
//!
//! A personal detail never holds a card number: [`Personal::parse`] refuses
//! text in which [`super::detect::contains_pan_typed`] finds one (however it
//! is spaced), with [`TextError::CardNumber`] (answered 422
//! `looks_like_card_number` naming the field, never echoing the value).
//! Refused, not masked: personal details are sealed for the warehouse and
//! marketing, who open them, so a card number typed into a name, company,
//! address line, postal code or gift message would reach people and systems
//! outside the card-data environment; masking would silently change what
//! the customer typed, while a refusal lets the storefront ask again.
//! (Plain text refuses card numbers too, in `order`.)

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// Default maximum length of a text field, in characters.
pub const MAX_TEXT: usize = 256;
/// Maximum length of a gift message, in characters.
pub const MAX_MESSAGE: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextError {
    Empty,
    /// Not empty, but nothing in it shows: only spaces, blank letters,
    /// joiners or combining marks.
    Invisible,
    TooLong,
    ControlCharacter,
    /// Personal text that holds a card number.
    CardNumber,
}

/// Checks `input` and returns the trimmed slice.
pub fn check(input: &str, max: usize, allow_newlines: bool) -> Result<&str, TextError> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(TextError::Empty);
    }
    if trimmed.chars().count() > max {
        return Err(TextError::TooLong);
    }
    let bad = |c: char| {
        c.is_control() && !(allow_newlines && (c == '\n' || c == '\r' || c == '\t'))
            || matches!(
                c,
                // line/paragraph separators, bidi marks, embeddings,
                // overrides and isolates, the Arabic letter mark, and
                // invisible zero-width characters (ZWJ/ZWNJ stay: scripts
                // and emoji need them)
                '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}'
                    | '\u{2066}'..='\u{2069}' | '\u{061c}' | '\u{200b}' | '\u{2060}' | '\u{feff}'
            )
    };
    if trimmed.chars().any(bad) || hides_characters(trimmed) {
        return Err(TextError::ControlCharacter);
    }
    // Something must show: a required name of only joiners, marks or
    // blanks (spaces, Hangul fillers) is as good as none.
    let visible = |c: char| {
        !super::detect::is_blank(c)
            && !super::detect::is_invisible_format(c)
            && !super::detect::is_combining_mark(c)
    };
    if !trimmed.chars().any(visible) {
        return Err(TextError::Invisible);
    }
    Ok(trimmed)
}

/// Whether `text` holds an invisible format character that no script or
/// emoji needs: an invisible operator or separator, a deprecated format
/// control, an interlinear annotation mark, a tag character outside a
/// subdivision flag (🏴, one to six tag letters or digits, the cancel
/// tag). Such characters could carry text a person does not see. The
/// soft hyphen, the Mongolian vowel separator, the grapheme joiner and
/// ZWJ/ZWNJ stay: pasted text and scripts have them, and the detectors
/// read across them (they join what is around them).
fn hides_characters(text: &str) -> bool {
    if text.is_ascii() {
        return false;
    }
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\u{1f3f4}' {
            // A subdivision flag: its tags are part of it.
            let tags = chars[i + 1..]
                .iter()
                .take_while(|t| matches!(t, '\u{e0030}'..='\u{e0039}' | '\u{e0061}'..='\u{e007a}'))
                .count();
            if (1..=6).contains(&tags) && chars.get(i + 1 + tags) == Some(&'\u{e007f}') {
                i += tags + 2;
                continue;
            }
        }
        let needed = matches!(
            c,
            '\u{200c}' | '\u{200d}' | '\u{00ad}' | '\u{180e}' | '\u{034f}'
        );
        if super::detect::is_invisible_format(c) && !needed {
            return true;
        }
        i += 1;
    }
    false
}

/// A personal detail. See the module documentation.
///
/// ```
/// use checkoutd::domain::text::Personal;
///
/// let name = Personal::parse("  Ada Lovelace ", 256, false).unwrap();
/// assert_eq!(format!("{name:?}"), "Personal(<redacted>)");
/// assert_eq!(name.expose(), "Ada Lovelace");
/// ```
#[derive(Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Personal(String);

impl Personal {
    pub fn parse(input: &str, max: usize, allow_newlines: bool) -> Result<Self, TextError> {
        let text = check(input, max, allow_newlines)?;
        if super::detect::contains_pan_typed(text) {
            return Err(TextError::CardNumber);
        }
        Ok(Personal(text.to_owned()))
    }

    /// Wraps text that was already validated elsewhere (e.g. a normalised
    /// email address).
    pub(crate) fn from_validated(text: String) -> Self {
        Personal(text)
    }

    /// The plaintext, for sealing into an envelope or computing a blind
    /// index. Never for logs or responses.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Personal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Personal(<redacted>)")
    }
}

/// Text that holds no personal data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Plain(String);

impl Plain {
    pub fn parse(input: &str, max: usize) -> Result<Self, TextError> {
        check(input, max, false).map(|t| Plain(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_characters_are_refused_and_something_must_show() {
        for hidden in [
            "\u{1f3f4}\u{e0034}\u{e0030}\u{e0031}\u{e0032}\u{e0038}\u{e0038}\u{e0038}\u{e0038}\u{e007f}",
            "\u{1f3f4}\u{e0040}\u{e007f}",
            "\u{1f3f4}\u{e0067}\u{e0062}",
            "ada\u{2063}",
            "a\u{e0061}b",
            "x\u{fff9}y",
            "a\u{2061}b",
        ] {
            assert_eq!(
                check(hidden, 64, false),
                Err(TextError::ControlCharacter),
                "{hidden:?}"
            );
        }
        for nothing in ["\u{200d}", "\u{301}", "\u{200c}\u{200d}"] {
            assert_eq!(
                check(nothing, 64, false),
                Err(TextError::Invisible),
                "{nothing:?}"
            );
        }
        // Scripts and emoji keep what they need: joiners, marks, a
        // subdivision flag's tag sequence.
        for fine in [
            "Jos\u{e9}",
            "Jose\u{301}",
            "\u{1f469}\u{200d}\u{1f4bb}",
            "\u{645}\u{6cc}\u{200c}\u{62e}\u{648}\u{627}\u{647}\u{645}",
            "Happy birthday \u{1f3f4}\u{e0067}\u{e0062}\u{e0073}\u{e0063}\u{e0074}\u{e007f}!",
            "Stra\u{00ad}\u{00df}e 1",
            "\u{182e}\u{180e}\u{1820}",
        ] {
            assert!(check(fine, 64, false).is_ok(), "{fine:?}");
        }
    }

    #[test]
    fn bounds_and_masks() {
        assert_eq!(check("  Ada  ", 10, false), Ok("Ada"));
        assert_eq!(check("   ", 10, false), Err(TextError::Empty));
        // Blank letters show nothing either (review).
        assert_eq!(check("\u{3164}", 10, false), Err(TextError::Invisible));
        assert_eq!(
            check("\u{ffa0} \u{2800}", 10, false),
            Err(TextError::Invisible)
        );
        assert_eq!(check(&"é".repeat(11), 10, false), Err(TextError::TooLong));
        assert!(check(&"é".repeat(10), 10, false).is_ok());
        assert_eq!(
            check("a\u{0}b", 10, false),
            Err(TextError::ControlCharacter)
        );
        assert_eq!(check("a\nb", 10, false), Err(TextError::ControlCharacter));
        assert_eq!(check("a\nb", 10, true), Ok("a\nb"));
        assert_eq!(
            check("a\u{202e}b", 10, true),
            Err(TextError::ControlCharacter)
        );
        assert_eq!(
            check("a\u{2067}b", 10, true),
            Err(TextError::ControlCharacter)
        );
        assert_eq!(
            check("a\u{200b}b", 10, true),
            Err(TextError::ControlCharacter)
        );
        assert!(check("क\u{200d}ष", 10, false).is_ok());
        assert_eq!(
            Personal::parse("Ada 4012 8888 8888 1881", 256, false),
            Err(TextError::CardNumber)
        );
        assert_eq!(
            Personal::parse("4012-8888\n8888-1881", 1000, true),
            Err(TextError::CardNumber)
        );
        let p = Personal::parse("Ada Lovelace", 256, false).unwrap();
        assert_eq!(format!("{p:?}"), "Personal(<redacted>)");
    }
}
