//! The command line of `cenallocctl`, in the library so that the man page
//! and the shell completions are generated from the same definition
//! (`cargo run --example gen_docs`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::control::snapshot::PixelFormat;

/// Where the daemon's control socket is when neither --socket nor
/// CENALLOC_CONTROL_SOCKET say.
pub const DEFAULT_SOCKET: &str = "/run/cenalloc/control.sock";

#[derive(Parser, Debug)]
#[command(
    name = "cenallocctl",
    version,
    about = "Inspect a running cenallocd and export guest buffers to host programs",
    after_help = "Exit status: 0 success, 1 the daemon refused or cannot be reached, 2 bad arguments."
)]
pub struct Args {
    /// The daemon's control socket (cenallocd --control-socket).
    #[arg(long, short, env = "CENALLOC_CONTROL_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Print the daemon's answer as JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Every VM: state, socket, buffers, pool use, exports.
    Vms,
    /// Buffers of one VM, or of all.
    Buffers { vm: Option<String> },
    /// Allocators of one VM, or of all.
    Allocators { vm: Option<String> },
    /// Counters of one VM, or of all, and of the daemon.
    Stats { vm: Option<String> },
    /// Cross-VM sharing: the share groups' member VMs, the buffers they
    /// publish, and the imports (of one VM, or of all).
    Shares { vm: Option<String> },
    /// Export a buffer: print where its bytes are and their FNV-1a 64
    /// checksum (the guest's CENALLOC_IOC_CHECKSUM); -o writes them out.
    Export {
        vm: String,
        buffer: u32,
        /// Ask for a writable export (the daemon must allow it).
        #[arg(long)]
        writable: bool,
        /// Write the buffer's bytes to FILE.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Write a frame held in a buffer as PNG.
    Snapshot {
        vm: String,
        buffer: u32,
        #[arg(long, value_enum)]
        format: PixelFormat,
        #[arg(long)]
        width: u32,
        #[arg(long)]
        height: u32,
        /// Bytes from one row to the next (default: packed rows).
        #[arg(long)]
        stride: Option<u32>,
        /// Where the frame starts in the buffer, bytes.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        #[arg(short, long, value_name = "FILE.png")]
        output: PathBuf,
    },
    /// Live upgrade of a `cenallocd --supervise`: its serving process is
    /// replaced by one started from the binary now at the daemon's path
    /// (or --binary), which takes every VM over.
    Upgrade {
        /// Start the new serving process (and those restarted after it)
        /// from this executable instead: an absolute path to a regular
        /// file, not writable by its group or others, owned by root or the
        /// daemon's user. Refused otherwise, and nothing changes.
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
    },
}
