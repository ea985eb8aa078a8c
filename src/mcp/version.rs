//! Session-era protocol revisions: which one a session is answered with, what each lacks,
//! and the `MCP-Protocol-Version` header rule.
//!
//! The child is initialized once with the newest revision mcpmux speaks and may answer an
//! older one. A session asking for a revision mcpmux can serve on top of the child's (the
//! same or older) gets it; otherwise it gets the child's. mcpmux then sends a session no
//! message type its revision lacks, so an older session on a newer child stays correct.

use super::stateless::SESSION_ERA_VERSIONS;

/// A session-era revision mcpmux serves, oldest first (so `<` means older).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Revision {
    /// 2024-11-05.
    R2024_11_05,
    /// 2025-03-26: JSON-RPC batches.
    R2025_03_26,
    /// 2025-06-18: elicitation (form); batches removed.
    R2025_06_18,
    /// 2025-11-25: URL elicitation, sampling with tools, tasks.
    R2025_11_25,
}

impl Revision {
    /// Every revision, newest first.
    pub const ALL: [Revision; 4] = [
        Revision::R2025_11_25,
        Revision::R2025_06_18,
        Revision::R2025_03_26,
        Revision::R2024_11_05,
    ];
    /// The revision mcpmux initializes children with.
    pub const NEWEST: Revision = Revision::R2025_11_25;

    /// The revision named exactly `text`.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::R2024_11_05 => "2024-11-05",
            Self::R2025_03_26 => "2025-03-26",
            Self::R2025_06_18 => "2025-06-18",
            Self::R2025_11_25 => "2025-11-25",
        }
    }

    /// JSON arrays of messages in one POST (2025-03-26 only).
    pub fn has_batches(self) -> bool {
        self == Self::R2025_03_26
    }

    /// `elicitation/create` exists.
    pub fn has_elicitation(self) -> bool {
        self >= Self::R2025_06_18
    }

    /// URL-mode elicitation, `sampling.tools`, tasks and their notifications exist.
    pub fn has_2025_11_25_features(self) -> bool {
        self >= Self::R2025_11_25
    }

    /// Whether a session on this revision may be sent notification `method` (one the
    /// revision defines, or one mcpmux does not know: those are passed on).
    pub fn has_notification(self, method: &str) -> bool {
        match method {
            "notifications/tasks/status" | "notifications/elicitation/complete" => {
                self.has_2025_11_25_features()
            }
            _ => true,
        }
    }
}

/// The revision a session asking for `asked` is answered with, on a child that answered
/// `child`: the one asked for when it is served and not newer than the child's, otherwise
/// the child's (even one mcpmux does not know: it is what the child speaks).
pub fn negotiate(asked: &str, child: &str) -> String {
    match (Revision::parse(asked), Revision::parse(child)) {
        (Some(asked), Some(child)) if asked <= child => asked.as_str().to_owned(),
        _ => child.to_owned(),
    }
}

/// Why an `MCP-Protocol-Version` header was refused (400 with this message).
pub fn header_error(value: &[u8]) -> String {
    format!(
        "unsupported MCP-Protocol-Version {:?}; supported session-era versions: {}",
        String::from_utf8_lossy(value),
        SESSION_ERA_VERSIONS.join(", ")
    )
}

/// The revision an `MCP-Protocol-Version` header names; `Err` (the 400 message) for a
/// malformed or unsupported one. It need not equal the session's own revision.
pub fn check_header(value: &[u8]) -> Result<Revision, String> {
    std::str::from_utf8(value)
        .ok()
        .and_then(Revision::parse)
        .ok_or_else(|| header_error(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_the_session_era_of_the_supported_versions() {
        let names: Vec<&str> = Revision::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names, SESSION_ERA_VERSIONS);
        assert_eq!(Revision::NEWEST, Revision::ALL[0]);
    }

    #[test]
    fn sessions_get_what_they_ask_when_the_child_is_as_new() {
        let cases = [
            ("2025-03-26", "2025-11-25", "2025-03-26"),
            ("2025-11-25", "2025-11-25", "2025-11-25"),
            ("2025-11-25", "2025-06-18", "2025-06-18"),
            ("2025-06-18", "2025-06-18", "2025-06-18"),
            ("2024-11-05", "2025-06-18", "2024-11-05"),
            ("2099-01-01", "2025-11-25", "2025-11-25"),
            ("", "2025-06-18", "2025-06-18"),
            ("2025-03-26", "2024-10-07", "2024-10-07"),
        ];
        for (asked, child, want) in cases {
            assert_eq!(negotiate(asked, child), want, "{asked} on {child}");
        }
    }

    #[test]
    fn header_names_any_supported_revision() {
        assert_eq!(check_header(b"2025-03-26"), Ok(Revision::R2025_03_26));
        for bad in [
            &b"2026-07-28"[..],
            b"2025-13-01",
            b"",
            b"2025-11-25 ",
            b"\xff",
        ] {
            let err = check_header(bad).unwrap_err();
            assert!(
                err.contains("2025-11-25, 2025-06-18, 2025-03-26, 2024-11-05"),
                "{err}"
            );
        }
    }

    #[test]
    fn older_revisions_lack_newer_message_types() {
        let old = Revision::R2025_03_26;
        assert!(old.has_batches() && !Revision::R2025_06_18.has_batches());
        assert!(!old.has_elicitation() && Revision::R2025_06_18.has_elicitation());
        assert!(!Revision::R2025_06_18.has_notification("notifications/tasks/status"));
        assert!(!old.has_notification("notifications/elicitation/complete"));
        assert!(old.has_notification("notifications/tools/list_changed"));
        assert!(Revision::NEWEST.has_notification("notifications/tasks/status"));
    }
}
