//! Process-group signalling, and cleanup of the group once its leader is gone (DESIGN §4).
//!
//! Owns the rule that nothing in a child's process group outlives the child: SIGTERM, a
//! bounded wait, SIGKILL, a bounded wait. The leader itself is reaped by the actor; this
//! module never waits on pids it did not spawn (no `waitpid(-1)`). Orphaned members are
//! reaped by init, which may be slow, so a zombie member counts as gone.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::time::Instant;

/// How often a dying group is checked for remaining members.
const GROUP_POLL: Duration = Duration::from_millis(10);
/// How long members get to die after SIGKILL before we give up and warn.
const KILL_WAIT: Duration = Duration::from_secs(1);

/// Sends `signal` to every member of the group; an empty group is not an error.
pub(super) fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => {
            tracing::warn!(%e, signal = signal.as_str(), "signalling the child's process group failed")
        }
    }
}

/// Ends whatever is left of the group after its leader exited (say `sh -c 'sleep 1000 &
/// exec server'`): SIGTERM, wait up to `grace`, SIGKILL, wait briefly.
pub(super) async fn clean_group(pgid: Pid, grace: Duration) {
    if !group_alive(pgid) {
        return;
    }
    tracing::debug!("process group outlived its leader; sending SIGTERM");
    signal_group(pgid, Signal::SIGTERM);
    if wait_group_gone(pgid, grace).await {
        return;
    }
    tracing::warn!(
        ?grace,
        "process group still running after SIGTERM; sending SIGKILL"
    );
    signal_group(pgid, Signal::SIGKILL);
    if !wait_group_gone(pgid, KILL_WAIT).await {
        tracing::warn!("process group still has live members after SIGKILL");
    }
}

/// Polls until the group has no live member, for at most `limit`; true when it is gone.
async fn wait_group_gone(pgid: Pid, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !group_alive(pgid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(GROUP_POLL).await;
    }
}

/// Whether any member of the group is still running (zombies do not count).
pub(super) fn group_alive(pgid: Pid) -> bool {
    match killpg(pgid, None) {
        Err(Errno::ESRCH) => false,
        // Signal 0 also succeeds for zombies; /proc tells them apart. EPERM: alive, not ours.
        Ok(()) | Err(_) => has_live_member(pgid.as_raw()),
    }
}

/// Scans `/proc` for a non-zombie process in group `pgid`; unreadable `/proc` means yes.
/// Blocking reads, but of an in-memory file system, and only while a group is dying.
fn has_live_member(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_str().is_some_and(is_pid))
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter_map(|stat| parse_stat(&stat))
        .any(|stat| stat.pgrp == pgid && !matches!(stat.state, 'Z' | 'X' | 'x'))
}

fn is_pid(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit())
}

/// The fields of `/proc/<pid>/stat` that cleanup needs.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ProcStat {
    pub(super) state: char,
    pub(super) pgrp: i32,
}

/// Parses `pid (comm) state ppid pgrp ...`; `comm` may hold spaces and parentheses.
pub(super) fn parse_stat(stat: &str) -> Option<ProcStat> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(ProcStat { state, pgrp })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_comm() {
        let stat = "4242 (a) b (c)) S 1 4240 4240 0 -1 4194560 0 0";
        assert_eq!(
            parse_stat(stat),
            Some(ProcStat {
                state: 'S',
                pgrp: 4240
            })
        );
        assert_eq!(parse_stat("1 (x) Z 0"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_group_is_alive_and_an_unused_group_is_not() {
        let own = nix::unistd::getpgrp();
        assert!(group_alive(own));
        // pid_max is at most 2^22 on Linux, so this group cannot exist.
        assert!(!group_alive(Pid::from_raw(i32::MAX - 1)));
    }
}
