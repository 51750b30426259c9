//! The control socket server: one thread accepts, one thread per client
//! (at most [`ControlPolicy::max_clients`]) reads request lines and
//! answers them (see [`super::protocol`]).
//!
//! A client affects nobody else: requests only copy snapshots of device
//! state (the device lock is held for the copy, never across I/O), a client
//! that stops reading its answers blocks only its own thread (and is
//! dropped after a write timeout), and a client that goes away, even
//! mid-request, releases every export it held.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use log::{debug, info, warn};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::export;
use super::protocol::*;
use crate::model::Strategy;
use crate::registry::{self, Exports, Registry, StatusPage, Vm};

/// How long an answer may wait for a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What control clients may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPolicy {
    pub allow_writable_export: bool,
    pub max_exports_per_client: u32,
    /// Clients connected at once; more are refused.
    pub max_clients: u32,
}

impl Default for ControlPolicy {
    fn default() -> Self {
        ControlPolicy {
            allow_writable_export: false,
            max_exports_per_client: 64,
            max_clients: 32,
        }
    }
}

/// State shared by the client threads.
struct Shared {
    registry: Arc<Registry>,
    policy: ControlPolicy,
    clients: AtomicU64,
    requests: AtomicU64,
}

/// Starts serving control clients on `listener` in a thread of its own.
pub fn spawn(
    listener: UnixListener,
    registry: Arc<Registry>,
    policy: ControlPolicy,
) -> io::Result<std::thread::JoinHandle<()>> {
    let shared = Arc::new(Shared {
        registry,
        policy,
        clients: AtomicU64::new(0),
        requests: AtomicU64::new(0),
    });
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || accept_loop(listener, shared))
}

fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    // Out of descriptors (EMFILE) the connection stays in the backlog and
    // accept fails again at once: wait longer each time (up to 5 s).
    let mut backoff = Duration::from_millis(100);
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(100);
                stream
            }
            Err(e) => {
                warn!(
                    "control socket: accept: {e}; trying again in {} ms",
                    backoff.as_millis()
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let live = shared.clients.fetch_add(1, Ordering::AcqRel);
        if live >= u64::from(shared.policy.max_clients) {
            shared.clients.fetch_sub(1, Ordering::AcqRel);
            let mut stream = stream;
            let _ = stream.write_all(&encode_answer(Outcome::Error(ErrorBody {
                code: ErrorCode::Internal,
                message: format!(
                    "{live} control clients connected, the daemon serves at most {}",
                    shared.policy.max_clients
                ),
            })));
            continue;
        }
        let id = shared.registry.next_id();
        let client_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("control-{id}"))
            .spawn(move || {
                let mut client = Client {
                    id,
                    stream,
                    shared: client_shared,
                    exports: Vec::new(),
                };
                client.serve();
                client.shared.clients.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            warn!("control socket: cannot start a client thread: {e}");
            shared.clients.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// An export a client holds.
struct Held {
    id: u64,
    exports: Arc<Exports>,
    status: Arc<StatusPage>,
}

struct Client {
    id: u64,
    stream: UnixStream,
    shared: Arc<Shared>,
    exports: Vec<Held>,
}

impl Drop for Client {
    fn drop(&mut self) {
        let released: usize = self
            .exports
            .iter()
            .map(|held| usize::from(held.exports.release(held.id, self.id)))
            .sum();
        if released > 0 {
            debug!("control client {}: released {released} exports", self.id);
        }
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
    ErrorBody {
        code,
        message: message.into(),
    }
}

fn registry_error(e: registry::Error) -> ErrorBody {
    let code = match e {
        registry::Error::UnknownVm(_) => ErrorCode::UnknownVm,
        registry::Error::NotConnected(_) => ErrorCode::NotConnected,
        _ => ErrorCode::Internal,
    };
    error(code, e.to_string())
}

type Handled = Result<(serde_json::Value, Vec<File>), ErrorBody>;

fn value<T: serde::Serialize>(result: T) -> Handled {
    serde_json::to_value(result)
        .map(|v| (v, Vec::new()))
        .map_err(|e| error(ErrorCode::Internal, e.to_string()))
}

impl Client {
    fn serve(&mut self) {
        if let Err(e) = self.stream.set_write_timeout(Some(WRITE_TIMEOUT)) {
            warn!("control client {}: {e}", self.id);
        }
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 16 << 10];
        loop {
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if self.answer(&line[..line.len() - 1]).is_err() {
                    return;
                }
            }
            if pending.len() >= MAX_REQUEST_BYTES {
                let _ = self.send(Err(error(
                    ErrorCode::TooLarge,
                    format!("a request line is at most {MAX_REQUEST_BYTES} bytes"),
                )));
                self.linger();
                return;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    if !pending.is_empty() {
                        debug!(
                            "control client {} left mid-request ({} bytes)",
                            self.id,
                            pending.len()
                        );
                    }
                    return;
                }
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("control client {}: {e}", self.id);
                    return;
                }
            }
        }
    }

    /// Closes the connection gracefully after a fatal error: no more
    /// answers, and what the client still sends is read and dropped
    /// (briefly), so that closing does not reset the connection before
    /// the client read the error.
    fn linger(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        let _ = self
            .stream
            .set_read_timeout(Some(Duration::from_millis(500)));
        let mut sink = [0u8; 16 << 10];
        let mut left = 4 * MAX_REQUEST_BYTES;
        while left > 0 {
            match self.stream.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    }

    fn answer(&mut self, line: &[u8]) -> io::Result<()> {
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        let result = decode_request(line).and_then(|request| self.handle(request));
        self.send(result)
    }

    fn send(&mut self, result: Handled) -> io::Result<()> {
        let (line, files) = match result {
            Ok((value, files)) => (encode_answer(Outcome::Ok(value)), files),
            Err(body) => (encode_answer(Outcome::Error(body)), Vec::new()),
        };
        if files.is_empty() {
            return self.stream.write_all(&line);
        }
        let fds: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
        let sent = loop {
            match self.stream.send_with_fds(&[&line[..]], &fds) {
                Ok(sent) => break sent,
                Err(e) if e.errno() == libc::EINTR => continue,
                Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
            }
        };
        // The descriptors rode with the first byte; the rest is plain.
        self.stream.write_all(&line[sent..])
    }

    fn handle(&mut self, request: Request) -> Handled {
        match request {
            Request::Hello {} => value(Hello {
                daemon: "cenallocd".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                protocol: PROTOCOL_VERSION,
                pid: std::process::id(),
            }),
            Request::Vms {} => value(Vms { vms: self.vms() }),
            Request::Buffers { vm } => {
                let mut buffers = Vec::new();
                for vm in self.selected(vm.as_deref())? {
                    buffers.extend(buffers_of(&vm));
                }
                value(Buffers { buffers })
            }
            Request::Allocators { vm } => {
                let mut allocators = Vec::new();
                for vm in self.selected(vm.as_deref())? {
                    allocators.extend(allocators_of(&vm));
                }
                value(Allocators { allocators })
            }
            Request::Stats { vm } => {
                let vms = self
                    .selected(vm.as_deref())?
                    .iter()
                    .map(|vm| stats_of(vm))
                    .collect();
                value(Stats {
                    daemon: self.daemon_stats(),
                    vms,
                })
            }
            Request::Export {
                vm,
                buffer,
                writable,
            } => self.export(&vm, buffer, writable),
            Request::Release { export } => {
                let Some(index) = self.exports.iter().position(|held| held.id == export) else {
                    return Err(error(
                        ErrorCode::UnknownExport,
                        format!("this connection holds no export {export}"),
                    ));
                };
                let held = self.exports.remove(index);
                held.exports.release(held.id, self.id);
                value(Released { export })
            }
        }
    }

    /// The connected VMs a request names: one (by name; none if it waits
    /// for a front-end) or all.
    fn selected(&self, name: Option<&str>) -> Result<Vec<Arc<Vm>>, ErrorBody> {
        let registry = &self.shared.registry;
        match name {
            Some(name) => match registry.connected(name) {
                Ok(vm) => Ok(vec![vm]),
                Err(registry::Error::NotConnected(_)) => Ok(Vec::new()),
                Err(e) => Err(registry_error(e)),
            },
            None => Ok(registry.list().into_iter().filter_map(|l| l.vm).collect()),
        }
    }

    fn vms(&self) -> Vec<VmInfo> {
        self.shared
            .registry
            .list()
            .into_iter()
            .map(|listing| {
                let mut info = VmInfo {
                    name: listing.name,
                    socket: listing.socket,
                    state: VmState::Waiting,
                    connected_secs: None,
                    connections: listing.connections,
                    refused: listing.refused,
                    buffers: 0,
                    total_bytes: 0,
                    backing_bytes: 0,
                    pool_capacity: 0,
                    pool_free: 0,
                    exports: 0,
                };
                if let Some(vm) = listing.vm {
                    let (counters, allocators) = vm
                        .read(|device| {
                            (
                                device.pool().counters().clone(),
                                device.pool().allocator_stats(),
                            )
                        })
                        .unwrap_or_default();
                    info.state = VmState::Connected;
                    info.connected_secs =
                        Some(vm.connected_at.elapsed().map(|d| d.as_secs()).unwrap_or(0));
                    info.buffers = counters.live_buffers;
                    info.total_bytes = counters.total_bytes;
                    info.backing_bytes = counters.backing_bytes;
                    info.pool_capacity = allocators.iter().map(|a| a.capacity).sum();
                    info.pool_free = allocators.iter().map(|a| a.free).sum();
                    info.exports = vm.exports.count() as u64;
                }
                info
            })
            .collect()
    }

    fn daemon_stats(&self) -> DaemonStats {
        let registry = &self.shared.registry;
        let listing = registry.list();
        let limits = registry.limits();
        DaemonStats {
            vms: listing.len() as u64,
            connected: listing.iter().filter(|l| l.vm.is_some()).count() as u64,
            exports: listing
                .iter()
                .filter_map(|l| l.vm.as_ref())
                .map(|vm| vm.exports.count() as u64)
                .sum(),
            control_clients: self.shared.clients.load(Ordering::Relaxed),
            control_requests: self.shared.requests.load(Ordering::Relaxed),
            max_vms: u64::from(limits.max_vms),
            max_buffers: limits.max_buffers,
            max_total_bytes: limits.max_total_bytes,
        }
    }

    fn export(&mut self, name: &str, buffer: u32, writable: bool) -> Handled {
        if writable && !self.shared.policy.allow_writable_export {
            return Err(error(
                ErrorCode::Forbidden,
                "writable exports are disabled (cenallocd --allow-writable-export)",
            ));
        }
        // Exports revoked since are no longer counted.
        self.exports.retain(|held| held.status.get() == 0);
        if self.exports.len() >= self.shared.policy.max_exports_per_client as usize {
            return Err(error(
                ErrorCode::TooManyExports,
                format!(
                    "this connection holds {} exports, the most it may",
                    self.exports.len()
                ),
            ));
        }
        let vm = self
            .shared
            .registry
            .connected(name)
            .map_err(registry_error)?;
        let id = self.shared.registry.next_id();
        let prepared = export::export(&vm, self.id, id, buffer, writable)?;
        info!(
            "control client {}: export {id} of buffer {buffer} of {name} ({} segments{})",
            self.id,
            prepared.info.segments.len(),
            if writable { ", writable" } else { "" }
        );
        self.exports.push(Held {
            id,
            exports: vm.exports.clone(),
            status: prepared.status.clone(),
        });
        let value = serde_json::to_value(&prepared.info)
            .map_err(|e| error(ErrorCode::Internal, e.to_string()))?;
        Ok((value, prepared.files))
    }
}

fn buffers_of(vm: &Vm) -> Vec<BufferInfo> {
    let Some(snapshot) = vm.read(|device| device.pool().snapshot()) else {
        return Vec::new();
    };
    let exported = vm.exports.per_buffer();
    let mut maps: BTreeMap<u32, u32> = BTreeMap::new();
    for attachment in &snapshot.attachments {
        *maps.entry(attachment.buffer).or_insert(0) += attachment.maps.iter().sum::<u32>();
    }
    snapshot
        .buffers
        .iter()
        .map(|b| BufferInfo {
            vm: vm.name.clone(),
            id: b.id,
            size: b.size,
            allocator: b
                .allocator
                .and_then(|a| snapshot.allocators.get(a))
                .map(|a| a.name.clone()),
            backing: b
                .backing
                .iter()
                .map(|s| GuestRange {
                    gpa: s.addr,
                    len: s.len,
                })
                .collect(),
            access_mask: b.access_mask,
            initial_mask: b.initial_mask,
            attachments: b.attachments.len() as u32,
            maps: maps.get(&b.id).copied().unwrap_or(0),
            released: b.released,
            migrate_pending: b.migrate_pending,
            exports: exported.get(&b.id).copied().unwrap_or(0) as u32,
        })
        .collect()
}

fn allocators_of(vm: &Vm) -> Vec<AllocatorInfo> {
    vm.read(|device| device.pool().allocator_stats())
        .unwrap_or_default()
        .into_iter()
        .map(|a| AllocatorInfo {
            vm: vm.name.clone(),
            id: a.id as u32,
            name: a.name,
            strategy: match a.strategy {
                Strategy::Contiguous => "contiguous".into(),
                Strategy::Scatter => "scatter".into(),
            },
            kinds: a.kinds,
            below_4g: a.placement.below_4g,
            align: a.alloc_align,
            capacity: a.capacity,
            free: a.free,
            largest_free: a.largest_free,
            free_extents: a.free_extents as u64,
            fragmentation_permille: a.fragmentation_permille,
            buffers: a.num_buffers,
        })
        .collect()
}

/// A serializable struct of u64 counters as a name → value map.
fn counter_map<T: serde::Serialize>(counters: &T) -> BTreeMap<String, u64> {
    match serde_json::to_value(counters) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .filter_map(|(k, v)| v.as_u64().map(|v| (k, v)))
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn stats_of(vm: &Vm) -> VmStats {
    let (device, model) = vm
        .read(|device| (device.counters.clone(), device.pool().counters().clone()))
        .unwrap_or_default();
    VmStats {
        vm: vm.name.clone(),
        device: counter_map(&device),
        model: counter_map(&model),
    }
}
