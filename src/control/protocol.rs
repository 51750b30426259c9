//! The control protocol, version [`PROTOCOL_VERSION`]: JSON lines over a
//! unix stream socket. One request per line, one answer line per request,
//! in order.
//!
//! A request is an object with the protocol version `v` and a command
//! `cmd` with its fields ([`Request`]):
//! ```text
//! {"v":1,"cmd":"hello"}
//! {"v":1,"cmd":"vms"}
//! {"v":1,"cmd":"buffers","vm":"vm1"}        vm optional: every VM
//! {"v":1,"cmd":"allocators"}                  vm optional
//! {"v":1,"cmd":"stats","vm":"vm1"}            vm optional
//! {"v":1,"cmd":"export","vm":"vm1","buffer":3,"writable":false}
//! {"v":1,"cmd":"release","export":7}
//! {"v":1,"cmd":"upgrade"}
//! {"v":1,"cmd":"upgrade","binary":"/usr/libexec/cenallocd.new"}
//! ```
//! The answer is `{"v":1,"ok":RESULT}` or
//! `{"v":1,"error":{"code":CODE,"message":TEXT}}` ([`ErrorCode`]). An
//! `export` answer carries file descriptors (SCM_RIGHTS) with its first
//! byte: the status page, then one per guest memory region the buffer
//! lies in ([`ExportInfo`]).
//!
//! Everything but `export` and `release` only reads; nothing on this
//! socket changes a VM's device state. A request longer than
//! [`MAX_REQUEST_BYTES`] is answered `too_large` and the connection
//! closed. Unknown fields are refused (`bad_request`), so a typo is never
//! silently ignored; a new optional field means a new version.
//!
//! Connections are bounded in time (see [`super::server`]): a request must
//! arrive whole, and its answer be read, within the daemon's request
//! timeout (default 10 s); a connection that holds no export and has no
//! request in progress is closed after the idle timeout (default 60 s), or
//! earlier to make room when the daemon has its maximum of clients. A
//! client that asks now and then without holding exports connects for
//! each round of requests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::registry::Revocation;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest request line, newline included.
pub const MAX_REQUEST_BYTES: usize = 64 << 10;
/// Largest answer line a client accepts.
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;
/// Most file descriptors one answer carries.
pub const MAX_ANSWER_FDS: usize = 253;

/// A request (without its version field).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Who answers: [`Hello`]. (Variants without fields are written
    /// `{}` so that unknown fields are refused for them too.)
    Hello {},
    /// Every VM: [`Vms`].
    Vms {},
    /// Buffers of one VM or of all: [`Buffers`].
    Buffers {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vm: Option<String>,
    },
    /// Allocators of one VM or of all: [`Allocators`].
    Allocators {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vm: Option<String>,
    },
    /// Counters of one VM or of all, and of the daemon: [`Stats`].
    Stats {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vm: Option<String>,
    },
    /// A view of a buffer's backing: [`ExportInfo`] and descriptors.
    Export {
        vm: String,
        buffer: u32,
        #[serde(default)]
        writable: bool,
    },
    /// Gives an export back: [`Released`].
    Release { export: u64 },
    /// Live upgrade under `cenallocd --supervise`: the holder replaces
    /// this serving process with one started from the binary now at its
    /// path, or from `binary` (an absolute path to an executable regular
    /// file, not writable by its group or others, owned by root or the
    /// holder's user; the serving process and the holder both check it),
    /// which takes every VM over: [`Upgrading`]. Forbidden without a
    /// holder; a binary refused is `bad_request`, and nothing changes.
    Upgrade {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<std::path::PathBuf>,
    },
    /// Cross-VM sharing (issue 17), of one VM or of all: [`Shares`].
    Shares {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vm: Option<String>,
    },
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, unknown command or field, bad value.
    BadRequest,
    /// `v` missing or not [`PROTOCOL_VERSION`].
    UnsupportedVersion,
    /// The request line exceeds [`MAX_REQUEST_BYTES`].
    TooLarge,
    UnknownVm,
    /// The VM exists but no front-end is connected.
    NotConnected,
    UnknownBuffer,
    /// The buffer has no backing yet, or the guest memory is not
    /// file-backed.
    NotExportable,
    /// Writable exports are disabled in this daemon.
    Forbidden,
    /// This connection holds the most exports it may.
    TooManyExports,
    /// No export of that id held by this connection.
    UnknownExport,
    /// The daemon failed (out of descriptors, ...).
    Internal,
}

/// An error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What an answer holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok(serde_json::Value),
    Error(ErrorBody),
}

/// One answer line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub v: u32,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Encodes a request as one line (newline included).
pub fn encode_request(request: &Request) -> Vec<u8> {
    let mut value = serde_json::to_value(request).unwrap_or_default();
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("v".into(), PROTOCOL_VERSION.into());
    }
    let mut line = serde_json::to_vec(&value).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Decodes one request line (without its newline).
pub fn decode_request(line: &[u8]) -> Result<Request, ErrorBody> {
    let bad = |message: String| ErrorBody {
        code: ErrorCode::BadRequest,
        message,
    };
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| bad(format!("not JSON: {e}")))?;
    let serde_json::Value::Object(mut map) = value else {
        return Err(bad("a request is a JSON object".into()));
    };
    match map.remove("v") {
        Some(v) if v.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        Some(v) => {
            return Err(ErrorBody {
                code: ErrorCode::UnsupportedVersion,
                message: format!("protocol version {v} (this daemon speaks {PROTOCOL_VERSION})"),
            })
        }
        None => {
            return Err(ErrorBody {
                code: ErrorCode::UnsupportedVersion,
                message: format!(
                    "no protocol version \"v\" (this daemon speaks {PROTOCOL_VERSION})"
                ),
            })
        }
    }
    serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| bad(e.to_string()))
}

/// Encodes an answer as one line (newline included).
pub fn encode_answer(outcome: Outcome) -> Vec<u8> {
    let mut line = serde_json::to_vec(&Answer {
        v: PROTOCOL_VERSION,
        outcome,
    })
    .unwrap_or_default();
    line.push(b'\n');
    line
}

/// Answer to `hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub daemon: String,
    pub version: String,
    pub protocol: u32,
    pub pid: u32,
}

/// Whether a VM's front-end is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Connected,
    /// Its socket waits for a front-end.
    Waiting,
}

/// One VM in `vms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    pub socket: String,
    pub state: VmState,
    /// Seconds since the front-end connected.
    pub connected_secs: Option<u64>,
    /// Front-ends served so far, and refused by the daemon limits.
    pub connections: u64,
    pub refused: u64,
    pub buffers: u64,
    /// Sum of the live buffers' sizes.
    pub total_bytes: u64,
    /// Bytes of backing allocated.
    pub backing_bytes: u64,
    /// Bytes the guest donated, and of those free.
    pub pool_capacity: u64,
    pub pool_free: u64,
    pub exports: u64,
}

/// Answer to `vms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vms {
    pub vms: Vec<VmInfo>,
}

/// A guest-physical range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRange {
    pub gpa: u64,
    pub len: u64,
}

/// One buffer in `buffers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferInfo {
    pub vm: String,
    pub id: u32,
    pub size: u64,
    /// Allocator of the backing; `None` before the first map.
    pub allocator: Option<String>,
    pub backing: Vec<GuestRange>,
    pub access_mask: u32,
    pub initial_mask: u32,
    pub attachments: u32,
    /// Outstanding maps over all attachments and directions.
    pub maps: u32,
    /// Freed by its creator, kept alive by attachments.
    pub released: bool,
    pub migrate_pending: bool,
    pub exports: u32,
}

/// Answer to `buffers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buffers {
    pub buffers: Vec<BufferInfo>,
}

/// One member VM of a share group in `shares`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareMember {
    pub vm: String,
    /// In the share table: its front-end is connected.
    pub connected: bool,
    /// Groups it exports in, groups it imports from.
    pub exports_in: Vec<String>,
    pub imports_from: Vec<String>,
    /// Its window (shared memory region) in bytes, if it imports.
    pub window: Option<u64>,
    /// Memory slots its windows take now, and at most.
    pub mappings: u32,
    pub max_mappings: u32,
}

/// One published buffer in `shares`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareInfo {
    pub token: u64,
    pub exporter: String,
    pub buffer: u32,
    pub size: u64,
    pub group: String,
    pub writable: bool,
    /// Unshared, its imports being revoked.
    pub ending: bool,
}

/// One import in `shares`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportInfo {
    pub token: u64,
    pub importer: String,
    /// The importer's id of the imported buffer.
    pub buffer: u32,
    /// Its range in the importer's window.
    pub window_offset: u64,
    pub window_len: u64,
    pub writable: bool,
    /// `reserved`, `mapping`, `mapped`, `unmapping` or `revoked`.
    pub state: String,
    /// A revocation under way.
    pub revoking: bool,
    /// Its unmap was never proven: range, slot and the exporter's memory
    /// stay held until the importer leaves.
    pub forced: bool,
}

/// Answer to `shares`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shares {
    /// The configuration has share groups.
    pub enabled: bool,
    pub members: Vec<ShareMember>,
    pub shares: Vec<ShareInfo>,
    pub imports: Vec<ImportInfo>,
}

/// One allocator in `allocators`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocatorInfo {
    pub vm: String,
    pub id: u32,
    pub name: String,
    /// `contiguous` or `scatter`.
    pub strategy: String,
    pub kinds: u32,
    pub below_4g: bool,
    pub align: u64,
    pub capacity: u64,
    pub free: u64,
    pub largest_free: u64,
    pub free_extents: u64,
    pub fragmentation_permille: u32,
    pub buffers: u32,
}

/// Answer to `allocators`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocators {
    pub allocators: Vec<AllocatorInfo>,
}

/// Counters of one VM: the device layer's and the buffer model's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStats {
    pub vm: String,
    pub device: BTreeMap<String, u64>,
    pub model: BTreeMap<String, u64>,
}

/// Counters of the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStats {
    pub vms: u64,
    pub connected: u64,
    pub exports: u64,
    pub control_clients: u64,
    pub control_requests: u64,
    pub max_vms: u64,
    pub max_buffers: u64,
    pub max_total_bytes: u64,
}

/// Answer to `stats`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub daemon: DaemonStats,
    pub vms: Vec<VmStats>,
}

/// One segment of an export: `len` bytes at `offset` in descriptor `fd`
/// (an index into the answer's descriptors), guest-physical `gpa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSegment {
    pub fd: u32,
    pub offset: u64,
    pub len: u64,
    pub gpa: u64,
}

/// Answer to `export`. Descriptor `status_fd` is a sealed page whose first
/// 64-bit word (native endian) is 0 while the export is valid, else a
/// [`Revocation`] code; the others are guest memory files, read-only
/// unless `writable`. The segments, in buffer order, add up to `size`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportInfo {
    pub export: u64,
    pub vm: String,
    pub buffer: u32,
    pub size: u64,
    pub writable: bool,
    pub status_fd: u32,
    pub fds: u32,
    pub segments: Vec<ExportSegment>,
}

/// Answer to `release`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub export: u64,
}

/// Answer to `upgrade`: the holder was asked; this serving process (`pid`)
/// is about to be replaced (this connection ends with it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upgrading {
    pub pid: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_with_their_version() {
        for request in [
            Request::Hello {},
            Request::Vms {},
            Request::Buffers { vm: None },
            Request::Buffers {
                vm: Some("vm1".into()),
            },
            Request::Allocators { vm: None },
            Request::Stats {
                vm: Some("a".into()),
            },
            Request::Export {
                vm: "vm1".into(),
                buffer: 3,
                writable: true,
            },
            Request::Release { export: 9 },
            Request::Upgrade { binary: None },
            Request::Upgrade {
                binary: Some("/usr/libexec/cenallocd".into()),
            },
        ] {
            let line = encode_request(&request);
            assert_eq!(line.last(), Some(&b'\n'));
            assert!(line.starts_with(b"{"));
            let text = String::from_utf8(line.clone()).unwrap();
            assert!(text.contains("\"v\":1"), "{text}");
            assert_eq!(decode_request(&line[..line.len() - 1]).unwrap(), request);
        }
    }

    #[test]
    fn bad_requests_get_precise_codes() {
        for (line, code) in [
            (&b"not json"[..], ErrorCode::BadRequest),
            (b"[1,2]", ErrorCode::BadRequest),
            (b"{\"cmd\":\"vms\"}", ErrorCode::UnsupportedVersion),
            (b"{\"v\":2,\"cmd\":\"vms\"}", ErrorCode::UnsupportedVersion),
            (
                b"{\"v\":\"1\",\"cmd\":\"vms\"}",
                ErrorCode::UnsupportedVersion,
            ),
            (b"{\"v\":1}", ErrorCode::BadRequest),
            (b"{\"v\":1,\"cmd\":\"frob\"}", ErrorCode::BadRequest),
            (
                b"{\"v\":1,\"cmd\":\"vms\",\"vm\":\"a\"}",
                ErrorCode::BadRequest,
            ),
            (
                b"{\"v\":1,\"cmd\":\"hello\",\"x\":1}",
                ErrorCode::BadRequest,
            ),
            (
                b"{\"v\":1,\"cmd\":\"buffers\",\"vmm\":\"a\"}",
                ErrorCode::BadRequest,
            ),
            (
                b"{\"v\":1,\"cmd\":\"export\",\"vm\":\"a\"}",
                ErrorCode::BadRequest,
            ),
            (
                b"{\"v\":1,\"cmd\":\"export\",\"vm\":\"a\",\"buffer\":-1}",
                ErrorCode::BadRequest,
            ),
            (
                b"{\"v\":1,\"cmd\":\"export\",\"vm\":\"a\",\"buffer\":4294967296}",
                ErrorCode::BadRequest,
            ),
            (b"{\"v\":1,\"cmd\":\"release\"}", ErrorCode::BadRequest),
        ] {
            let error = decode_request(line).unwrap_err();
            assert_eq!(
                error.code,
                code,
                "{}: {error}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn answers_are_ok_or_error() {
        let line = encode_answer(Outcome::Ok(serde_json::json!({"vms": []})));
        let answer: Answer = serde_json::from_slice(&line).unwrap();
        assert_eq!(answer.v, PROTOCOL_VERSION);
        assert_eq!(answer.outcome, Outcome::Ok(serde_json::json!({"vms": []})));
        let line = encode_answer(Outcome::Error(ErrorBody {
            code: ErrorCode::UnknownVm,
            message: "no VM named \"x\"".into(),
        }));
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"v\":1,\"error\":{\"code\":\"unknown_vm\",\"message\":\"no VM named \\\"x\\\"\"}}\n"
        );
    }
}
