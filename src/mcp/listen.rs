//! `subscriptions/listen` (2026-07-28, SEP-2575) bridged onto a session-era child.
//!
//! A listener is a stateless caller's long-lived stream of change notifications: the
//! `*/list_changed` kinds it asked for, and `notifications/resources/updated` for the URIs
//! it asked for, each tagged with `_meta["io.modelcontextprotocol/subscriptionId"]` (the
//! id of its `subscriptions/listen` request). Its URIs join the sessions' subscriptions in
//! [`super::interest`] under a key of its own, so the child sees one `resources/subscribe`
//! per URI and one `resources/unsubscribe` when the last session or listener leaves, and a
//! replacement child gets them replayed.
//!
//! Not owned here: HTTP (the acknowledgment, keep-alives, the graceful end), and telling
//! the child ([`super::control`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::envelope::{self, span_of};
use super::interest::{MAX_SUBSCRIPTIONS_PER_SESSION, MAX_URI_BYTES};
use super::stateless::META_SERVER_INFO;
use crate::sync::lock;

/// `_meta` key tagging every message of a subscription.
pub const META_SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";
/// Notifications queued per listener before further ones are dropped (change events are
/// level triggers: the caller refetches, so a dropped duplicate loses nothing).
pub const LISTEN_QUEUE: usize = 64;

/// The filter a caller asked for, as the spec names it; unknown keys are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Requested {
    #[serde(default)]
    tools_list_changed: Option<bool>,
    #[serde(default)]
    prompts_list_changed: Option<bool>,
    #[serde(default)]
    resources_list_changed: Option<bool>,
    #[serde(default)]
    resource_subscriptions: Option<Vec<String>>,
}

/// The filter mcpmux honors: what the acknowledgment echoes and what is delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Honored {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    tools_list_changed: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    prompts_list_changed: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    resources_list_changed: bool,
    /// Omitted when the child cannot subscribe (or none were asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_subscriptions: Option<BTreeSet<String>>,
}

impl Honored {
    /// The URIs this listener follows.
    pub fn uris(&self) -> impl Iterator<Item = &String> {
        self.resource_subscriptions.iter().flatten()
    }

    fn wants(&self, method: &str, uri: Option<&str>) -> bool {
        match method {
            "notifications/tools/list_changed" => self.tools_list_changed,
            "notifications/prompts/list_changed" => self.prompts_list_changed,
            "notifications/resources/list_changed" => self.resources_list_changed,
            "notifications/resources/updated" => uri.is_some_and(|u| {
                self.resource_subscriptions
                    .as_ref()
                    .is_some_and(|s| s.contains(u))
            }),
            _ => false,
        }
    }
}

#[derive(Deserialize)]
struct ListenParams {
    #[serde(default)]
    notifications: Option<Requested>,
}

/// What `params` ask for and what mcpmux honors of it: list changes always (the child may
/// send them whatever it declared), resource updates only when the child can subscribe
/// (`can_subscribe`). `Err` for params that are not a listen request's.
pub fn honor(params: Option<&RawValue>, can_subscribe: bool) -> Result<Honored, String> {
    let params: ListenParams = match params {
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|e| format!("subscriptions/listen params are malformed: {e}"))?,
        None => ListenParams {
            notifications: None,
        },
    };
    let asked = params.notifications.unwrap_or_default();
    let uris = asked.resource_subscriptions.unwrap_or_default();
    if uris.len() > MAX_SUBSCRIPTIONS_PER_SESSION {
        return Err(format!(
            "at most {MAX_SUBSCRIPTIONS_PER_SESSION} resourceSubscriptions per stream"
        ));
    }
    if uris.iter().any(|u| u.len() > MAX_URI_BYTES) {
        return Err(format!(
            "a resource URI is longer than {MAX_URI_BYTES} bytes"
        ));
    }
    let uris: BTreeSet<String> = uris.into_iter().collect();
    Ok(Honored {
        tools_list_changed: asked.tools_list_changed == Some(true),
        prompts_list_changed: asked.prompts_list_changed == Some(true),
        resources_list_changed: asked.resources_list_changed == Some(true),
        resource_subscriptions: (can_subscribe && !uris.is_empty()).then_some(uris),
    })
}

/// True when the child's `initialize` result declares `resources.subscribe: true`.
pub fn child_can_subscribe(init_result: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Init {
        capabilities: Option<Caps>,
    }
    #[derive(Deserialize)]
    struct Caps {
        resources: Option<Resources>,
    }
    #[derive(Deserialize)]
    struct Resources {
        subscribe: Option<bool>,
    }
    serde_json::from_slice::<Init>(init_result)
        .ok()
        .and_then(|i| i.capabilities?.resources?.subscribe)
        == Some(true)
}

struct Listener {
    honored: Honored,
    /// The listen request's id, as the caller wrote it.
    id: Bytes,
    tx: mpsc::Sender<Bytes>,
}

/// One tenant's listeners.
#[derive(Default)]
pub struct Listens {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Listener>>,
}

impl std::fmt::Debug for Listens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listens")
            .field("open", &self.len())
            .finish()
    }
}

impl Listens {
    /// Adds a listener; returns its number (its interest key is [`key`] of it) and the
    /// stream of its tagged notifications, which ends when the tenant goes.
    pub fn add(&self, honored: Honored, id: &[u8]) -> (u64, mpsc::Receiver<Bytes>) {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(LISTEN_QUEUE);
        let id = Bytes::copy_from_slice(id);
        lock(&self.map).insert(n, Listener { honored, id, tx });
        (n, rx)
    }

    /// Removes listener `n` (its stream ended).
    pub fn remove(&self, n: u64) {
        lock(&self.map).remove(&n);
    }

    /// Listeners open now.
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// True when nobody listens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends every listener's stream (the tenant was removed): each ends gracefully.
    pub fn close_all(&self) {
        lock(&self.map).clear();
    }

    /// Delivers a child's notification to the listeners that asked for it, tagged; returns
    /// how many took it.
    pub fn notify(&self, method: &str, uri: Option<&str>, line: &[u8]) -> usize {
        let map = lock(&self.map);
        let mut reached = 0;
        for listener in map.values().filter(|l| l.honored.wants(method, uri)) {
            if let Some(tagged) = tagged(line, &listener.id)
                && listener.tx.try_send(tagged).is_ok()
            {
                reached += 1;
            }
        }
        reached
    }
}

/// The interest key of listener `n`; never a session id (those are hex).
pub fn key(n: u64) -> Arc<str> {
    Arc::from(format!("listen-{n}"))
}

/// `line` with `_meta.subscriptionId` set to `id` in its params, byte-exact otherwise.
fn tagged(line: &[u8], id: &[u8]) -> Option<Bytes> {
    let id = std::str::from_utf8(id).ok()?;
    let entry = format!(r#""{META_SUBSCRIPTION_ID}":{id}"#);
    let env = envelope::parse(line).ok()?;
    let Some(params) = env.params else {
        // No params: add them just before the closing brace of the message.
        let end = line.iter().rposition(|b| *b == b'}')?;
        let mut out = line[..end].to_vec();
        out.extend_from_slice(format!(r#","params":{{"_meta":{{{entry}}}}}"#).as_bytes());
        out.extend_from_slice(&line[end..]);
        return Some(out.into());
    };
    let (target, inner) = match envelope::params_head(Some(params)).and_then(|p| p.meta) {
        Some(meta) if meta.get().starts_with('{') => (meta, entry),
        Some(_) => return None, // a `_meta` that is not an object cannot be tagged
        None if params.get().starts_with('{') => (params, format!(r#""_meta":{{{entry}}}"#)),
        None => return None,
    };
    let span = span_of(line, target.get())?;
    let empty = target.get()[1..].trim_start().starts_with('}');
    let mut insert = inner;
    if !empty {
        insert.push(',');
    }
    let at = span.start + 1; // just after the object's `{`
    let mut out = Vec::with_capacity(line.len() + insert.len());
    out.extend_from_slice(&line[..at]);
    out.extend_from_slice(insert.as_bytes());
    out.extend_from_slice(&line[at..]);
    Some(out.into())
}

/// The acknowledgment that opens a listen stream.
pub fn acknowledged(id: &[u8], honored: &Honored) -> Bytes {
    let filter = serde_json::to_string(honored).unwrap_or_else(|_| "{}".into());
    let id = String::from_utf8_lossy(id);
    format!(
        r#"{{"jsonrpc":"2.0","method":"notifications/subscriptions/acknowledged","params":{{"_meta":{{"{META_SUBSCRIPTION_ID}":{id}}},"notifications":{filter}}}}}"#
    )
    .into()
}

/// The response that ends a listen stream gracefully (shutdown, tenant removed), naming
/// the child's server when its `initialize` did.
pub fn ended(id: &[u8], server_info: Option<&[u8]>) -> Bytes {
    let id = String::from_utf8_lossy(id);
    let info = server_info.map_or_else(String::new, |info| {
        format!(r#","{META_SERVER_INFO}":{}"#, String::from_utf8_lossy(info))
    });
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"result":{{"resultType":"complete","_meta":{{"{META_SUBSCRIPTION_ID}":{id}{info}}}}}}}"#
    )
    .into()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn parse(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn notifications_are_tagged_with_the_subscription_id() {
        let cases = [
            (
                r#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"a"}}"#,
                json!({"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"_meta":{META_SUBSCRIPTION_ID:"s1"},"uri":"a"}}),
            ),
            (
                r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#,
                json!({"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{"_meta":{META_SUBSCRIPTION_ID:"s1"}}}),
            ),
            (
                r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{"_meta":{"x":1}}}"#,
                json!({"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{"_meta":{META_SUBSCRIPTION_ID:"s1","x":1}}}),
            ),
            (
                r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{}}"#,
                json!({"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{"_meta":{META_SUBSCRIPTION_ID:"s1"}}}),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(
                parse(&tagged(line.as_bytes(), b"\"s1\"").unwrap()),
                want,
                "{line}"
            );
        }
    }

    #[test]
    fn the_honored_filter_keeps_known_kinds_and_subscribable_uris() {
        let params = RawValue::from_string(
            json!({"notifications": {"toolsListChanged": true, "promptsListChanged": false, "bogus": true, "resourceSubscriptions": ["u1", "u1", "u2"]}}).to_string(),
        )
        .unwrap();
        let honored = honor(Some(&params), true).unwrap();
        assert_eq!(
            serde_json::to_value(&honored).unwrap(),
            json!({"toolsListChanged": true, "resourceSubscriptions": ["u1", "u2"]})
        );
        let no_subscribe = honor(Some(&params), false).unwrap();
        assert_eq!(
            serde_json::to_value(&no_subscribe).unwrap(),
            json!({"toolsListChanged": true})
        );
        assert!(honored.wants("notifications/resources/updated", Some("u2")));
        assert!(!honored.wants("notifications/resources/updated", Some("u3")));
        assert!(!honored.wants("notifications/prompts/list_changed", None));
    }
}
