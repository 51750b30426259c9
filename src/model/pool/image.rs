//! A pool's whole state as data ([`PoolImage`]), and the pool built back
//! from it: what a journal snapshot holds (crate::journal), so that a
//! journal need not keep every batch since the VM started.
//!
//! The image holds what the pool decides with: every region, buffer,
//! backing, attachment, leased extent, id and serial, and the counters.
//! An allocator's free extents are not in it: they are its regions minus
//! every backing and leased extent, coalesced, which is what
//! [`Pool::from_image`] rebuilds (free extents are kept disjoint and never
//! adjacent, so the same set has one form). The image is checked as it is
//! read: an image no pool can have (overlaps, a backing outside its
//! allocator's regions, a dangling id) is refused.

use serde::{Deserialize, Serialize};

use super::{Attachment, Backing, Buffer, Owner, Pool, Quarantined};
use crate::model::ids::IdAllocator;
use crate::model::mapping::MappingType;
use crate::model::snapshot::Counters;
use crate::model::{Error, PoolConfig, Segment, DRIVER_ID_FIRST, DRIVER_ID_LAST, MAX_ID};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferImage {
    pub id: u32,
    pub size: u64,
    pub flags: u32,
    pub initial_mask: u32,
    pub access_mask: u32,
    pub released: bool,
    pub attachments: Vec<u32>,
    /// Allocator, segments, serial.
    pub backing: Option<(usize, Vec<Segment>, u64)>,
    /// Windows of other VMs that reach the backing ([`Pool::hold`]).
    #[serde(default)]
    pub holds: u32,
    pub migrate_pending: bool,
    pub serial: u64,
    /// Another VM's shared buffer ([`Pool::import`]).
    #[serde(default)]
    pub imported: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentImage {
    pub id: u32,
    pub buffer: u32,
    pub mask: u32,
    pub map_type: MappingType,
    pub maps: [u32; 3],
    #[serde(default)]
    pub owner: Owner,
}

/// A pool's state as data (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolImage {
    /// Donated regions: start, end, allocator.
    pub regions: Vec<(u64, u64, usize)>,
    pub buffers: Vec<BufferImage>,
    pub attachments: Vec<AttachmentImage>,
    /// Per allocator: its leased extents (start, length) and its count of
    /// backed buffers.
    pub stock: Vec<Vec<(u64, u64)>>,
    pub num_buffers: Vec<u32>,
    pub next_buffer_id: u32,
    pub next_attachment_id: u32,
    pub next_serial: u64,
    pub counters: Counters,
    /// Extents in quarantine, by serial.
    #[serde(default)]
    pub quarantine: Vec<Quarantined>,
}

fn bad(what: &str) -> Error {
    Error::InvalidConfig(format!("pool image: {what}"))
}

impl Pool {
    /// The pool's state as data.
    pub fn image(&self) -> PoolImage {
        let mut buffers: Vec<BufferImage> = self
            .buffers
            .iter()
            .map(|(&id, b)| BufferImage {
                id,
                size: b.size,
                flags: b.flags,
                initial_mask: b.initial_mask,
                access_mask: b.access_mask,
                released: b.released,
                attachments: b.attachments.clone(),
                backing: b
                    .backing
                    .as_ref()
                    .map(|k| (k.allocator, k.segments.clone(), k.serial)),
                holds: b.backing.as_ref().map_or(0, |k| k.holds),
                migrate_pending: b.migrate_pending,
                serial: b.serial,
                imported: b.imported,
            })
            .collect();
        buffers.sort_by_key(|b| b.id);
        let mut attachments: Vec<AttachmentImage> = self
            .attachments
            .iter()
            .map(|(&id, a)| AttachmentImage {
                id,
                buffer: a.buffer,
                mask: a.mask,
                map_type: a.map_type,
                maps: a.maps,
                owner: a.owner,
            })
            .collect();
        attachments.sort_by_key(|a| a.id);
        PoolImage {
            regions: self
                .regions
                .iter()
                .map(|(&start, &(end, allocator))| (start, end, allocator))
                .collect(),
            buffers,
            attachments,
            stock: self
                .allocators
                .iter()
                .map(|slot| slot.stock.iter().map(|(&a, &l)| (a, l)).collect())
                .collect(),
            num_buffers: self
                .allocators
                .iter()
                .map(|slot| slot.num_buffers)
                .collect(),
            next_buffer_id: self.buffer_ids.next_value(),
            next_attachment_id: self.attachment_ids.next_value(),
            next_serial: self.next_serial,
            counters: self.counters.clone(),
            quarantine: self.quarantine.values().cloned().collect(),
        }
    }

    /// The pool `image` describes, under `config` (the configuration the
    /// image was taken under). On error (an image no such pool can have)
    /// nothing is built.
    pub fn from_image(config: PoolConfig, image: &PoolImage) -> Result<Pool, Error> {
        let mut pool = Pool::new(config)?;
        let allocators = pool.allocators.len();
        if image.stock.len() != allocators || image.num_buffers.len() != allocators {
            return Err(bad("allocator count"));
        }
        let valid_id = |id: u32| (1..=MAX_ID).contains(&id);
        // Buffers and attachments of leased maps carry the driver's ids.
        let valid_object_id =
            |id: u32| valid_id(id) || (DRIVER_ID_FIRST..=DRIVER_ID_LAST).contains(&id);
        if !valid_id(image.next_buffer_id)
            || !valid_id(image.next_attachment_id)
            || image.next_serial == 0
        {
            return Err(bad("ids"));
        }
        // Regions: disjoint, each given to an allocator as it is.
        let mut last_end = 0;
        for &(start, end, allocator) in &image.regions {
            if start >= end || start < last_end || allocator >= allocators {
                return Err(bad("regions"));
            }
            last_end = end;
            pool.regions.insert(start, (end, allocator));
            pool.allocators[allocator]
                .allocator
                .restore_region(start, end - start);
        }
        // Backings and leased extents come out of the free extents.
        let claim = |pool: &mut Pool, allocator: usize, addr: u64, len: u64| {
            let slot = pool
                .allocators
                .get_mut(allocator)
                .ok_or_else(|| bad("allocator"))?;
            if len == 0 || !slot.allocator.claim(addr, len) {
                return Err(bad("a backing or leased extent that is not free memory"));
            }
            Ok(())
        };
        for (allocator, extents) in image.stock.iter().enumerate() {
            for &(addr, len) in extents {
                claim(&mut pool, allocator, addr, len)?;
                let slot = &mut pool.allocators[allocator];
                slot.stock.insert(addr, len);
                slot.stock_bytes += len;
            }
        }
        let mut serials = std::collections::BTreeSet::new();
        for entry in &image.quarantine {
            if entry.holds == 0 || entry.segments.is_empty() || !serials.insert(entry.serial) {
                return Err(bad("quarantine"));
            }
            if let Some(allocator) = entry.allocator {
                for segment in &entry.segments {
                    claim(&mut pool, allocator, segment.addr, segment.len)?;
                }
            } else if entry.segments.iter().any(|q| {
                pool.regions
                    .range(..q.end())
                    .next_back()
                    .is_some_and(|(_, &(end, _))| end > q.addr)
            }) {
                return Err(bad(
                    "a quarantined extent inside a region it is not part of",
                ));
            }
            pool.quarantine.insert(entry.serial, entry.clone());
        }
        for (slot, &count) in pool.allocators.iter_mut().zip(&image.num_buffers) {
            slot.num_buffers = count;
        }
        for b in &image.buffers {
            if !valid_object_id(b.id) || pool.buffers.contains_key(&b.id) {
                return Err(bad("buffer id"));
            }
            let backing = match &b.backing {
                Some((allocator, segments, serial)) => {
                    for segment in segments {
                        claim(&mut pool, *allocator, segment.addr, segment.len)?;
                    }
                    if serials.contains(serial) {
                        return Err(bad("a backing serial also in quarantine"));
                    }
                    Some(Backing {
                        allocator: *allocator,
                        segments: segments.clone(),
                        serial: *serial,
                        holds: b.holds,
                    })
                }
                None if b.holds == 0 => None,
                None => return Err(bad("holds without backing")),
            };
            if b.imported && backing.is_some() {
                return Err(bad("an imported buffer with backing"));
            }
            pool.buffers.insert(
                b.id,
                Buffer {
                    size: b.size,
                    flags: b.flags,
                    initial_mask: b.initial_mask,
                    access_mask: b.access_mask,
                    released: b.released,
                    attachments: b.attachments.clone(),
                    backing,
                    migrate_pending: b.migrate_pending,
                    serial: b.serial,
                    imported: b.imported,
                },
            );
        }
        for a in &image.attachments {
            let owner_lists_it = pool
                .buffers
                .get(&a.buffer)
                .is_some_and(|b| b.attachments.contains(&a.id));
            if !valid_object_id(a.id) || pool.attachments.contains_key(&a.id) || !owner_lists_it {
                return Err(bad("attachment"));
            }
            pool.attachments.insert(
                a.id,
                Attachment {
                    buffer: a.buffer,
                    mask: a.mask,
                    map_type: a.map_type,
                    maps: a.maps,
                    owner: a.owner,
                },
            );
        }
        let dangling = pool
            .buffers
            .values()
            .flat_map(|b| b.attachments.iter())
            .any(|id| !pool.attachments.contains_key(id));
        if dangling {
            return Err(bad("a buffer lists an attachment that does not exist"));
        }
        pool.buffer_ids = IdAllocator::starting_at(image.next_buffer_id);
        pool.attachment_ids = IdAllocator::starting_at(image.next_attachment_id);
        pool.next_serial = image.next_serial;
        pool.counters = image.counters.clone();
        Ok(pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool with two regions, a mapped buffer, an unmapped one and two
    /// leased extents.
    fn pool() -> Pool {
        let mut pool = Pool::new(PoolConfig::default_layout()).unwrap();
        pool.add_region(0, 0x40_0000, 0x20_0000).unwrap();
        pool.add_region(0, 0x80_0000, 0x10_0000).unwrap();
        let a = pool.create(0x3000, 0, 0).unwrap();
        let attached = pool
            .attach(
                a.id,
                crate::model::kinds::SYSTEM,
                &[MappingType::ScatterGather],
            )
            .unwrap();
        pool.map(attached.id, crate::model::Direction::ToDevice)
            .unwrap();
        pool.create(0x1000, 0, 0).unwrap();
        pool.lease(0, 0x1_0000, 2).unwrap();
        pool
    }

    #[test]
    fn a_pool_built_from_its_image_is_the_same_pool() {
        let pool = pool();
        let rebuilt = Pool::from_image(PoolConfig::default_layout(), &pool.image()).unwrap();
        assert_eq!(rebuilt.snapshot(), pool.snapshot());
        assert_eq!(rebuilt.image(), pool.image());
        assert_eq!(rebuilt.free_extents(0), pool.free_extents(0));
        assert_eq!(rebuilt.stock(0), pool.stock(0));
    }

    /// Leased maps name their buffer and attachments with the driver's
    /// ids (DRIVER_ID_FIRST and above), which images must carry too.
    #[test]
    fn a_leased_map_with_driver_ids_survives_its_image() {
        let mut pool = pool();
        let extent = pool.stock(0)[0];
        let req = crate::model::LeasedMap {
            buffer_id: crate::model::DRIVER_ID_FIRST + 7,
            size: extent.len,
            initial_mask: 0,
            attachments: vec![crate::model::LeasedAttach {
                id: crate::model::DRIVER_ID_FIRST + 9,
                mask: crate::model::kinds::SYSTEM,
                map_type: MappingType::ScatterGather,
                importer_types: vec![MappingType::ScatterGather],
            }],
            map_index: 0,
            direction: crate::model::Direction::ToDevice,
            extent: extent.addr,
        };
        pool.leased_map(&req).unwrap();
        let rebuilt = Pool::from_image(PoolConfig::default_layout(), &pool.image()).unwrap();
        assert_eq!(rebuilt.image(), pool.image());
        assert_eq!(rebuilt.snapshot(), pool.snapshot());
    }

    #[test]
    fn an_image_no_pool_can_have_is_refused() {
        let good = pool().image();
        let config = PoolConfig::default_layout;
        let mut outside = good.clone();
        outside.buffers[0].backing.as_mut().unwrap().1[0].addr = 0x1000_0000;
        assert!(Pool::from_image(config(), &outside).is_err());
        let mut twice = good.clone();
        twice.buffers.push(twice.buffers[0].clone());
        assert!(Pool::from_image(config(), &twice).is_err());
        let mut overlapping = good.clone();
        let first = overlapping.stock[0][0];
        overlapping.stock[0].push(first);
        assert!(Pool::from_image(config(), &overlapping).is_err());
        let mut dangling = good.clone();
        dangling.attachments.clear();
        assert!(Pool::from_image(config(), &dangling).is_err());
        let mut regions = good.clone();
        regions.regions.reverse();
        assert!(Pool::from_image(config(), &regions).is_err());
        let mut allocators = good;
        allocators.stock.pop();
        assert!(Pool::from_image(config(), &allocators).is_err());
    }
}
