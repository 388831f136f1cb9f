//! The HTTP API: the bank's commands and reads as JSON over HTTP (routes in [`router`]).
//! Commands answer the account's row (201 for a new one) or the transfer's outcome.
//!
//! Errors are `{"error": "..."}` with a status chosen by the [`BankError`] predicates:
//! 400 (bad input), 404 (unknown account or transfer), 409 (conflict after retries), 422
//! (domain rejection) or 503 (store unavailable, projections behind). Amounts are
//! strings or numbers: `"12"`, `"12.5"`, `12.50`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::Bank;
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

async fn open(State(bank): State<Bank>, body: Input) -> Result<impl IntoResponse, ApiError> {
    let Json(body) = body?;
    let account = Body::field(body.account, "account")?;
    let owner = body.owner.unwrap_or_else(|| account.clone());
    let row = bank.execute(&account, AccountCommand::Open(owner)).await?;
    Ok((StatusCode::CREATED, Json(json!(row))))
}

/// `deposits`, `withdrawals` and `close`.
async fn account(
    State(bank): State<Bank>,
    Path((id, action)): Path<(String, String)>,
    body: Input,
) -> ApiResult {
    let command = match action.as_str() {
        "deposits" => AccountCommand::Deposit(body?.amount()?),
        "withdrawals" => AccountCommand::Withdraw(body?.amount()?),
        "close" => AccountCommand::Close,
        _ => return Err(ApiError(StatusCode::NOT_FOUND, action)),
    };
    reply(bank.execute(&id, command).await?)
}

async fn transfer(State(bank): State<Bank>, body: Input) -> ApiResult {
    let Json(body) = body?;
    let amount = body.amount()?;
    let (from, to) = (Body::field(body.from, "from")?, Body::field(body.to, "to")?);
    reply(bank.transfer(&from, &to, amount).await?)
}

async fn transfer_status(State(bank): State<Bank>, Path(id): Path<String>) -> ApiResult {
    let not_an_id = |_| bad(format!("{id:?} is not a transfer id"));
    let transfer_id = id.parse().map_err(not_an_id)?;
    reply(bank.transfer_outcome(transfer_id).await?)
}

async fn balance(State(bank): State<Bank>, Path(id): Path<String>) -> ApiResult {
    reply(bank.balance(&id).await?)
}

async fn history(State(bank): State<Bank>, Path(id): Path<String>) -> ApiResult {
    reply(json!({ "account": id, "history": bank.history(&id).await? }))
}

async fn accounts(State(bank): State<Bank>) -> ApiResult {
    reply(json!({ "accounts": bank.read_model().accounts().await? }))
}

/// Serves the API on `listener` with the projections running in the background, until
/// `shutdown` completes, with the framework's timeouts and limits
/// ([`cqrs_http::ServeConfig`]'s defaults); then lets requests in flight finish and stops
/// the projections. Fails with [`BankError::Store`] if a projection failed.
pub async fn serve(
    bank: Bank,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    bank.start();
    let config = cqrs_http::ServeConfig::default();
    cqrs_http::serve(listener, router(bank.clone()), config, shutdown).await;
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
