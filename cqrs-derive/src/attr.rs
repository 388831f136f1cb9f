//! The `#[event(...)]` attribute: what one item (a struct or an enum variant) says.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{Attribute, Lit, LitStr};

/// The keys an `#[event(...)]` attribute accepts, for error messages.
const EXPECTED_KEYS: &str = "expected `name = \"...\"` or `schema_version = <integer>`";

/// What the `#[event(...)]` attributes of one item say. Each key may be given once,
/// across all of the item's `#[event]` attributes.
#[derive(Default)]
pub(crate) struct EventAttr {
    /// `name = "..."`: the stored event type name, never empty.
    pub(crate) name: Option<LitStr>,
    /// `schema_version = N`, with N at least 1.
    pub(crate) schema_version: Option<u32>,
}

impl EventAttr {
    /// Reads every `#[event(...)]` among `attrs`. Other attributes are left alone.
    ///
    /// The mistakes of different attributes are returned together, so one build shows
    /// them all; within one attribute, parsing stops at the first.
    pub(crate) fn parse(attrs: &[Attribute]) -> syn::Result<Self> {
        let mut parsed = EventAttr::default();
        let mut errors = Errors::default();
        for attr in attrs.iter().filter(|attr| is_event(attr)) {
            let result = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("name") {
                    let name: LitStr = meta.value()?.parse().map_err(|e| {
                        syn::Error::new(
                            e.span(),
                            "`name` must be a string, such as `name = \"MoneyDeposited\"`",
                        )
                    })?;
                    if parsed.name.is_some() {
                        return Err(syn::Error::new(meta.path.span(), "`name` is given twice"));
                    }
                    if name.value().is_empty() {
                        return Err(syn::Error::new(
                            name.span(),
                            "an event type name cannot be empty",
                        ));
                    }
                    parsed.name = Some(name);
                    Ok(())
                } else if meta.path.is_ident("schema_version") {
                    let version = parse_schema_version(meta.value()?)?;
                    if parsed.schema_version.is_some() {
                        return Err(syn::Error::new(
                            meta.path.span(),
                            "`schema_version` is given twice",
                        ));
                    }
                    parsed.schema_version = Some(version);
                    Ok(())
                } else {
                    let key = meta
                        .path
                        .get_ident()
                        .map_or_else(|| "this key".to_owned(), |ident| format!("`{ident}`"));
                    Err(meta.error(format!(
                        "unknown key {key} in #[event(...)]: {EXPECTED_KEYS}"
                    )))
                }
            });
            if let Err(error) = result {
                errors.push(error);
            }
        }
        errors.finish()?;
        Ok(parsed)
    }
}

/// Whether `attr` is one of ours.
pub(crate) fn is_event(attr: &Attribute) -> bool {
    attr.path().is_ident("event")
}

/// Reads the value of `schema_version = N`: an integer literal from 1 to `u32::MAX`.
fn parse_schema_version(input: syn::parse::ParseStream<'_>) -> syn::Result<u32> {
    const INTEGER: &str =
        "`schema_version` must be an integer from 1 to 4294967295, such as `schema_version = 2`";
    let lit: Lit = input
        .parse()
        .map_err(|e| syn::Error::new(e.span(), INTEGER))?;
    let Lit::Int(int) = lit else {
        return Err(syn::Error::new(lit.span(), INTEGER));
    };
    match int.base10_parse::<u32>() {
        Ok(0) => Err(syn::Error::new(
            int.span(),
            "schema versions start at 1: a type's first shape is version 1",
        )),
        Ok(version) => Ok(version),
        Err(_) => Err(syn::Error::new(int.span(), INTEGER)),
    }
}

/// Collects errors, to report them all at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    /// Adds an error.
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(first) => first.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// The value of `result`, or `None` after keeping its error.
    pub(crate) fn check<T>(&mut self, result: syn::Result<T>) -> Option<T> {
        result.map_err(|error| self.push(error)).ok()
    }

    /// Adds an error at `span`.
    pub(crate) fn at(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push(syn::Error::new(span, message));
    }

    /// `Err` with every error pushed, if any.
    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Errors for `#[event(...)]` where it means nothing: on fields.
pub(crate) fn reject_on_fields(fields: &syn::Fields, errors: &mut Errors) {
    for attr in fields.iter().flat_map(|field| &field.attrs) {
        if is_event(attr) {
            errors.push(syn::Error::new_spanned(
                attr,
                "#[event(...)] goes on an enum's variants or on a struct, not on fields",
            ));
        }
    }
}
