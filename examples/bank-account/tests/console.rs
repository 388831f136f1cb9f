//! The bank's console (`/console`, as `bank serve` mounts it) on sled and PostgreSQL,
//! through its router: the projections, an escaped owner name, and a replay that is
//! refused without the token and completes with it, the process manager running again
//! after it.

mod common;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use example_bank_account::Bank;
use example_bank_account::domain::{AccountCommand, AccountServices, Cents};
use http_body_util::BodyExt;
use tower::ServiceExt;

const TOKEN: &str = "bank-console-test";
const SCRIPT: &str = "<script>alert(1)</script>";
const DEADLINE: Duration = Duration::from_secs(30);

async fn call(app: &Router, request: Request<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

fn replay(token: Option<&str>) -> Request<Body> {
    let mut request = Request::post("/console/actions/replay")
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(token) = token {
        request = request.header("x-console-token", token);
    }
    request.body(Body::from("projection=accounts")).unwrap()
}

async fn check(url: &str, inline: bool) {
    let services = AccountServices::new(Cents::new(1_000_000).unwrap());
    let bank = Bank::open(url, services).await.unwrap();
    bank.start();
    let open = AccountCommand::open("acc-1", SCRIPT);
    bank.execute("acc-1", open).await.unwrap();
    let deposit = AccountCommand::Deposit(Cents::new(500).unwrap());
    bank.execute("acc-1", deposit).await.unwrap();
    let app =
        example_bank_account::http::console(&bank, Some(TOKEN.into()), std::future::pending());

    let (status, overview) =
        call(&app, Request::get("/console").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    for projection in ["accounts", "transfers"] {
        assert!(
            overview.contains(&format!(r#"<tr data-projection="{projection}">"#)),
            "{overview}"
        );
    }
    assert_eq!(
        overview.contains(r#"data-label="checkpoint">inline<"#),
        inline,
        "{overview}"
    );

    let stream = Request::get("/console/stream?type=account&id=acc-1").body(Body::empty());
    let (status, page) = call(&app, stream.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !page.contains(SCRIPT) && page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(page.contains("MoneyDeposited"), "{page}");

    let (status, refused) = call(&app, replay(None)).await;
    assert_eq!(
        (status, refused.contains("token is required")),
        (StatusCode::FORBIDDEN, true),
        "{refused}"
    );
    let (status, accepted) = call(&app, replay(Some(TOKEN))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let job = loop {
        let (_, job) = call(
            &app,
            Request::get("/console/jobs/1").body(Body::empty()).unwrap(),
        )
        .await;
        let job: serde_json::Value = serde_json::from_str(&job).unwrap();
        if job["state"] != "running" {
            break job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replay did not end: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (job["state"].as_str(), job["percent"].as_u64()),
        (Some("done"), Some(100)),
        "{job}"
    );
    // The process manager, stopped for the replay, runs again; the read model is whole.
    while !bank.supervision()[0].running {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the process manager did not restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(bank.balance("acc-1").await.unwrap().balance, "5.00");
    bank.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    check(
        &format!("sled:{}", dir.path().join("bank").display()),
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_on_postgres() {
    let Some(schema) = common::pg::Schema::fresh().await else {
        return;
    };
    check(&schema.url(), true).await;
}
