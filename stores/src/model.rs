//! What the stores hold: entity definitions for configuration documents, and token/code records.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// A configuration entity as JSON, exactly as the admin API returns it (`id`, `created_at`, fields,
/// foreign keys as `{"id": "…"}`).
pub type Document = serde_json::Map<String, Value>;

/// What happens to referencing rows when the referenced row is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    /// Refuse the delete while references exist (Kong: routes → services).
    Restrict,
    /// Delete the referencing rows too (Kong: plugins → services/routes/consumers).
    Cascade,
}

/// A foreign key of an entity: `field` holds `{"id": …}` of a row of `references`.
#[derive(Debug)]
pub struct ForeignKeyDef {
    /// Field name in the document (`service`, `route`, `consumer`).
    pub field: &'static str,
    /// Name of the referenced entity (`services`).
    pub references: &'static str,
    /// Rule applied when the referenced row is deleted.
    pub on_delete: OnDelete,
}

/// The constraints a store enforces for one entity; the gateway's schemas own the field types.
#[derive(Debug)]
pub struct EntityDef {
    /// Table name (`services`, `routes`, `consumers`, `plugins`, `oauth2_credentials`, …).
    pub name: &'static str,
    /// Unique keys; each is a list of fields whose combined value must be unique. A single-field
    /// key ignores nulls; a multi-field key treats null as a value (Kong's plugin cache key).
    pub unique: &'static [&'static [&'static str]],
    /// Foreign keys.
    pub foreign_keys: &'static [ForeignKeyDef],
}

/// The entities the gateway stores, in dependency order (referenced before referencing).
pub mod entities {
    use super::{EntityDef, ForeignKeyDef, OnDelete};

    /// TLS certificates with their private keys: served by SNI on the proxy's TLS listeners and
    /// presented to upstreams as client certificates.
    pub static CERTIFICATES: EntityDef = EntityDef {
        name: "certificates",
        unique: &[],
        foreign_keys: &[],
    };
    /// Server names a certificate is served for; deleted with their certificate.
    pub static SNIS: EntityDef = EntityDef {
        name: "snis",
        unique: &[&["name"]],
        foreign_keys: &[ForeignKeyDef {
            field: "certificate",
            references: "certificates",
            on_delete: OnDelete::Cascade,
        }],
    };
    /// Trusted CA certificates services verify their upstreams with; one row per certificate
    /// (its SHA-256 digest is unique).
    pub static CA_CERTIFICATES: EntityDef = EntityDef {
        name: "ca_certificates",
        unique: &[&["cert_digest"]],
        foreign_keys: &[],
    };
    /// Upstream services; a service's client certificate cannot be deleted while it is used.
    pub static SERVICES: EntityDef = EntityDef {
        name: "services",
        unique: &[&["name"]],
        foreign_keys: &[ForeignKeyDef {
            field: "client_certificate",
            references: "certificates",
            on_delete: OnDelete::Restrict,
        }],
    };
    /// Routes, restricted by their service.
    pub static ROUTES: EntityDef = EntityDef {
        name: "routes",
        unique: &[&["name"]],
        foreign_keys: &[ForeignKeyDef {
            field: "service",
            references: "services",
            on_delete: OnDelete::Restrict,
        }],
    };
    /// Consumers.
    pub static CONSUMERS: EntityDef = EntityDef {
        name: "consumers",
        unique: &[&["username"], &["custom_id"]],
        foreign_keys: &[],
    };
    /// Plugin instances; one per name and scope.
    pub static PLUGINS: EntityDef = EntityDef {
        name: "plugins",
        unique: &[
            &["instance_name"],
            &["name", "route", "service", "consumer"],
        ],
        foreign_keys: &[
            ForeignKeyDef {
                field: "service",
                references: "services",
                on_delete: OnDelete::Cascade,
            },
            ForeignKeyDef {
                field: "route",
                references: "routes",
                on_delete: OnDelete::Cascade,
            },
            ForeignKeyDef {
                field: "consumer",
                references: "consumers",
                on_delete: OnDelete::Cascade,
            },
        ],
    };
    /// OAuth 2.0 client credentials, owned by a consumer.
    pub static OAUTH2_CREDENTIALS: EntityDef = EntityDef {
        name: "oauth2_credentials",
        unique: &[&["client_id"]],
        foreign_keys: &[ForeignKeyDef {
            field: "consumer",
            references: "consumers",
            on_delete: OnDelete::Cascade,
        }],
    };

    /// `key-auth` API keys, owned by a consumer; only the key's SHA-256 digest is stored.
    pub static KEYAUTH_CREDENTIALS: EntityDef = EntityDef {
        name: "keyauth_credentials",
        unique: &[&["key_hash"]],
        foreign_keys: &[ForeignKeyDef {
            field: "consumer",
            references: "consumers",
            on_delete: OnDelete::Cascade,
        }],
    };
    /// `acl` group memberships: one row per consumer and group.
    pub static ACLS: EntityDef = EntityDef {
        name: "acls",
        unique: &[&["consumer", "group"]],
        foreign_keys: &[ForeignKeyDef {
            field: "consumer",
            references: "consumers",
            on_delete: OnDelete::Cascade,
        }],
    };
    /// Load-balanced upstreams, addressed by a service's `host`.
    pub static UPSTREAMS: EntityDef = EntityDef {
        name: "upstreams",
        unique: &[&["name"]],
        foreign_keys: &[],
    };
    /// The targets of an upstream; one per address within an upstream (Kong's cache key).
    pub static TARGETS: EntityDef = EntityDef {
        name: "targets",
        unique: &[&["upstream", "target"]],
        foreign_keys: &[ForeignKeyDef {
            field: "upstream",
            references: "upstreams",
            on_delete: OnDelete::Cascade,
        }],
    };

    /// All configuration entities, referenced before referencing.
    pub static ALL: [&EntityDef; 12] = [
        &CERTIFICATES,
        &SNIS,
        &CA_CERTIFICATES,
        &SERVICES,
        &ROUTES,
        &CONSUMERS,
        &PLUGINS,
        &OAUTH2_CREDENTIALS,
        &KEYAUTH_CREDENTIALS,
        &ACLS,
        &UPSTREAMS,
        &TARGETS,
    ];

    /// Looks an entity up by name.
    pub fn by_name(name: &str) -> Option<&'static EntityDef> {
        ALL.iter().copied().find(|e| e.name == name)
    }
}

/// Filter and page request for [`crate::ConfigStore::list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only documents whose foreign key `field` references this id.
    pub foreign: Option<(&'static str, Uuid)>,
    /// Tag filter: every tag (`all = true`) or any tag.
    pub tags: Option<(Vec<String>, bool)>,
    /// Opaque offset returned by a previous page.
    pub offset: Option<String>,
    /// Page size (1..=1000).
    pub size: usize,
}

/// One page of documents.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The documents of this page.
    pub data: Vec<Document>,
    /// Offset of the next page, if there is one.
    pub next_offset: Option<String>,
}

/// SHA-256 digest of a token, refresh token or code: the only form in which they are stored.
///
/// In JSON (the records Redis caches) it is its 64 hex digits; an array of 32 numbers, the form
/// earlier versions wrote, is read too. Read as an array, a digest cost about 6,000 instructions,
/// a third of a record's parse on every lookup Redis answers.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

/// 64 hex digits in text formats (JSON); the 32 bytes as they are in binary ones (the Redis
/// cache's records).
impl Serialize for TokenHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.to_hex())
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            deserializer.deserialize_any(DigestVisitor)
        } else {
            <[u8; 32]>::deserialize(deserializer).map(TokenHash)
        }
    }
}

/// Reads a [`TokenHash`] from its hex digits or from an array of 32 bytes.
struct DigestVisitor;

impl<'de> serde::de::Visitor<'de> for DigestVisitor {
    type Value = TokenHash;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a SHA-256 digest: 64 hex digits or 32 bytes")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TokenHash, E> {
        TokenHash::from_hex(v).ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<TokenHash, A::Error> {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = seq
                .next_element()?
                .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
        }
        if seq.next_element::<u8>()?.is_some() {
            return Err(serde::de::Error::invalid_length(33, &self));
        }
        Ok(TokenHash(out))
    }
}

impl TokenHash {
    /// Lower-case hex form, used as a key in Redis and in admin output.
    pub fn to_hex(&self) -> String {
        let mut hex = String::with_capacity(64);
        self.push_hex(&mut hex);
        hex
    }

    /// Appends the lower-case hex form to `out`: digit by digit from a table, because a Redis
    /// key is made on every lookup that misses the near cache, and formatting each byte through
    /// `format!` cost about 17,000 instructions a key.
    ///
    /// The digits go into a stack buffer first: pushing them one `char` at a time checked the
    /// string's capacity and encoded UTF-8 for each of the 64.
    pub fn push_hex(&self, out: &mut String) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0u8; 64];
        for (pair, &b) in hex.chunks_exact_mut(2).zip(&self.0) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0x0f)];
        }
        // Only ASCII digits and letters were written: the check cannot fail.
        out.push_str(std::str::from_utf8(&hex).unwrap_or_default());
    }

    /// Parses the hex form: exactly 64 hex digits, either case.
    pub fn from_hex(s: &str) -> Option<Self> {
        fn nibble(c: u8) -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            }
        }
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (b, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
            *b = nibble(pair[0])? << 4 | nibble(pair[1])?;
        }
        Some(Self(out))
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only a prefix: enough to correlate logs, never the full key.
        write!(f, "TokenHash({}…)", &self.to_hex()[..8])
    }
}

/// An issued access token (and its refresh token, if any).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Row id (admin API `id`).
    pub id: Uuid,
    /// Credential (client) the token was issued to.
    pub credential_id: Uuid,
    /// Service the token is bound to; `None` for `global_credentials` tokens.
    pub service_id: Option<Uuid>,
    /// Digest of the access token.
    pub access_token_hash: TokenHash,
    /// Digest of the refresh token, if one was issued.
    pub refresh_token_hash: Option<TokenHash>,
    /// Always `bearer`.
    pub token_type: String,
    /// Access-token lifetime in seconds from `created_at`; 0 = never expires.
    pub expires_in: i64,
    /// End user the client acts for.
    pub authenticated_userid: Option<String>,
    /// Granted scopes, space separated.
    pub scope: Option<String>,
    /// Issue time (unix seconds); the access-token clock starts here.
    pub created_at: i64,
    /// Row expiry (unix seconds): after it neither token nor refresh token exist. `None` = never.
    pub expires_at: Option<i64>,
    /// Rotation family: every token refreshed from one grant shares it.
    pub family_id: Uuid,
    /// Authorization code the family was issued from, for revocation on code replay.
    pub code_id: Option<Uuid>,
}

impl TokenRecord {
    /// Whether the access token is still valid at `now` (Kong: `now - created_at <= expires_in`).
    pub fn access_valid_at(&self, now: i64) -> bool {
        (self.expires_in == 0 || now.saturating_sub(self.created_at) <= self.expires_in)
            && self.row_live_at(now)
    }

    /// Whether the row (and so the refresh token) is still live at `now`.
    pub fn row_live_at(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|t| t >= now)
    }
}

/// An authorization code waiting to be exchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeRecord {
    /// Row id; tokens issued from the code carry it as `code_id`.
    pub id: Uuid,
    /// Digest of the code.
    pub code_hash: TokenHash,
    /// Client it was issued to.
    pub credential_id: Uuid,
    /// Service it is bound to; `None` when issued by a `global_credentials` plugin.
    pub service_id: Option<Uuid>,
    /// Plugin instance that issued it.
    pub plugin_id: Option<Uuid>,
    /// End user who consented.
    pub authenticated_userid: Option<String>,
    /// Granted scopes.
    pub scope: Option<String>,
    /// PKCE challenge, normalised to base64url without padding.
    pub challenge: Option<String>,
    /// PKCE method (`S256` or `plain`).
    pub challenge_method: Option<String>,
    /// Redirect URI used at authorize, for the RFC 6749 §4.1.3 equality check.
    pub redirect_uri: Option<String>,
    /// Issue time.
    pub created_at: i64,
    /// Expiry (issue time + 300 s).
    pub expires_at: i64,
}

/// Result of [`crate::TokenStore::redeem_refresh`].
#[derive(Debug, Clone, PartialEq)]
pub enum RefreshOutcome {
    /// This caller won; the record is the token now in force.
    Redeemed(Box<TokenRecord>),
    /// Unknown or expired refresh token.
    NotFound,
    /// The refresh token was already rotated away at `rotated_at`; its family is `family_id`.
    Reused {
        /// Family of the rotated token.
        family_id: Uuid,
        /// When it was rotated.
        rotated_at: i64,
    },
}

/// Filter for [`crate::TokenStore::list_tokens`].
#[derive(Debug, Clone, Default)]
pub struct TokenFilter {
    /// Only tokens of this credential.
    pub credential_id: Option<Uuid>,
    /// Only tokens bound to this service.
    pub service_id: Option<Uuid>,
    /// Opaque offset from a previous page.
    pub offset: Option<String>,
    /// Page size.
    pub size: usize,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{TokenHash, TokenRecord};
    use uuid::Uuid;

    #[test]
    fn hex_is_two_lower_case_digits_a_byte_and_parses_back() {
        let mut bytes = [0u8; 32];
        for (i, b) in (0u8..).zip(bytes.iter_mut()) {
            *b = i.wrapping_mul(37).wrapping_add(5);
        }
        bytes[0] = 0x00;
        bytes[31] = 0xff;
        let hash = TokenHash(bytes);
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hash.to_hex(), expected);
        assert_eq!(TokenHash::from_hex(&expected), Some(hash));
        let mut key = String::from("p:tok:");
        hash.push_hex(&mut key);
        assert_eq!(key, format!("p:tok:{expected}"));
        assert_eq!(TokenHash::from_hex(&expected.to_uppercase()), Some(hash));
        // A sign is not a digit (u8::from_str_radix would take "+a").
        let signed = format!("+a{}", &expected[2..]);
        assert_eq!(TokenHash::from_hex(&signed), None);
        assert_eq!(TokenHash::from_hex(&expected[..62]), None);
    }

    #[test]
    fn json_carries_the_hex_digits_and_reads_the_arrays_caches_hold_from_before() {
        let hash = TokenHash([0xab; 32]);
        let json = serde_json::to_string(&hash).unwrap();
        assert_eq!(json, format!("\"{}\"", "ab".repeat(32)));
        assert_eq!(serde_json::from_str::<TokenHash>(&json).unwrap(), hash);
        let array = serde_json::to_string(&[0xab_u8; 32]).unwrap();
        assert_eq!(serde_json::from_str::<TokenHash>(&array).unwrap(), hash);
        for bad in [
            "[1,2,3]".to_string(),
            serde_json::to_string(&vec![0_u8; 33]).unwrap(),
            "\"abc\"".to_string(),
            "7".to_string(),
        ] {
            assert!(serde_json::from_str::<TokenHash>(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_record_an_earlier_version_cached_still_reads() {
        let now = 1_700_000_000;
        let record = TokenRecord {
            id: Uuid::from_u128(1),
            credential_id: Uuid::from_u128(2),
            service_id: None,
            access_token_hash: TokenHash([7; 32]),
            refresh_token_hash: Some(TokenHash([9; 32])),
            token_type: "bearer".into(),
            expires_in: 3600,
            authenticated_userid: None,
            scope: Some("read".into()),
            created_at: now,
            expires_at: Some(now + 7200),
            family_id: Uuid::from_u128(3),
            code_id: None,
        };
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<TokenRecord>(&json).unwrap(), record);
        let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
        old["access_token_hash"] = serde_json::json!([7_u8; 32].to_vec());
        old["refresh_token_hash"] = serde_json::json!([9_u8; 32].to_vec());
        assert_eq!(serde_json::from_value::<TokenRecord>(old).unwrap(), record);
    }
}
