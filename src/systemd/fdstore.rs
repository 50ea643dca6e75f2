//! Keeping sockets that handover binds itself in systemd's fd store, so that
//! `systemctl restart` hands the same socket to the next handover (and no connection in its
//! backlog is lost).
//!
//! One message per name: systemd takes one `FDNAME=` per datagram.
//!
//! # References
//! <https://systemd.io/FILE_DESCRIPTOR_STORE/>, `sd_pid_notify_with_fds(3)`:
//! `FDSTORE=1` + `FDNAME=`, `FDSTOREREMOVE=1` + `FDNAME=` (systemd 236+). Silently ignored
//! when `FileDescriptorStoreMax=0`.
use std::io;
use std::os::fd::BorrowedFd;

use super::notify::{Notifier, NotifyState};

/// Stores `fd` under `name` (FDSTORE=1, FDNAME=name; the fd goes along as SCM_RIGHTS).
pub fn store(notifier: &Notifier, name: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
    notifier.send_with_fds(&[NotifyState::FdStore, NotifyState::FdName(name)], &[fd])
}

/// Removes every fd stored under `name` (FDSTOREREMOVE=1, FDNAME=name).
pub fn remove(notifier: &Notifier, name: &str) -> io::Result<()> {
    notifier.send(&[NotifyState::FdStoreRemove, NotifyState::FdName(name)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    use std::os::fd::AsFd;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn store_sends_the_fd_and_its_name_in_one_datagram() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::new(Some(path.to_string_lossy().into_owned()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        store(&n, "http", listener.as_fd()).expect("store");
        let mut buf = [0u8; 128];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([i32; 1]);
        let msg = recvmsg::<UnixAddr>(rx.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty()).expect("recvmsg");
        let fds: Vec<i32> = msg
            .cmsgs()
            .expect("cmsgs")
            .filter_map(|c| if let ControlMessageOwned::ScmRights(f) = c { Some(f) } else { None })
            .flatten()
            .collect();
        let len = msg.bytes;
        assert_eq!(fds.len(), 1, "one fd attached");
        for fd in fds {
            nix::unistd::close(fd).expect("close");
        }
        assert_eq!(&buf[..len], b"FDSTORE=1\nFDNAME=http\n");
        remove(&n, "http").expect("remove");
        let len = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"FDSTOREREMOVE=1\nFDNAME=http\n");
    }
}
