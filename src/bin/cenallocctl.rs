//! `cenallocctl`: look into a running cenallocd through its control
//! socket, and take guest buffers out zero-copy.
//!
//! ```text
//! cenallocctl [--socket PATH] [--json] vms
//! cenallocctl [--socket PATH] [--json] buffers [VM]
//! cenallocctl [--socket PATH] [--json] allocators [VM]
//! cenallocctl [--socket PATH] [--json] stats [VM]
//! cenallocctl [--socket PATH] [--json] shares [VM]
//! cenallocctl [--socket PATH] [--json] export VM BUFFER [--writable] [-o FILE]
//! cenallocctl [--socket PATH] snapshot VM BUFFER --format yuyv|rgb24|xrgb8888|gray
//!             --width W --height H [--stride S] [--offset O] -o frame.png
//! ```
//! Exit status: 0 success; 1 the daemon refused (unknown VM or buffer, not
//! connected, not exportable, ...) or cannot be reached; 2 bad arguments.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use cenalloc::control::cli::{Args, Command};
use cenalloc::control::client::{Client, Error as ClientError, Export, Status};
use cenalloc::control::protocol::{AllocatorInfo, BufferInfo, Shares, Stats, VmInfo, VmState};
use cenalloc::control::snapshot::{self, FrameLayout};
use cenalloc::protocol::Fnv1a64;

/// A failure and its exit status.
struct Failure {
    status: u8,
    message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure {
            status: 1,
            message: e.to_string(),
        }
    }
}

fn fail(status: u8, message: impl Into<String>) -> Failure {
    Failure {
        status,
        message: message.into(),
    }
}

/// Prints rows as a table with aligned columns (numbers right-aligned).
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let numeric: Vec<bool> = (0..header.len())
        .map(|i| {
            !rows.is_empty()
                && rows.iter().all(|row| {
                    row.get(i).is_some_and(|cell| {
                        cell == "-"
                            || cell
                                .trim_end_matches(['K', 'M', 'G', 'T', 's', '%'])
                                .replace('.', "")
                                .bytes()
                                .all(|b| b.is_ascii_digit())
                    })
                })
        })
        .collect();
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells
            .enumerate()
            .map(|(i, cell)| {
                if numeric[i] {
                    format!("{cell:>width$}", width = widths[i])
                } else {
                    format!("{cell:<width$}", width = widths[i])
                }
            })
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// 1536 → "1.5K"; exact byte counts below 1 KiB.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    if bytes < 1024 {
        return bytes.to_string();
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|e| fail(1, e.to_string()))?;
    println!("{text}");
    Ok(())
}

fn show_vms(vms: &[VmInfo]) {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|vm| {
            vec![
                vm.name.clone(),
                match vm.state {
                    VmState::Connected => "connected".into(),
                    VmState::Waiting => "waiting".into(),
                },
                vm.connected_secs.map_or("-".into(), |s| format!("{s}s")),
                vm.buffers.to_string(),
                human(vm.total_bytes),
                human(vm.pool_capacity),
                human(vm.pool_free),
                vm.exports.to_string(),
                vm.connections.to_string(),
                vm.socket.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "VM", "STATE", "UP", "BUFFERS", "BYTES", "POOL", "FREE", "EXPORTS", "CONNS", "SOCKET",
        ],
        &rows,
    );
}

fn show_shares(shares: &Shares) {
    if !shares.enabled {
        println!("sharing is off: the configuration has no [[share_group]]");
        return;
    }
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    let members: Vec<Vec<String>> = shares
        .members
        .iter()
        .map(|m| {
            vec![
                m.vm.clone(),
                yes_no(m.connected),
                list_or_dash(&m.exports_in),
                list_or_dash(&m.imports_from),
                m.window.map_or("-".into(), human),
                format!("{}/{}", m.mappings, m.max_mappings),
            ]
        })
        .collect();
    print_table(
        &[
            "VM",
            "CONNECTED",
            "EXPORTS IN",
            "IMPORTS FROM",
            "WINDOW",
            "SLOTS",
        ],
        &members,
    );
    println!();
    let published: Vec<Vec<String>> = shares
        .shares
        .iter()
        .map(|s| {
            vec![
                format!("{:#018x}", s.token),
                s.exporter.clone(),
                s.buffer.to_string(),
                human(s.size),
                s.group.clone(),
                yes_no(s.writable),
                yes_no(s.ending),
            ]
        })
        .collect();
    print_table(
        &[
            "TOKEN", "EXPORTER", "BUFFER", "SIZE", "GROUP", "WRITABLE", "ENDING",
        ],
        &published,
    );
    println!();
    let imports: Vec<Vec<String>> = shares
        .imports
        .iter()
        .map(|i| {
            vec![
                format!("{:#018x}", i.token),
                i.importer.clone(),
                i.buffer.to_string(),
                format!("{:#x}+{}", i.window_offset, human(i.window_len)),
                i.state.clone(),
                yes_no(i.revoking),
                yes_no(i.forced),
            ]
        })
        .collect();
    print_table(
        &[
            "TOKEN", "IMPORTER", "BUFFER", "WINDOW", "STATE", "REVOKING", "FORCED",
        ],
        &imports,
    );
}

fn list_or_dash(list: &[String]) -> String {
    if list.is_empty() {
        "-".into()
    } else {
        list.join(",")
    }
}

fn show_buffers(buffers: &[BufferInfo]) {
    let rows: Vec<Vec<String>> = buffers
        .iter()
        .map(|b| {
            let mut flags = Vec::new();
            if b.released {
                flags.push("released");
            }
            if b.migrate_pending {
                flags.push("migrate");
            }
            vec![
                b.vm.clone(),
                b.id.to_string(),
                human(b.size),
                b.allocator.clone().unwrap_or_else(|| "-".into()),
                b.backing.len().to_string(),
                b.backing
                    .first()
                    .map_or("-".into(), |s| format!("{:#x}", s.gpa)),
                format!("{:#x}", b.access_mask),
                b.attachments.to_string(),
                b.maps.to_string(),
                b.exports.to_string(),
                if flags.is_empty() {
                    "-".into()
                } else {
                    flags.join(",")
                },
            ]
        })
        .collect();
    print_table(
        &[
            "VM",
            "ID",
            "SIZE",
            "ALLOCATOR",
            "SEGS",
            "FIRST_GPA",
            "ACCESS",
            "ATTACH",
            "MAPS",
            "EXPORTS",
            "FLAGS",
        ],
        &rows,
    );
}

fn show_allocators(allocators: &[AllocatorInfo]) {
    let rows: Vec<Vec<String>> = allocators
        .iter()
        .map(|a| {
            vec![
                a.vm.clone(),
                a.id.to_string(),
                a.name.clone(),
                a.strategy.clone(),
                format!("{:#x}", a.kinds),
                if a.below_4g { "yes" } else { "no" }.into(),
                human(a.capacity),
                human(a.free),
                human(a.largest_free),
                format!(
                    "{}.{}%",
                    a.fragmentation_permille / 10,
                    a.fragmentation_permille % 10
                ),
                a.buffers.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "VM", "ID", "NAME", "STRATEGY", "KINDS", "BELOW4G", "CAPACITY", "FREE", "LARGEST",
            "FRAG", "BUFFERS",
        ],
        &rows,
    );
}

fn show_stats(stats: &Stats) {
    let d = &stats.daemon;
    println!(
        "daemon: {} VMs ({} connected, at most {}), {} exports, {} control clients, {} requests",
        d.vms, d.connected, d.max_vms, d.exports, d.control_clients, d.control_requests
    );
    for vm in &stats.vms {
        println!();
        println!("{}:", vm.vm);
        let rows: Vec<Vec<String>> = vm
            .device
            .iter()
            .map(|(k, v)| vec!["device".into(), k.clone(), v.to_string()])
            .chain(
                vm.model
                    .iter()
                    .map(|(k, v)| vec!["model".into(), k.clone(), v.to_string()]),
            )
            .collect();
        print_table(&["LAYER", "COUNTER", "VALUE"], &rows);
    }
}

/// Reads the exported bytes and checks that the export stayed valid
/// during the read.
fn read_valid(export: &Export) -> Result<Vec<u8>, Failure> {
    let bytes = export.read()?;
    match export.status() {
        Status::Valid => Ok(bytes),
        Status::Revoked(reason) => Err(fail(
            1,
            format!(
                "buffer {} changed while it was read: {reason}",
                export.info.buffer
            ),
        )),
        Status::Unknown(word) => Err(fail(1, format!("export status {word:#x}"))),
    }
}

fn run(args: Args) -> Result<(), Failure> {
    let mut client = Client::connect(&args.socket)?;
    match args.command {
        Command::Upgrade { binary } => {
            let upgrading = client.upgrade(binary.as_deref())?;
            if args.json {
                print_json(&upgrading)?;
            } else {
                println!(
                    "upgrade asked: serving process {} is being replaced",
                    upgrading.pid
                );
            }
        }
        Command::Vms => {
            let vms = client.vms()?;
            if args.json {
                print_json(&vms)?;
            } else {
                show_vms(&vms);
            }
        }
        Command::Shares { vm } => {
            let shares = client.shares(vm.as_deref())?;
            if args.json {
                print_json(&shares)?;
            } else {
                show_shares(&shares);
            }
        }
        Command::Buffers { vm } => {
            let buffers = client.buffers(vm.as_deref())?;
            if args.json {
                print_json(&buffers)?;
            } else {
                show_buffers(&buffers);
            }
        }
        Command::Allocators { vm } => {
            let allocators = client.allocators(vm.as_deref())?;
            if args.json {
                print_json(&allocators)?;
            } else {
                show_allocators(&allocators);
            }
        }
        Command::Stats { vm } => {
            let stats = client.stats(vm.as_deref())?;
            if args.json {
                print_json(&stats)?;
            } else {
                show_stats(&stats);
            }
        }
        Command::Export {
            vm,
            buffer,
            writable,
            output,
        } => {
            let export = client.export(&vm, buffer, writable)?;
            let bytes = read_valid(&export)?;
            let mut hash = Fnv1a64::default();
            hash.update(&bytes);
            let checksum = hash.finish();
            if let Some(path) = &output {
                std::fs::write(path, &bytes)
                    .map_err(|e| fail(1, format!("{}: {e}", path.display())))?;
            }
            if args.json {
                let mut value =
                    serde_json::to_value(&export.info).map_err(|e| fail(1, e.to_string()))?;
                value["checksum"] = format!("{checksum:#018x}").into();
                print_json(&value)?;
            } else {
                let info = &export.info;
                println!(
                    "export {} of buffer {} of VM {}: {} bytes in {} segments, {} descriptors, {}",
                    info.export,
                    info.buffer,
                    info.vm,
                    info.size,
                    info.segments.len(),
                    info.fds,
                    if info.writable {
                        "writable"
                    } else {
                        "read-only"
                    }
                );
                println!("checksum (FNV-1a 64): {checksum:#018x}");
                let rows: Vec<Vec<String>> = info
                    .segments
                    .iter()
                    .map(|s| {
                        vec![
                            format!("{:#x}", s.gpa),
                            human(s.len),
                            s.fd.to_string(),
                            format!("{:#x}", s.offset),
                        ]
                    })
                    .collect();
                print_table(&["GPA", "LEN", "FD", "OFFSET"], &rows);
            }
        }
        Command::Snapshot {
            vm,
            buffer,
            format,
            width,
            height,
            stride,
            offset,
            output,
        } => {
            let layout = FrameLayout::new(format, width, height, stride)
                .map_err(|e| fail(2, e.to_string()))?;
            let export = client.export(&vm, buffer, false)?;
            let bytes = read_valid(&export)?;
            let frame = usize::try_from(offset)
                .ok()
                .and_then(|offset| bytes.get(offset..))
                .ok_or_else(|| {
                    fail(
                        1,
                        format!("offset {offset} is past the buffer's {} bytes", bytes.len()),
                    )
                })?;
            let mut png = Vec::new();
            snapshot::encode_png(&layout, frame, &mut png).map_err(|e| fail(1, e.to_string()))?;
            let mut file = std::fs::File::create(&output)
                .map_err(|e| fail(1, format!("{}: {e}", output.display())))?;
            file.write_all(&png)
                .map_err(|e| fail(1, format!("{}: {e}", output.display())))?;
            let mut hash = Fnv1a64::default();
            hash.update(frame.get(..layout.bytes_needed() as usize).unwrap_or(frame));
            if args.json {
                print_json(&serde_json::json!({
                    "output": output,
                    "vm": vm,
                    "buffer": buffer,
                    "width": width,
                    "height": height,
                    "stride": layout.stride,
                    "frame_checksum": format!("{:#018x}", hash.finish()),
                }))?;
            } else {
                println!(
                    "{}: {width}x{height} {format:?} frame of buffer {buffer} of VM {vm} (frame bytes FNV-1a 64 {:#018x})",
                    output.display(),
                    hash.finish()
                );
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("cenallocctl: {}", failure.message);
            ExitCode::from(failure.status)
        }
    }
}
