//! The store contract, run against the in-memory stores.

use portcullis_stores::contract;
use portcullis_stores::memory::{MemoryConfigStore, MemoryTokenStore};

#[tokio::test]
async fn memory_config_store_meets_the_contract() {
    contract::config_store_contract(&MemoryConfigStore::new()).await;
}

#[tokio::test]
async fn memory_token_store_meets_the_contract() {
    contract::token_store_contract(&MemoryTokenStore::new()).await;
}
