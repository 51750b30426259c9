//! Descriptors: control clients holding every export the policy allows
//! never take the descriptors a VM needs. The real `cenallocd` runs with
//! a low `RLIMIT_NOFILE` (2048, soft and hard, set in the child before
//! exec): every control client holds as many exports as it may, each
//! refused export is refused by the policy (never "Too many open files"),
//! and the VM's front-end, reconnecting meanwhile, is served.

mod common;

use std::os::unix::process::CommandExt;

use cenalloc::control::client::Client;
use cenalloc::control::protocol::{ErrorCode, Request};
use cenalloc::protocol::*;
use common::*;

const LIMIT: libc::rlim_t = 2048;
/// The daemon's default `max_clients`.
const CLIENTS: usize = 32;

fn vm_name(daemon: &DaemonProcess) -> String {
    daemon
        .socket
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Exports `buffer` on `client` until the daemon refuses; returns how many
/// it granted and the refusal. The test keeps none of the descriptors it
/// receives (the daemon keeps its own until the client leaves).
fn export_until_refused(
    client: &mut Client,
    vm: &str,
    buffer: u32,
) -> (usize, cenalloc::control::client::Error) {
    let request = Request::Export {
        vm: vm.to_string(),
        buffer,
        writable: false,
    };
    let mut granted = 0;
    loop {
        match client.call(&request) {
            Ok((_, files)) => {
                drop(files);
                granted += 1;
                assert!(granted <= 100_000, "exports never refused");
            }
            Err(e) => return (granted, e),
        }
    }
}

#[test]
fn control_clients_holding_every_export_allowed_leave_a_reconnecting_vm_its_descriptors() {
    let control = std::env::temp_dir().join(format!("cenalloc-fds-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&control);
    let control_arg = control.display().to_string();
    let mut daemon = DaemonProcess::spawn_with(&["--control-socket", &control_arg], |command| {
        // SAFETY: setrlimit is async-signal-safe; nothing else runs
        // between fork and exec here.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: LIMIT,
                    rlim_max: LIMIT,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let vm = vm_name(&daemon);
    let mut guest = Harness::connect(&daemon.socket, WANTED_FEATURES);
    guest.donate_all();
    let (buffer, _, _) = guest.mapped_buffer(65536, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);

    let mut clients = Vec::new();
    let mut held = 0;
    let mut per_client = None;
    for index in 0..CLIENTS {
        let mut client = Client::connect(&control).unwrap();
        let (granted, refusal) = export_until_refused(&mut client, &vm, buffer);
        assert_eq!(
            refusal.code(),
            Some(ErrorCode::TooManyExports),
            "client {index}, after {granted} exports ({held} held by the others): {refusal}\n{}",
            daemon.log_text()
        );
        // Every client gets what the policy gives one client.
        assert!(granted >= 1);
        assert_eq!(
            *per_client.get_or_insert(granted),
            granted,
            "client {index}"
        );
        held += granted;
        clients.push(client);
    }
    eprintln!(
        "{CLIENTS} clients hold {held} exports ({} each); daemon descriptors: {}",
        per_client.unwrap_or(0),
        daemon.held().fds
    );

    // The front-end goes and comes back (a VM reboot, a QEMU restart)
    // while every export is held.
    drop(guest);
    let mut guest = Harness::connect(&daemon.socket, WANTED_FEATURES);
    guest.donate_all();
    let (again, _, segments) = guest.mapped_buffer(65536, CENALLOC_KIND_SYSTEM, &[CENALLOC_MAP_SG]);
    guest.run(Cmd::fill(again, 5)).ok();
    assert_eq!(
        guest.device_checksum(again),
        fnv1a(&read_buffer(&guest.ram, &segments))
    );
    // And the clients can still export its buffers (theirs were revoked
    // with the old connection's memory, so they no longer count).
    let export = clients[0].export(&vm, again, false).unwrap();
    assert_eq!(export.read().unwrap(), read_buffer(&guest.ram, &segments));
    let log = daemon.log_text();
    assert!(!log.contains("Too many open files"), "{log}");
    drop(clients);
    let _ = std::fs::remove_file(&control);
}
