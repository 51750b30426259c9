//! Sharing with other VMs in the model: share and remote attachments,
//! share allocators, holds and quarantine (docs/design/cross-vm-sharing.md,
//! section 3). One test or more per rule, with the errno; every refusal
//! leaves the pool unchanged.

use super::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const PAGE: u64 = PAGE_SIZE;
const SG: MappingType = MappingType::ScatterGather;
const BOTH: &[MappingType] = &[MappingType::Contiguous, MappingType::ScatterGather];
const DIR: Direction = Direction::Bidirectional;
/// The custom kind an importer's `kind_map` may name ("low").
const LOW: u32 = 1 << 9;

// Allocator ids of `share_pool()`.
const SYSTEM: usize = 0;
const CONTIG: usize = 1;
const SHARE: usize = 2;
const SHARE_LOW: usize = 3;

fn spec(name: &str, strategy: Strategy, kinds: u32, align: u64, share: bool) -> AllocatorSpec {
    AllocatorSpec {
        name: name.into(),
        strategy,
        kinds,
        placement: Placement {
            contiguous: strategy == Strategy::Contiguous,
            below_4g: false,
            align,
        },
        share,
    }
}

/// system (scatter), contig, then two share allocators: "share" serves
/// the well-known kinds, "share-low" only the custom kind `low`. Share
/// allocations start on 16 KiB (the exporter's "host pages" in these
/// tests).
fn share_config() -> PoolConfig {
    let mut config = PoolConfig::default_layout();
    config.custom_kinds = vec![KindSpec {
        bit: 9,
        name: "low".into(),
        contiguous: true,
        max_address: u64::MAX,
        align: PAGE,
    }];
    let well_known = kinds::SYSTEM | kinds::CONTIG;
    config.allocators = vec![
        spec("system", Strategy::Scatter, kinds::SYSTEM, PAGE, false),
        spec("contig", Strategy::Contiguous, well_known, PAGE, false),
        spec("share", Strategy::Contiguous, well_known, 16 << 10, true),
        spec("share-low", Strategy::Contiguous, LOW, 16 << 10, true),
    ];
    config
}

fn share_pool() -> Pool {
    let mut pool = Pool::new(share_config()).unwrap();
    pool.add_region(SYSTEM, 8 * GIB, 64 * MIB).unwrap();
    pool.add_region(CONTIG, 16 * GIB, 64 * MIB).unwrap();
    pool.add_region(SHARE, 20 * GIB, 16 * MIB).unwrap();
    pool.add_region(SHARE_LOW, 24 * GIB, 16 * MIB).unwrap();
    pool
}

fn fails_unchanged<T: std::fmt::Debug>(
    pool: &mut Pool,
    errno: i32,
    op: impl FnOnce(&mut Pool) -> Result<T, Error>,
) -> Error {
    let (snapshot, image) = (pool.snapshot(), pool.image());
    let err = op(pool).expect_err("operation should fail");
    assert_eq!(err.errno(), errno, "{err}");
    assert_eq!(
        pool.snapshot(),
        snapshot,
        "failed operation changed the pool"
    );
    assert_eq!(pool.image(), image, "failed operation changed the image");
    err
}

/// Creates a buffer and attaches a guest device with `mask`.
fn buffer(pool: &mut Pool, size: u64, mask: u32) -> (BufferId, AttachmentId) {
    let b = pool.create(size, 0, 0).unwrap().id;
    let a = pool.attach(b, mask, BOTH).unwrap().id;
    (b, a)
}

fn quarantined(pool: &Pool, allocator: usize) -> u64 {
    pool.allocator_stats()[allocator].quarantined
}

#[test]
fn an_unshared_buffer_never_lands_in_a_share_allocator() {
    let mut pool = Pool::new(share_config()).unwrap();
    pool.add_region(SHARE, 20 * GIB, 16 * MIB).unwrap();
    let (_, a) = buffer(&mut pool, 3 * PAGE, kinds::CONTIG);
    // Only the share allocator has memory: the map finds no room.
    fails_unchanged(&mut pool, libc::ENOMEM, |p| p.map(a, DIR));
    pool.add_region(CONTIG, 16 * GIB, MIB).unwrap();
    assert_eq!(pool.map(a, DIR).unwrap().allocator, CONTIG);
}

#[test]
fn a_buffer_shared_before_its_first_map_is_one_extent_of_whole_share_pages() {
    let mut pool = share_pool();
    let (b, a) = buffer(&mut pool, 5 * PAGE, kinds::CONTIG);
    let shared = pool.share(b, 16 << 10).unwrap();
    assert_eq!(shared.map_type, MappingType::Contiguous);
    assert!(!shared.migrate_pending);
    assert!(pool.is_shared(b).unwrap());
    let mapped = pool.map(a, DIR).unwrap();
    assert_eq!(mapped.allocator, SHARE);
    assert!(mapped.newly_allocated);
    let [extent] = mapped.segments[..] else {
        panic!("one extent: {:?}", mapped.segments)
    };
    assert_eq!(extent.addr % (16 << 10), 0);
    assert_eq!(
        extent.len,
        32 << 10,
        "5 pages rounded up to two 16 KiB pages"
    );
    assert_eq!(pool.buffer_size(b).unwrap(), 5 * PAGE);
    assert_eq!(pool.counters().backing_bytes, 32 << 10);
}

#[test]
fn share_refusals_change_nothing() {
    let mut pool = share_pool();
    let (b, _) = buffer(&mut pool, PAGE, kinds::CONTIG);
    fails_unchanged(&mut pool, libc::EINVAL, |p| p.share(b, 3 * PAGE));
    fails_unchanged(&mut pool, libc::EINVAL, |p| p.share(b, 4 * MIB));
    fails_unchanged(&mut pool, libc::ENOENT, |p| p.share(0x7fff, PAGE));
    // Share allocations start on 16 KiB: 64 KiB pages find no allocator.
    fails_unchanged(&mut pool, libc::ENOMEM, |p| p.share(b, 64 << 10));
    pool.share(b, PAGE).unwrap();
    fails_unchanged(&mut pool, libc::EEXIST, |p| p.share(b, PAGE));
    // No share allocator serves DMA32 in this pool.
    let dma32 = pool.create(PAGE, 0, kinds::DMA32).unwrap().id;
    fails_unchanged(&mut pool, libc::ENOMEM, |p| p.share(dma32, PAGE));
    let (only_system, _) = buffer(&mut pool, PAGE, kinds::SYSTEM);
    pool.attach(only_system, kinds::SYSTEM, &[SG]).unwrap();
    pool.share(only_system, PAGE).unwrap(); // "share" serves SYSTEM
                                            // A released buffer is not shared.
    let released = pool.create(PAGE, 0, 0).unwrap().id;
    pool.free(released).unwrap();
    fails_unchanged(&mut pool, libc::ENOENT, |p| p.share(released, PAGE));
}

#[test]
fn a_late_share_moves_an_unmapped_backing_and_refuses_a_mapped_one() {
    let mut pool = share_pool();
    let (b, a) = buffer(&mut pool, 2 * PAGE, kinds::CONTIG);
    assert_eq!(pool.map(a, DIR).unwrap().allocator, CONTIG);
    fails_unchanged(&mut pool, libc::EBUSY, |p| p.share(b, PAGE));
    pool.unmap(a, DIR).unwrap();
    assert!(pool.share(b, PAGE).unwrap().migrate_pending);
    let moved = pool.map(a, DIR).unwrap();
    assert_eq!(moved.allocator, SHARE);
    assert_eq!(moved.migrated_from.unwrap()[0].addr, 16 * GIB);
}

#[test]
fn an_importers_custom_kind_steers_the_first_map() {
    let mut pool = share_pool();
    // Without remote constraints the buffer lands in "share".
    let (plain, pa) = buffer(&mut pool, PAGE, kinds::ANY);
    pool.share(plain, PAGE).unwrap();
    assert_eq!(pool.map(pa, DIR).unwrap().allocator, SHARE);
    // An importer whose kind maps to `low` before the first map.
    let (b, a) = buffer(&mut pool, PAGE, kinds::ANY);
    pool.share(b, PAGE).unwrap();
    let remote = pool.attach_remote(b, LOW, 7).unwrap();
    assert_eq!(remote.access_mask, LOW);
    assert_eq!(
        pool.attachment_owner(remote.id).unwrap(),
        Owner::Remote { tag: 7 }
    );
    assert_eq!(pool.map(a, DIR).unwrap().allocator, SHARE_LOW);
    // A remote attachment needs a shared buffer.
    let (unshared, _) = buffer(&mut pool, PAGE, kinds::ANY);
    fails_unchanged(&mut pool, libc::EINVAL, |p| {
        p.attach_remote(unshared, LOW, 1)
    });
}

#[test]
fn a_remote_mask_change_follows_the_late_attach_rule() {
    let mut pool = share_pool();
    let (b, a) = buffer(&mut pool, PAGE, kinds::ANY);
    pool.share(b, PAGE).unwrap();
    let remote = pool.attach_remote(b, kinds::ANY, 1).unwrap().id;
    assert_eq!(pool.map(a, DIR).unwrap().allocator, SHARE);
    // Mapped in the exporter: the new mask cannot move it.
    fails_unchanged(&mut pool, libc::EBUSY, |p| p.set_remote_mask(remote, LOW));
    pool.unmap(a, DIR).unwrap();
    let changed = pool.set_remote_mask(remote, LOW).unwrap();
    assert!(changed.migrate_pending);
    assert_eq!(changed.access_mask, LOW);
    // Widening again cancels the move the backing no longer needs.
    assert!(
        !pool
            .set_remote_mask(remote, kinds::ANY)
            .unwrap()
            .migrate_pending
    );
    pool.set_remote_mask(remote, LOW).unwrap();
    assert_eq!(pool.map(a, DIR).unwrap().allocator, SHARE_LOW);
    // Only remote attachments; a mask the backing does not serve while
    // mapped is refused.
    fails_unchanged(&mut pool, libc::ENOENT, |p| p.set_remote_mask(a, LOW));
    fails_unchanged(&mut pool, libc::EBUSY, |p| {
        p.set_remote_mask(remote, kinds::SYSTEM)
    });
    // An access mask left empty.
    let c = pool.create(PAGE, 0, LOW).unwrap().id;
    pool.share(c, PAGE).unwrap();
    let r = pool.attach_remote(c, LOW, 2).unwrap().id;
    fails_unchanged(&mut pool, libc::EINVAL, |p| {
        p.set_remote_mask(r, kinds::SYSTEM)
    });
}

#[test]
fn the_guest_never_names_a_share_or_remote_attachment() {
    let mut pool = share_pool();
    let (b, a) = buffer(&mut pool, PAGE, kinds::ANY);
    let share = pool.share(b, PAGE).unwrap().id;
    let remote = pool.attach_remote(b, kinds::ANY, 1).unwrap().id;
    pool.map(a, DIR).unwrap();
    for id in [share, remote] {
        fails_unchanged(&mut pool, libc::ENOENT, |p| p.map(id, DIR));
        fails_unchanged(&mut pool, libc::ENOENT, |p| p.unmap(id, DIR));
        fails_unchanged(&mut pool, libc::ENOENT, |p| p.detach(id));
        fails_unchanged(&mut pool, libc::ENOENT, |p| p.attachment_buffer(id));
    }
    // And the device never detaches the guest's through detach_owned.
    fails_unchanged(&mut pool, libc::ENOENT, |p| p.detach_owned(a));
}

#[test]
fn share_and_remote_attachments_do_not_count_against_the_guest_limit() {
    let mut config = share_config();
    config.limits.max_attachments_per_buffer = 1;
    let mut pool = Pool::new(config).unwrap();
    pool.add_region(SHARE, 20 * GIB, MIB).unwrap();
    let (b, _) = buffer(&mut pool, PAGE, kinds::ANY);
    pool.share(b, PAGE).unwrap();
    pool.attach_remote(b, kinds::ANY, 1).unwrap();
    pool.attach_remote(b, kinds::ANY, 2).unwrap();
    fails_unchanged(&mut pool, libc::ENOSPC, |p| p.attach(b, kinds::ANY, BOTH));
}

#[test]
fn the_share_attachment_goes_after_the_remote_ones() {
    let mut pool = share_pool();
    let (b, a) = buffer(&mut pool, PAGE, kinds::ANY);
    let share = pool.share(b, PAGE).unwrap().id;
    let remote = pool.attach_remote(b, LOW, 1).unwrap().id;
    fails_unchanged(&mut pool, libc::EBUSY, |p| p.detach_owned(share));
    pool.detach_owned(remote).unwrap();
    assert_eq!(pool.snapshot().buffers[0].access_mask, kinds::ANY);
    pool.detach_owned(share).unwrap();
    assert!(!pool.is_shared(b).unwrap());
    // Unshared again: its next first map avoids share allocators.
    assert_eq!(pool.map(a, DIR).unwrap().allocator, SYSTEM);
    // Freed and without guest attachments: the last detach destroys it.
    let (c, _) = buffer(&mut pool, PAGE, kinds::ANY);
    let (d, da) = buffer(&mut pool, PAGE, kinds::ANY);
    let _ = c;
    pool.detach(da).unwrap();
    let share = pool.share(d, PAGE).unwrap().id;
    pool.free(d).unwrap();
    assert!(
        pool.is_shared(d).unwrap(),
        "kept alive by its share attachment"
    );
    pool.detach_owned(share).unwrap();
    assert!(pool.buffer_size(d).is_err());
}

/// A window of another VM may reach a held backing: freed, moved or
/// discarded, it is quarantined (neither free nor backing) until unheld.
#[test]
fn a_held_extent_is_quarantined_until_its_last_hold_goes() {
    let mut pool = share_pool();
    let (b, a) = buffer(&mut pool, 2 * PAGE, kinds::ANY);
    let share = pool.share(b, PAGE).unwrap().id;
    let mapped = pool.map(a, DIR).unwrap();
    let held = pool.hold(b).unwrap();
    assert_eq!(held.extent, mapped.segments[0]);
    assert_eq!(pool.hold(b).unwrap().serial, held.serial, "two windows");
    let free_before = pool.allocator_stats()[SHARE].free;
    pool.unmap(a, DIR).unwrap();
    pool.detach(a).unwrap();
    pool.detach_owned(share).unwrap();
    pool.free(b).unwrap();
    assert!(pool.buffer_size(b).is_err(), "the buffer is gone");
    assert_eq!(quarantined(&pool, SHARE), 2 * PAGE);
    assert_eq!(pool.counters().quarantined_bytes, 2 * PAGE);
    assert_eq!(pool.allocator_stats()[SHARE].free, free_before);
    assert_eq!(pool.counters().backing_bytes, 0);
    // Nothing can take it or give it back to the guest meanwhile.
    fails_unchanged(&mut pool, libc::EBUSY, |p| {
        p.remove_regions(
            SHARE,
            &[Segment {
                addr: held.extent.addr,
                len: 16 << 10,
            }],
        )
    });
    let (c, ca) = buffer(&mut pool, 2 * PAGE, kinds::ANY);
    pool.share(c, PAGE).unwrap();
    assert_ne!(pool.map(ca, DIR).unwrap().segments[0], held.extent);
    // The first unhold leaves it; the last frees it.
    assert!(!pool.unhold(held.serial).unwrap());
    assert_eq!(quarantined(&pool, SHARE), 2 * PAGE);
    assert!(pool.unhold(held.serial).unwrap());
    assert_eq!(quarantined(&pool, SHARE), 0);
    assert_eq!(
        pool.allocator_stats()[SHARE].free,
        free_before + 2 * PAGE - 2 * PAGE
    );
    fails_unchanged(&mut pool, libc::ENOENT, |p| p.unhold(held.serial));
}

#[test]
fn holds_need_a_shared_backing_and_an_unheld_backing_frees_at_once() {
    let mut pool = share_pool();
    let (b, a) = buffer(&mut pool, PAGE, kinds::ANY);
    fails_unchanged(&mut pool, libc::EINVAL, |p| p.hold(b));
    pool.share(b, PAGE).unwrap();
    fails_unchanged(&mut pool, libc::ENODATA, |p| p.hold(b));
    pool.map(a, DIR).unwrap();
    let held = pool.hold(b).unwrap();
    assert!(!pool.unhold(held.serial).unwrap());
    fails_unchanged(&mut pool, libc::ENOENT, |p| p.unhold(held.serial));
}

#[test]
fn a_migration_quarantines_the_held_old_extent() {
    let mut pool = share_pool();
    let (b, a) = buffer(&mut pool, PAGE, kinds::ANY);
    pool.share(b, PAGE).unwrap();
    let remote = pool.attach_remote(b, kinds::ANY, 1).unwrap().id;
    let old = pool.map(a, DIR).unwrap().segments[0];
    let held = pool.hold(b).unwrap();
    pool.unmap(a, DIR).unwrap();
    pool.set_remote_mask(remote, LOW).unwrap();
    let moved = pool.map(a, DIR).unwrap();
    assert_eq!(moved.allocator, SHARE_LOW);
    assert_eq!(moved.migrated_from, Some(vec![old]));
    assert_eq!(quarantined(&pool, SHARE), PAGE);
    assert_ne!(pool.backing_serial(b).unwrap(), held.serial);
    assert!(pool.unhold(held.serial).unwrap());
    assert_eq!(quarantined(&pool, SHARE), 0);
}

/// A RESET keeps what other VMs may reach: in no region now, and no
/// region may be donated over it until its last hold goes.
#[test]
fn a_cleared_pool_keeps_its_quarantine_and_refuses_donations_over_it() {
    let mut pool = share_pool();
    let (b, a) = buffer(&mut pool, PAGE, kinds::ANY);
    pool.share(b, PAGE).unwrap();
    let extent = pool.map(a, DIR).unwrap().segments[0];
    let held = pool.hold(b).unwrap();
    pool.clear().unwrap();
    assert!(!pool.is_pristine());
    assert_eq!(pool.counters().quarantined_bytes, PAGE);
    let orphans = pool.quarantined();
    assert_eq!(orphans.len(), 1);
    assert_eq!(
        (orphans[0].allocator, &orphans[0].segments[..]),
        (None, &[extent][..])
    );
    fails_unchanged(&mut pool, libc::EBUSY, |p| {
        p.add_region(SHARE, 20 * GIB, 16 * MIB)
    });
    // An image carries it.
    let rebuilt = Pool::from_image(share_config(), &pool.image()).unwrap();
    assert_eq!(rebuilt.image(), pool.image());
    assert!(pool.unhold(held.serial).unwrap());
    assert!(pool.is_pristine());
    pool.add_region(SHARE, 20 * GIB, 16 * MIB).unwrap();
}

#[test]
fn images_carry_owners_holds_and_quarantine() {
    let mut pool = share_pool();
    let (b, a) = buffer(&mut pool, PAGE, kinds::ANY);
    pool.share(b, PAGE).unwrap();
    pool.attach_remote(b, LOW, 9).unwrap();
    pool.map(a, DIR).unwrap();
    pool.hold(b).unwrap();
    let (c, ca) = buffer(&mut pool, PAGE, kinds::ANY);
    let share = pool.share(c, PAGE).unwrap().id;
    pool.map(ca, DIR).unwrap();
    pool.hold(c).unwrap();
    pool.unmap(ca, DIR).unwrap();
    pool.detach(ca).unwrap();
    pool.detach_owned(share).unwrap();
    pool.free(c).unwrap();
    assert_eq!(pool.quarantined().len(), 1);
    let image = pool.image();
    let rebuilt = Pool::from_image(share_config(), &image).unwrap();
    assert_eq!(rebuilt.image(), image);
    assert_eq!(rebuilt.snapshot(), pool.snapshot());
    assert_eq!(rebuilt.free_extents(SHARE), pool.free_extents(SHARE));
    // An image whose quarantine overlaps a backing is refused.
    let mut overlapping = image.clone();
    overlapping.quarantine[0].segments = image.buffers[0].backing.clone().unwrap().1;
    assert!(Pool::from_image(share_config(), &overlapping).is_err());
    let mut unheld = image;
    unheld.quarantine[0].holds = 0;
    assert!(Pool::from_image(share_config(), &unheld).is_err());
}

// ---------------------------------------------------------------- imports

/// An importer's view of another VM's shared buffer: an id and a place in
/// `max_buffers`, no memory of its own pools.
#[test]
fn an_imported_buffer_takes_an_id_but_no_memory() {
    let mut config = share_config();
    config.limits.max_buffers = 2;
    let mut pool = Pool::new(config).unwrap();
    let before = pool.counters().total_bytes;
    let import = pool.import(3 * PAGE, 0).unwrap();
    assert!(pool.is_imported(import.id).unwrap());
    assert_eq!(import.size, 3 * PAGE);
    assert_eq!(pool.counters().total_bytes, before);
    assert!(pool.snapshot().buffers[0].imported);
    pool.create(PAGE, 0, 0).unwrap();
    fails_unchanged(&mut pool, libc::ENOSPC, |p| p.import(PAGE, 0));
    let mut pool = share_pool();
    fails_unchanged(&mut pool, libc::EINVAL, |p| p.import(0, 0));
}

#[test]
fn an_imported_buffer_is_attached_mapped_and_released_not_freed() {
    let mut pool = share_pool();
    let import = pool.import(2 * PAGE, 0).unwrap().id;
    // The window is one range: Contiguous matches whatever the mask.
    let a = pool
        .attach(import, kinds::SYSTEM, &[MappingType::Contiguous])
        .unwrap();
    assert_eq!(a.map_type, MappingType::Contiguous);
    fails_unchanged(&mut pool, libc::EINVAL, |p| p.map(a.id, DIR));
    fails_unchanged(&mut pool, libc::EINVAL, |p| p.free(import));
    fails_unchanged(&mut pool, libc::EINVAL, |p| p.share(import, PAGE));
    fails_unchanged(&mut pool, libc::EINVAL, |p| p.attach_remote(import, LOW, 1));
    assert_eq!(pool.map_import(a.id, DIR).unwrap(), MappingType::Contiguous);
    fails_unchanged(&mut pool, libc::EBUSY, |p| p.release_import(import));
    fails_unchanged(&mut pool, libc::EBUSY, |p| p.detach(a.id));
    pool.unmap(a.id, DIR).unwrap();
    let second = pool.attach(import, kinds::ANY, &[SG]).unwrap().id;
    pool.release_import(import).unwrap();
    assert!(pool.buffer_size(import).is_err());
    assert!(pool.attachment_buffer(a.id).is_err() && pool.attachment_buffer(second).is_err());
    assert_eq!(pool.num_attachments(), 0);
    // RELEASE names imports only; map_import imported buffers only.
    let (b, ba) = buffer(&mut pool, PAGE, kinds::ANY);
    fails_unchanged(&mut pool, libc::ENOENT, |p| p.release_import(b));
    fails_unchanged(&mut pool, libc::EINVAL, |p| p.map_import(ba, DIR));
}

#[test]
fn imports_survive_images_and_go_with_a_reset() {
    let mut pool = share_pool();
    let import = pool.import(PAGE, kinds::CONTIG).unwrap().id;
    let a = pool.attach(import, kinds::CONTIG, BOTH).unwrap().id;
    pool.map_import(a, DIR).unwrap();
    let image = pool.image();
    let rebuilt = Pool::from_image(share_config(), &image).unwrap();
    assert_eq!(rebuilt.image(), image);
    assert!(rebuilt.is_imported(import).unwrap());
    let mut backed = image;
    backed.buffers[0].backing = Some((
        SHARE,
        vec![Segment {
            addr: 20 * GIB,
            len: PAGE,
        }],
        99,
    ));
    assert!(Pool::from_image(share_config(), &backed).is_err());
    pool.clear().unwrap();
    assert!(pool.is_pristine());
}
