//! The derive's compile errors, with their spans: each `ui/*.rs` must fail to compile
//! with exactly the errors of its `.stderr` file.
//!
//! The expected output is the compiler's; after a Rust upgrade that only rewords it,
//! regenerate the files with `TRYBUILD=overwrite cargo test -p cqrs-derive --test ui`
//! and review the diff.

#[test]
fn compile_errors() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
