//! The HTTP API: the bank's commands and reads as JSON over HTTP (routes in [`router`]).
//! Commands answer the account as the command left it (201 for a new one) or the
//! transfer's outcome (202 while it is pending); every answer has a `read_model` object
//! saying whether the read model shows it yet. A committed command always succeeds,
//! also when the read model is behind. An `Idempotency-Key` header makes a command safe
//! to retry: it becomes the command id, so a retry is applied once and answers the same
//! (with the header `Idempotent-Replayed: true`).
//!
//! Errors are `{"error": "..."}` with a status chosen by the [`BankError`] predicates:
//! 400 (bad input), 404 (unknown account or transfer), 409 (conflict after retries), 422
//! (domain rejection) or 503 (store unavailable, projections behind). Amounts are
//! strings or numbers: `"12"`, `"12.5"`, `12.50`.
//!
//! Account ids (in the body or the path) and owner names are checked and kept in Unicode
//! Normalization Form C ([`Field::normalize`](crate::domain::Field::normalize)): a
//! control or format character, padding, an empty or overlong text is 400 naming the
//! field, and `/accounts/cafe%CC%81` is the account `café`.
//!
//! A transfer that was carried out but failed (the credit was refused and the source
//! refunded) answers **200** with `{"status": "failed", "reason": ...}`: the request was
//! valid, the transfer exists and its outcome is a failure. An error status would say
//! that nothing happened. A transfer refused before anything is written answers 400, 404
//! or 422.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use cqrs_core::{CommandOptions, Inspect};
use uuid::Uuid;

use crate::Bank;
use crate::bank::Receipt;
use crate::domain::{AccountCommand, Cents};
use crate::error::{BankError, Result, full_chain};

/// An error as an HTTP answer: the status, and the message for `{"error": ...}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl From<BankError> for ApiError {
    fn from(e: BankError) -> Self {
        let status = match () {
            () if e.is_invalid_input() => StatusCode::BAD_REQUEST,
            () if e.is_not_found() => StatusCode::NOT_FOUND,
            () if e.is_gone() => StatusCode::GONE,
            () if e.is_rejected() => StatusCode::UNPROCESSABLE_ENTITY,
            () if e.is_conflict() => StatusCode::CONFLICT,
            () => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, full_chain(&e))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError(StatusCode::BAD_REQUEST, e.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// A request body: an account and owner to open, an amount (a string or a number), or a
/// transfer.
#[derive(Debug, Deserialize)]
struct Body {
    account: Option<String>,
    owner: Option<String>,
    from: Option<String>,
    to: Option<String>,
    /// Kept as written: a JSON number is read from its text, never through a float.
    amount: Option<Box<RawValue>>,
}

type Input = Result<Json<Body>, JsonRejection>;

/// The command id that an `Idempotency-Key` header gives, if there is one.
fn command_id(headers: &HeaderMap) -> Result<Option<Uuid>, ApiError> {
    let Some(key) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = key.to_str().ok().filter(|key| !key.is_empty());
    let key = key.ok_or_else(|| bad("Idempotency-Key must be non-empty visible ASCII".into()))?;
    Ok(Some(CommandOptions::id_from_key(key)))
}

/// A command's answer: `status` (or 200), and the replay header for a retry.
fn receipt(status: StatusCode, receipt: Receipt) -> Response {
    let mut response = (status, Json(json!(receipt))).into_response();
    if receipt.already_applied {
        let replayed = axum::http::HeaderValue::from_static("true");
        response
            .headers_mut()
            .insert("idempotent-replayed", replayed);
    }
    response
}

fn bad(message: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message)
}

fn reply(value: impl serde::Serialize) -> ApiResult {
    Ok(Json(json!(value)))
}

impl Body {
    fn field(value: Option<String>, name: &str) -> Result<String, ApiError> {
        value.ok_or_else(|| bad(format!("missing field `{name}`")))
    }

    fn amount(&self) -> Result<Cents, ApiError> {
        let raw = self.amount.as_deref().map_or("", RawValue::get);
        let text = serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw.to_owned());
        let amount = text.parse();
        amount.map_err(|e| bad(format!("amount {text:?}: {e}")))
    }
}

/// The API's routes over `bank`; its process manager must be running ([`Bank::start`]).
pub fn router(bank: Bank) -> Router {
    Router::new()
        .route("/accounts", post(open).get(accounts))
        .route("/accounts/{id}", get(balance))
        .route("/accounts/{id}/history", get(history))
        .route("/accounts/{id}/{action}", post(account))
        .route("/transfers", post(transfer))
        .route("/transfers/{id}", get(transfer_status))
        .with_state(bank)
}

async fn open(
    State(bank): State<Bank>,
    headers: HeaderMap,
    body: Input,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let account = Body::field(body.account, "account")?;
    let owner = body.owner.unwrap_or_else(|| account.clone());
    let id = command_id(&headers)?;
    let open = AccountCommand::open(account.as_str(), owner);
    let done = bank.execute_with(&account, open, id).await?;
    Ok(receipt(StatusCode::CREATED, done))
}

/// `deposits`, `withdrawals`, `close` and `forget` (the owner's name is erased for
/// good: 200 with `{"account", "owner": "(erased)", "already_forgotten"}`).
async fn account(
    State(bank): State<Bank>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Input,
) -> Result<Response, ApiError> {
    let command = match action.as_str() {
        "deposits" => AccountCommand::Deposit(body?.amount()?),
        "withdrawals" => AccountCommand::Withdraw(body?.amount()?),
        "close" => AccountCommand::Close,
        "forget" => {
            return Ok((StatusCode::OK, Json(json!(bank.forget(&id).await?))).into_response());
        }
        _ => return Err(ApiError(StatusCode::NOT_FOUND, action)),
    };
    let done = bank
        .execute_with(&id, command, command_id(&headers)?)
        .await?;
    Ok(receipt(StatusCode::OK, done))
}

/// 200 with the outcome once the transfer has ended (`completed` or `failed`), 202 while
/// it is `pending` (the process manager has not finished it within the wait).
async fn transfer(
    State(bank): State<Bank>,
    headers: HeaderMap,
    body: Input,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let amount = body.amount()?;
    let (from, to) = (Body::field(body.from, "from")?, Body::field(body.to, "to")?);
    let id = command_id(&headers)?;
    let outcome = bank.transfer_with(&from, &to, amount, id).await?;
    let status = match outcome.status {
        crate::domain::TransferStatus::Pending => StatusCode::ACCEPTED,
        _ => StatusCode::OK,
    };
    Ok((status, Json(json!(outcome))).into_response())
}

async fn transfer_status(State(bank): State<Bank>, Path(id): Path<String>) -> ApiResult {
    let not_an_id = |_| bad(format!("{id:?} is not a transfer id"));
    let transfer_id = id.parse().map_err(not_an_id)?;
    reply(bank.transfer_outcome(transfer_id).await?)
}

async fn balance(State(bank): State<Bank>, Path(id): Path<String>) -> ApiResult {
    reply(bank.with_status(json!(bank.balance(&id).await?)).await)
}

async fn history(State(bank): State<Bank>, Path(id): Path<String>) -> ApiResult {
    let history = json!({ "account": id, "history": bank.history(&id).await? });
    reply(bank.with_status(history).await)
}

async fn accounts(State(bank): State<Bank>) -> ApiResult {
    let accounts = json!({ "accounts": bank.list_accounts().await? });
    reply(bank.with_status(accounts).await)
}

/// The default bound of `/health/ready`'s read-model check, in events.
pub const DEFAULT_READY_MAX_LAG: u64 = 1_000;

/// How long a supervised projection that failed must have run again to count as up.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(10);

/// The API's routes and `/health/live`, `/health/ready`: ready while the store answers,
/// the process manager runs ([`SupervisorStatus::is_healthy`](cqrs_core::SupervisorStatus::is_healthy))
/// and the read model is at most `max_lag` events behind.
pub fn app(bank: Bank, max_lag: u64) -> Router {
    let (store, supervised, read_model) = (bank.clone(), bank.clone(), bank.clone());
    let health = cqrs_http::HealthChecks::new()
        .check("store", move || {
            let store = store.store().clone();
            async move {
                let probe = cqrs_core::StreamId::new("health", "probe").map_err(|e| e.to_string());
                let found = store.find_event(&probe?, Uuid::nil()).await;
                found.map(drop).map_err(|e| full_chain(&e))
            }
        })
        .check("projections", move || {
            let down: Vec<String> = (supervised.supervision().into_iter())
                .filter(|status| !status.is_healthy(SETTLE))
                .map(|s| {
                    format!(
                        "{} is not running: {}",
                        s.name,
                        s.last_error.unwrap_or_default()
                    )
                })
                .collect();
            std::future::ready(if down.is_empty() {
                Ok(())
            } else {
                Err(down.join("; "))
            })
        })
        .check("read_model", move || {
            let bank = read_model.clone();
            async move {
                match bank.read_model().lag().await.map_err(|e| full_chain(&e))? {
                    lag if lag > max_lag => Err(format!("{lag} events behind (at most {max_lag})")),
                    _ => Ok(()),
                }
            }
        });
    router(bank).merge(health.router())
}

/// The operations console ([`cqrs_console::Console`]) at `/console`, over the same
/// operations as the `bank` subcommands, with the process manager's supervision as its
/// projection state. Its actions need `token` (none: they are refused). A replay stops
/// the process manager (and on PostgreSQL takes its worker lock, refusing while another
/// `bank` process holds it) and restarts it when the replay ends. Its live tails end
/// when `closing` completes (the server's shutdown signal).
pub fn console(
    bank: &Bank,
    token: Option<String>,
    closing: impl Future<Output = ()> + Send + 'static,
) -> Router {
    let (supervised, replaying) = (bank.clone(), bank.clone());
    cqrs_console::Console::new(bank.operations())
        .base_path("/console")
        .token(token)
        .supervision(move || supervised.supervision())
        .closing_on(closing)
        .before_replay(move || {
            let bank = replaying.clone();
            async move {
                bank.stop().await.map_err(|e| full_chain(&e))?;
                match bank.lock_out_others().await {
                    Ok(lock) => Ok(Box::new(Replaying { bank, lock }) as cqrs_console::ReplayGuard),
                    Err(e) => {
                        bank.start();
                        Err(full_chain(&e))
                    }
                }
            }
        })
        .router()
}

/// Held while the console replays: the worker lock (PostgreSQL); dropped, it releases
/// the lock and restarts the process manager.
struct Replaying {
    bank: Bank,
    lock: Option<cqrs_postgres::WorkerLock>,
}

impl Drop for Replaying {
    fn drop(&mut self) {
        drop(self.lock.take());
        self.bank.start();
    }
}

/// Serves the API and the health endpoints ([`app`], default bound) on `listener`; see
/// [`serve_app`].
pub async fn serve(
    bank: Bank,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let app = app(bank.clone(), DEFAULT_READY_MAX_LAG);
    serve_app(bank, app, listener, shutdown).await
}

/// Serves `app` on `listener` with the projections running in the background, until
/// `shutdown` completes, with the framework's timeouts and limits
/// ([`cqrs_http::ServeConfig`]'s defaults); then lets requests in flight finish and stops
/// the projections. Fails with [`BankError::Store`] if a projection failed.
pub async fn serve_app(
    bank: Bank,
    app: Router,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    bank.start();
    let config = cqrs_http::ServeConfig::default();
    cqrs_http::serve(listener, app, config, shutdown).await;
    bank.stop().await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::{AccountError, TransferError};

    #[test]
    fn every_error_maps_to_its_status() {
        let cases = [
            (BankError::InvalidInput("x".into()), StatusCode::BAD_REQUEST),
            (AccountError::Unknown.into(), StatusCode::NOT_FOUND),
            (BankError::Deleted("x".into()), StatusCode::GONE),
            (TransferError::Unknown.into(), StatusCode::NOT_FOUND),
            (
                AccountError::Closed.into(),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                TransferError::SameAccount.into(),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (BankError::Conflict("x".into()), StatusCode::CONFLICT),
            (
                BankError::Store("x".into()),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                BankError::NotCaughtUp(Duration::ZERO),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(ApiError::from(error).0, status);
        }
    }
}
