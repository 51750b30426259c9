//! A front-end of a supervised cenallocd (tests/supervise.rs,
//! tests/fdstore.rs): its connection set up through the harness with a
//! clone for raw frames, and what those tests check of processes and
//! connections.

#![allow(dead_code)]

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;

use cenalloc::protocol::CENALLOC_NUM_VQS;
use vhost::vhost_user::Frontend;

use crate::common::*;

/// A set-up front-end (features, protocol features, config, memory table,
/// both rings) and a clone of its stream for raw frames.
pub fn front_end(socket: &Path) -> (Harness, UnixStream) {
    let stream = UnixStream::connect(socket).unwrap();
    let raw = stream.try_clone().unwrap();
    let frontend = Frontend::from_stream(stream, CENALLOC_NUM_VQS as u64);
    let harness = Harness::try_set_up(frontend, socket, WANTED_FEATURES, GuestRam::new()).unwrap();
    (harness, raw)
}

/// [`front_end`] set up as QEMU sets up a device with a window
/// ([`Harness::try_set_up_with_window`]): the window's protocol features
/// the daemon offers, the backend channel served for `shmem`,
/// GET_SHMEM_CONFIG's regions.
pub fn front_end_with_window(
    socket: &Path,
    shmem: &std::sync::Arc<crate::common::shmem::QemuShmem>,
) -> (Harness, crate::common::shmem::WindowSetUp, UnixStream) {
    let stream = UnixStream::connect(socket).unwrap();
    let raw = stream.try_clone().unwrap();
    let frontend = Frontend::from_stream(stream, CENALLOC_NUM_VQS as u64);
    let (harness, setup) =
        Harness::try_set_up_with_window(frontend, socket, WANTED_FEATURES, GuestRam::new(), shmem)
            .unwrap();
    (harness, setup, raw)
}

/// The connection is open and nothing unread waits on it.
pub fn assert_open_and_drained(raw: &UnixStream) {
    raw.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    match (&*raw).read(&mut byte) {
        Ok(0) => panic!("the front-end's connection was closed"),
        Ok(_) => panic!("an extra frame waits on the front-end's connection"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}"),
    }
    raw.set_nonblocking(false).unwrap();
}

pub fn signal(pid: i32, signal: libc::c_int) {
    // SAFETY: kill(2) with integers; the pid is a process of this test.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {pid} {signal}");
}

/// Whether every thread of `pid` is stopped (a SIGSTOP's kill returns
/// before they all are).
pub fn all_threads_stopped(pid: i32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .all(|task| {
            std::fs::read_to_string(task.path().join("stat"))
                .unwrap_or_default()
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        })
}

/// Living (not zombie) children of `parent`.
pub fn living_children(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let (state, ppid) = (fields.first()?, fields.get(1)?.parse::<i32>().ok()?);
            (ppid == parent && *state != "Z" && *state != "X").then_some(pid)
        })
        .collect()
}

/// GET_CONFIG's payload for the whole `size`-byte config space (offset 0,
/// no flags, `size` zero bytes).
pub fn get_config_payload(size: usize) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&0u32.to_le_bytes());
    payload.extend_from_slice(&(size as u32).to_le_bytes());
    payload.extend_from_slice(&0u32.to_le_bytes());
    payload.extend_from_slice(&vec![0u8; size]);
    payload
}
