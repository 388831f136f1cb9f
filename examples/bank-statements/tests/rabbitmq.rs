//! The two services through RabbitMQ: `bank relay --to amqp://…` publishes to a topic
//! exchange, `statements serve --from amqp://…` consumes from its own queue, in a vhost
//! of the test's own (deleted at the end, also on failure).

mod common;

use std::process::Command;

use common::{Killed, bank, bank_bin, bank_view, months, statement_at};

/// A RabbitMQ vhost of the test's own; deleted on drop.
struct Vhost(String);

impl Vhost {
    /// `None` (after saying `skipped`) without a broker, unless `CQRS_REQUIRE_RABBITMQ=1`.
    fn new() -> Option<Vhost> {
        let up = std::net::TcpStream::connect("127.0.0.1:5672").is_ok();
        let name = format!("cqrs_t_{}", uuid::Uuid::new_v4().simple());
        let added = up
            && rabbitmqctl(&["add_vhost", &name])
            && rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        if !added {
            assert!(
                std::env::var("CQRS_REQUIRE_RABBITMQ").as_deref() != Ok("1"),
                "CQRS_REQUIRE_RABBITMQ=1 but RabbitMQ (or rabbitmqctl) is not available"
            );
            eprintln!("skipped: RabbitMQ is not available at 127.0.0.1:5672");
            return None;
        }
        Some(Vhost(name))
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.0)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        if !rabbitmqctl(&["delete_vhost", &self.0]) {
            eprintln!("could not delete the test vhost {}", self.0);
        }
    }
}

fn rabbitmqctl(args: &[&str]) -> bool {
    Command::new("rabbitmqctl")
        .args(["--timeout", "30"])
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn statements_follow_the_bank_through_rabbitmq() {
    let Some(vhost) = Vhost::new() else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bank_store = format!("sled:{}", dir.path().join("bank").display());
    let store = format!("sled:{}", dir.path().join("statements").display());
    bank(&bank_store, &["open", "ada"]);
    bank(&bank_store, &["open", "bo", "--owner", "Bo"]);
    bank(&bank_store, &["deposit", "ada", "100"]);
    bank(&bank_store, &["transfer", "ada", "bo", "20.50"]);
    bank(&bank_store, &["withdraw", "bo", "0.50"]);
    let (ada_cents, ada_version, ada_months) = bank_view(&bank_store, "ada");
    let (bo_cents, bo_version, _) = bank_view(&bank_store, "bo");

    let url = vhost.url();
    let port = common::free_port();
    let server = format!("http://127.0.0.1:{port}");
    let broker = [
        "--from",
        &url,
        "--stream",
        "bank-events",
        "--prefix",
        "bank",
    ];
    // The consumer first: its queue must be bound before the relay publishes (an
    // unroutable message is refused, and the relay would only retry).
    let mut consumer = Killed::start(
        Command::new(common::statements_bin())
            .args([
                "--store",
                &store,
                "serve",
                "--addr",
                &format!("127.0.0.1:{port}"),
            ])
            .args(broker),
        &dir.path().join("statements.log"),
    );
    let mut relay = Killed::start(
        Command::new(bank_bin())
            .args(["--store", &bank_store, "relay", "--to", &url])
            .args(["--stream", "bank-events", "--prefix", "bank"]),
        &dir.path().join("relay.log"),
    );
    let ada = statement_at(&store, &["--server", &server], "ada", ada_version);
    let bo = statement_at(&store, &["--server", &server], "bo", bo_version);
    relay.assert_running();
    consumer.assert_running();
    assert_eq!(ada["balance_cents"], ada_cents, "{ada}");
    assert_eq!(months(&ada), ada_months, "{ada}");
    assert_eq!(bo["balance_cents"], bo_cents, "{bo}");
    drop(relay);
    drop(consumer);
    drop(vhost);
}
