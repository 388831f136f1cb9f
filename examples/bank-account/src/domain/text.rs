//! Account ids and owner names: which text is accepted, and in which form it is kept.
//!
//! Both end up in terminals, logs and JSON, and an account id names a stream. So text is
//! refused if it holds a character that changes how a line shows or that cannot be seen:
//! control characters (general category Cc: NUL, the ESC of ANSI escapes, CR, LF, tab,
//! DEL, the C1 controls), format characters (Cf: the bidi embeddings, overrides and
//! isolates U+202A–U+202E and U+2066–U+2069, the zero-width space and joiners
//! U+200B–U+200D, the word joiner U+2060, the byte order mark U+FEFF, the soft
//! hyphen…), line and paragraph separators (Zl, Zp), and unassigned code points (Cn,
//! whose normalisation a later Unicode version may change). Text that is empty, starts
//! or ends with white space, or is longer than [`Field::max_chars`] is refused too.
//!
//! Accepted text is kept in Unicode Normalization Form C: `café` typed with a combining
//! accent (NFD) and `café` with a precomposed `é` (NFC) are one account. The categories
//! come from the Unicode Character Database (`DerivedGeneralCategory.txt`) through the
//! `unicode-properties` crate.

use std::fmt;

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// A text field of the bank's commands, as the command line and the HTTP API name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// An account id (`account`, or `{id}` in a URL path).
    Account,
    /// An owner name (`owner`).
    Owner,
    /// A transfer's source account id (`from`).
    From,
    /// A transfer's destination account id (`to`).
    To,
}

impl Field {
    /// The longest accepted text, in characters (after normalisation): 100 for an
    /// account id, 200 for an owner name.
    pub const fn max_chars(self) -> usize {
        match self {
            Field::Owner => 200,
            Field::Account | Field::From | Field::To => 100,
        }
    }

    /// `text` in Normalization Form C, if it is acceptable for this field (see the
    /// module's documentation).
    ///
    /// # Errors
    /// [`InvalidText`] naming this field and what is wrong.
    ///
    /// # Examples
    /// ```
    /// use example_bank_account::domain::{Field, TextProblem};
    ///
    /// assert_eq!(Field::Account.normalize("cafe\u{301}").unwrap(), "caf\u{e9}");
    /// let refused = Field::Owner.normalize("Ada\r\nbob").unwrap_err();
    /// assert_eq!(refused.field, Field::Owner);
    /// assert!(matches!(refused.problem, TextProblem::Control { at: 4, .. }));
    /// ```
    pub fn normalize(self, text: &str) -> Result<String, InvalidText> {
        let invalid = |problem| InvalidText {
            field: self,
            problem,
        };
        let text: String = text.nfc().collect();
        for (i, ch) in text.chars().enumerate() {
            let at = i + 1;
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
        if text.trim().is_empty() {
            return Err(invalid(TextProblem::Empty));
        }
        if text.trim() != text {
            return Err(invalid(TextProblem::Padded));
        }
        if text.chars().count() > self.max_chars() {
            return Err(invalid(TextProblem::TooLong(self.max_chars())));
        }
        Ok(text)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Account => "account id",
            Field::Owner => "owner name",
            Field::From => "source account id (`from`)",
            Field::To => "destination account id (`to`)",
        })
    }
}

/// A text refused for a field: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {field} {problem}")]
pub struct InvalidText {
    /// The field.
    pub field: Field,
    /// What is wrong with its text.
    pub problem: TextProblem,
}

/// What is wrong with a text; `at` counts characters from 1, after normalisation.
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
    #[error("contains the control character {} at character {at}", code(*.ch))]
    Control {
        /// The character.
        ch: char,
        /// Where.
        at: usize,
    },
    /// An invisible format character (Cf), such as a bidi override or a zero-width space.
    #[error("contains the invisible format character {} at character {at}", code(*.ch))]
    Format {
        /// The character.
        ch: char,
        /// Where.
        at: usize,
    },
    /// A line or paragraph separator (Zl, Zp).
    #[error("contains the line separator {} at character {at}", code(*.ch))]
    Separator {
        /// The character.
        ch: char,
        /// Where.
        at: usize,
    },
    /// A code point that Unicode has not assigned (Cn).
    #[error("contains the unassigned code point {} at character {at}", code(*.ch))]
    Unassigned {
        /// The character.
        ch: char,
        /// Where.
        at: usize,
    },
}

/// `U+001B`: a character named by its code, never printed as itself.
fn code(ch: char) -> String {
    format!("U+{:04X}", u32::from(ch))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!(Field::Account.normalize(text).unwrap(), kept, "{text:?}");
        }
        let longest = "é".repeat(100);
        let decomposed = "e\u{301}".repeat(100);
        assert_eq!(Field::Account.normalize(&decomposed).unwrap(), longest);
        assert!(Field::Owner.normalize(&"x".repeat(200)).is_ok());
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
            let refused = Field::From.normalize(&text).unwrap_err();
            assert_eq!(refused.problem, problem, "{text:?}");
            assert_eq!(refused.field, Field::From, "{text:?}");
            let message = refused.to_string();
            assert!(
                message.starts_with("the source account id (`from`) "),
                "{message}"
            );
            assert!(!message.contains(|c: char| c.is_control()), "{message:?}");
        }
        assert_eq!(
            Field::Account
                .normalize("a\u{202e}b")
                .unwrap_err()
                .to_string(),
            "the account id contains the invisible format character U+202E at character 2"
        );
        assert_eq!(
            Field::Owner
                .normalize(&"x".repeat(201))
                .unwrap_err()
                .to_string(),
            "the owner name is longer than 200 characters"
        );
    }
}
