//! A hostile host, for tests only (cargo feature `fault-injection`).
//!
//! The guest driver must not trust its device. To test that, this module
//! rewrites the device's answers on purpose *after* the executor produced
//! them: the executor, the model and the queue glue stay what they are; the
//! glue only hands each answer (and the config space) through
//! [`Injector::rewrite_answer`] / [`Injector::rewrite_config`] when an
//! injector is configured. Normal builds have neither this module nor the
//! `--fault` and `--fault-file` options.
//!
//! A fault is named by a short spec (`--fault SPEC`, or the contents of the
//! file given with `--fault-file`, re-read whenever it changes, so that a
//! test can switch faults while the guest runs; an empty file or `none` is
//! an honest device):
//!
//! | spec | what the device answers |
//! | --- | --- |
//! | `split-segment` | MAP: its first segment of 2+ pages cut in two (same memory, one more segment) |
//! | `extra-segment` | MAP: one more segment (a copy of the last), more bytes than the buffer |
//! | `fewer-segments` | MAP: its last segment dropped (or the only one halved) |
//! | `outside-pool` | MAP: first segment moved to guest-physical 0 |
//! | `moved-backing` | MAP of existing backing (no ALLOCATED flag): first segment one page further |
//! | `shared-backing` | MAP that allocated: the segments of the previous one that did, if they hold as many bytes (another buffer's live memory) |
//! | `contig-split` | MAP of type CONTIG: its one segment cut in two |
//! | `dma32-high` | MAP: every segment 4 GiB higher |
//! | `map-type` | MAP: SG and CONTIG swapped (a private type becomes SG) |
//! | `allocator-id` | MAP: allocator 99 |
//! | `needed:N` | MAP: -ENOSPC, needing an N-byte answer (then, asked with N bytes, the real answer) |
//! | `attach-type` | ATTACH: map type 0x8123, which nobody lists |
//! | `lease-outside-pool` | LEASE: its first extent moved to guest-physical 0 |
//! | `info-placement` | GET_INFO: the first allocator's placement with `CENALLOC_PLACE_DMA32` flipped (config space keeps the truth) |
//! | `info-count` | GET_INFO: `num_allocators` one more than the entries the answer holds |
//! | `max-segments-huge` | config space: max_segments 0xffffffff (read at probe) |
//! | `max-batch:N` | config space: max_batch N (the device still takes 64) |
//! | `pool-align:N` | config space: the first pool's align N (read at probe) |
//! | `refuse-attach:MASK` | ATTACH of constraint mask MASK: refused (-EINVAL), as the request reaches the executor with mask 0 |
//! | `short-answer[:OP]` | chains (with an OP command): only the batch response written |
//! | `status-garbage[:OP]` | commands (OP only): status 0x1234, neither 0 nor an errno |
//! | `errno:OP:N` | OP commands: status -N, no answer body (an errno the protocol never answers, e.g. 512, -ERESTARTSYS) |
//! | `no-answer[:OP]` | chains (with an OP command): never returned to the guest |
//! | `slow:MS` | every chain answered MS milliseconds late |
//!
//! OP is an opcode name: `pool-add`, `map`, `create`, `attach`, ... MASK is
//! a number (`0x100`). `refuse-attach` is the one fault that changes a
//! request instead of an answer: a refusal the device's state agrees with.
//! A MAP answer that needs one more segment than its slot holds becomes -ENOSPC
//! with the size it needs, as a device would answer; the guest then asks
//! again with room, and gets the rewritten answer.
//!
//! `mod.rs` parses the specs, `injector.rs` holds one connection's fault
//! and hides MAP slots from the executor, `rewrite.rs` rewrites answers.

mod injector;
mod rewrite;
#[cfg(test)]
mod tests;

pub use injector::{Injector, Source};
pub use rewrite::{refuse_attach, rewrite, Verdict};

use std::str::FromStr;

use crate::protocol::*;

/// Most a `slow` fault may delay one chain.
pub const MAX_DELAY_MS: u64 = 60_000;

/// A fault the device injects into its answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    SplitSegment,
    ExtraSegment,
    FewerSegments,
    OutsidePool,
    MovedBacking,
    SharedBacking,
    ContigSplit,
    Dma32High,
    MapType,
    AllocatorId,
    Needed(u32),
    AttachType,
    LeaseOutsidePool,
    InfoPlacement,
    InfoCount,
    MaxSegmentsHuge,
    MaxBatch(u32),
    PoolAlign(u32),
    RefuseAttach(u32),
    ShortAnswer(Option<u16>),
    StatusGarbage(Option<u16>),
    /// OP's answers get status -N (1..=4095).
    Errno(u16, u32),
    NoAnswer(Option<u16>),
    Slow(u64),
}

/// Why a fault spec is not one.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum Error {
    #[error("unknown fault {0:?}")]
    Unknown(String),
    #[error("unknown opcode {0:?} in a fault spec")]
    Opcode(String),
    #[error("fault {0:?} takes no argument")]
    Argument(String),
    #[error("slow:MS needs milliseconds 1..={MAX_DELAY_MS}, not {0:?}")]
    Delay(String),
    #[error("{0:?} needs a number argument")]
    Number(String),
}

fn number(spec: &str, arg: Option<&str>) -> Result<u32, Error> {
    let arg = arg.ok_or_else(|| Error::Number(spec.to_string()))?;
    let parsed = match arg.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => arg.parse(),
    };
    parsed.map_err(|_| Error::Number(spec.to_string()))
}

const OPCODES: [(&str, u16); 17] = [
    ("get-info", CENALLOC_CMD_GET_INFO),
    ("pool-add", CENALLOC_CMD_POOL_ADD),
    ("create", CENALLOC_CMD_CREATE),
    ("attach", CENALLOC_CMD_ATTACH),
    ("detach", CENALLOC_CMD_DETACH),
    ("map", CENALLOC_CMD_MAP),
    ("unmap", CENALLOC_CMD_UNMAP),
    ("free", CENALLOC_CMD_FREE),
    ("phys", CENALLOC_CMD_PHYS),
    ("sync", CENALLOC_CMD_SYNC),
    ("stats", CENALLOC_CMD_STATS),
    ("fill", CENALLOC_CMD_FILL),
    ("checksum", CENALLOC_CMD_CHECKSUM),
    ("pool-remove", CENALLOC_CMD_POOL_REMOVE),
    ("lease", CENALLOC_CMD_LEASE),
    ("lease-return", CENALLOC_CMD_LEASE_RETURN),
    ("leased-map", CENALLOC_CMD_LEASED_MAP),
];

fn opcode(name: &str) -> Result<u16, Error> {
    OPCODES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, op)| op)
        .ok_or_else(|| Error::Opcode(name.to_string()))
}

impl FromStr for Fault {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self, Error> {
        let spec = spec.trim();
        let (name, arg) = match spec.split_once(':') {
            Some((name, arg)) => (name, Some(arg)),
            None => (spec, None),
        };
        let op = || arg.map(opcode).transpose();
        let plain = |fault| match arg {
            None => Ok(fault),
            Some(_) => Err(Error::Argument(spec.to_string())),
        };
        match name {
            "" | "none" => plain(Fault::None),
            "split-segment" => plain(Fault::SplitSegment),
            "extra-segment" => plain(Fault::ExtraSegment),
            "fewer-segments" => plain(Fault::FewerSegments),
            "outside-pool" => plain(Fault::OutsidePool),
            "moved-backing" => plain(Fault::MovedBacking),
            "shared-backing" => plain(Fault::SharedBacking),
            "contig-split" => plain(Fault::ContigSplit),
            "dma32-high" => plain(Fault::Dma32High),
            "map-type" => plain(Fault::MapType),
            "allocator-id" => plain(Fault::AllocatorId),
            "needed" => Ok(Fault::Needed(number(spec, arg)?)),
            "attach-type" => plain(Fault::AttachType),
            "lease-outside-pool" => plain(Fault::LeaseOutsidePool),
            "info-placement" => plain(Fault::InfoPlacement),
            "info-count" => plain(Fault::InfoCount),
            "max-segments-huge" => plain(Fault::MaxSegmentsHuge),
            "max-batch" => Ok(Fault::MaxBatch(number(spec, arg)?)),
            "pool-align" => Ok(Fault::PoolAlign(number(spec, arg)?)),
            "errno" => {
                let (op, errno) = arg
                    .and_then(|arg| arg.split_once(':'))
                    .ok_or_else(|| Error::Number(spec.to_string()))?;
                let errno = number(spec, Some(errno))?;
                if !(1..=4095).contains(&errno) {
                    return Err(Error::Number(spec.to_string()));
                }
                Ok(Fault::Errno(opcode(op)?, errno))
            }
            "refuse-attach" => Ok(Fault::RefuseAttach(number(spec, arg)?)),
            "short-answer" => Ok(Fault::ShortAnswer(op()?)),
            "status-garbage" => Ok(Fault::StatusGarbage(op()?)),
            "no-answer" => Ok(Fault::NoAnswer(op()?)),
            "slow" => arg
                .and_then(|ms| ms.parse::<u64>().ok())
                .filter(|ms| (1..=MAX_DELAY_MS).contains(ms))
                .map(Fault::Slow)
                .ok_or_else(|| Error::Delay(spec.to_string())),
            _ => Err(Error::Unknown(spec.to_string())),
        }
    }
}
