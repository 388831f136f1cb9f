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
//! Errors are `{"error": "..."}` with 400 (bad input), 404 (unknown account or
//! transfer), 409 (conflict after retries), 422 (domain rejection) or 503 (store
//! unavailable). Amounts are strings or numbers: `"12"`, `"12.5"`, `12.50`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::domain::{Cents, TransferStatus, format_cents};
use crate::projections::AccountRow;
use crate::{Bank, BankError};

/// An error as an HTTP answer.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl From<BankError> for ApiError {
    fn from(e: BankError) -> Self {
        let status = match &e {
            BankError::BadInput(_) => StatusCode::BAD_REQUEST,
            BankError::UnknownAccount(_) => StatusCode::NOT_FOUND,
            BankError::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
            BankError::Conflict(_) => StatusCode::CONFLICT,
            BankError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
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
#[serde(untagged)]
enum Amount {
    Text(String),
    Number(serde_json::Number),
}

impl Amount {
    fn cents(&self) -> Result<Cents, ApiError> {
        let text = match self {
            Amount::Text(text) => text.clone(),
            Amount::Number(n) => n.to_string(),
        };
        text.parse::<Cents>()
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("amount {text:?}: {e}")))
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

/// The JSON form of an account's row, as `bank balance --json` prints it.
pub fn account_json(row: &AccountRow) -> Value {
    json!({
        "account": row.account,
        "owner": row.owner,
        "status": row.status,
        "balance_cents": row.balance_cents,
        "balance": format_cents(row.balance_cents),
        "version": row.version,
    })
}

/// The API's routes over `bank`. Run the bank's projections in the background while it
/// serves (see [`Bank::run_projections`]).
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

async fn open(
    State(bank): State<Bank>,
    body: Result<Json<OpenBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body?;
    let owner = body.owner.unwrap_or_else(|| body.account.clone());
    bank.open_account(&body.account, &owner).await?;
    let row = bank.balance(&body.account).await?;
    Ok((StatusCode::CREATED, Json(account_json(&row))))
}

async fn deposit(
    State(bank): State<Bank>,
    Path(id): Path<String>,
    body: Result<Json<AmountBody>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body?;
    bank.deposit(&id, body.amount.cents()?).await?;
    Ok(Json(account_json(&bank.balance(&id).await?)))
}

async fn withdraw(
    State(bank): State<Bank>,
    Path(id): Path<String>,
    body: Result<Json<AmountBody>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body?;
    bank.withdraw(&id, body.amount.cents()?).await?;
    Ok(Json(account_json(&bank.balance(&id).await?)))
}

async fn close(State(bank): State<Bank>, Path(id): Path<String>) -> ApiResult {
    bank.close(&id).await?;
    Ok(Json(account_json(&bank.balance(&id).await?)))
}

async fn transfer(
    State(bank): State<Bank>,
    body: Result<Json<TransferBody>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body?;
    let outcome = bank
        .transfer(&body.from, &body.to, body.amount.cents()?)
        .await?;
    Ok(Json(json!(outcome)))
}

async fn transfer_status(State(bank): State<Bank>, Path(id): Path<String>) -> ApiResult {
    let transfer_id: Uuid = id.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a transfer id"),
        )
    })?;
    let outcome = bank.transfer_outcome(transfer_id).await?;
    if outcome.status == TransferStatus::Unknown {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("unknown transfer {transfer_id}"),
        ));
    }
    Ok(Json(json!(outcome)))
}

async fn balance(State(bank): State<Bank>, Path(id): Path<String>) -> ApiResult {
    Ok(Json(account_json(&bank.balance(&id).await?)))
}

async fn history(State(bank): State<Bank>, Path(id): Path<String>) -> ApiResult {
    let history = bank.history(&id).await?;
    Ok(Json(json!({ "account": id, "history": history })))
}

async fn accounts(State(bank): State<Bank>) -> ApiResult {
    let rows = bank.list_accounts().await?;
    Ok(Json(
        json!({ "accounts": rows.iter().map(account_json).collect::<Vec<_>>() }),
    ))
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
    let (stop_projections, projections_stopped) = tokio::sync::oneshot::channel::<()>();
    let background = {
        let bank = bank.clone();
        tokio::spawn(async move {
            bank.run_projections(async {
                let _ = projections_stopped.await;
            })
            .await
        })
    };
    let served = axum::serve(listener, router(bank))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| BankError::Store(format!("the HTTP server failed: {e}")));
    let _ = stop_projections.send(());
    let projections = background
        .await
        .map_err(|e| BankError::Store(format!("the projections task failed: {e}")))?;
    served.and(projections)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_status() {
        let cases = [
            (BankError::BadInput("x".into()), StatusCode::BAD_REQUEST),
            (BankError::UnknownAccount("x".into()), StatusCode::NOT_FOUND),
            (
                BankError::Rejected("x".into()),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (BankError::Conflict("x".into()), StatusCode::CONFLICT),
            (
                BankError::Store("x".into()),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(ApiError::from(error).0, status);
        }
    }
}
