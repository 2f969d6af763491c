//! How many heap bytes one issued token costs in the memory token store.
//!
//! A dedicated test binary so that nothing else runs in the process while it measures: it issues `TOKENS` client-credentials-like tokens (no refresh token, a row expiry, a scope)
//! and divides the growth of the resident set by their number (the hashes are made
//! up front so that only the store's memory is counted).

use portcullis_stores::memory::MemoryTokenStore;
use portcullis_stores::{TokenHash, TokenRecord, TokenStore};
use uuid::Uuid;

/// The process's resident set in bytes (`VmRSS` of /proc/self/status).
fn rss() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some(kib * 1024)
}

const TOKENS: usize = 200_000;

/// The most heap one token may cost (the README's sizing of `memory_max_tokens` relies on it).
const BUDGET: usize = 200;

fn hash(n: u64, salt: u8) -> TokenHash {
    // Spread like a SHA-256 digest: a cheap mix of the counter fills all 32 bytes.
    let mut out = [0u8; 32];
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(salt);
    for chunk in out.chunks_mut(8) {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 29;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    TokenHash(out)
}

#[tokio::test(flavor = "current_thread")]
async fn a_token_costs_at_most_the_budget() {
    let credentials: Vec<Uuid> = (0..100).map(|_| Uuid::new_v4()).collect();
    let service = Uuid::new_v4();
    let store = MemoryTokenStore::new();
    let before = rss().expect("VmRSS in /proc/self/status");
    for n in 0..TOKENS {
        let now = 1_700_000_000 + (n / 1000) as i64;
        store
            .insert_token(TokenRecord {
                id: Uuid::new_v4(),
                credential_id: credentials[n % credentials.len()],
                service_id: Some(service),
                access_token_hash: hash(n as u64, 1),
                refresh_token_hash: None,
                token_type: "bearer".into(),
                expires_in: 7200,
                authenticated_userid: None,
                scope: Some("email profile".into()),
                created_at: now,
                expires_at: Some(now + 1_209_600),
                family_id: Uuid::new_v4(),
                code_id: None,
            })
            .await
            .expect("insert");
    }
    let grown = rss().expect("VmRSS").saturating_sub(before);
    let per_token = grown / TOKENS;
    println!("memory token store: {per_token} bytes per token ({grown} bytes for {TOKENS} tokens)");
    assert!(
        per_token <= BUDGET,
        "{per_token} bytes per token, budget {BUDGET}"
    );
}
