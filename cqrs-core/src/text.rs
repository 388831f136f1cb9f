//! Checking text that users type: ids and names, before they name a stream or reach a
//! terminal, a log line or a JSON document.
//!
//! [`StreamId`](crate::StreamId) accepts any characters but NUL, on purpose: every store
//! must keep whatever an application gives it (the conformance suite checks this). What
//! an application should *accept from its users* is stricter, and [`TextRules`] is that
//! rule, with the field's name and length limit chosen per field. It refuses text that
//! holds a character that changes how a line shows or that cannot be seen:
//!
//! - control characters (general category Cc: NUL, the ESC of ANSI escapes, CR, LF, tab,
//!   DEL, the C1 controls);
//! - format characters (Cf: the bidi embeddings, overrides and isolates U+202A–U+202E and
//!   U+2066–U+2069, the zero-width space and joiners U+200B–U+200D, the word joiner
//!   U+2060, the byte order mark U+FEFF, the soft hyphen, the tags…);
//! - line and paragraph separators (Zl, Zp);
//! - unassigned code points (Cn), whose normalisation a later Unicode version may change.
//!
//! Text that is empty, starts or ends with white space, or is longer than the field's
//! limit is refused too.
//!
//! Accepted text is returned in Unicode Normalization Form C: `café` typed with a
//! combining accent (NFD) and `café` with a precomposed `é` (NFC) become the same string,
//! so they name the same stream. The categories come from the Unicode Character Database
//! (`DerivedGeneralCategory.txt`) through the `unicode-properties` crate.
//!
//! A refusal, [`InvalidText`], names the field and the problem; a character is named by
//! its code point and position (`U+001B at character 2`), never printed as itself.
//!
//! # Examples
//! ```
//! use cqrs_core::text::{TextProblem, TextRules};
//!
//! const ACCOUNT_ID: TextRules = TextRules::new("account id", 100);
//!
//! assert_eq!(ACCOUNT_ID.check("cafe\u{301}")?, "caf\u{e9}");
//! let refused = ACCOUNT_ID.check("acc\u{1b}[31m").unwrap_err();
//! assert_eq!(refused.problem, TextProblem::Control { ch: '\u{1b}', at: 4 });
//! assert_eq!(
//!     refused.to_string(),
//!     "the account id contains the control character U+001B at character 4"
//! );
//! # Ok::<(), cqrs_core::text::InvalidText>(())
//! ```

use std::fmt;

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// The rules for one text field: its name (for error messages) and its longest length.
///
/// Cheap to copy and `const`-constructible, so an application can keep one per field as
/// a constant.
///
/// # Examples
/// ```
/// use cqrs_core::text::{TextProblem, TextRules};
///
/// let owner = TextRules::new("owner name", 5);
/// assert_eq!(owner.check("Ada")?, "Ada");
/// assert_eq!(owner.check("Lovelace").unwrap_err().problem, TextProblem::TooLong(5));
/// assert_eq!(owner.check(" Ada").unwrap_err().to_string(), "the owner name starts or ends with white space");
/// # Ok::<(), cqrs_core::text::InvalidText>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TextRules {
    field: &'static str,
    max_chars: usize,
}

impl TextRules {
    /// Rules for the field called `field` in messages (`"account id"`: a refusal reads
    /// `the account id is empty`), accepting at most `max_chars` characters, counted
    /// after normalisation.
    pub const fn new(field: &'static str, max_chars: usize) -> Self {
        TextRules { field, max_chars }
    }

    /// The field's name, as refusals print it.
    pub const fn field(&self) -> &'static str {
        self.field
    }

    /// The longest accepted text, in characters (Unicode scalar values) after
    /// normalisation.
    pub const fn max_chars(&self) -> usize {
        self.max_chars
    }

    /// `text` in Normalization Form C, if these rules accept it (see the
    /// [module's documentation](self)).
    ///
    /// The characters are checked first, then emptiness, padding and length, so a text
    /// with several problems reports the first character that is refused.
    ///
    /// # Errors
    /// [`InvalidText`] naming this field and the first problem found.
    ///
    /// # Examples
    /// ```
    /// use cqrs_core::text::{TextProblem, TextRules};
    ///
    /// let name = TextRules::new("owner name", 200);
    /// assert_eq!(name.check("Ångström")?, "Ångström");
    /// let refused = name.check("Ada\r\nbob").unwrap_err();
    /// assert_eq!(refused.field, "owner name");
    /// assert!(matches!(refused.problem, TextProblem::Control { at: 4, .. }));
    /// # Ok::<(), cqrs_core::text::InvalidText>(())
    /// ```
    pub fn check(&self, text: &str) -> Result<String, InvalidText> {
        let invalid = |problem| InvalidText {
            field: self.field,
            problem,
        };
        let text: String = text.nfc().collect();
        let mut chars = 0;
        for (i, ch) in text.chars().enumerate() {
            let at = i + 1;
            chars = at;
            let problem = match ch.general_category() {
                GeneralCategory::Control => TextProblem::Control { ch, at },
                GeneralCategory::Format => TextProblem::Format { ch, at },
                GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator => {
                    TextProblem::Separator { ch, at }
                }
                GeneralCategory::Unassigned => TextProblem::Unassigned { ch, at },
                _ => continue,
            };
            return Err(invalid(problem));
        }
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(invalid(TextProblem::Empty));
        }
        if trimmed.len() != text.len() {
            return Err(invalid(TextProblem::Padded));
        }
        if chars > self.max_chars {
            return Err(invalid(TextProblem::TooLong(self.max_chars)));
        }
        Ok(text)
    }
}

/// A text refused for a field: which field, and why. Its message is
/// `the {field} {problem}`, e.g. `the owner name is empty`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {field} {problem}")]
#[non_exhaustive]
pub struct InvalidText {
    /// The field's name, from [`TextRules::new`].
    pub field: &'static str,
    /// What is wrong with its text.
    pub problem: TextProblem,
}

/// What is wrong with a text; `at` counts characters from 1, after normalisation.
///
/// Each message names a character by its code point (`U+202E`), never by printing it, so
/// a refusal is safe to show on a terminal or write to a log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TextProblem {
    /// Empty, or only white space.
    #[error("is empty")]
    Empty,
    /// Starts or ends with white space.
    #[error("starts or ends with white space")]
    Padded,
    /// Longer than this many characters.
    #[error("is longer than {0} characters")]
    TooLong(usize),
    /// A control character (Cc).
    #[error("contains the control character {} at character {at}", Code(*.ch))]
    Control {
        /// The character.
        ch: char,
        /// Where, counting characters from 1.
        at: usize,
    },
    /// An invisible format character (Cf), such as a bidi override or a zero-width space.
    #[error("contains the invisible format character {} at character {at}", Code(*.ch))]
    Format {
        /// The character.
        ch: char,
        /// Where, counting characters from 1.
        at: usize,
    },
    /// A line or paragraph separator (Zl, Zp).
    #[error("contains the line separator {} at character {at}", Code(*.ch))]
    Separator {
        /// The character.
        ch: char,
        /// Where, counting characters from 1.
        at: usize,
    },
    /// A code point that Unicode has not assigned (Cn).
    #[error("contains the unassigned code point {} at character {at}", Code(*.ch))]
    Unassigned {
        /// The character.
        ch: char,
        /// Where, counting characters from 1.
        at: usize,
    },
}

/// Displays a character by its code (`U+001B`), never as itself.
struct Code(char);

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "U+{:04X}", u32::from(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: TextRules = TextRules::new("account id", 100);
    const NAME: TextRules = TextRules::new("owner name", 200);
    const FROM: TextRules = TextRules::new("source account id (`from`)", 100);

    #[test]
    fn accepts_and_normalises() {
        for (text, kept) in [
            ("alice", "alice"),
            ("Ada Lovelace", "Ada Lovelace"),
            ("cafe\u{301}", "caf\u{e9}"),
            ("caf\u{e9}", "caf\u{e9}"),
            ("Ångström", "Ångström"),
            ("李小龍", "李小龍"),
            ("🦀 crab", "🦀 crab"),
        ] {
            assert_eq!(ID.check(text).unwrap(), kept, "{text:?}");
        }
        // The limit counts characters after normalisation: 200 decomposed code points
        // are 100 characters.
        let longest = "é".repeat(100);
        let decomposed = "e\u{301}".repeat(100);
        assert_eq!(ID.check(&decomposed).unwrap(), longest);
        assert!(NAME.check(&"x".repeat(200)).is_ok());
        assert_eq!(NAME.field(), "owner name");
        assert_eq!(NAME.max_chars(), 200);
    }

    #[test]
    fn refuses_each_class_naming_the_field_and_the_character() {
        use TextProblem as P;
        let cases = [
            ("", P::Empty),
            ("   ", P::Empty),
            (" alice", P::Padded),
            ("alice\u{a0}", P::Padded),
            ("\u{0}", P::Control { ch: '\0', at: 1 }),
            (
                "a\u{1b}[31mred",
                P::Control {
                    ch: '\u{1b}',
                    at: 2,
                },
            ),
            ("a\r\nfake row", P::Control { ch: '\r', at: 2 }),
            ("a\tb", P::Control { ch: '\t', at: 2 }),
            (
                "a\u{7f}",
                P::Control {
                    ch: '\u{7f}',
                    at: 2,
                },
            ),
            (
                "a\u{85}",
                P::Control {
                    ch: '\u{85}',
                    at: 2,
                },
            ),
            (
                "a\u{2028}b",
                P::Separator {
                    ch: '\u{2028}',
                    at: 2,
                },
            ),
            (
                "a\u{2029}b",
                P::Separator {
                    ch: '\u{2029}',
                    at: 2,
                },
            ),
            (
                "a\u{ad}b",
                P::Format {
                    ch: '\u{ad}',
                    at: 2,
                },
            ),
            (
                "\u{e0001}a",
                P::Format {
                    ch: '\u{e0001}',
                    at: 1,
                },
            ),
            (
                "a\u{378}",
                P::Unassigned {
                    ch: '\u{378}',
                    at: 2,
                },
            ),
            (
                "a\u{fffe}",
                P::Unassigned {
                    ch: '\u{fffe}',
                    at: 2,
                },
            ),
            // A character is refused before padding is looked at.
            (
                " \u{200b}",
                P::Format {
                    ch: '\u{200b}',
                    at: 2,
                },
            ),
            (&"x".repeat(101), P::TooLong(100)),
            (&"e\u{301}".repeat(101), P::TooLong(100)),
        ];
        let mut bidi_and_zero_width: Vec<_> = ('\u{202a}'..='\u{202e}')
            .chain('\u{2066}'..='\u{2069}')
            .chain('\u{200b}'..='\u{200d}')
            .chain(['\u{2060}', '\u{feff}'])
            .map(|ch| (format!("ab{ch}c"), P::Format { ch, at: 3 }))
            .collect();
        bidi_and_zero_width.extend(cases.map(|(text, problem)| (text.to_owned(), problem)));
        for (text, problem) in bidi_and_zero_width {
            let refused = FROM.check(&text).unwrap_err();
            assert_eq!(refused.problem, problem, "{text:?}");
            assert_eq!(refused.field, FROM.field(), "{text:?}");
            let message = refused.to_string();
            assert!(
                message.starts_with("the source account id (`from`) "),
                "{message}"
            );
            assert!(!message.contains(|c: char| c.is_control()), "{message:?}");
            assert!(
                !message.contains(|c: char| c.general_category() == GeneralCategory::Format),
                "{message:?}"
            );
        }
        assert_eq!(
            ID.check("a\u{202e}b").unwrap_err().to_string(),
            "the account id contains the invisible format character U+202E at character 2"
        );
        assert_eq!(
            NAME.check(&"x".repeat(201)).unwrap_err().to_string(),
            "the owner name is longer than 200 characters"
        );
        assert_eq!(
            NAME.check("a\u{10ffff}").unwrap_err().to_string(),
            "the owner name contains the unassigned code point U+10FFFF at character 2"
        );
    }

    #[test]
    fn a_zero_limit_refuses_every_text() {
        let none = TextRules::new("tag", 0);
        assert_eq!(
            none.check("a").unwrap_err().problem,
            TextProblem::TooLong(0)
        );
        assert_eq!(none.check("").unwrap_err().problem, TextProblem::Empty);
    }
}
