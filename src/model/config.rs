//! Pool configuration: limits, memory kinds, allocators, exporter mapping
//! types, and its validation.

use serde::{Deserialize, Serialize};

use super::{
    kinds, Error, MappingType, FOUR_GIB, MAX_ID, MAX_KIND_ALIGN, MAX_REGION_ALIGN, PAGE_SIZE,
};

/// Where an allocator's memory must lie (`CENALLOC_PLACE_*` plus the region
/// alignment of the config space).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Each donated region is one physically contiguous extent; must equal
    /// `strategy == Strategy::Contiguous`.
    pub contiguous: bool,
    /// Every region lies below 4 GiB. Required when a served kind is limited
    /// to 4 GiB or less.
    pub below_4g: bool,
    /// Alignment of each donated region's start address: a power of two,
    /// 4 KiB ..= 1 GiB.
    pub align: u64,
}

/// How an allocator carves its regions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// Every allocation is one extent (best fit).
    Contiguous,
    /// Pages from anywhere, fewest segments first.
    Scatter,
}

/// One allocator of the pool. Its index in [`PoolConfig::allocators`] is its
/// id and its priority (0 first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocatorSpec {
    /// 1..=15 bytes (fits the protocol's NUL-padded 16-byte name).
    pub name: String,
    pub strategy: Strategy,
    /// Kinds served: non-zero, only defined kinds.
    pub kinds: u32,
    pub placement: Placement,
    /// A share allocator: it backs only buffers published for other VMs
    /// ([`Pool::share`](super::Pool::share)), and those only come from share
    /// allocators. Contiguous only; every allocation starts on
    /// `placement.align` (the exporter's host pages).
    #[serde(default)]
    pub share: bool,
}

/// A memory kind a pool configuration defines (bits 8..=31).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindSpec {
    pub bit: u8,
    pub name: String,
    /// Backing of this kind is one physically contiguous range.
    pub contiguous: bool,
    /// Exclusive end limit: every byte of the backing lies below it
    /// (`u64::MAX` = anywhere).
    pub max_address: u64,
    /// Alignment of the backing's start (power of two, 4 KiB ..= 2 MiB).
    /// A non-contiguous kind must use 4 KiB.
    pub align: u64,
}

/// Limits of the model. Exceeding one fails with `ENOSPC`, except a buffer
/// larger than `max_buffer_size` which fails with `E2BIG`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Live buffers (including freed ones kept alive by attachments).
    pub max_buffers: u32,
    pub max_attachments_per_buffer: u32,
    /// Bytes, after rounding up to 4 KiB.
    pub max_buffer_size: u64,
    /// Sum of the sizes of all live buffers, allocated or not (checked at
    /// create).
    pub max_total_bytes: u64,
    /// Bytes of one allocator the driver may hold leased at once (0: no
    /// leases).
    #[serde(default = "default_max_lease_bytes")]
    pub max_lease_bytes: u64,
    /// Donated regions held at once, all allocators together (each range
    /// of a POOL_ADD is one; a POOL_REMOVE that cuts a region in two adds
    /// one). Each costs the daemon some 100-200 bytes of heap, outside the
    /// VM's memory and the daemon's admission budget: this bounds it.
    #[serde(default = "default_max_regions")]
    pub max_regions: u32,
}

fn default_max_lease_bytes() -> u64 {
    Limits::default().max_lease_bytes
}

fn default_max_regions() -> u32 {
    Limits::default().max_regions
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_buffers: 65536,
            max_attachments_per_buffer: 16,
            max_buffer_size: 1 << 30,
            max_total_bytes: 4 << 30,
            max_lease_bytes: 2 << 20,
            max_regions: 16384,
        }
    }
}

/// The whole configuration of a pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    pub limits: Limits,
    /// Priority order: the first allocator that serves a kind of the access
    /// mask and has room backs the buffer.
    pub allocators: Vec<AllocatorSpec>,
    pub custom_kinds: Vec<KindSpec>,
    /// Exporter mapping types in priority order (non-empty, no duplicates).
    pub exporter_types: Vec<MappingType>,
}

impl PoolConfig {
    /// A layout that just works, in priority order:
    ///
    /// | id | name       | strategy   | kinds                              | placement  |
    /// |----|------------|------------|------------------------------------|------------|
    /// | 0  | `system`   | scatter    | SYSTEM                             | anywhere   |
    /// | 1  | `dma32`    | scatter    | DMA32, SYSTEM                      | below 4 GiB|
    /// | 2  | `contig`   | contiguous | CONTIG, SYSTEM                     | anywhere   |
    /// | 3  | `contig32` | contiguous | CONTIG_DMA32, CONTIG, DMA32, SYSTEM| below 4 GiB|
    ///
    /// The plentiful, unconstrained memory comes first; the scarcer
    /// allocators are fall-backs for a `SYSTEM` buffer when the earlier ones
    /// are full. Default [`Limits`]; exporter types `[Contiguous,
    /// ScatterGather]` (contiguous preferred whenever the buffer can be one
    /// range).
    pub fn default_layout() -> Self {
        let spec = |name: &str, strategy, kinds, below_4g| AllocatorSpec {
            name: name.to_string(),
            strategy,
            kinds,
            placement: Placement {
                contiguous: strategy == Strategy::Contiguous,
                below_4g,
                align: PAGE_SIZE,
            },
            share: false,
        };
        PoolConfig {
            limits: Limits::default(),
            allocators: vec![
                spec("system", Strategy::Scatter, kinds::SYSTEM, false),
                spec(
                    "dma32",
                    Strategy::Scatter,
                    kinds::DMA32 | kinds::SYSTEM,
                    true,
                ),
                spec(
                    "contig",
                    Strategy::Contiguous,
                    kinds::CONTIG | kinds::SYSTEM,
                    false,
                ),
                spec(
                    "contig32",
                    Strategy::Contiguous,
                    kinds::CONTIG_DMA32 | kinds::CONTIG | kinds::DMA32 | kinds::SYSTEM,
                    true,
                ),
            ],
            custom_kinds: Vec::new(),
            exporter_types: vec![MappingType::Contiguous, MappingType::ScatterGather],
        }
    }
}

/// Properties of one defined kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KindProps {
    pub contiguous: bool,
    pub max_address: u64,
    pub align: u64,
}

/// The defined kinds, indexed by bit.
#[derive(Clone, Debug)]
pub(crate) struct KindTable {
    props: [Option<KindProps>; 32],
}

impl KindTable {
    pub fn get(&self, bit: u32) -> Option<&KindProps> {
        self.props.get(bit as usize).and_then(Option::as_ref)
    }

    /// Bits of every defined kind.
    pub fn defined_mask(&self) -> u32 {
        (0..32u32)
            .filter(|&b| self.props[b as usize].is_some())
            .fold(0, |m, b| m | (1 << b))
    }

    /// The kinds of `mask`, with their properties.
    pub fn iter_mask(&self, mask: u32) -> impl Iterator<Item = &KindProps> + '_ {
        (0..32u32)
            .filter(move |b| mask & (1 << b) != 0)
            .filter_map(|b| self.get(b))
    }

    fn well_known() -> Self {
        let mut props: [Option<KindProps>; 32] = Default::default();
        let kind = |contiguous, max_address| {
            Some(KindProps {
                contiguous,
                max_address,
                align: PAGE_SIZE,
            })
        };
        props[0] = kind(false, u64::MAX); // SYSTEM
        props[1] = kind(true, u64::MAX); // CONTIG
        props[2] = kind(false, FOUR_GIB); // DMA32
        props[3] = kind(true, FOUR_GIB); // CONTIG_DMA32
        KindTable { props }
    }
}

/// What [`Pool::new`](super::Pool::new) derives for each allocator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AllocatorProps {
    /// Exclusive end limit of its regions.
    pub limit: u64,
    /// Alignment of each allocation's start (contiguous allocators).
    pub alloc_align: u64,
    /// Alignment of each region's start.
    pub region_align: u64,
}

fn invalid(msg: String) -> Error {
    Error::InvalidConfig(msg)
}

fn check_name(what: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 15 {
        return Err(invalid(format!(
            "{what} name {name:?} must be 1..=15 bytes"
        )));
    }
    Ok(())
}

/// Checks a configuration; returns the kind table and the derived
/// properties of each allocator.
pub(crate) fn validate(config: &PoolConfig) -> Result<(KindTable, Vec<AllocatorProps>), Error> {
    let limits = &config.limits;
    if limits.max_buffers == 0 || limits.max_buffers >= MAX_ID {
        return Err(invalid(format!(
            "max_buffers {} must be 1..{MAX_ID}",
            limits.max_buffers
        )));
    }
    if limits.max_attachments_per_buffer == 0 {
        return Err(invalid(
            "max_attachments_per_buffer must be at least 1".into(),
        ));
    }
    let total_attachments = limits
        .max_attachments_per_buffer
        .checked_mul(limits.max_buffers);
    if !matches!(total_attachments, Some(n) if n < MAX_ID) {
        return Err(invalid(format!(
            "max_buffers * max_attachments_per_buffer must stay below {MAX_ID}"
        )));
    }
    if limits.max_buffer_size < PAGE_SIZE || limits.max_buffer_size % PAGE_SIZE != 0 {
        return Err(invalid(format!(
            "max_buffer_size {:#x} must be a non-zero multiple of {PAGE_SIZE:#x}",
            limits.max_buffer_size
        )));
    }
    if limits.max_total_bytes < limits.max_buffer_size {
        return Err(invalid(
            "max_total_bytes must be at least max_buffer_size".into(),
        ));
    }

    let mut table = KindTable::well_known();
    for kind in &config.custom_kinds {
        check_name("kind", &kind.name)?;
        if !(kinds::FIRST_CUSTOM_BIT..32).contains(&kind.bit) {
            return Err(invalid(format!(
                "custom kind {:?}: bit {} must be 8..=31",
                kind.name, kind.bit
            )));
        }
        if table.props[kind.bit as usize].is_some() {
            return Err(invalid(format!("kind bit {} defined twice", kind.bit)));
        }
        if !kind.align.is_power_of_two() || !(PAGE_SIZE..=MAX_KIND_ALIGN).contains(&kind.align) {
            return Err(invalid(format!(
                "custom kind {:?}: align {:#x} must be a power of two, 4 KiB ..= 2 MiB",
                kind.name, kind.align
            )));
        }
        if !kind.contiguous && kind.align != PAGE_SIZE {
            return Err(invalid(format!(
                "custom kind {:?}: a non-contiguous kind has 4 KiB alignment",
                kind.name
            )));
        }
        if kind.max_address < PAGE_SIZE {
            return Err(invalid(format!(
                "custom kind {:?}: max_address {:#x} leaves no room",
                kind.name, kind.max_address
            )));
        }
        table.props[kind.bit as usize] = Some(KindProps {
            contiguous: kind.contiguous,
            max_address: kind.max_address,
            align: kind.align,
        });
    }

    if config.allocators.is_empty() {
        return Err(invalid("a pool needs at least one allocator".into()));
    }
    let defined = table.defined_mask();
    let mut props = Vec::with_capacity(config.allocators.len());
    for spec in &config.allocators {
        check_name("allocator", &spec.name)?;
        if config
            .allocators
            .iter()
            .filter(|s| s.name == spec.name)
            .count()
            > 1
        {
            return Err(invalid(format!(
                "allocator name {:?} used twice",
                spec.name
            )));
        }
        if spec.kinds == 0 || spec.kinds & !defined != 0 {
            return Err(invalid(format!(
                "allocator {:?}: kinds {:#x} must be non-empty and defined (defined: {defined:#x})",
                spec.name, spec.kinds
            )));
        }
        let contiguous = spec.strategy == Strategy::Contiguous;
        if spec.placement.contiguous != contiguous {
            return Err(invalid(format!(
                "allocator {:?}: placement.contiguous must match the strategy",
                spec.name
            )));
        }
        if spec.share && !contiguous {
            return Err(invalid(format!(
                "allocator {:?}: a share allocator must be contiguous",
                spec.name
            )));
        }
        let align = spec.placement.align;
        if !align.is_power_of_two() || !(PAGE_SIZE..=MAX_REGION_ALIGN).contains(&align) {
            return Err(invalid(format!(
                "allocator {:?}: region align {align:#x} must be a power of two, 4 KiB ..= 1 GiB",
                spec.name
            )));
        }
        let mut limit = if spec.placement.below_4g {
            FOUR_GIB
        } else {
            u64::MAX
        };
        let mut alloc_align = if spec.share { align } else { PAGE_SIZE };
        for kind in table.iter_mask(spec.kinds) {
            if kind.contiguous && !contiguous {
                return Err(invalid(format!(
                    "allocator {:?}: a scatter allocator cannot serve a contiguous kind",
                    spec.name
                )));
            }
            if kind.max_address <= FOUR_GIB && !spec.placement.below_4g {
                return Err(invalid(format!(
                    "allocator {:?}: serves a kind limited to 4 GiB, placement must be below_4g",
                    spec.name
                )));
            }
            limit = limit.min(kind.max_address);
            alloc_align = alloc_align.max(kind.align);
        }
        props.push(AllocatorProps {
            limit,
            alloc_align,
            region_align: align,
        });
    }

    if config.exporter_types.is_empty() {
        return Err(invalid("exporter_types must not be empty".into()));
    }
    for (i, t) in config.exporter_types.iter().enumerate() {
        if MappingType::from_code(t.code()) != Some(*t) {
            return Err(invalid(format!("exporter type {t:?} has an invalid code")));
        }
        if config.exporter_types[..i].contains(t) {
            return Err(invalid(format!("exporter type {t:?} listed twice")));
        }
    }
    Ok((table, props))
}
