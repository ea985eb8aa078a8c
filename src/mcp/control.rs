//! Requests that change what the shared child sends to everyone — `resources/subscribe`,
//! `resources/unsubscribe`, `logging/setLevel` — and keeping each child generation in line
//! with what the tenant's sessions want (see [`interest`] for the rules).
//!
//! Every change runs under the tenant's control lock: bring the child up to date, apply the
//! caller's change to the wish list, then either answer locally (`{}`) or forward the
//! caller's own request to the child, and record the outcome. So the child sees one
//! subscribe per URI and one unsubscribe when the last subscriber leaves, whatever the
//! interleaving of sessions. Sessions that end are undone by a per-child reconciler task,
//! and a new child is brought up to date right after its handshake.
//!
//! Not owned here: routing the child's notifications (the relay) and HTTP.
//!
//! [`interest`]: super::interest

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tracing::debug;

use super::envelope::{self, Envelope, INVALID_PARAMS, INVALID_REQUEST, Kind, span_of, splice};
use super::interest::{self, Level, Plan};
use super::relay::Relay;
use super::session::Session;

/// A caller's request mcpmux answers on behalf of all sessions.
struct Request<'a> {
    relay: &'a Arc<Relay>,
    session: &'a Session,
    message: &'a [u8],
    env: &'a Envelope<'a>,
    timeout: Duration,
}

/// Answers `message` when it is a subscribe, unsubscribe or `logging/setLevel`; `None` for
/// every other request (relay it as usual).
pub async fn answer(
    relay: &Arc<Relay>,
    session: &Session,
    message: &[u8],
    env: &Envelope<'_>,
    timeout: Duration,
) -> Option<Bytes> {
    let request = Request {
        relay,
        session,
        message,
        env,
        timeout,
    };
    match env.method.as_deref()? {
        "resources/subscribe" => Some(request.subscribe().await),
        "resources/unsubscribe" => Some(request.unsubscribe().await),
        "logging/setLevel" => Some(request.set_level().await),
        _ => None,
    }
}

impl Request<'_> {
    fn id(&self) -> &str {
        self.env.id.map_or("null", |id| id.get())
    }

    fn empty_result(&self) -> Bytes {
        format!(r#"{{"jsonrpc":"2.0","id":{},"result":{{}}}}"#, self.id()).into()
    }

    fn error(&self, code: i64, message: &str) -> Bytes {
        envelope::error_response(self.id(), code, message, None).into()
    }

    async fn subscribe(&self) -> Bytes {
        let Some(uri) = interest::uri_of(self.env.params) else {
            return self.error(
                INVALID_PARAMS,
                "resources/subscribe needs params.uri, a string",
            );
        };
        let sessions = self.relay.sessions();
        let _serial = sessions.control().await;
        sync_locked(self.relay).await;
        let added = match sessions.interest().subscribe(&self.session.id, &uri) {
            Ok(added) => added,
            Err(e) => return self.error(INVALID_REQUEST, &e.to_string()),
        };
        if self.relay.told().subscriptions.contains(&uri) {
            return self.empty_result(); // the child already sends updates for this URI
        }
        let reply = self.forward(self.message).await;
        if is_result(&reply) {
            self.relay.told().subscriptions.insert(uri);
        } else if added {
            sessions.interest().unsubscribe(&self.session.id, &uri); // the child refused it
        }
        reply
    }

    async fn unsubscribe(&self) -> Bytes {
        let Some(uri) = interest::uri_of(self.env.params) else {
            return self.error(
                INVALID_PARAMS,
                "resources/unsubscribe needs params.uri, a string",
            );
        };
        let sessions = self.relay.sessions();
        let _serial = sessions.control().await;
        sync_locked(self.relay).await;
        let remaining = {
            let mut interest = sessions.interest();
            interest.unsubscribe(&self.session.id, &uri);
            interest.subscribers(&uri)
        };
        if remaining > 0 || !self.relay.told().subscriptions.contains(&uri) {
            return self.empty_result(); // others still listen, or the child never was asked
        }
        let reply = self.forward(self.message).await;
        // Nobody wants the URI any more: a later update for it reaches no session anyway.
        self.relay.told().subscriptions.remove(&uri);
        reply
    }

    async fn set_level(&self) -> Bytes {
        let Some((raw, Some(level))) = interest::level_of(self.env.params) else {
            let msg = "logging/setLevel needs params.level: debug, info, notice, warning, error, critical, alert or emergency";
            return self.error(INVALID_PARAMS, msg);
        };
        let sessions = self.relay.sessions();
        let _serial = sessions.control().await;
        sync_locked(self.relay).await;
        let (previous, wanted) = {
            let mut interest = sessions.interest();
            let previous = interest.set_level(&self.session.id, Some(level));
            (previous, interest.effective_level())
        };
        if wanted.is_none() || wanted == self.relay.told().level {
            return self.empty_result(); // a more verbose level is already in force
        }
        let message = match wanted {
            Some(wanted) if wanted != level => self.with_level(raw, wanted),
            _ => self.message.to_vec(),
        };
        let reply = self.forward(&message).await;
        if is_result(&reply) {
            self.relay.told().level = wanted;
        } else {
            sessions.interest().set_level(&self.session.id, previous);
        }
        reply
    }

    /// The caller's request with its level replaced, byte-exact otherwise.
    fn with_level(&self, raw: &serde_json::value::RawValue, level: Level) -> Vec<u8> {
        let quoted = format!("\"{}\"", level.as_str());
        match span_of(self.message, raw.get()) {
            Some(span) => splice(self.message, &mut [(span, quoted.as_bytes())]),
            None => self.message.to_vec(), // not borrowed from the message: cannot happen
        }
    }

    async fn forward(&self, message: &[u8]) -> Bytes {
        match envelope::parse(message) {
            Ok(env) => self.relay.forward(message, &env, self.timeout).await,
            Err(e) => self.error(e.code(), &e.to_string()), // we only spliced a string
        }
    }
}

fn is_result(reply: &[u8]) -> bool {
    envelope::parse(reply).is_ok_and(|env| env.kind == Kind::Result)
}

/// Brings `relay`'s child in line with what the sessions want now.
pub async fn reconcile(relay: &Relay) {
    let _serial = relay.sessions().control().await;
    sync_locked(relay).await;
}

/// As [`reconcile`]; the caller holds the control lock.
async fn sync_locked(relay: &Relay) {
    let plan = {
        let wanted = relay.sessions().interest();
        interest::plan(&wanted, &relay.told())
    };
    if plan.is_empty() {
        return;
    }
    debug!(
        pid = relay.pid(),
        ?plan,
        "bringing the child in line with its sessions"
    );
    if send_plan(relay, &plan).await {
        relay.told().apply(&plan);
    }
}

async fn send_plan(relay: &Relay, plan: &Plan) -> bool {
    let messages = plan
        .unsubscribe
        .iter()
        .map(|uri| ("resources/unsubscribe", json!({ "uri": uri })))
        .chain(
            plan.subscribe
                .iter()
                .map(|uri| ("resources/subscribe", json!({ "uri": uri }))),
        )
        .chain(
            plan.level
                .map(|l| ("logging/setLevel", json!({ "level": l.as_str() }))),
        );
    for (method, params) in messages {
        if relay.send_own(method, params).await.is_err() {
            return false; // the child is gone; its successor is planned from scratch
        }
    }
    true
}

/// Starts the task that undoes what ended sessions asked of `relay`'s child.
pub fn spawn_reconciler(relay: Arc<Relay>) {
    let mut changes = relay.sessions().changes();
    // Owned by the relay: ends once its child has exited and the exit was handled.
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = relay.finished() => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return; // the tenant's sessions are gone
                    }
                }
            }
            if relay.usable() {
                reconcile(&relay).await;
            }
        }
    });
}

/// A stateless request's wish for the child's log messages at `level` and above (its
/// `_meta` log level), held while the request is in flight: the child is set to the most
/// verbose level any caller needs, sessions and requests alike.
pub struct LevelWish {
    relay: Arc<Relay>,
    key: Arc<str>,
}

/// Records the wish under a key of its own and brings the child in line before returning.
pub async fn hold_level(relay: &Arc<Relay>, level: Level) -> LevelWish {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    // Never a session id (those are hex).
    let key: Arc<str> = format!("log-{}", NEXT.fetch_add(1, Ordering::Relaxed)).into();
    let sessions = relay.sessions();
    let _serial = sessions.control().await;
    sessions.interest().set_level(&key, Some(level));
    sync_locked(relay).await;
    LevelWish {
        relay: relay.clone(),
        key,
    }
}

impl Drop for LevelWish {
    fn drop(&mut self) {
        let (relay, key) = (self.relay.clone(), self.key.clone());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the daemon is stopping: the child goes with it
        };
        // Owned by nobody: one pass under the control lock, then it ends.
        runtime.spawn(async move {
            let sessions = relay.sessions();
            let _serial = sessions.control().await;
            sessions.interest().set_level(&key, None);
            if relay.usable() {
                sync_locked(&relay).await;
            }
        });
    }
}

/// Subscribes listener `key` to `uris` (together with the sessions' subscriptions) and
/// brings the child in line before returning.
pub async fn listen_to<'a>(relay: &Relay, key: &Arc<str>, uris: impl Iterator<Item = &'a String>) {
    let sessions = relay.sessions();
    let _serial = sessions.control().await;
    {
        let mut interest = sessions.interest();
        for uri in uris {
            // Bounded by the listen filter's own limits, which match these.
            if let Err(e) = interest.subscribe(key, uri) {
                debug!(uri, error = %e, "listener subscription refused");
            }
        }
    }
    sync_locked(relay).await;
}
