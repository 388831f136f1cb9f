//! Account ids and owner names: the bank's text fields, checked by
//! [`cqrs_core::text`] (no control, format, separator or unassigned characters, no
//! padding, not empty, kept in Normalization Form C), with the bank's names and limits.

use cqrs_core::text::TextRules;
pub use cqrs_core::text::{InvalidText, TextProblem};

/// A text field of the bank's commands, as the command line and the HTTP API name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// An account id (`account`, or `{id}` in a URL path): at most 100 characters.
    Account,
    /// An owner name (`owner`): at most 200 characters.
    Owner,
    /// A transfer's source account id (`from`).
    From,
    /// A transfer's destination account id (`to`).
    To,
}

impl Field {
    /// The field's name in refusals and its limit (100 characters for an id, 200 for a
    /// name).
    pub const fn rules(self) -> TextRules {
        match self {
            Field::Account => TextRules::new("account id", 100),
            Field::Owner => TextRules::new("owner name", 200),
            Field::From => TextRules::new("source account id (`from`)", 100),
            Field::To => TextRules::new("destination account id (`to`)", 100),
        }
    }

    /// `text` in Normalization Form C, if this field accepts it ([`TextRules::check`]).
    ///
    /// # Errors
    /// [`InvalidText`] naming this field and what is wrong.
    pub fn normalize(self, text: &str) -> Result<String, InvalidText> {
        self.rules().check(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_field_has_its_name_and_limit() {
        for (field, name, max) in [
            (Field::Account, "the account id", 100),
            (Field::Owner, "the owner name", 200),
            (Field::From, "the source account id (`from`)", 100),
            (Field::To, "the destination account id (`to`)", 100),
        ] {
            assert!(field.normalize(&"x".repeat(max)).is_ok(), "{field:?}");
            let refused = field.normalize(&"x".repeat(max + 1)).unwrap_err();
            assert_eq!(refused.problem, TextProblem::TooLong(max));
            let message = format!("{name} is longer than {max} characters");
            assert_eq!(refused.to_string(), message);
            assert_eq!(field.normalize("caf\u{65}\u{301}").unwrap(), "caf\u{e9}");
        }
    }
}
