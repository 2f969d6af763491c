//! The store contract, run against the in-memory stores.

use std::sync::Arc;

use portcullis_stores::contract;
use portcullis_stores::memory::{MemoryConfigStore, MemoryTokenStore};

#[tokio::test]
async fn memory_config_store_meets_the_contract() {
    contract::config_store_contract(&MemoryConfigStore::new()).await;
}

#[tokio::test]
async fn memory_config_store_round_trips_documents() {
    contract::config_store_roundtrip(&MemoryConfigStore::new()).await;
}

#[tokio::test]
async fn memory_token_store_meets_the_contract() {
    contract::token_store_contract(&MemoryTokenStore::new(), contract::QuickPath::Present).await;
}

#[tokio::test]
async fn memory_token_store_lifecycle() {
    contract::token_store_lifecycle(&MemoryTokenStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_concurrent_take_code_has_one_winner() {
    contract::concurrent_take_code(Arc::new(MemoryTokenStore::new()), 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_concurrent_unique_insert_has_one_winner() {
    contract::concurrent_unique_insert(Arc::new(MemoryConfigStore::new()), 16).await;
}
