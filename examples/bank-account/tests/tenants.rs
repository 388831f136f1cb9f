//! Tenants end to end, on sled and PostgreSQL: `bank tenants create|list|migrate`, and
//! `--tenant` on commands, reads and the operations subcommand. A tenant never sees
//! another's accounts, events, counts or projections; an unknown or invalid tenant is
//! refused (exit 2) and nothing is created.

mod common;

use common::pg::Schema;
use common::{bank_on, ok_on};
use serde_json::{Value, json};

/// The account ids a read of `accounts` shows.
fn accounts(url: &str, tenant: Option<&str>) -> Vec<String> {
    let mut args = vec!["accounts"];
    if let Some(tenant) = tenant {
        args.extend(["--tenant", tenant]);
    }
    let document = ok_on(url, &args);
    let rows = document["accounts"].as_array().cloned().unwrap_or_default();
    rows.iter()
        .map(|row| row["account"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn stats(url: &str, tenant: &str) -> Value {
    ok_on(url, &["--tenant", tenant, "--json", "stats"])
}

/// The log positions of a tenant's events, by stream.
fn event_streams(url: &str, tenant: &str) -> Vec<String> {
    let document = ok_on(url, &["--tenant", tenant, "--json", "events"]);
    let events = document["events"].as_array().cloned().unwrap_or_default();
    events
        .iter()
        .map(|e| e["stream"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The scenario, on any store URL that has tenants.
fn tenants_are_separate(url: &str) {
    assert_eq!(ok_on(url, &["tenants", "list"]), json!({ "tenants": [] }));
    ok_on(url, &["tenants", "create", "acme"]);
    ok_on(url, &["tenants", "create", "globex"]);
    ok_on(url, &["tenants", "create", "acme"]); // again: nothing changes
    assert_eq!(
        ok_on(url, &["tenants", "list"]),
        json!({ "tenants": ["acme", "globex"] })
    );

    // The same account id in two tenants: two accounts.
    ok_on(url, &["--tenant", "acme", "open", "a1", "--owner", "Ada"]);
    ok_on(url, &["--tenant", "acme", "deposit", "a1", "10"]);
    ok_on(url, &["--tenant", "globex", "open", "a1", "--owner", "Bob"]);
    ok_on(url, &["--tenant", "globex", "open", "g2"]);
    let balance = |tenant| ok_on(url, &["--tenant", tenant, "balance", "a1"])["balance"].clone();
    assert_eq!(balance("acme"), json!("10.00"));
    assert_eq!(balance("globex"), json!("0.00"));
    assert_eq!(accounts(url, Some("acme")), ["a1"]);
    assert_eq!(accounts(url, Some("globex")), ["a1", "g2"]);
    assert!(
        accounts(url, None).is_empty(),
        "the default tenant has none"
    );

    // The operations subcommand sees one tenant at a time.
    let (acme, globex) = (stats(url, "acme"), stats(url, "globex"));
    assert_eq!((&acme["streams"], &acme["events"]), (&json!(1), &json!(2)));
    assert_eq!(
        (&globex["streams"], &globex["events"]),
        (&json!(2), &json!(2))
    );
    assert_eq!(event_streams(url, "acme"), ["account/a1", "account/a1"]);
    assert_eq!(event_streams(url, "globex"), ["account/a1", "account/g2"]);
    // A rebuild of one tenant's read model replays only its own events.
    ok_on(
        url,
        &["--tenant", "globex", "replay", "--projection", "accounts"],
    );
    assert_eq!(accounts(url, Some("globex")), ["a1", "g2"]);
    assert_eq!(accounts(url, Some("acme")), ["a1"]);
    assert_eq!(balance("acme"), json!("10.00"));

    // Unknown and invalid tenants: exit 2, nothing created.
    let (code, _, stderr) = bank_on(url, &["--tenant", "initech", "open", "x"]);
    assert_eq!(code, 2, "unknown tenant: {stderr}");
    assert!(stderr.contains("unknown tenant initech"), "{stderr}");
    for bad in ["Acme", "acme.eu", "ac\"me", "..", "a;drop"] {
        let (code, _, stderr) = bank_on(url, &["--tenant", bad, "accounts"]);
        assert_eq!(code, 2, "{bad:?}: {stderr}");
        assert!(stderr.contains("invalid tenant name"), "{stderr}");
        let (code, _, stderr) = bank_on(url, &["tenants", "create", bad]);
        assert_eq!(code, 2, "{bad:?}: {stderr}");
    }
    assert_eq!(
        ok_on(url, &["tenants", "list"]),
        json!({ "tenants": ["acme", "globex"] })
    );
    assert_eq!(
        ok_on(url, &["tenants", "migrate"]),
        json!({ "migrated": 2 })
    );
}

#[test]
fn tenants_on_sled() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("bank");
    let url = format!("sled:{}", path.display());
    tenants_are_separate(&url);
    let tenants = dir.path().join("bank.tenants");
    let mut names: Vec<_> = std::fs::read_dir(&tenants)
        .expect("the tenants' directory")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .into_string()
                .expect("utf-8")
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["acme", "globex"],
        "a database per tenant, nothing else"
    );
}

#[test]
fn tenants_on_postgres() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let Some(schema) = runtime.block_on(Schema::fresh()) else {
        return;
    };
    tenants_are_separate(&schema.url());
    let schemas: Vec<String> = runtime.block_on(async {
        use cqrs_postgres::sqlx::{self, Connection};
        let mut conn = sqlx::PgConnection::connect(&common::pg::database_url())
            .await
            .expect("connect");
        sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1) ORDER BY 1",
        )
        .bind(format!("{}_", schema.0))
        .fetch_all(&mut conn)
        .await
        .expect("list schemas")
    });
    assert_eq!(
        schemas,
        [format!("{}_acme", schema.0), format!("{}_globex", schema.0)],
        "a schema per tenant, none for the refused names"
    );
}
