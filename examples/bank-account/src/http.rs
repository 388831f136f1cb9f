//! The HTTP API: the bank's commands and reads as JSON over HTTP.
//!
//! | method and path                     | body                         | answer            |
//! |-------------------------------------|------------------------------|-------------------|
//! | `POST /accounts`                    | `{"account", "owner"?}`      | 201, the account  |
//! | `POST /accounts/{id}/deposits`      | `{"amount": "12.50"}`        | 200, the balance  |
//! | `POST /accounts/{id}/withdrawals`   | `{"amount": "12.50"}`        | 200, the balance  |
//! | `POST /accounts/{id}/close`         |                              | 200, the balance  |
//! | `POST /transfers`                   | `{"from", "to", "amount"}`   | 200, the outcome  |
//! | `GET /accounts`                     |                              | 200, all accounts |
//! | `GET /accounts/{id}`                |                              | 200, the balance  |
//! | `GET /accounts/{id}/history`        |                              | 200, the history  |
//! | `GET /transfers/{id}`               |                              | 200, the outcome  |
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
use serde_json::{Value, json};
use uuid::Uuid;

use crate::domain::{AccountCommand, Cents};
use crate::{Bank, BankError, full_chain};

/// An error as an HTTP answer.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl From<BankError> for ApiError {
    fn from(e: BankError) -> Self {
        let status = if e.is_invalid_input() {
            StatusCode::BAD_REQUEST
        } else if e.is_not_found() {
            StatusCode::NOT_FOUND
        } else if e.is_rejected() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else if e.is_conflict() {
            StatusCode::CONFLICT
        } else {
            StatusCode::SERVICE_UNAVAILABLE
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

/// An amount as JSON: a string or a number.
#[derive(Debug, Deserialize)]
struct Amount(Value);

impl Amount {
    fn cents(&self) -> Result<Cents, ApiError> {
        let text = self
            .0
            .as_str()
            .map_or_else(|| self.0.to_string(), str::to_owned);
        let amount = text.parse::<Cents>();
        amount.map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("amount {text:?}: {e}")))
    }
}

#[derive(Debug, Deserialize)]
struct OpenBody {
    account: String,
    owner: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AmountBody {
    amount: Amount,
}

#[derive(Debug, Deserialize)]
struct TransferBody {
    from: String,
    to: String,
    amount: Amount,
}

/// The API's routes over `bank`; its projections must be running (see [`Bank::start`]).
pub fn router(bank: Bank) -> Router {
    Router::new()
        .route("/accounts", post(open).get(accounts))
        .route("/accounts/{id}", get(balance))
        .route("/accounts/{id}/history", get(history))
        .route("/accounts/{id}/deposits", post(deposit))
        .route("/accounts/{id}/withdrawals", post(withdraw))
        .route("/accounts/{id}/close", post(close))
        .route("/transfers", post(transfer))
        .route("/transfers/{id}", get(transfer_status))
        .with_state(bank)
}

fn reply(value: impl serde::Serialize) -> ApiResult {
    Ok(Json(json!(value)))
}

async fn open(
    State(bank): State<Bank>,
    body: Result<Json<OpenBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body?;
    let owner = body.owner.unwrap_or_else(|| body.account.clone());
    let row = bank
        .execute(&body.account, AccountCommand::Open { owner })
        .await?;
    Ok((StatusCode::CREATED, Json(json!(row))))
}

async fn deposit(
    State(bank): State<Bank>,
    Path(id): Path<String>,
    body: Result<Json<AmountBody>, JsonRejection>,
) -> ApiResult {
    let amount = body?.amount.cents()?;
    reply(
        bank.execute(&id, AccountCommand::Deposit { amount })
            .await?,
    )
}

async fn withdraw(
    State(bank): State<Bank>,
    Path(id): Path<String>,
    body: Result<Json<AmountBody>, JsonRejection>,
) -> ApiResult {
    let amount = body?.amount.cents()?;
    reply(
        bank.execute(&id, AccountCommand::Withdraw { amount })
            .await?,
    )
}

async fn close(State(bank): State<Bank>, Path(id): Path<String>) -> ApiResult {
    reply(bank.execute(&id, AccountCommand::Close).await?)
}

async fn transfer(
    State(bank): State<Bank>,
    body: Result<Json<TransferBody>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body?;
    reply(
        bank.transfer(&body.from, &body.to, body.amount.cents()?)
            .await?,
    )
}

async fn transfer_status(State(bank): State<Bank>, Path(id): Path<String>) -> ApiResult {
    let transfer_id: Uuid = id.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a transfer id"),
        )
    })?;
    reply(bank.transfer_outcome(transfer_id).await?)
}

async fn balance(State(bank): State<Bank>, Path(id): Path<String>) -> ApiResult {
    reply(bank.balance(&id).await?)
}

async fn history(State(bank): State<Bank>, Path(id): Path<String>) -> ApiResult {
    let history = bank.history(&id).await?;
    reply(json!({ "account": id, "history": history }))
}

async fn accounts(State(bank): State<Bank>) -> ApiResult {
    reply(json!({ "accounts": bank.list_accounts().await? }))
}

/// Serves the API on `listener` with the projections running in the background, until
/// `shutdown` completes.
///
/// # Errors
/// [`BankError::Store`] if serving or a projection fails.
pub async fn serve(
    bank: Bank,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BankError> {
    bank.start();
    let served = axum::serve(listener, router(bank.clone()))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(BankError::store);
    let projections = bank.stop().await;
    served.and(projections)
}

#[cfg(test)]
mod tests {
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
                BankError::NotCaughtUp {
                    waited: std::time::Duration::ZERO,
                },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(ApiError::from(error).0, status);
        }
    }
}
