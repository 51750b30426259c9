//! The control socket server: one thread accepts, one thread per client
//! (at most [`ControlPolicy::max_clients`]) reads request lines and
//! answers them (see [`super::protocol`]).
//!
//! A client affects nobody else:
//! - requests only copy snapshots of device state (the device lock is held
//!   for the copy, never across I/O), and a VM's queue worker hands its
//!   lock to a waiting control request within one step of its work, so
//!   every request is answered within [`ANSWER_BOUND`] whatever the guests
//!   do;
//! - a request must arrive whole within [`ControlPolicy::request_timeout`]
//!   of its first byte, and its answer be taken within as long, or the
//!   connection is closed; a connection with no request in progress and no
//!   export held is closed after [`ControlPolicy::idle_timeout`];
//! - when [`ControlPolicy::max_clients`] are connected, a new client takes
//!   the place of the one whose last byte came longest ago among those
//!   that hold no export and whose request is not being handled (silent,
//!   stalled or slow-reading connections never lock anyone out); only when
//!   every connection holds exports or is being handled is the new one
//!   refused (with an error line, then closed);
//! - a client that goes away, even mid-request, or is closed for one of
//!   the reasons above, releases every export it held.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::export;
use super::protocol::*;
use crate::model::Strategy;
use crate::registry::{self, Exports, Registry, StatusPage, Vm};

/// Every control request is answered within this, whatever the guests do.
pub const ANSWER_BOUND: Duration = Duration::from_secs(1);
/// Default of [`ControlPolicy::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of [`ControlPolicy::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What control clients may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPolicy {
    pub allow_writable_export: bool,
    pub max_exports_per_client: u32,
    /// Clients connected at once; a new one takes the place of a quiet
    /// connection that holds no export, or is refused (see the module
    /// doc).
    pub max_clients: u32,
    /// A connection without a request in progress and without exports is
    /// closed after this long.
    pub idle_timeout: Duration,
    /// A request must arrive whole, and its answer be taken, within this.
    pub request_timeout: Duration,
    /// Under a holder: the eventfd that asks it for a live upgrade (open
    /// for the process's whole life).
    pub upgrade_fd: Option<std::os::fd::RawFd>,
}

impl Default for ControlPolicy {
    fn default() -> Self {
        ControlPolicy {
            allow_writable_export: false,
            max_exports_per_client: 64,
            max_clients: 32,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            upgrade_fd: None,
        }
    }
}

/// A connection as the accept loop sees it, to make room for a new one.
struct Presence {
    /// The connection's socket (a second handle), to close it.
    stream: UnixStream,
    /// When its last byte came or its last answer went.
    last_active: Instant,
    /// A complete request is being handled (its answer not built yet).
    answering: bool,
    /// Exports it held after its last answer.
    exports: usize,
    /// Closed to make room: its thread ends without answering.
    evicted: bool,
}

type Slot = Arc<Mutex<Presence>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// State shared by the client threads.
struct Shared {
    registry: Arc<Registry>,
    policy: ControlPolicy,
    /// Every client thread's connection, by client id.
    clients: Mutex<BTreeMap<u64, Slot>>,
    requests: AtomicU64,
}

impl Shared {
    /// Connections not closed to make room.
    fn live_clients(&self) -> u64 {
        lock(&self.clients)
            .values()
            .filter(|slot| !lock(slot).evicted)
            .count() as u64
    }

    /// Admits a new connection as client `id`: at once while fewer than
    /// `max_clients` are connected, else in the place of the connection
    /// whose last byte came longest ago among those that hold no export
    /// and are not being answered (it is closed). `None` when every one
    /// holds exports or is being answered (or the connection cannot be
    /// watched).
    fn admit(&self, id: u64, stream: &UnixStream) -> Option<Slot> {
        let handle = match stream.try_clone() {
            Ok(handle) => handle,
            Err(e) => {
                warn!("control socket: cannot keep a connection handle: {e}");
                return None;
            }
        };
        let mut clients = lock(&self.clients);
        let live: Vec<Slot> = clients
            .values()
            .filter(|slot| !lock(slot).evicted)
            .cloned()
            .collect();
        if live.len() as u64 >= u64::from(self.policy.max_clients) {
            let quietest = live
                .iter()
                .filter_map(|slot| {
                    let presence = lock(slot);
                    (!presence.answering && presence.exports == 0)
                        .then_some((presence.last_active, slot))
                })
                .min_by_key(|(last_active, _)| *last_active)
                .map(|(_, slot)| slot)?;
            let mut presence = lock(quietest);
            presence.evicted = true;
            let _ = presence.stream.shutdown(std::net::Shutdown::Both);
            info!(
                "control socket: a connection quiet for {:?} closed to make room for a new one",
                presence.last_active.elapsed()
            );
        }
        let slot = Arc::new(Mutex::new(Presence {
            stream: handle,
            last_active: Instant::now(),
            answering: false,
            exports: 0,
            evicted: false,
        }));
        clients.insert(id, slot.clone());
        Some(slot)
    }
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
        clients: Mutex::new(BTreeMap::new()),
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
        let id = shared.registry.next_id();
        let Some(presence) = shared.admit(id, &stream) else {
            let mut stream = stream;
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = stream.write_all(&encode_answer(Outcome::Error(ErrorBody {
                code: ErrorCode::Internal,
                message: format!(
                    "{} control clients connected, each holding exports or being answered; \
                     the daemon serves at most {}",
                    shared.live_clients(),
                    shared.policy.max_clients
                ),
            })));
            continue;
        };
        let client_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("control-{id}"))
            .spawn(move || {
                let mut client = Client {
                    id,
                    stream,
                    shared: client_shared,
                    exports: Vec::new(),
                    presence,
                };
                client.serve();
                let shared = client.shared.clone();
                // Its exports are released before it stops counting.
                drop(client);
                lock(&shared.clients).remove(&id);
            });
        if let Err(e) = spawned {
            warn!("control socket: cannot start a client thread: {e}");
            lock(&shared.clients).remove(&id);
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
    presence: Slot,
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
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 16 << 10];
        // When the first byte of the request in `pending` came.
        let mut request_since: Option<Instant> = None;
        let mut last_active = Instant::now();
        loop {
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if !self.start_answer() || self.answer(&line[..line.len() - 1]).is_err() {
                    return;
                }
                last_active = Instant::now();
                lock(&self.presence).last_active = last_active;
                request_since = (!pending.is_empty()).then_some(last_active);
            }
            if pending.len() >= MAX_REQUEST_BYTES {
                let _ = self.send(Err(error(
                    ErrorCode::TooLarge,
                    format!("a request line is at most {MAX_REQUEST_BYTES} bytes"),
                )));
                self.linger();
                return;
            }
            let policy = self.shared.policy.clone();
            let timeout = match request_since {
                Some(since) => since + policy.request_timeout,
                None => last_active + policy.idle_timeout,
            }
            .saturating_duration_since(Instant::now());
            // A connection that holds exports is not idle: it is woken
            // now and then to see whether they were all revoked.
            let timeout = if request_since.is_none() && self.holds_exports() {
                policy.idle_timeout
            } else if timeout.is_zero() {
                match request_since {
                    Some(_) => info!(
                        "control client {}: no whole request within {:?} ({} bytes): closed",
                        self.id,
                        policy.request_timeout,
                        pending.len()
                    ),
                    None => debug!("control client {}: idle: closed", self.id),
                }
                return;
            } else {
                timeout
            };
            // Never 0, which would mean no timeout.
            let timeout = Some(timeout.max(Duration::from_millis(1)));
            if let Err(e) = self.stream.set_read_timeout(timeout) {
                warn!("control client {}: {e}", self.id);
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
                Ok(n) => {
                    last_active = Instant::now();
                    if pending.is_empty() {
                        request_since = Some(last_active);
                    }
                    pending.extend_from_slice(&chunk[..n]);
                    let mut presence = lock(&self.presence);
                    if presence.evicted {
                        return;
                    }
                    presence.last_active = last_active;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    debug!("control client {}: {e}", self.id);
                    return;
                }
            }
        }
    }

    /// Whether the connection still holds an export that is valid (and
    /// tells the accept loop).
    fn holds_exports(&mut self) -> bool {
        let valid = self.valid_exports();
        lock(&self.presence).exports = valid;
        valid > 0
    }

    /// Exports held and not revoked (a revoked one may still be released).
    fn valid_exports(&self) -> usize {
        self.exports
            .iter()
            .filter(|held| held.status.get() == 0)
            .count()
    }

    /// Marks the connection as being answered; false if it was closed to
    /// make room meanwhile.
    fn start_answer(&mut self) -> bool {
        let mut presence = lock(&self.presence);
        presence.answering = !presence.evicted;
        presence.answering
    }

    /// The request is handled: from here the connection may be closed to
    /// make room again (a client slow to take its answer is no reason to
    /// refuse a new one), with the exports it holds now.
    fn end_answer(&mut self) {
        let exports = self.valid_exports();
        let mut presence = lock(&self.presence);
        presence.answering = false;
        presence.exports = exports;
        presence.last_active = Instant::now();
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
        let mut upgrade = false;
        let result = decode_request(line).and_then(|request| {
            upgrade = matches!(request, Request::Upgrade { .. });
            self.handle(request)
        });
        self.end_answer();
        let asked = upgrade && result.is_ok();
        let sent = self.send(result);
        if asked {
            // After the answer: the holder replaces this process at once.
            self.ask_for_upgrade();
        }
        sent
    }

    /// Writes the holder's upgrade eventfd.
    fn ask_for_upgrade(&self) {
        let Some(fd) = self.shared.policy.upgrade_fd else {
            return;
        };
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) of 8 initialised bytes to a descriptor that
        // stays open for the process's life (an eventfd).
        let written = unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
        if written != one.len() as isize {
            log::error!(
                "control client {}: asking the holder for the upgrade: {}",
                self.id,
                io::Error::last_os_error()
            );
        }
    }

    /// Sends an answer; the client must take it within the request
    /// timeout.
    fn send(&mut self, result: Handled) -> io::Result<()> {
        let deadline = Instant::now() + self.shared.policy.request_timeout;
        let (line, files) = match result {
            Ok((value, files)) => (encode_answer(Outcome::Ok(value)), files),
            Err(body) => (encode_answer(Outcome::Error(body)), Vec::new()),
        };
        if files.is_empty() {
            return self.write_by(&line, deadline);
        }
        let fds: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
        self.stream
            .set_write_timeout(Some(self.shared.policy.request_timeout))?;
        let sent = loop {
            match self.stream.send_with_fds(&[&line[..]], &fds) {
                Ok(sent) => break sent,
                Err(e) if e.errno() == libc::EINTR => continue,
                Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
            }
        };
        // The descriptors rode with the first byte; the rest is plain.
        self.write_by(&line[sent..], deadline)
    }

    /// Writes all of `bytes` before `deadline`, or fails.
    fn write_by(&mut self, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
        while !bytes.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                debug!("control client {}: answer not taken in time", self.id);
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream
                .set_write_timeout(Some(left.max(Duration::from_millis(1))))?;
            match self.stream.write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
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
            Request::Shares { vm } => self.shares(vm.as_deref()),
            Request::Upgrade { binary } => {
                if self.shared.policy.upgrade_fd.is_none() {
                    return Err(error(
                        ErrorCode::Forbidden,
                        "no holder to upgrade this daemon (run cenallocd --supervise)",
                    ));
                }
                self.upgrade_binary(binary.as_deref())?;
                // The holder is asked once this answer is sent.
                match &binary {
                    Some(path) => info!(
                        "control client {}: live upgrade to {} asked",
                        self.id,
                        path.display()
                    ),
                    None => info!("control client {}: live upgrade asked", self.id),
                }
                value(Upgrading {
                    pid: std::process::id(),
                })
            }
        }
    }

    /// Tells the holder what the upgrade about to be asked starts:
    /// `binary` once checked here and by the holder, or its own path.
    fn upgrade_binary(&self, binary: Option<&std::path::Path>) -> Result<(), ErrorBody> {
        use crate::registry::exports::keeper::{self, AskError};
        if let Some(path) = binary {
            crate::holder::binary::check(path)
                .map_err(|e| error(ErrorCode::BadRequest, format!("upgrade binary: {e}")))?;
        }
        match keeper::ask_upgrade_binary(binary) {
            Ok(()) => Ok(()),
            // A serving process started by hand with --upgrade-fd only:
            // the holder's own path is all it can ask for.
            Err(AskError::NoHolder) if binary.is_none() => Ok(()),
            Err(AskError::NoHolder) => Err(error(
                ErrorCode::Forbidden,
                "no channel to the holder to name an upgrade binary (--status-fd)",
            )),
            Err(AskError::Refused(why)) => Err(error(
                ErrorCode::BadRequest,
                format!("upgrade binary: the holder refused it: {why}"),
            )),
            Err(e @ AskError::Io(_)) => Err(error(ErrorCode::Internal, format!("upgrade: {e}"))),
        }
    }

    /// The connected VMs a request names: one (by name; none if it waits
    /// for a front-end) or all.
    /// The share table as seen from VM `name` (its membership, the shares
    /// it exports or imports, its imports and those of its shares), or
    /// whole.
    fn shares(&self, name: Option<&str>) -> Handled {
        let registry = &self.shared.registry;
        if let Some(name) = name {
            if !registry.contains(name) {
                return Err(registry_error(registry::Error::UnknownVm(name.to_string())));
            }
        }
        let Some(sharing) = registry.sharing() else {
            return value(Shares {
                enabled: false,
                members: Vec::new(),
                shares: Vec::new(),
                imports: Vec::new(),
            });
        };
        let table = sharing.table();
        let wanted = |vm: &str| name.map_or(true, |name| name == vm);
        let members = sharing
            .members()
            .iter()
            .filter(|(vm, _)| wanted(vm))
            .map(|(vm, share)| ShareMember {
                vm: vm.clone(),
                connected: table.joined(vm),
                exports_in: share.exporter_groups.clone(),
                imports_from: share.importer_groups.clone(),
                window: share.window,
                mappings: table.mappings(vm),
                max_mappings: share.limits.max_mappings,
            })
            .collect();
        let exporter_of = |token: u64| table.share_of(token).map(|s| s.exporter.clone());
        let imports: Vec<ImportInfo> = table
            .imports()
            .filter(|i| wanted(&i.importer) || exporter_of(i.token).is_some_and(|e| wanted(&e)))
            .map(|i| ImportInfo {
                token: i.token,
                importer: i.importer.clone(),
                buffer: i.id,
                window_offset: i.offset,
                window_len: i.len,
                writable: i.writable,
                state: format!("{:?}", i.mapping).to_lowercase(),
                revoking: i.revocation.is_some(),
                forced: i.forced,
            })
            .collect();
        let shares = table
            .shares()
            .filter(|s| wanted(&s.exporter) || imports.iter().any(|i| i.token == s.token))
            .map(|s| ShareInfo {
                token: s.token,
                exporter: s.exporter.clone(),
                buffer: s.buffer,
                size: s.size,
                group: s.group.clone(),
                writable: s.writable,
                ending: s.ending,
            })
            .collect();
        value(Shares {
            enabled: true,
            members,
            shares,
            imports,
        })
    }

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
            control_clients: self.shared.live_clients(),
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
