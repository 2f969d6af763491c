//! Hashed client secrets verified recently: a busy client with a `hash_secret` credential pays one
//! argon2id (or PBKDF2) verification per minute, not one per token request.
//!
//! An entry is keyed by the credential as this node's snapshot holds it (id, client_id and the
//! stored hash itself), so a credential whose secret is changed — on this node or, through the
//! configuration notices, on another — has a new stored hash and can never match an entry made
//! for the old one; a deleted credential is not found in the snapshot at all. Nothing has to be
//! invalidated, and an entry outlives its credential only until it expires or is evicted.
//!
//! The value is a keyed SHA-256 of the secret that verified (the key is random per process), never
//! the secret, compared in constant time. Only a successful verification is remembered: a wrong
//! secret always goes through the full verification (and the lockout counts it). Requests that
//! miss the map together for one credential (a busy client whose entry just expired) share the
//! first one's verification.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use rand::Rng;
use sha2::{Digest, Sha256};

use super::credentials::OAuthCredential;
use crate::crypto;

/// How long a verified secret is trusted without a new verification.
pub const VERIFIED_TTL: Duration = Duration::from_secs(60);

/// Most credentials remembered at once (each entry is two 32-byte digests).
pub const VERIFIED_CAPACITY: u64 = 10_000;

/// Recently verified (credential, secret) pairs, shared by every `oauth2` instance of a gateway.
/// Cloning shares the map.
#[derive(Clone)]
pub struct VerifiedSecrets {
    /// Digest of the credential's identity and stored hash → keyed digest of the secret.
    map: Cache<[u8; 32], [u8; 32]>,
    /// Random per process: the digests in memory cannot be matched against a precomputed table.
    key: [u8; 32],
    /// Full (argon2id or PBKDF2) verifications run, so that what the map saves is observable.
    verifications: Arc<AtomicU64>,
}

impl Default for VerifiedSecrets {
    fn default() -> Self {
        Self::new(VERIFIED_TTL, VERIFIED_CAPACITY)
    }
}

impl std::fmt::Debug for VerifiedSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedSecrets")
            .field("entries", &self.map.entry_count())
            .field("verifications", &self.verifications())
            .finish_non_exhaustive()
    }
}

impl VerifiedSecrets {
    /// A map trusting a verification for `ttl`, holding at most `capacity` credentials.
    pub fn new(ttl: Duration, capacity: u64) -> Self {
        Self {
            map: Cache::builder()
                .time_to_live(ttl)
                .max_capacity(capacity)
                .build(),
            key: rand::thread_rng().gen(),
            verifications: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many secrets this gateway has verified the expensive way (argon2id or PBKDF2): a
    /// request answered from the map does not count.
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// Whether `secret` authenticates `credential`: constant time for a plain secret; a hashed
    /// one from the map when it verified within [`VERIFIED_TTL`], otherwise on the blocking pool
    /// (see [`crypto::verify_secret_off_thread`]), remembered if it matches.
    pub async fn matches(&self, credential: &OAuthCredential, secret: &str) -> bool {
        let stored = credential.client_secret.as_str();
        if !(credential.hash_secret || crypto::is_hashed(stored)) {
            return crypto::ct_eq(secret.as_bytes(), stored.as_bytes());
        }
        let entry = self.entry(credential);
        let presented = self.secret_digest(secret);
        // Concurrent requests for one credential (a busy client when its entry has expired) wait
        // for the first one's verification instead of each running their own.
        let ran = AtomicBool::new(false);
        let known = self
            .map
            .optionally_get_with(entry, async {
                ran.store(true, Ordering::Relaxed);
                self.verify(secret, stored).await.then_some(presented)
            })
            .await;
        if ran.load(Ordering::Relaxed) {
            return known.is_some();
        }
        if known.is_some_and(|k| crypto::ct_eq(&k, &presented)) {
            return true;
        }
        // Another secret is (or was being) verified for this credential: check this one itself.
        let ok = self.verify(secret, stored).await;
        if ok {
            self.map.insert(entry, presented).await;
        }
        ok
    }

    /// The expensive verification, counted.
    async fn verify(&self, secret: &str, stored: &str) -> bool {
        self.verifications.fetch_add(1, Ordering::Relaxed);
        crypto::verify_secret_off_thread(secret, stored).await
    }

    /// The credential as this node knows it: any change to its secret changes the stored hash,
    /// hence the entry.
    fn entry(&self, credential: &OAuthCredential) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(credential.id.as_bytes());
        for part in [&credential.client_id, &credential.client_secret] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().into()
    }

    fn secret_digest(&self, secret: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(secret.as_bytes());
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn credential(secret: &str) -> OAuthCredential {
        OAuthCredential {
            id: Uuid::new_v4(),
            consumer_id: Uuid::new_v4(),
            name: "app".into(),
            client_id: "client".into(),
            client_secret: crypto::hash_secret(secret).unwrap(),
            hash_secret: true,
            redirect_uris: None,
            public: false,
        }
    }

    #[actix_web::test]
    async fn a_verified_secret_is_not_verified_again() {
        let secrets = VerifiedSecrets::default();
        let c = credential("right");
        assert!(secrets.matches(&c, "right").await);
        assert!(secrets.matches(&c, "right").await);
        assert_eq!(secrets.verifications(), 1);
    }

    #[actix_web::test]
    async fn concurrent_requests_with_the_right_secret_share_one_verification() {
        let secrets = VerifiedSecrets::default();
        let c = credential("right");
        let one = || secrets.matches(&c, "right");
        let all = tokio::join!(one(), one(), one(), one());
        assert_eq!(all, (true, true, true, true));
        assert_eq!(secrets.verifications(), 1);
    }

    #[actix_web::test]
    async fn a_wrong_secret_waiting_on_a_right_one_is_still_refused() {
        let secrets = VerifiedSecrets::default();
        let c = credential("right");
        let (right, wrong) =
            tokio::join!(secrets.matches(&c, "right"), secrets.matches(&c, "wrong"));
        assert!(right);
        assert!(!wrong);
        let (wrong, right) =
            tokio::join!(secrets.matches(&c, "wrong"), secrets.matches(&c, "right"));
        assert!(!wrong);
        assert!(right);
    }

    #[actix_web::test]
    async fn a_wrong_secret_is_verified_every_time_and_never_remembered() {
        let secrets = VerifiedSecrets::default();
        let c = credential("right");
        assert!(!secrets.matches(&c, "wrong").await);
        assert!(!secrets.matches(&c, "wrong").await);
        assert_eq!(secrets.verifications(), 2);
        assert!(secrets.matches(&c, "right").await);
        assert!(!secrets.matches(&c, "wrong").await);
        assert_eq!(secrets.verifications(), 4);
    }

    #[actix_web::test]
    async fn a_new_stored_hash_never_matches_the_old_entry() {
        let secrets = VerifiedSecrets::default();
        let old = credential("old");
        assert!(secrets.matches(&old, "old").await);
        let changed = OAuthCredential {
            client_secret: crypto::hash_secret("new").unwrap(),
            ..old.clone()
        };
        assert!(!secrets.matches(&changed, "old").await);
        assert!(secrets.matches(&changed, "new").await);
        assert_eq!(secrets.verifications(), 3);
    }

    #[actix_web::test]
    async fn plain_secrets_are_compared_without_the_map() {
        let secrets = VerifiedSecrets::default();
        let c = OAuthCredential {
            client_secret: "plain".into(),
            hash_secret: false,
            ..credential("x")
        };
        assert!(secrets.matches(&c, "plain").await);
        assert!(!secrets.matches(&c, "other").await);
        assert_eq!(secrets.verifications(), 0);
    }
}
