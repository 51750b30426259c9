//! Checks `src/protocol.rs` against `guest-driver/cenalloc_proto.h`: a C
//! program compiled against the header prints the size of every struct,
//! the offset of every field, every constant and a few FILL pattern values;
//! each must equal its Rust counterpart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::mem::{offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;

use cenalloc::protocol::*;

/// One line the C program prints and the value Rust expects for it.
struct Expected {
    c_expr: String,
    rust_value: u64,
}

/// The C name of a field: the Rust name unless renamed (`type` is a keyword).
macro_rules! c_field_name {
    ($field:ident) => {
        stringify!($field)
    };
    ($field:ident => $cfield:ident) => {
        stringify!($cfield)
    };
}

/// `layout!(list, RustType = c_struct { rust_field [=> c_field], ... })`
macro_rules! layout {
    ($list:ident, $rust:ident = $c:ident { $($field:ident $(=> $cfield:ident)?),* $(,)? }) => {{
        $list.push(Expected {
            c_expr: format!("sizeof(struct {})", stringify!($c)),
            rust_value: size_of::<$rust>() as u64,
        });
        $(
            let c_field = c_field_name!($field $(=> $cfield)?);
            $list.push(Expected {
                c_expr: format!("offsetof(struct {}, {})", stringify!($c), c_field),
                rust_value: offset_of!($rust, $field) as u64,
            });
        )*
    }};
}

macro_rules! constants {
    ($list:ident, $($name:ident),* $(,)?) => {{
        $(
            $list.push(Expected {
                c_expr: stringify!($name).to_string(),
                rust_value: $name as u64,
            });
        )*
    }};
}

fn expectations() -> Vec<Expected> {
    let mut list = Vec::new();
    layout!(
        list,
        ConfigPool = cenalloc_config_pool {
            kinds,
            placement,
            size,
            align,
            max_mb,
            name
        }
    );
    layout!(
        list,
        Config = cenalloc_config {
            version,
            num_pools,
            max_buffers,
            max_attachments,
            max_buffer_size,
            max_total_bytes,
            max_batch,
            max_segments,
            pools
        }
    );
    layout!(list, BatchHdr = cenalloc_batch_hdr { num_cmds, reserved });
    layout!(list, BatchResp = cenalloc_batch_resp { status, num_done });
    layout!(
        list,
        CmdHdr = cenalloc_cmd_hdr {
            opcode,
            flags,
            len,
            resp_len,
            reserved
        }
    );
    layout!(
        list,
        RespHdr = cenalloc_resp_hdr {
            status,
            len,
            needed,
            reserved
        }
    );
    layout!(
        list,
        InfoResp = cenalloc_info_resp {
            version,
            num_allocators,
            max_buffers,
            max_attachments,
            max_buffer_size,
            max_total_bytes,
            num_buffers,
            num_exporter_types,
            exporter_types
        }
    );
    layout!(
        list,
        AllocatorInfo = cenalloc_allocator_info {
            id,
            kinds,
            placement,
            fragmentation,
            capacity,
            free,
            largest_free,
            num_buffers,
            reserved,
            name
        }
    );
    layout!(list, Range = cenalloc_range { addr, len });
    layout!(
        list,
        PoolAddReq = cenalloc_pool_add_req {
            pool_index,
            num_ranges
        }
    );
    layout!(
        list,
        PoolRemoveReq = cenalloc_pool_remove_req {
            pool_index,
            num_ranges
        }
    );
    layout!(
        list,
        LeaseReq = cenalloc_lease_req {
            allocator_id,
            count,
            size
        }
    );
    layout!(
        list,
        LeaseResp = cenalloc_lease_resp {
            num_extents,
            reserved
        }
    );
    layout!(
        list,
        LeaseReturnReq = cenalloc_lease_return_req {
            allocator_id,
            num_ranges
        }
    );
    layout!(
        list,
        LeasedAttach = cenalloc_leased_attach {
            attach_id,
            mask,
            map_type,
            num_types,
            types
        }
    );
    layout!(
        list,
        LeasedMapReq = cenalloc_leased_map_req {
            buffer_id,
            initial_mask,
            size,
            extent,
            map_index,
            direction,
            num_attachments,
            reserved
        }
    );
    layout!(
        list,
        CreateReq = cenalloc_create_req {
            size,
            flags,
            initial_mask
        }
    );
    layout!(
        list,
        CreateResp = cenalloc_create_resp {
            buffer_id,
            reserved,
            size
        }
    );
    layout!(
        list,
        AttachReq = cenalloc_attach_req {
            buffer_id,
            mask,
            num_types,
            reserved,
            types
        }
    );
    layout!(
        list,
        AttachResp = cenalloc_attach_resp {
            attach_id,
            map_type,
            flags,
            access_mask
        }
    );
    layout!(
        list,
        DetachReq = cenalloc_detach_req {
            attach_id,
            reserved
        }
    );
    layout!(
        list,
        MapReq = cenalloc_map_req {
            attach_id,
            direction
        }
    );
    layout!(
        list,
        MapResp = cenalloc_map_resp {
            map_type,
            num_segments,
            allocator_id,
            flags,
            size
        }
    );
    layout!(
        list,
        UnmapReq = cenalloc_unmap_req {
            attach_id,
            direction
        }
    );
    layout!(
        list,
        FreeReq = cenalloc_free_req {
            buffer_id,
            reserved
        }
    );
    layout!(
        list,
        PhysReq = cenalloc_phys_req {
            buffer_id,
            reserved
        }
    );
    layout!(list, PhysResp = cenalloc_phys_resp { addr, len });
    layout!(list, SyncReq = cenalloc_sync_req { buffer_id, flags });
    layout!(
        list,
        FillReq = cenalloc_fill_req {
            buffer_id,
            reserved,
            seed
        }
    );
    layout!(
        list,
        ChecksumReq = cenalloc_checksum_req {
            buffer_id,
            reserved
        }
    );
    layout!(
        list,
        ChecksumResp = cenalloc_checksum_resp { checksum, len }
    );
    layout!(list, ResetReq = cenalloc_reset_req { flags, reserved });
    layout!(
        list,
        ResetResp = cenalloc_reset_resp {
            buffers,
            reserved,
            donated
        }
    );
    layout!(
        list,
        ShareReq = cenalloc_share_req {
            buffer_id,
            flags,
            group,
            reserved
        }
    );
    layout!(
        list,
        ShareResp = cenalloc_share_resp {
            token,
            size,
            flags,
            reserved
        }
    );
    layout!(
        list,
        UnshareReq = cenalloc_unshare_req {
            buffer_id,
            flags,
            token
        }
    );
    layout!(
        list,
        UnshareResp = cenalloc_unshare_resp { revoked, forced }
    );
    layout!(
        list,
        ImportReq = cenalloc_import_req {
            token,
            flags,
            initial_mask
        }
    );
    layout!(
        list,
        ImportResp = cenalloc_import_resp {
            buffer_id,
            flags,
            size,
            window_offset,
            window_len
        }
    );
    layout!(
        list,
        ReleaseReq = cenalloc_release_req {
            buffer_id,
            reserved
        }
    );
    layout!(
        list,
        RevokeAckReq = cenalloc_revoke_ack_req {
            buffer_id,
            reserved,
            serial
        }
    );
    layout!(list, Event = cenalloc_event { event_type => type, buffer_id, data });

    constants!(
        list,
        VIRTIO_ID_DMABUF,
        CENALLOC_PROTOCOL_VERSION,
        CENALLOC_VQ_CONTROL,
        CENALLOC_VQ_EVENT,
        CENALLOC_NUM_VQS,
        CENALLOC_PAGE_SIZE,
        CENALLOC_MAX_POOLS,
        CENALLOC_MAX_MAP_TYPES,
        CENALLOC_MAX_BATCH,
        CENALLOC_MAX_POOL_RANGES,
        CENALLOC_NAME_LEN,
        CENALLOC_BATCH_REF,
        CENALLOC_F_ELASTIC,
        CENALLOC_F_LEASE,
        CENALLOC_F_SHARE,
        CENALLOC_SHM_WINDOW,
        CENALLOC_ALLOCATOR_WINDOW,
        CENALLOC_DRIVER_ID_FIRST,
        CENALLOC_KIND_SYSTEM,
        CENALLOC_KIND_CONTIG,
        CENALLOC_KIND_DMA32,
        CENALLOC_KIND_CONTIG_DMA32,
        CENALLOC_KIND_WELL_KNOWN,
        CENALLOC_KIND_CUSTOM,
        CENALLOC_MASK_ANY,
        CENALLOC_MAP_SG,
        CENALLOC_MAP_CONTIG,
        CENALLOC_MAP_PRIVATE_FIRST,
        CENALLOC_MAP_PRIVATE_LAST,
        CENALLOC_PLACE_CONTIG,
        CENALLOC_PLACE_DMA32,
        CENALLOC_CMD_GET_INFO,
        CENALLOC_CMD_POOL_ADD,
        CENALLOC_CMD_CREATE,
        CENALLOC_CMD_ATTACH,
        CENALLOC_CMD_DETACH,
        CENALLOC_CMD_MAP,
        CENALLOC_CMD_UNMAP,
        CENALLOC_CMD_FREE,
        CENALLOC_CMD_PHYS,
        CENALLOC_CMD_SYNC,
        CENALLOC_CMD_STATS,
        CENALLOC_CMD_FILL,
        CENALLOC_CMD_CHECKSUM,
        CENALLOC_CMD_RESET,
        CENALLOC_CMD_POOL_REMOVE,
        CENALLOC_CMD_LEASE,
        CENALLOC_CMD_LEASE_RETURN,
        CENALLOC_CMD_LEASED_MAP,
        CENALLOC_CMD_SHARE,
        CENALLOC_CMD_UNSHARE,
        CENALLOC_CMD_IMPORT,
        CENALLOC_CMD_RELEASE,
        CENALLOC_CMD_REVOKE_ACK,
        CENALLOC_LEASE_MAX_SIZE,
        CENALLOC_MAX_LEASE,
        CENALLOC_MAX_LEASED_ATTACH,
        CENALLOC_CREATE_F_ALL,
        CENALLOC_RESET_F_ALL,
        CENALLOC_ATTACH_F_MIGRATE,
        CENALLOC_DIR_BIDIRECTIONAL,
        CENALLOC_DIR_TO_DEVICE,
        CENALLOC_DIR_FROM_DEVICE,
        CENALLOC_MAP_F_ALLOCATED,
        CENALLOC_MAP_F_MIGRATED,
        CENALLOC_MAP_F_WINDOW,
        CENALLOC_SHARE_F_WRITABLE,
        CENALLOC_SHARE_F_MIGRATE,
        CENALLOC_IMPORT_F_WRITABLE,
        CENALLOC_IMPORT_F_MAPPED,
        CENALLOC_SYNC_BEGIN,
        CENALLOC_SYNC_END,
        CENALLOC_SYNC_READ,
        CENALLOC_SYNC_WRITE,
        CENALLOC_FNV1A64_OFFSET,
        CENALLOC_FNV1A64_PRIME,
        CENALLOC_EVENT_MIGRATED,
        CENALLOC_EVENT_POOL_LOW,
        CENALLOC_EVENT_LEASE_REVOKE,
        CENALLOC_EVENT_SHARE_REVOKE,
        CENALLOC_EVENT_SHARE_READY,
        CENALLOC_REVOKE_SERIAL_MASK,
        CENALLOC_REVOKE_REASON_SHIFT,
        CENALLOC_REVOKE_FINAL,
        CENALLOC_REVOKE_MOVING,
    );

    for (seed, i) in [
        (0u64, 0u64),
        (1, 0),
        (0, 1),
        (0xdead_beef, 7),
        (u64::MAX, u64::MAX),
        (42, 4095),
    ] {
        list.push(Expected {
            c_expr: format!("cenalloc_pattern({seed}ull, {i}ull)"),
            rust_value: cenalloc_pattern(seed, i),
        });
    }
    list
}

fn header_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("guest-driver")
}

/// Compiles and runs the C side; returns `c_expr -> value`.
fn run_c_program(list: &[Expected]) -> BTreeMap<String, u64> {
    let mut source = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include \"cenalloc_proto.h\"\nint main(void)\n{\n",
    );
    for expected in list {
        writeln!(
            source,
            "\tprintf(\"%s=%llu\\n\", \"{0}\", (unsigned long long)({0}));",
            expected.c_expr
        )
        .unwrap();
    }
    source.push_str("\treturn 0;\n}\n");

    let dir = std::env::temp_dir().join(format!("cenalloc-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c_path = dir.join("layout.c");
    let exe_path = dir.join("layout");
    std::fs::write(&c_path, source).unwrap();
    let compile = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Werror", "-o"])
        .arg(&exe_path)
        .arg(&c_path)
        .arg("-I")
        .arg(header_dir())
        .output()
        .expect("running cc");
    assert!(
        compile.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&compile.stderr)
    );
    let run = Command::new(&exe_path)
        .output()
        .expect("running the layout program");
    assert!(run.status.success());
    std::fs::remove_dir_all(&dir).ok();

    String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (name, value) = line.rsplit_once('=').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

#[test]
fn rust_mirror_matches_the_c_header() {
    let list = expectations();
    let c_values = run_c_program(&list);
    let mut mismatches = Vec::new();
    for expected in &list {
        match c_values.get(&expected.c_expr) {
            Some(&c_value) if c_value == expected.rust_value => {}
            other => mismatches.push(format!(
                "{}: C {:?}, Rust {}",
                expected.c_expr, other, expected.rust_value
            )),
        }
    }
    assert!(
        mismatches.is_empty(),
        "mismatches:\n{}",
        mismatches.join("\n")
    );
    // Every struct, field, constant and pattern value was compared.
    assert!(list.len() > 150, "only {} checks", list.len());
}

/// Every `#define` and every struct of the header is in [`expectations`]:
/// a protocol addition without its Rust mirror fails here.
#[test]
fn every_define_and_struct_of_the_header_is_checked() {
    let header = std::fs::read_to_string(header_dir().join("cenalloc_proto.h")).unwrap();
    let checked: Vec<String> = expectations().into_iter().map(|e| e.c_expr).collect();
    let mut missing = Vec::new();
    for line in header.lines() {
        // Without a trailing comment (`struct x {\t/* version 1 */`).
        let line = line.split("/*").next().unwrap_or_default().trim_end();
        let name = if let Some(def) = line.strip_prefix("#define") {
            def.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        } else if let Some(rest) = line.strip_prefix("struct ") {
            match rest.strip_suffix('{') {
                Some(name) => format!("sizeof(struct {})", name.trim()),
                None => continue,
            }
        } else {
            continue;
        };
        if name.is_empty() || name == "CENALLOC_PROTO_H" {
            continue;
        }
        if !checked.contains(&name) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "tests/protocol_layout.rs does not check: {missing:#?}"
    );
}
