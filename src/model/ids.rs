//! Id maps: O(1) lookups keyed by the model's own sequential ids.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::MAX_ID;

/// Multiplicative hash for the model's `u32` ids. Most ids are chosen by
/// the model; a leased map's are the driver's (a range of 2^30), and a
/// guest could pick them with equal low bits: the high half of the product
/// is folded into the low one, where the table looks, so such ids still
/// spread. (A keyed hash would cost more and protect only the guest from
/// itself.)
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

pub(crate) type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

/// Hands out ids 1..=MAX_ID in sequence, wrapping, skipping ids in use.
#[derive(Clone, Debug)]
pub(crate) struct IdAllocator {
    next: u32,
}

impl IdAllocator {
    pub fn new() -> Self {
        IdAllocator { next: 1 }
    }

    /// The next free id, without consuming it: call [`IdAllocator::commit`]
    /// once the operation has succeeded. `None` if every id is in use.
    pub fn peek<V>(&self, in_use: &IdMap<V>) -> Option<u32> {
        let mut id = self.next;
        for _ in 0..=in_use.len() {
            if !in_use.contains_key(&id) {
                return Some(id);
            }
            id = Self::after(id);
        }
        None
    }

    /// An allocator whose next id is `next` (1..=MAX_ID).
    pub fn starting_at(next: u32) -> Self {
        IdAllocator { next }
    }

    pub fn commit(&mut self, id: u32) {
        self.next = Self::after(id);
    }

    pub fn next_value(&self) -> u32 {
        self.next
    }

    fn after(id: u32) -> u32 {
        if id >= MAX_ID {
            1
        } else {
            id + 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    #[test]
    fn ids_with_equal_low_bits_spread_over_the_table() {
        // 4096 driver ids that are multiples of 2^18: a table of 4096
        // buckets looks at the low 12 bits of the hash.
        let build = BuildHasherDefault::<IdHasher>::default();
        let buckets: HashSet<u64> = (0..4096u32)
            .map(|k| build.hash_one(0x4000_0000u32 | (k << 18)) & 0xfff)
            .collect();
        assert!(buckets.len() > 2048, "{} buckets used", buckets.len());
    }
}
