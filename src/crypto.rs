//! Secrets: random tokens, SHA-256 digests for tokens at rest, constant-time comparison, and client
//! secret hashing (argon2id for new secrets, Kong's PBKDF2 format verified for migrated ones).

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use portcullis_stores::TokenHash;
use rand::Rng;
use sha2::{Digest, Sha256, Sha512};
use std::sync::LazyLock;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// A 32-character `[A-Za-z0-9]` random string, the shape Kong gives keys, ids, secrets and tokens.
pub fn random_token() -> String {
    let mut rng = rand::thread_rng();
    let bytes: [u8; 24] = rng.gen();
    STANDARD
        .encode(bytes)
        .chars()
        .map(|c| match c {
            '/' => char::from(rng.gen_range(b'A'..=b'Z')),
            '+' => char::from(rng.gen_range(b'a'..=b'z')),
            c => c,
        })
        .collect()
}

/// SHA-256 digest of a token: the only form in which tokens, refresh tokens and codes are stored.
pub fn token_hash(token: &str) -> TokenHash {
    TokenHash(Sha256::digest(token.as_bytes()).into())
}

/// Constant-time equality of two byte strings (length may leak, content does not).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Hashes a client secret with argon2id (PHC string).
///
/// # Errors
/// Only if the hasher rejects its parameters, which the defaults never do.
pub fn hash_secret(secret: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `secret` matches a stored hash: argon2id (ours) or Kong's `$pbkdf2-sha512$…` format.
pub fn verify_secret(secret: &str, stored: &str) -> bool {
    if stored.starts_with("$pbkdf2-sha512$") {
        return verify_kong_pbkdf2(secret, stored);
    }
    PasswordHash::new(stored).is_ok_and(|h| {
        Argon2::default()
            .verify_password(secret.as_bytes(), &h)
            .is_ok()
    })
}

/// How many secret verifications run at once: argon2id is built to cost ~20 ms of CPU and 19 MiB,
/// so each runs on the blocking pool (never on a proxy worker, whose other requests would wait),
/// and no more of them than there are cores (a burst of logins queues instead of taking the box).
static VERIFICATIONS: LazyLock<Semaphore> = LazyLock::new(|| {
    Semaphore::new(std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get))
});

/// [`verify_secret`] off the calling thread: on the blocking pool, at most one per core at once.
pub async fn verify_secret_off_thread(secret: &str, stored: &str) -> bool {
    let Ok(_permit) = VERIFICATIONS.acquire().await else {
        return false;
    };
    let (secret, stored) = (secret.to_owned(), stored.to_owned());
    tokio::task::spawn_blocking(move || verify_secret(&secret, &stored))
        .await
        .unwrap_or(false)
}

/// Kong's format: `$pbkdf2-sha512$i=<iter>,l=<len>$<b64 salt>$<b64 hash>` (standard alphabet,
/// no padding).
fn verify_kong_pbkdf2(secret: &str, stored: &str) -> bool {
    let parts: Vec<&str> = stored.split('$').collect();
    let [_, "pbkdf2-sha512", params, salt, hash] = parts.as_slice() else {
        return false;
    };
    let mut iterations = 0u32;
    let mut len = 0usize;
    for p in params.split(',') {
        match p.split_once('=') {
            Some(("i", v)) => iterations = v.parse().unwrap_or(0),
            Some(("l", v)) => len = v.parse().unwrap_or(0),
            _ => return false,
        }
    }
    if iterations == 0 || len == 0 || len > 64 {
        return false;
    }
    let (Ok(salt), Ok(expected)) = (STANDARD_NO_PAD.decode(salt), STANDARD_NO_PAD.decode(hash))
    else {
        return false;
    };
    let mut out = vec![0u8; len];
    pbkdf2::pbkdf2_hmac::<Sha512>(secret.as_bytes(), &salt, iterations, &mut out);
    ct_eq(&out, &expected)
}

/// Whether a stored client secret is a hash (as opposed to a plain secret).
pub fn is_hashed(stored: &str) -> bool {
    stored.starts_with("$argon2") || stored.starts_with("$pbkdf2")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_look_like_kongs() {
        let t = random_token();
        assert_eq!(t.len(), 32);
        assert!(t.chars().all(|c| c.is_ascii_alphanumeric()), "{t}");
        assert_ne!(t, random_token());
    }

    #[test]
    fn kong_pbkdf2_vector_verifies() {
        let stored = "$pbkdf2-sha512$i=10000,l=32$YSBsaXR0ZSBiaXQsIGp1c3QgYSBsaXR0bGUgYml0$z6ysNworexAhDELywIDi0ba0B0T7F/MBZ6Ige9lWRYI";
        assert!(verify_secret("tofu", stored));
        assert!(!verify_secret("tofu2", stored));
    }

    #[test]
    fn argon2_round_trip() {
        let h = hash_secret("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_secret("s3cret", &h));
        assert!(!verify_secret("other", &h));
    }
}
