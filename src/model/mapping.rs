//! Mapping types and their negotiation between exporter and importer
//! (after the 2025 dma-buf mapping-types RFC: the exporter's list is walked
//! in priority order; a type's `match` may skip with `EOPNOTSUPP` or abort).

use serde::{Deserialize, Serialize};

use super::Error;

/// Wire code of [`MappingType::ScatterGather`] (`CENALLOC_MAP_SG`).
pub const CODE_SCATTER_GATHER: u32 = 1;
/// Wire code of [`MappingType::Contiguous`] (`CENALLOC_MAP_CONTIG`).
pub const CODE_CONTIGUOUS: u32 = 2;
/// First driver-private code (`CENALLOC_MAP_PRIVATE_FIRST`).
pub const CODE_PRIVATE_FIRST: u32 = 0x8000;
/// Last driver-private code (`CENALLOC_MAP_PRIVATE_LAST`).
pub const CODE_PRIVATE_LAST: u32 = 0xffff;

/// The form a mapping takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MappingType {
    /// Coalesced list of segments in buffer order.
    ScatterGather,
    /// Exactly one segment covering the whole buffer.
    Contiguous,
    /// Opaque driver-private type, 0x8000..=0xffff; mapped like
    /// scatter-gather (pass-through).
    Private(u16),
}

impl MappingType {
    /// The wire code (`CENALLOC_MAP_*`).
    pub fn code(self) -> u32 {
        match self {
            MappingType::ScatterGather => CODE_SCATTER_GATHER,
            MappingType::Contiguous => CODE_CONTIGUOUS,
            MappingType::Private(code) => u32::from(code),
        }
    }

    /// The type of a wire code; `None` for an unknown code (including a
    /// "private" code below 0x8000).
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            CODE_SCATTER_GATHER => Some(MappingType::ScatterGather),
            CODE_CONTIGUOUS => Some(MappingType::Contiguous),
            CODE_PRIVATE_FIRST..=CODE_PRIVATE_LAST => {
                u16::try_from(code).ok().map(MappingType::Private)
            }
            _ => None,
        }
    }

    /// Whether this value has a valid code (a `Private` below 0x8000 has not).
    pub fn is_valid(self) -> bool {
        MappingType::from_code(self.code()) == Some(self)
    }
}

/// Picks the mapping type of an attachment.
///
/// Walks `exporter` in priority order; for each type the importer also
/// lists, calls `type_match`: `Ok(())` selects it,
/// `Err(Error::MappingTypeUnsupported(_))` tries the next one, any other
/// error aborts the negotiation with that error. No mutual type:
/// [`Error::NoMutualMappingType`] (`EOPNOTSUPP`).
pub fn negotiate<F>(
    exporter: &[MappingType],
    importer: &[MappingType],
    mut type_match: F,
) -> Result<MappingType, Error>
where
    F: FnMut(MappingType) -> Result<(), Error>,
{
    for &candidate in exporter {
        if !importer.contains(&candidate) {
            continue;
        }
        match type_match(candidate) {
            Ok(()) => return Ok(candidate),
            Err(Error::MappingTypeUnsupported(_)) => continue,
            Err(err) => return Err(err),
        }
    }
    Err(Error::NoMutualMappingType)
}
