//! Descriptors the daemon inherited never reach a child.
//!
//! Everything the daemon opens itself is close-on-exec (std and tokio open with
//! `O_CLOEXEC`), but a descriptor its parent left open without the flag (a supervisor's
//! lock file, a shell redirection, a leaked socket) would pass through every `exec` to
//! every tenant's child: a tenant could then read, write or hold it. So the daemon marks
//! every inherited descriptor above stderr close-on-exec once, at start, before any thread
//! or child exists. It stays usable by the daemon itself (systemd's sockets are adopted
//! later, and sd_listen_fds already marks them).

use std::io;
use std::os::fd::RawFd;

/// Marks every open descriptor above 2 close-on-exec; returns how many lacked the flag.
pub fn seal_inherited_descriptors() -> io::Result<usize> {
    // Listed first, then marked: the listing's own descriptor is closed by then, and a
    // closed descriptor answers EBADF, which is skipped. Without /proc, every number
    // below the open-file limit is tried instead.
    let open: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(listing) => listing
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd > 2)
            .collect(),
        Err(_) => (3..=highest_possible()).collect(),
    };
    let mut sealed = 0;
    for fd in open {
        if seal(fd)? {
            sealed += 1;
        }
    }
    Ok(sealed)
}

/// The highest descriptor number the open-file limit allows (bounded, so the fallback
/// scan stays short even under a huge or unlimited limit).
fn highest_possible() -> RawFd {
    const SCAN_BOUND: u64 = 1 << 16;
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    RawFd::try_from(soft.min(SCAN_BOUND)).unwrap_or(RawFd::MAX) - 1
}

/// Sets `FD_CLOEXEC` on `fd`; whether it was missing. A closed `fd` is not an error.
#[allow(
    unsafe_code,
    reason = "fcntl(2) on a raw descriptor number; no safe wrapper takes one"
)]
fn seal(fd: RawFd) -> io::Result<bool> {
    // SAFETY: F_GETFD and F_SETFD read and set one flag of a descriptor number; they touch
    // no memory, and a number that is not open only yields EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::EBADF) => Ok(false),
            _ => Err(err),
        };
    }
    if flags & libc::FD_CLOEXEC != 0 {
        return Ok(false);
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[allow(
        unsafe_code,
        reason = "clearing the flag to build an inherited descriptor"
    )]
    fn clear_cloexec(fd: RawFd) {
        // SAFETY: as in `seal`; `fd` is open for the whole test.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert!(flags >= 0);
        assert!(unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } >= 0);
    }

    #[allow(unsafe_code, reason = "reading the flag back")]
    fn has_cloexec(fd: RawFd) -> bool {
        // SAFETY: as in `seal`.
        (unsafe { libc::fcntl(fd, libc::F_GETFD) } & libc::FD_CLOEXEC) != 0
    }

    #[test]
    fn a_descriptor_without_the_flag_gets_it_and_stays_open() {
        let file = tempfile::tempfile().unwrap();
        clear_cloexec(file.as_raw_fd());
        assert!(!has_cloexec(file.as_raw_fd()));
        assert!(seal_inherited_descriptors().unwrap() >= 1);
        assert!(has_cloexec(file.as_raw_fd()));
        assert!(file.metadata().is_ok(), "the daemon keeps using it");
    }

    #[test]
    fn without_proc_the_scan_covers_every_open_descriptor() {
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_raw_fd();
        assert!(
            (3..=highest_possible()).contains(&fd),
            "{fd} within the scan"
        );
    }

    #[test]
    fn a_closed_descriptor_is_skipped() {
        // Above any descriptor limit, so no parallel test can have it open.
        assert!(!seal(1 << 30).unwrap(), "not open: EBADF is not an error");
    }
}
