//! A restart on sled applies what the read model missed (an append whose apply never
//! ran, as when the process dies between the two), before the first read.

use example_bank_account::Bank;
use example_bank_account::domain::{AccountCommand, AccountServices, Cents};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_applies_what_the_read_model_missed() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sled:{}", dir.path().display());
    let services = AccountServices::new(Cents::new(1_000_000).unwrap());
    {
        let bank = Bank::open(&url, services).await.unwrap();
        let opened = bank.execute("a", AccountCommand::open("a", "Ada"));
        assert_eq!(opened.await.unwrap().account.balance_cents, 0);
        // Appended, never applied: through the repository, past the bank's wait.
        let deposit = AccountCommand::Deposit(Cents::new(1_250).unwrap());
        bank.accounts().execute("a", &deposit).await.unwrap();
        assert_eq!(bank.balance("a").await.unwrap().balance_cents, 0);
    }
    let bank = Bank::open(&url, services).await.unwrap();
    let row = bank.balance("a").await.unwrap();
    assert_eq!((row.balance_cents, row.version), (1_250, 2));
}
