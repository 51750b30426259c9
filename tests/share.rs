//! Cross-VM sharing against the daemon (issue 17), through the VMM
//! harness playing QEMU's front-end with a window (tests/common/shmem.rs).
//! What the daemon does so far: a VM with a window (an importer of a share
//! group) is offered its shared memory region, the back-end request
//! channel and one-region memory-table changes; every other VM is offered
//! nothing new (tests/shmem_harness.rs,
//! `the_front_end_option_asks_cenallocd_for_nothing_it_does_not_offer`).
//! The share commands come in later steps
//! (docs/design/cross-vm-sharing.md, section 9).

mod common;

use cenalloc::device::DeviceConfig;
use cenalloc::protocol::{CreateResp, CENALLOC_SHM_WINDOW};
use common::shmem::*;
use common::*;
use vhost::vhost_user::message::VhostUserProtocolFeatures;

const WINDOW: u64 = 64 << 20;

fn importer() -> DeviceConfig {
    DeviceConfig {
        window: Some(WINDOW),
        ..DeviceConfig::default_layout()
    }
}

#[test]
fn an_importer_is_offered_its_window_and_the_backend_channel() {
    let socket = spawn_daemon(importer());
    let shmem = QemuShmem::new();
    let (mut harness, setup) = Harness::connect_with_window(&socket, WANTED_FEATURES, &shmem);
    assert_eq!(
        window_features(setup.acked),
        VhostUserProtocolFeatures::SHMEM
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
        "{:?}",
        setup.acked
    );
    // GET_SHMEM_CONFIG: one region, the window, of the configured size.
    assert_eq!(setup.regions, vec![(CENALLOC_SHM_WINDOW, WINDOW)]);
    let window = shmem.window(CENALLOC_SHM_WINDOW).expect("the window");
    assert_eq!(window.size(), WINDOW);
    assert!(setup.max_mem_slots.is_some_and(|slots| slots >= 8));
    // The channel is set up and stays open; the device serves as before.
    let channel = setup.channel.expect("the back-end request channel");
    harness.run(Cmd::get_info()).ok();
    let created: CreateResp = harness.run(Cmd::create(8192, 0)).ok().get();
    harness.run(Cmd::free(created.buffer_id)).ok();
    assert!(!channel.is_closed());
    // Nothing was asked on it: no share exists.
    assert!(shmem.mappings(CENALLOC_SHM_WINDOW).is_empty());
}
