//! What each session of a tenant asked to hear from the shared child — resource
//! subscriptions and a logging level — and what the child must be told for all of them.
//!
//! The child sees one caller, mcpmux, so these per-session wishes are merged:
//! - **Subscriptions are reference-counted per URI.** The child gets one
//!   `resources/subscribe` when the first session subscribes and one `resources/unsubscribe`
//!   when the last one leaves (unsubscribe, DELETE or expiry); `notifications/resources/updated`
//!   goes only to the sessions subscribed to its URI.
//! - **Logging levels are kept per session.** The child is set to the most verbose level any
//!   session asked for; each `notifications/message` then goes only to the sessions whose own
//!   level admits it, so no session can silence or flood another. A session that never sent
//!   `logging/setLevel` gets every message the child sends. When the sessions that set a level
//!   are gone, the child keeps its last level (MCP has no way to reset it); the per-session
//!   filter still applies.
//!
//! [`Interest`] is the tenant's wish list and outlives children; [`Told`] is what one child
//! generation has been told, so a new child starts from nothing and [`plan`] replays the
//! active subscriptions and level to it. Not owned here: sending (the relay) and the locking
//! that keeps plan and send together (`Sessions::control`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::id_hash::{IdHash, IdMap};

/// Subscriptions one session may hold at once (each costs memory for its URI).
pub const MAX_SUBSCRIPTIONS_PER_SESSION: usize = 1024;
/// Longest resource URI accepted for a subscription, in bytes.
pub const MAX_URI_BYTES: usize = 16 * 1024;

/// An MCP logging level (RFC 5424 severities), least severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// `debug`
    Debug,
    /// `info`
    Info,
    /// `notice`
    Notice,
    /// `warning`
    Warning,
    /// `error`
    Error,
    /// `critical`
    Critical,
    /// `alert`
    Alert,
    /// `emergency`
    Emergency,
}

impl Level {
    const NAMES: [(&'static str, Level); 8] = [
        ("debug", Level::Debug),
        ("info", Level::Info),
        ("notice", Level::Notice),
        ("warning", Level::Warning),
        ("error", Level::Error),
        ("critical", Level::Critical),
        ("alert", Level::Alert),
        ("emergency", Level::Emergency),
    ];

    /// The level named `name` (the spec's lowercase names only).
    pub fn parse(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, l)| *l)
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, l)| *l == self)
            .map_or("debug", |(n, _)| n)
    }
}

#[derive(Deserialize)]
struct UriParam {
    uri: String,
}

#[derive(Deserialize)]
struct LevelParam<'a> {
    #[serde(borrow)]
    level: &'a RawValue,
}

/// `params.uri` of a subscribe, unsubscribe or `resources/updated`.
pub fn uri_of(params: Option<&RawValue>) -> Option<String> {
    serde_json::from_str::<UriParam>(params?.get())
        .ok()
        .map(|p| p.uri)
}

/// `params.level` of a `logging/setLevel` or `notifications/message`: the raw value (for
/// splicing) and the level it names, if it names one.
pub fn level_of(params: Option<&RawValue>) -> Option<(&RawValue, Option<Level>)> {
    let raw = serde_json::from_str::<LevelParam<'_>>(params?.get())
        .ok()?
        .level;
    let name: Option<String> = serde_json::from_str(raw.get()).ok();
    Some((raw, name.as_deref().and_then(Level::parse)))
}

/// Why a subscription was refused before reaching the child.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The session holds too many subscriptions.
    #[error(
        "this session already holds {MAX_SUBSCRIPTIONS_PER_SESSION} resource subscriptions; unsubscribe some first"
    )]
    TooMany,
    /// The URI is longer than mcpmux keeps.
    #[error("resource URI longer than {MAX_URI_BYTES} bytes")]
    UriTooLong,
}

/// The wishes of every session of one tenant.
#[derive(Debug, Default)]
pub struct Interest {
    /// URI → the sessions subscribed to it (never empty: the last one out removes the URI).
    subscriptions: HashMap<String, HashSet<Arc<str>, IdHash>>,
    per_session: IdMap<Arc<str>, usize>,
    levels: IdMap<Arc<str>, Level>,
}

impl Interest {
    /// Subscribes `session` to `uri`; `Ok(false)` when it already was.
    pub fn subscribe(&mut self, session: &Arc<str>, uri: &str) -> Result<bool, SubscribeError> {
        if self.is_subscribed(session, uri) {
            return Ok(false);
        }
        if uri.len() > MAX_URI_BYTES {
            return Err(SubscribeError::UriTooLong);
        }
        let held = self.per_session.entry(session.clone()).or_default();
        if *held >= MAX_SUBSCRIPTIONS_PER_SESSION {
            return Err(SubscribeError::TooMany);
        }
        *held += 1;
        let subscribers = self.subscriptions.entry(uri.to_owned()).or_default();
        subscribers.insert(session.clone());
        Ok(true)
    }

    /// Unsubscribes `session` from `uri`; false when it was not subscribed.
    pub fn unsubscribe(&mut self, session: &str, uri: &str) -> bool {
        let Some(subscribers) = self.subscriptions.get_mut(uri) else {
            return false;
        };
        if !subscribers.remove(session) {
            return false;
        }
        if subscribers.is_empty() {
            self.subscriptions.remove(uri);
        }
        if let Some(held) = self.per_session.get_mut(session) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                self.per_session.remove(session);
            }
        }
        true
    }

    /// True when `session` is subscribed to `uri`.
    pub fn is_subscribed(&self, session: &str, uri: &str) -> bool {
        self.subscriptions
            .get(uri)
            .is_some_and(|s| s.contains(session))
    }

    /// How many sessions are subscribed to `uri`.
    pub fn subscribers(&self, uri: &str) -> usize {
        self.subscriptions.get(uri).map_or(0, HashSet::len)
    }

    /// Sets `session`'s level; returns the one it had.
    pub fn set_level(&mut self, session: &Arc<str>, level: Option<Level>) -> Option<Level> {
        match level {
            Some(level) => self.levels.insert(session.clone(), level),
            None => self.levels.remove(session),
        }
    }

    /// The most verbose level any session asked for; `None` when none did.
    pub fn effective_level(&self) -> Option<Level> {
        self.levels.values().min().copied()
    }

    /// Whether `session` wants a log message of `level` (unknown levels reach everyone).
    pub fn wants_log(&self, session: &str, level: Option<Level>) -> bool {
        match (self.levels.get(session), level) {
            (Some(threshold), Some(level)) => level >= *threshold,
            _ => true,
        }
    }

    /// Forgets everything `session` asked for (it ended); true when anything changed.
    pub fn remove_session(&mut self, session: &str) -> bool {
        let had_level = self.levels.remove(session).is_some();
        let held = self.per_session.remove(session).unwrap_or(0);
        if held > 0 {
            self.subscriptions.retain(|_, subscribers| {
                subscribers.remove(session);
                !subscribers.is_empty()
            });
        }
        had_level || held > 0
    }
}

/// What one child generation has been told.
#[derive(Debug, Default)]
pub struct Told {
    /// URIs the child was asked to send updates for.
    pub subscriptions: HashSet<String>,
    /// The level the child was last set to.
    pub level: Option<Level>,
}

/// The messages that bring a child from what it was told to what the sessions want.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// URIs to subscribe to, sorted.
    pub subscribe: Vec<String>,
    /// URIs to unsubscribe from, sorted.
    pub unsubscribe: Vec<String>,
    /// A new level, when the wanted one differs from the child's.
    pub level: Option<Level>,
}

impl Plan {
    /// True when the child is up to date.
    pub fn is_empty(&self) -> bool {
        self.subscribe.is_empty() && self.unsubscribe.is_empty() && self.level.is_none()
    }
}

/// The difference between `told` and `interest`.
pub fn plan(interest: &Interest, told: &Told) -> Plan {
    let wanted: BTreeSet<&String> = interest.subscriptions.keys().collect();
    let have: BTreeSet<&String> = told.subscriptions.iter().collect();
    let level = interest
        .effective_level()
        .filter(|l| told.level != Some(*l));
    Plan {
        subscribe: wanted.difference(&have).map(|u| (*u).clone()).collect(),
        unsubscribe: have.difference(&wanted).map(|u| (*u).clone()).collect(),
        level,
    }
}

impl Told {
    /// Records that the child was sent `plan`.
    pub fn apply(&mut self, plan: &Plan) {
        for uri in &plan.subscribe {
            self.subscriptions.insert(uri.clone());
        }
        for uri in &plan.unsubscribe {
            self.subscriptions.remove(uri);
        }
        if plan.level.is_some() {
            self.level = plan.level;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn subscriptions_are_counted_per_uri_and_session() {
        let mut interest = Interest::default();
        let (a, b) = (sid("a"), sid("b"));
        assert_eq!(interest.subscribe(&a, "file:///x"), Ok(true));
        assert_eq!(interest.subscribe(&a, "file:///x"), Ok(false), "idempotent");
        assert_eq!(interest.subscribe(&b, "file:///x"), Ok(true));
        assert_eq!(interest.subscribers("file:///x"), 2);
        assert!(interest.unsubscribe("a", "file:///x"));
        assert!(!interest.unsubscribe("a", "file:///x"), "already gone");
        assert_eq!(interest.subscribers("file:///x"), 1);
        assert!(interest.remove_session("b"));
        assert_eq!(interest.subscribers("file:///x"), 0);
        assert!(interest.subscriptions.is_empty() && interest.per_session.is_empty());
    }

    #[test]
    fn subscriptions_per_session_are_bounded() {
        let mut interest = Interest::default();
        let a = sid("a");
        for n in 0..MAX_SUBSCRIPTIONS_PER_SESSION {
            assert_eq!(interest.subscribe(&a, &format!("u{n}")), Ok(true));
        }
        assert_eq!(
            interest.subscribe(&a, "one-more"),
            Err(SubscribeError::TooMany)
        );
        assert_eq!(
            interest.subscribe(&sid("b"), &"x".repeat(MAX_URI_BYTES + 1)),
            Err(SubscribeError::UriTooLong)
        );
    }

    #[test]
    fn the_child_gets_the_most_verbose_level_and_sessions_filter_their_own() {
        let mut interest = Interest::default();
        let (a, b) = (sid("a"), sid("b"));
        interest.set_level(&a, Some(Level::Error));
        interest.set_level(&b, Some(Level::Debug));
        assert_eq!(interest.effective_level(), Some(Level::Debug));
        assert!(
            !interest.wants_log("a", Some(Level::Warning)),
            "a asked for error+"
        );
        assert!(interest.wants_log("a", Some(Level::Critical)));
        assert!(interest.wants_log("b", Some(Level::Debug)));
        assert!(
            interest.wants_log("c", Some(Level::Debug)),
            "no level set: everything"
        );
        assert!(interest.wants_log("a", None), "unknown level: delivered");
        interest.remove_session("b");
        assert_eq!(interest.effective_level(), Some(Level::Error));
    }

    #[test]
    fn plans_bring_a_child_to_the_wanted_state_and_replay_to_a_new_one() {
        let mut interest = Interest::default();
        let (a, b) = (sid("a"), sid("b"));
        interest.subscribe(&a, "u1").unwrap();
        interest.subscribe(&b, "u1").unwrap();
        interest.subscribe(&b, "u2").unwrap();
        interest.set_level(&a, Some(Level::Info));
        let mut told = Told::default();
        let first = plan(&interest, &told);
        assert_eq!(
            first.subscribe,
            ["u1", "u2"],
            "one subscribe per URI, not per session"
        );
        assert_eq!(first.level, Some(Level::Info));
        told.apply(&first);
        assert!(plan(&interest, &told).is_empty());

        interest.remove_session("b");
        let after = plan(&interest, &told);
        assert_eq!(
            (after.subscribe.len(), &after.unsubscribe[..]),
            (0, &["u2".to_owned()][..])
        );
        told.apply(&after);

        let restarted = plan(&interest, &Told::default());
        assert_eq!(
            restarted.subscribe,
            ["u1"],
            "a new child is told what is active"
        );
        assert_eq!(restarted.level, Some(Level::Info));
    }

    #[test]
    fn levels_parse_by_their_spec_names() {
        for (name, level) in Level::NAMES {
            assert_eq!(Level::parse(name), Some(level));
            assert_eq!(level.as_str(), name);
        }
        assert_eq!(Level::parse("WARNING"), None);
        let params = RawValue::from_string(r#"{"level":"notice","x":1}"#.into()).unwrap();
        let (raw, level) = level_of(Some(&params)).unwrap();
        assert_eq!((raw.get(), level), (r#""notice""#, Some(Level::Notice)));
        let params = RawValue::from_string(r#"{"uri":"file:///a"}"#.into()).unwrap();
        assert_eq!(uri_of(Some(&params)).as_deref(), Some("file:///a"));
    }
}
