//! The cluster invalidation listener: one dedicated (not pooled) connection that `LISTEN`s on the
//! schema's two channels (migration 0003 fills them from triggers, at commit) and turns each
//! notification into a [`ChangeEvent`] for the gateway.
//!
//! Postgres delivers a notification only once its transaction commits, to every session listening
//! at that moment, so a revocation reaches the other nodes even if the node that made it dies right
//! after its commit. A session that was not listening (a restart, a partition) gets nothing for that
//! time: every (re)connect is therefore announced as [`ChangeEvent::Connected`], and the consumer
//! resyncs from the database. The listener retries with backoff for as long as the receiver lives;
//! it never gives up and never panics.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, Connection};
use uuid::Uuid;

use deadpool_postgres::Pool;

use super::{cause_chain, driver_config, pool_error, tls_connector, PgSettings};
use crate::model::{entities, TokenHash};
use crate::StoreError;

/// What happened in the database, as seen by one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeEvent {
    /// Listening (first time or again): anything before may have been missed, resync now.
    Connected,
    /// Access-token digests whose rows were deleted or changed (revocation, rotation, purge).
    Tokens(Vec<TokenHash>),
    /// Configuration rows inserted, updated or deleted: `(entity name, id)`.
    Config(Vec<(&'static str, Uuid)>),
    /// Token digests whose `oauth2-introspection` verdicts an operator evicted (see
    /// [`announce_verdict_eviction`]).
    Verdicts(Vec<TokenHash>),
    /// The listening connection was lost (the cause, one line); notices are missed until the next
    /// [`ChangeEvent::Connected`].
    Disconnected(String),
}

/// Shortest and longest wait between two connection attempts.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often an idle listening connection is checked (a silently dead server is noticed in time).
const PING_EVERY: Duration = Duration::from_secs(5);
/// Most notifications folded into one event.
const BATCH: usize = 1024;

/// The channel names of the schema the connection's `search_path` points at.
const CHANNELS: &str = "SELECT portcullis_channel('tokens', current_schema()), \
     portcullis_channel('config', current_schema()), \
     portcullis_channel('verdicts', current_schema())";

/// The names of the three channels of one schema.
struct Channels {
    tokens: String,
    config: String,
    verdicts: String,
}

/// Tells every node listening on this schema (this one included) to drop its cached
/// `oauth2-introspection` verdicts for `token`; delivered at commit, like the trigger notices.
///
/// # Errors
/// [`StoreError::Unavailable`] when Postgres cannot be reached.
pub async fn announce_verdict_eviction(pool: &Pool, token: &TokenHash) -> Result<(), StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    client
        .execute(
            "SELECT pg_notify(portcullis_channel('verdicts', current_schema()), $1)",
            &[&token.to_hex()],
        )
        .await
        .map_err(|e| StoreError::Unavailable(format!("postgres: {}", cause_chain(&e))))?;
    Ok(())
}

/// What the connection task hands to the session.
enum Note {
    Notice { channel: String, payload: String },
    Closed(String),
}

/// How a session ended.
enum SessionEnd {
    /// Nobody listens to the events any more: stop.
    ReceiverGone,
    /// The connection failed or was lost; `listened` tells whether it got as far as `LISTEN`.
    Lost { listened: bool, why: String },
}

/// Runs until `events` is closed: connect, `LISTEN`, forward notifications, reconnect with backoff.
pub async fn listen(settings: PgSettings, events: mpsc::UnboundedSender<ChangeEvent>) {
    let mut backoff = MIN_BACKOFF;
    let mut failures = 0u32;
    loop {
        match session(&settings, &events).await {
            SessionEnd::ReceiverGone => return,
            SessionEnd::Lost { listened, why } => {
                if listened {
                    backoff = MIN_BACKOFF;
                    failures = 0;
                    tracing::warn!(cause = %why, "cluster listener lost its connection; reconnecting");
                    if events.send(ChangeEvent::Disconnected(why)).is_err() {
                        return;
                    }
                } else {
                    failures += 1;
                    // One warning per outage, then quietly keep trying.
                    if failures == 1 {
                        tracing::warn!(
                            endpoint = %settings.endpoint(),
                            cause = %why,
                            "cluster listener cannot connect; retrying in the background"
                        );
                    } else {
                        tracing::debug!(cause = %why, "cluster listener still cannot connect");
                    }
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if events.is_closed() {
            return;
        }
    }
}

/// The listening connection's `application_name`, `portcullis-listener <schema>`: an operator
/// looking at `pg_stat_activity` can tell it from the pooled connections, and which schema's
/// cluster it serves.
pub fn application_name(settings: &PgSettings) -> String {
    format!(
        "portcullis-listener {}",
        settings.schema.as_deref().unwrap_or("public")
    )
}

/// Drives the connection, forwarding notifications until it ends (or nobody listens).
async fn drive<S, T>(mut conn: Connection<S, T>, notes: mpsc::UnboundedSender<Note>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let note = match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => Note::Notice {
                channel: n.channel().to_string(),
                payload: n.payload().to_string(),
            },
            Some(Ok(_)) => continue,
            Some(Err(e)) => Note::Closed(cause_chain(&e)),
            None => Note::Closed("connection closed".into()),
        };
        let closed = matches!(note, Note::Closed(_));
        if notes.send(note).is_err() || closed {
            return;
        }
    }
}

/// A connection of its own, its driver spawned.
async fn connect(settings: &PgSettings) -> Result<(Client, mpsc::UnboundedReceiver<Note>), String> {
    let mut cfg = driver_config(settings).map_err(|e| e.to_string())?;
    cfg.application_name(application_name(settings));
    let (tx, rx) = mpsc::unbounded_channel();
    let connecting = async {
        let client: Result<Client, String> = if settings.ssl {
            let tls = tls_connector().map_err(|e| e.to_string())?;
            let (client, conn) = cfg.connect(tls).await.map_err(|e| cause_chain(&e))?;
            tokio::spawn(drive(conn, tx));
            Ok(client)
        } else {
            let (client, conn) = cfg
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| cause_chain(&e))?;
            tokio::spawn(drive(conn, tx));
            Ok(client)
        };
        client
    };
    let client = tokio::time::timeout(settings.timeout, connecting)
        .await
        .map_err(|_| "connect timed out".to_string())??;
    Ok((client, rx))
}

/// Whether a channel name can be spliced into `LISTEN "…"` (the migration builds it from a
/// validated schema name or an md5).
fn plain(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

async fn session(settings: &PgSettings, events: &mpsc::UnboundedSender<ChangeEvent>) -> SessionEnd {
    let lost = |why: String| SessionEnd::Lost {
        listened: false,
        why,
    };
    let (client, mut notes) = match connect(settings).await {
        Ok(c) => c,
        Err(why) => return lost(why),
    };
    let subscribe = async {
        let row = client
            .query_one(CHANNELS, &[])
            .await
            .map_err(|e| cause_chain(&e))?;
        let name = |i: usize| row.try_get::<_, String>(i).map_err(|e| cause_chain(&e));
        let channels = Channels {
            tokens: name(0)?,
            config: name(1)?,
            verdicts: name(2)?,
        };
        let all = [&channels.tokens, &channels.config, &channels.verdicts];
        if !all.iter().all(|c| plain(c)) {
            return Err("unexpected channel names".to_string());
        }
        let statements: Vec<String> = all.iter().map(|c| format!("LISTEN \"{c}\"")).collect();
        client
            .batch_execute(&statements.join("; "))
            .await
            .map_err(|e| cause_chain(&e))?;
        Ok(channels)
    };
    let channels = match tokio::time::timeout(settings.timeout, subscribe).await {
        Ok(Ok(channels)) => channels,
        Ok(Err(why)) => return lost(why),
        Err(_) => return lost("LISTEN timed out".into()),
    };
    tracing::info!(channel = %channels.tokens, "cluster listener listening");
    if events.send(ChangeEvent::Connected).is_err() {
        return SessionEnd::ReceiverGone;
    }
    let lost = |why: String| SessionEnd::Lost {
        listened: true,
        why,
    };
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            note = notes.recv() => {
                let mut batch = Vec::new();
                match note {
                    Some(Note::Notice { channel, payload }) => batch.push((channel, payload)),
                    Some(Note::Closed(why)) => return lost(why),
                    None => return lost("connection closed".into()),
                }
                // Fold whatever else already arrived (a purge deletes many rows at once).
                let mut closed = None;
                while batch.len() < BATCH {
                    match notes.try_recv() {
                        Ok(Note::Notice { channel, payload }) => batch.push((channel, payload)),
                        Ok(Note::Closed(why)) => {
                            closed = Some(why);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                for event in events_of(&batch, &channels) {
                    if events.send(event).is_err() {
                        return SessionEnd::ReceiverGone;
                    }
                }
                if let Some(why) = closed {
                    return lost(why);
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(settings.timeout, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return lost(cause_chain(&e)),
                    Err(_) => return lost("ping timed out".into()),
                }
                if events.is_closed() {
                    return SessionEnd::ReceiverGone;
                }
            }
        }
    }
}

/// Groups raw notifications into at most one event of each kind (payloads that do not parse are
/// logged and skipped).
fn events_of(batch: &[(String, String)], channels: &Channels) -> Vec<ChangeEvent> {
    let mut hashes = Vec::new();
    let mut rows = Vec::new();
    let mut verdicts = Vec::new();
    for (channel, payload) in batch {
        if *channel == channels.tokens || *channel == channels.verdicts {
            let into = if *channel == channels.tokens {
                &mut hashes
            } else {
                &mut verdicts
            };
            match TokenHash::from_hex(payload) {
                Some(h) => into.push(h),
                None => tracing::warn!("token notice with a malformed digest; skipped"),
            }
        } else if *channel == channels.config {
            let parsed = payload.split_once(':').and_then(|(table, id)| {
                Some((entities::by_name(table)?.name, Uuid::parse_str(id).ok()?))
            });
            match parsed {
                Some(row) => rows.push(row),
                None => tracing::warn!(%payload, "config notice not understood; skipped"),
            }
        }
    }
    let mut out = Vec::new();
    if !hashes.is_empty() {
        out.push(ChangeEvent::Tokens(hashes));
    }
    if !rows.is_empty() {
        out.push(ChangeEvent::Config(rows));
    }
    if !verdicts.is_empty() {
        out.push(ChangeEvent::Verdicts(verdicts));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_fold_into_one_event_per_kind_and_garbage_is_skipped() {
        let h = TokenHash([7; 32]);
        let id = Uuid::new_v4();
        let batch = vec![
            ("t".to_string(), h.to_hex()),
            ("c".to_string(), format!("routes:{id}")),
            ("t".to_string(), "zz".to_string()),
            ("c".to_string(), format!("nonsense:{id}")),
            ("t".to_string(), h.to_hex()),
            ("v".to_string(), h.to_hex()),
            ("v".to_string(), "zz".to_string()),
        ];
        let channels = Channels {
            tokens: "t".into(),
            config: "c".into(),
            verdicts: "v".into(),
        };
        assert_eq!(
            events_of(&batch, &channels),
            vec![
                ChangeEvent::Tokens(vec![h, h]),
                ChangeEvent::Config(vec![("routes", id)]),
                ChangeEvent::Verdicts(vec![h]),
            ]
        );
    }

    #[test]
    fn only_plain_channel_names_are_spliced() {
        assert!(plain("portcullis_tokens_pt_0a"));
        assert!(!plain("x\"; DROP"));
        assert!(!plain(""));
    }
}
