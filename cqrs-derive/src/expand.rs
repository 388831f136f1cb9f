//! The `impl ::cqrs_core::DomainEvent` that the derive writes.

use std::collections::HashMap;

use proc_macro2::TokenStream;
use quote::quote;
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Data, DataEnum, DataStruct, DeriveInput, Ident, LitStr};

use crate::attr::{self, Errors, EventAttr};

/// One stored event type: a struct, or one variant of an enum.
struct EventType {
    /// The variant (`None` for a struct).
    variant: Option<Ident>,
    /// The stored name.
    name: LitStr,
    /// `None`: the trait's default, 1.
    schema_version: Option<u32>,
}

/// Expands `#[derive(DomainEvent)]` on `input`, or returns every mistake found in it.
pub(crate) fn derive(input: &DeriveInput) -> syn::Result<TokenStream> {
    let events = match &input.data {
        Data::Enum(data) => enum_events(input, data)?,
        Data::Struct(data) => vec![struct_event(input, data)?],
        Data::Union(data) => {
            return Err(syn::Error::new(
                data.union_token.span(),
                "DomainEvent cannot be derived for a union: use an enum or a struct",
            ));
        }
    };
    Ok(implementation(input, &events))
}

/// A struct: one event type, named by the struct or its `#[event(name = "...")]`.
fn struct_event(input: &DeriveInput, data: &DataStruct) -> syn::Result<EventType> {
    let mut errors = Errors::default();
    let parsed = errors.check(EventAttr::parse(&input.attrs));
    attr::reject_on_fields(&data.fields, &mut errors);
    errors.finish()?;
    let parsed = parsed.unwrap_or_default();
    Ok(EventType {
        variant: None,
        name: parsed.name.unwrap_or_else(|| default_name(&input.ident)),
        schema_version: parsed.schema_version,
    })
}

/// An enum: one event type per variant, in declaration order, each name used once.
fn enum_events(input: &DeriveInput, data: &DataEnum) -> syn::Result<Vec<EventType>> {
    let mut errors = Errors::default();
    for attr in input.attrs.iter().filter(|attr| attr::is_event(attr)) {
        errors.push(syn::Error::new_spanned(
            attr,
            "on an enum, #[event(...)] goes on each variant, not on the enum",
        ));
    }
    let mut events = Vec::with_capacity(data.variants.len());
    // Name -> the variant that took it first, for the duplicate error.
    let mut taken: HashMap<String, Ident> = HashMap::new();
    for variant in &data.variants {
        attr::reject_on_fields(&variant.fields, &mut errors);
        let Some(parsed) = errors.check(EventAttr::parse(&variant.attrs)) else {
            continue;
        };
        let name = parsed.name.unwrap_or_else(|| default_name(&variant.ident));
        if let Some(first) = taken.get(&name.value()) {
            errors.at(
                name.span(),
                format!(
                    "duplicate event type name {:?}: variant `{first}` already has it; \
                     each variant needs its own name",
                    name.value()
                ),
            );
        } else {
            taken.insert(name.value(), variant.ident.clone());
        }
        if name.value() == TOMBSTONE
            && !matches!(&variant.fields, syn::Fields::Unnamed(f) if f.unnamed.len() == 1)
        {
            errors.at(
                name.span(),
                format!(
                    "the {TOMBSTONE:?} variant holds one field, a cqrs_core::StreamDeleted: \
                     `{}(StreamDeleted)`",
                    variant.ident
                ),
            );
        }
        events.push(EventType {
            variant: Some(variant.ident.clone()),
            name,
            schema_version: parsed.schema_version,
        });
    }
    errors.finish()?;
    Ok(events)
}

/// The name of the tombstone's event type (`cqrs_core::STREAM_DELETED`).
const TOMBSTONE: &str = "$stream-deleted";

/// The name of a type or variant without `#[event(name = "...")]`: its identifier, as
/// written (without `r#`), spanned there so a duplicate points at it.
fn default_name(ident: &Ident) -> LitStr {
    LitStr::new(&ident.unraw().to_string(), ident.span())
}

/// The impl block. `schema_version` is written only when an event type sets one, so the
/// trait's default (1) is kept otherwise.
fn implementation(input: &DeriveInput, events: &[EventType]) -> TokenStream {
    let ty = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let names = events.iter().map(|event| &event.name);
    let event_type = dispatch(events, |event| {
        let name = &event.name;
        quote!(#name)
    });
    let schema_version = events
        .iter()
        .any(|event| event.schema_version.is_some())
        .then(|| {
            let body = dispatch(events, |event| {
                let version = event.schema_version.unwrap_or(1);
                quote!(#version)
            });
            quote! {
                fn schema_version(&self) -> u32 {
                    #body
                }
            }
        });
    let from_stream_deleted = events
        .iter()
        .filter(|event| event.name.value() == TOMBSTONE)
        .find_map(|event| event.variant.as_ref())
        .map(|variant| {
            quote! {
                fn from_stream_deleted(deleted: ::cqrs_core::StreamDeleted) -> Option<Self> {
                    Some(Self::#variant(deleted))
                }
            }
        });
    quote! {
        #[automatically_derived]
        impl #impl_generics ::cqrs_core::DomainEvent for #ty #ty_generics #where_clause {
            const EVENT_TYPES: &'static [&'static str] = &[#(#names),*];

            fn event_type(&self) -> &'static str {
                #event_type
            }

            #schema_version

            #from_stream_deleted
        }
    }
}

/// The body of a method whose value depends only on the event type: the value itself for
/// a struct, a `match` over the variants for an enum (`match *self {}` for an enum
/// without variants).
fn dispatch(events: &[EventType], value: impl Fn(&EventType) -> TokenStream) -> TokenStream {
    if let [event @ EventType { variant: None, .. }] = events {
        return value(event);
    }
    let arms = events.iter().filter_map(|event| {
        let variant = event.variant.as_ref()?;
        let value = value(event);
        Some(quote!(Self::#variant { .. } => #value,))
    });
    quote! {
        match *self {
            #(#arms)*
        }
    }
}
