//! The configuration's tests: command line, file and activated sockets
//! together, as [`Config::build`] sees them.

use clap::Parser;

use super::*;
use crate::model::{MappingType, Strategy};
use crate::sandbox::{LandlockMode, SeccompMode};

fn args(list: &[&str]) -> Args {
    Args::try_parse_from(std::iter::once("cenallocd").chain(list.iter().copied())).unwrap()
}

#[test]
fn sizes_parse_with_suffixes() {
    assert_eq!(parse_size("4096").unwrap(), 4096);
    assert_eq!(parse_size("64K").unwrap(), 64 << 10);
    assert_eq!(parse_size("2M").unwrap(), 2 << 20);
    assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
    assert_eq!(parse_size("0x1000").unwrap(), 4096);
    assert!(parse_size("12Q").is_err());
    assert!(parse_size("99999999999G").is_err());
}

#[test]
fn size_suffixes_and_hex_digits_do_not_mix_up() {
    assert_eq!(parse_size("1KB").unwrap(), 1 << 10);
    assert_eq!(parse_size("3mb").unwrap(), 3 << 20);
    assert_eq!(parse_size("512b").unwrap(), 512);
    assert_eq!(parse_size(" 0x10M ").unwrap(), 16 << 20);
    // A trailing b of a hexadecimal number is a digit, not "bytes".
    assert_eq!(parse_size("0x1b").unwrap(), 0x1b);
    assert_eq!(parse_size("0xab").unwrap(), 0xab);
    for bad in [
        "", "b", "K", "0x", "0xM", "+5", "-1", "0x+5", "1.5G", "64 M", "0x1g2",
    ] {
        assert!(
            matches!(parse_size(bad), Err(Error::Size(_))),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn sizes_that_overflow_64_bits_say_so() {
    for big in [
        "18446744073709551616",
        "0x10000000000000000",
        "17179869184G",
        "0x400000000G",
    ] {
        assert!(
            matches!(parse_size(big), Err(Error::SizeTooLarge(_))),
            "{big:?}"
        );
    }
    assert_eq!(parse_size("17179869183G").unwrap(), 17179869183 << 30);
    assert_eq!(parse_size("18446744073709551615").unwrap(), u64::MAX);
}

/// Writes `text` to a fresh file and builds the device config from it.
fn config_from_toml(test: &str, text: &str) -> Result<DeviceConfig, Error> {
    let dir = std::env::temp_dir().join(format!("cenalloc-config-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, text).unwrap();
    let result = device_config(Some(&path), &[]);
    std::fs::remove_dir_all(&dir).ok();
    result
}

#[test]
fn unknown_keys_are_refused_everywhere_with_their_name() {
    for (text, key) in [
        ("max_batchh = 4\n", "max_batchh"),
        ("[limits]\nmax_bufers = 4\n", "max_bufers"),
        (
            "[[kind]]\nbit = 8\nname = \"k\"\ncontigous = true\n",
            "contigous",
        ),
        ("[[pool]]\nsize = \"1M\"\nbelow4g = true\n", "below4g"),
        ("[extra]\na = 1\n", "extra"),
    ] {
        let error = config_from_toml("unknown", text).unwrap_err();
        assert!(
            matches!(error, Error::ParseConfig { .. }),
            "{text}: {error}"
        );
        assert!(error.to_string().contains(key), "{text}: {error}");
    }
}

#[test]
fn bad_values_in_the_file_get_clear_messages() {
    let error = config_from_toml("negative", "[[pool]]\nsize = -4096\n").unwrap_err();
    assert!(error.to_string().contains("a size"), "{error}");
    let error = config_from_toml("kinds", "[[pool]]\nsize = \"1M\"\nkinds = true\n").unwrap_err();
    assert!(error.to_string().contains("kind names"), "{error}");
    let error = config_from_toml("huge", "[[pool]]\nsize = \"99999999999G\"\n").unwrap_err();
    assert!(matches!(error, Error::SizeTooLarge(_)), "{error}");
    let error = config_from_toml(
        "bit",
        "[[kind]]\nbit = 40\nname = \"far\"\n[[pool]]\nkind = \"far\"\nsize = \"1M\"\n",
    )
    .unwrap_err();
    assert!(
        matches!(&error, Error::KindBit { name, bit: 40 } if name == "far"),
        "{error}"
    );
}

#[test]
fn default_layout_asks_little_at_probe() {
    let config = Config::try_from(args(&["--socket-path", "/tmp/s"])).unwrap();
    assert_eq!(config.vms[0].device, DeviceConfig::default_layout());
    let total: u64 = config.vms[0].device.pool_sizes.iter().sum();
    assert!(total <= 16 << 20, "{total}");
    assert_eq!(
        config.vms[0].device.pool_sizes.len(),
        config.vms[0].device.pool.allocators.len()
    );
    assert_eq!(
        config.vms[0].device.pool_max_sizes,
        vec![0; config.vms[0].device.pool_sizes.len()]
    );
    assert_eq!(config.vms[0].device.max_pool_percent, 50);
}

#[test]
fn polling_is_configured_by_flag_or_file() {
    let config = Config::try_from(args(&["-s", "/tmp/s"])).unwrap();
    assert_eq!(config.vms[0].device.poll_us, crate::poll::DEFAULT_POLL_US);
    let config = Config::try_from(args(&["-s", "/tmp/s", "--poll-us", "0"])).unwrap();
    assert_eq!(config.vms[0].device.poll_us, 0);
    let device = config_from_toml("poll", "poll_us = 200\n").unwrap();
    assert_eq!(device.poll_us, 200);
    let result = Config::try_from(args(&["-s", "/tmp/s", "--poll-us", "5000"]));
    assert!(matches!(result, Err(Error::PollUs(5000))));
}

#[test]
fn pool_maxima_and_the_share_of_guest_ram() {
    let config = Config::try_from(args(&[
        "-s",
        "/tmp/s",
        "--pool",
        "system:4M:max=64M",
        "--pool",
        "contig:2M",
    ]))
    .unwrap();
    assert_eq!(config.vms[0].device.pool_max_sizes, vec![64 << 20, 0]);
    assert_eq!(config.vms[0].device.config_space().pools[0].max_mb, 64);
    // 64 MiB of its own, and half of a 1 GiB guest with the others'.
    let device = &config.vms[0].device;
    assert_eq!(device.pool_capacity_limit(0, 1 << 30, 0), 64 << 20);
    assert_eq!(device.pool_capacity_limit(1, 1 << 30, 500 << 20), 12 << 20);
    for bad in ["system:4M:max=2M", "system:4M:max=5000K"] {
        let result = Config::try_from(args(&["-s", "/tmp/s", "--pool", bad]));
        assert!(
            matches!(result, Err(Error::PoolMaxSize { .. })),
            "{bad} accepted"
        );
    }
    let device = config_from_toml(
            "maxima",
            "max_pool_percent = 25\n[limits]\nmax_lease_bytes = 0\nmax_regions = 64\n[[pool]]\nsize = \"1M\"\nmax_size = \"16M\"\n",
        )
        .unwrap();
    assert_eq!(device.max_pool_percent, 25);
    assert_eq!(device.pool_max_sizes, vec![16 << 20]);
    assert_eq!(device.pool.limits.max_lease_bytes, 0);
    assert_eq!(device.pool.limits.max_regions, 64);
    assert_eq!(
        device.features() & (1 << crate::protocol::CENALLOC_F_LEASE),
        0
    );
    for percent in ["0", "91"] {
        let result = config_from_toml("percent", &format!("max_pool_percent = {percent}\n"));
        assert!(matches!(result, Err(Error::PoolPercent(_))), "{percent}");
    }
}

#[test]
fn pool_flags_replace_the_default_layout() {
    let config = Config::try_from(args(&[
        "-s",
        "/tmp/s",
        "--pool",
        "contig:64M:below4g,align=2M",
        "--pool",
        "system:32M:name=plenty",
    ]))
    .unwrap();
    let pools = &config.vms[0].device.pool.allocators;
    assert_eq!(pools.len(), 2);
    assert_eq!(pools[0].strategy, Strategy::Contiguous);
    assert!(pools[0].placement.below_4g);
    assert_eq!(pools[0].placement.align, 2 << 20);
    assert_eq!(pools[1].name, "plenty");
    assert_eq!(config.vms[0].device.pool_sizes, vec![64 << 20, 32 << 20]);
}

#[test]
fn bad_pool_flags_are_refused() {
    for bad in [
        "contig",
        "bogus:1M",
        "system:12Q",
        "system:1M:frob",
        "system:0",
        "contig:1M:align=3M",
    ] {
        let result = Config::try_from(args(&["-s", "/tmp/s", "--pool", bad]));
        assert!(result.is_err(), "{bad} accepted");
    }
}

#[test]
fn sockets_name_the_vms() {
    let config = Config::try_from(args(&["--fd", "3"])).unwrap();
    assert_eq!(config.vms[0].listen, ListenOn::Fd(3));
    assert_eq!(config.vms[0].name, "fd3");
    let config = Config::try_from(args(&["-s", "/tmp/s.sock"])).unwrap();
    assert_eq!(config.vms[0].listen, ListenOn::Path("/tmp/s.sock".into()));
    assert_eq!(config.vms[0].name, "s");
    let config = Config::try_from(args(&[
        "-s",
        "vm1=/tmp/a.sock",
        "--socket-path",
        "vm2=/tmp/b=c.sock",
        "--fd",
        "vm3=4",
        "-s",
        "/tmp/d=e/f.sock",
    ]))
    .unwrap();
    let names: Vec<_> = config.vms.iter().map(|vm| vm.name.as_str()).collect();
    assert_eq!(names, ["vm1", "vm2", "f", "vm3"]);
    assert_eq!(config.vms[1].listen, ListenOn::Path("/tmp/b=c.sock".into()));
    assert_eq!(
        config.vms[2].listen,
        ListenOn::Path("/tmp/d=e/f.sock".into())
    );
    assert_eq!(config.vms[3].listen, ListenOn::Fd(4));
    for bad in [
        &["cenallocd", "--fd", "-1"][..],
        &["cenallocd", "--fd", "three"][..],
        &["cenallocd", "--fd", "x y=3"][..],
        &["cenallocd", "--fd"][..],
        &["cenallocd", "-s", ""][..],
        &["cenallocd", "-s", "vm=", "--fd", "3"][..],
        &["cenallocd", "-s", "/tmp/a", "--socket-mode", "999"][..],
    ] {
        let error = Args::try_parse_from(bad).unwrap_err();
        assert_eq!(error.exit_code(), 2, "{bad:?}");
    }
    for (bad, message) in [
        (&["-s", "a=/tmp/1", "-s", "a=/tmp/2"][..], "used twice"),
        (&["-s", "a=/tmp/1", "-s", "b=/tmp/1"][..], "used twice"),
        (&["-s", "/tmp/.hidden"][..], "give NAME=PATH"),
        (
            &["-s", "/tmp/s", "--control-socket", "/tmp/s"][..],
            "used twice",
        ),
    ] {
        let error = Config::try_from(args(bad)).unwrap_err();
        assert!(error.to_string().contains(message), "{bad:?}: {error}");
    }
    // Built by hand (not through clap), no socket at all is an error too.
    let mut neither = args(&["--fd", "3"]);
    neither.fds.clear();
    assert!(matches!(Config::try_from(neither), Err(Error::NoSocket)));
}

#[test]
fn socket_permissions_default_to_owner_only() {
    let config = Config::try_from(args(&["-s", "/tmp/s"])).unwrap();
    assert_eq!(config.socket_permissions, SocketPermissions::default());
    assert_eq!(config.socket_permissions.mode, 0o600);
    let config = Config::try_from(args(&["-s", "/tmp/s", "--socket-group", "0"])).unwrap();
    assert_eq!(
        config.socket_permissions,
        SocketPermissions {
            mode: 0o660,
            group: Some(0)
        }
    );
    let config = Config::try_from(args(&["-s", "/tmp/s", "--socket-mode", "0640"])).unwrap();
    assert_eq!(config.socket_permissions.mode, 0o640);
    let error =
        Config::try_from(args(&["-s", "/tmp/s", "--socket-group", "no-such-group-x"])).unwrap_err();
    assert!(error.to_string().contains("no group"), "{error}");
    let config = Config::try_from(args(&["-s", "/tmp/s", "--control-socket", "/tmp/c"])).unwrap();
    let control = config.control.unwrap();
    assert_eq!(control.permissions.mode, 0o600);
    assert!(!control.allow_writable_export);
    assert_eq!(control.idle_timeout, DEFAULT_IDLE_TIMEOUT);
    assert_eq!(control.request_timeout, DEFAULT_REQUEST_TIMEOUT);
}

#[test]
fn control_timeouts_are_a_second_to_a_day() {
    assert_eq!(
        control_timeout("k", Some(1), DEFAULT_IDLE_TIMEOUT).unwrap(),
        Duration::from_secs(1)
    );
    for secs in [0, MAX_CONTROL_TIMEOUT_SECS + 1] {
        let error = control_timeout("k", Some(secs), DEFAULT_IDLE_TIMEOUT).unwrap_err();
        assert!(error.to_string().contains("must be 1..="), "{error}");
    }
}

#[test]
fn vm_tables_have_their_own_limits_and_pools() {
    let dir = std::env::temp_dir().join(format!("cenalloc-config-vms-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vms.toml");
    std::fs::write(
        &path,
        r#"
[daemon]
max_vms = 3
max_buffers = 3000
max_total_bytes = "8G"
control_socket = "/run/c.sock"
socket_mode = 0o640
allow_writable_export = true
control_idle_timeout_secs = 300
seccomp = "log"
landlock = "off"
[limits]
max_buffers = 1000
max_total_bytes = "2G"
[[pool]]
kind = "system"
size = "8M"
[[vm]]
name = "one"
socket = "/run/one.sock"
[[vm]]
name = "two"
socket = "/run/two.sock"
max_batch = 8
[vm.limits]
max_buffers = 10
[[vm.pool]]
kind = "contig32"
size = "4M"
"#,
    )
    .unwrap();
    let config = Config::try_from(args(&["-c", path.to_str().unwrap()])).unwrap();
    assert_eq!(config.vms.len(), 2);
    let (one, two) = (&config.vms[0], &config.vms[1]);
    assert_eq!(one.listen, ListenOn::Path("/run/one.sock".into()));
    assert_eq!(one.device.pool.limits.max_buffers, 1000);
    assert_eq!(one.device.pool_sizes, vec![8 << 20]);
    assert_eq!(two.device.pool.limits.max_buffers, 10);
    assert_eq!(two.device.pool.limits.max_total_bytes, 2 << 30);
    assert_eq!(two.device.max_batch, 8);
    assert_eq!(two.device.pool.allocators[0].name, "contig32");
    assert_eq!(two.device.pool_sizes, vec![4 << 20]);
    assert_eq!(
        config.daemon,
        DaemonLimits {
            max_vms: 3,
            max_buffers: 3000,
            max_total_bytes: 8 << 30
        }
    );
    assert_eq!(config.socket_permissions.mode, 0o640);
    let control = config.control.as_ref().unwrap();
    assert_eq!(control.listen, ListenOn::Path("/run/c.sock".into()));
    assert!(control.allow_writable_export);
    assert_eq!(control.idle_timeout, Duration::from_secs(300));
    assert_eq!(control.request_timeout, DEFAULT_REQUEST_TIMEOUT);
    assert_eq!(config.sandbox.seccomp, SeccompMode::Log);
    assert_eq!(config.sandbox.landlock, LandlockMode::Off);
    assert_eq!(config.sandbox.removable_dirs, vec![PathBuf::from("/run")]);

    // Socket activation hands "two" its socket by name.
    let activated = [ActivatedSocket {
        fd: 3,
        name: "two".into(),
    }];
    let config = Config::build(args(&["-c", path.to_str().unwrap()]), &activated).unwrap();
    assert_eq!(config.vms.len(), 2);
    assert_eq!(config.vms[1].listen, ListenOn::Fd(3));
    assert_eq!(config.vms[1].device.pool.limits.max_buffers, 10);

    // A VM whose limits exceed the daemon's is refused at start-up.
    let over = dir.join("over.toml");
    std::fs::write(
        &over,
        "[daemon]\nmax_buffers = 10\n[[vm]]\nname = \"a\"\nsocket = \"/run/a.sock\"\n",
    )
    .unwrap();
    let error = Config::try_from(args(&["-c", over.to_str().unwrap()])).unwrap_err();
    assert!(matches!(error, Error::VmOverDaemon { .. }), "{error}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_example_configuration_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/cenallocd.toml");
    // The group may not exist where the test runs: any group will do.
    let text = std::fs::read_to_string(&example)
        .unwrap()
        .replace("socket_group = \"kvm\"", "socket_group = \"0\"");
    let dir = std::env::temp_dir().join(format!("cenalloc-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cenallocd.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::try_from(args(&["-c", path.to_str().unwrap()])).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let names: Vec<&str> = config.vms.iter().map(|vm| vm.name.as_str()).collect();
    assert_eq!(names, ["desktop", "camera"]);
    assert_eq!(config.vms[1].device.pool.allocators[0].name, "contig32");
    assert_eq!(config.socket_permissions.mode, 0o660);
    assert_eq!(config.control.unwrap().permissions.mode, 0o600);
    // Both VMs fit in the daemon's budget at once.
    let buffers: u64 = config
        .vms
        .iter()
        .map(|vm| u64::from(vm.device.pool.limits.max_buffers))
        .sum();
    let bytes: u64 = config
        .vms
        .iter()
        .map(|vm| vm.device.pool.limits.max_total_bytes)
        .sum();
    assert!(buffers <= config.daemon.max_buffers);
    assert!(bytes <= config.daemon.max_total_bytes);
}

#[test]
fn activated_sockets_are_vms_and_the_control_socket() {
    let activated = [
        ActivatedSocket {
            fd: 3,
            name: "vm1".into(),
        },
        ActivatedSocket {
            fd: 4,
            name: CONTROL_FD_NAME.into(),
        },
    ];
    let config = Config::build(args(&[]), &activated).unwrap();
    assert_eq!(config.vms.len(), 1);
    assert_eq!(config.vms[0].name, "vm1");
    assert_eq!(config.control.unwrap().listen, ListenOn::Fd(4));
    let error = Config::build(args(&["--control-socket", "/tmp/c"]), &activated).unwrap_err();
    assert!(matches!(error, Error::TwoControlSockets), "{error}");
    let bad = [ActivatedSocket {
        fd: 3,
        name: "a b".into(),
    }];
    assert!(matches!(
        Config::build(args(&[]), &bad),
        Err(Error::BadName(_))
    ));
}

#[test]
fn missing_socket_is_a_usage_error() {
    // Clap accepts no socket (the file or socket activation may have
    // them); the configuration refuses it.
    let none = Args::try_parse_from(["cenallocd"]).unwrap();
    assert!(matches!(Config::try_from(none), Err(Error::NoSocket)));
    assert!(Args::try_parse_from(["cenallocd", "--print-config-size"]).is_ok());
    assert!(Args::try_parse_from(["cenallocd", "--frobnicate"]).is_err());
}

#[test]
fn config_file_sets_limits_kinds_and_pools() {
    let dir = std::env::temp_dir().join(format!("cenalloc-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pools.toml");
    std::fs::write(
        &path,
        r#"
max_batch = 16
exporter_types = ["sg", "contig", 0x8001]
[limits]
max_buffers = 100
max_buffer_size = "16M"
max_total_bytes = "64M"
[[kind]]
bit = 8
name = "carveout"
contiguous = true
max_address = "4G"
align = "2M"
[[pool]]
name = "carve"
kind = "carveout"
size = "32M"
align = "2M"
[[pool]]
kind = "system"
size = "16M"
"#,
    )
    .unwrap();
    let config = Config::try_from(args(&["-s", "/tmp/s", "-c", path.to_str().unwrap()])).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let device = &config.vms[0].device;
    assert_eq!(device.max_batch, 16);
    assert_eq!(device.pool.limits.max_buffers, 100);
    assert_eq!(device.pool.limits.max_buffer_size, 16 << 20);
    assert_eq!(
        device.pool.exporter_types,
        vec![
            MappingType::ScatterGather,
            MappingType::Contiguous,
            MappingType::Private(0x8001)
        ]
    );
    assert_eq!(device.pool.allocators[0].name, "carve");
    assert_eq!(device.pool.allocators[0].kinds, 1 << 8);
    assert_eq!(device.pool.allocators[0].strategy, Strategy::Contiguous);
    assert_eq!(device.pool_sizes, vec![32 << 20, 16 << 20]);
}

#[test]
fn the_child_of_a_holder_takes_every_socket_from_it() {
    let dir = std::env::temp_dir().join(format!("cenalloc-handoff-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cenallocd.toml");
    std::fs::write(
        &file,
        "[daemon]\ncontrol_socket = \"/run/c.sock\"\n[[vm]]\nname = \"vm3\"\nsocket = \"/run/vm3.sock\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let holder = [
        "--socket-path",
        "vm1=/run/vm1.sock",
        "--fd",
        "vm2=9",
        "--config",
        file,
        "--control-socket",
        "/run/other.sock",
    ];
    // What the holder itself sees: paths, an inherited fd, the file's VM.
    assert!(matches!(
        Config::build(args(&holder[..6]), &[]),
        Ok(config) if config.vms.len() == 3
    ));
    let mut child = holder.to_vec();
    child.extend([
        "--holder-fd",
        "vm1=5",
        "--holder-fd",
        "vm2=6",
        "--holder-fd",
        "vm3=7",
        "--holder-fd",
        "control=8",
        "--restarted",
        "2",
    ]);
    let config = Config::build(args(&child), &[]).unwrap();
    let mut vms: Vec<_> = config
        .vms
        .iter()
        .map(|vm| (vm.name.as_str(), vm.listen.clone()))
        .collect();
    vms.sort_by_key(|(name, _)| *name);
    assert_eq!(
        vms,
        vec![
            ("vm1", ListenOn::Fd(5)),
            ("vm2", ListenOn::Fd(6)),
            ("vm3", ListenOn::Fd(7)),
        ]
    );
    assert_eq!(config.control.unwrap().listen, ListenOn::Fd(8));
    // Nothing to remove at exit: the holder owns the files.
    assert!(config.sandbox.removable_dirs.is_empty());
    // A VM of the file the holder did not hand down is an error, not a
    // socket bound behind the holder's back.
    let missing = [&child[..child.len() - 6], &["--restarted", "1"]].concat();
    assert!(matches!(
        Config::build(args(&missing), &[]),
        Err(Error::NotHandedDown(name)) if name == "vm3"
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn supervise_and_holder_fds_exclude_each_other() {
    let both = [
        "--supervise",
        "--holder-fd",
        "vm1=5",
        "--socket-path",
        "/run/vm1.sock",
    ];
    assert!(
        Args::try_parse_from(std::iter::once("cenallocd").chain(both.iter().copied())).is_err()
    );
    let supervised = args(&["--supervise", "--max-restarts", "3", "-s", "/run/vm1.sock"]);
    assert!(supervised.supervise);
    assert_eq!(
        (supervised.max_restarts, supervised.restart_window),
        (3, 60)
    );
}

// Cross-VM sharing (issue 17): `[share]`, `[[share_group]]`,
// `[limits.share]`, `[vm.share]`, share pools.

/// Two custom kinds every sharing test may name.
const KINDS: &str = r#"
[[kind]]
bit = 8
name = "carveout"
contiguous = true
[[kind]]
bit = 9
name = "scanout"
contiguous = true
"#;

/// VM alpha, with a share pool.
const ALPHA: &str = r#"
[[vm]]
name = "alpha"
socket = "/run/alpha.sock"
[[vm.pool]]
name = "share"
kind = "contig"
size = "32M"
share = true
[[vm.pool]]
kind = "system"
size = "16M"
"#;

/// VM beta, with a window.
const BETA: &str = r#"
[[vm]]
name = "beta"
socket = "/run/beta.sock"
[vm.share]
window = "64M"
"#;

/// Group camera: alpha exports to beta.
const CAMERA: &str = r#"
[[share_group]]
name = "camera"
exporters = ["alpha"]
importers = ["beta"]
"#;

/// The configuration of a file holding `text`, with `more` arguments.
fn config_of(test: &str, text: &str, more: &[&str]) -> Result<Config, Error> {
    let dir = std::env::temp_dir().join(format!("cenalloc-share-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, text).unwrap();
    let mut list = vec!["-c", path.to_str().unwrap()];
    list.extend_from_slice(more);
    let result = Config::try_from(args(&list));
    std::fs::remove_dir_all(&dir).ok();
    result
}

/// The key and reason of the sharing error `text` makes.
fn share_error(test: &str, text: &str) -> (String, String) {
    match config_of(test, text, &[]) {
        Err(Error::Share { key, reason }) => (key, reason),
        other => panic!("{test}: expected a sharing error, got {other:?}"),
    }
}

#[test]
fn a_configuration_without_sharing_is_what_it_was() {
    // No sharing table: no VM shares, no pool is a share pool, and the
    // pools keep the alignment of their kind (not the share default).
    let text = "[[pool]]\nkind = \"contig\"\nsize = \"2M\"\n[[vm]]\nname = \"one\"\nsocket = \"/run/one.sock\"\n";
    let config = config_of("none", text, &["-s", "two=/run/two.sock"]).unwrap();
    assert_eq!(config.share, ShareConfig::default());
    assert!(config.share.groups.is_empty());
    for vm in &config.vms {
        assert_eq!(vm.share, None, "{}", vm.name);
        assert_eq!(vm.window(), None);
        assert!(!config.is_share_member(&vm.name));
        let spec = &vm.device.pool.allocators[0];
        assert!(!spec.share);
        assert_eq!(spec.placement.align, crate::model::PAGE_SIZE);
    }
    // The device of each VM is the one the pools alone make.
    assert_eq!(
        config.vms[0].device,
        config_from_toml("none-device", text).unwrap()
    );
    let plain = Config::try_from(args(&["-s", "/tmp/s"])).unwrap();
    assert_eq!(plain.share, ShareConfig::default());
    assert_eq!(plain.vms[0].share, None);
    // Timeouts alone change nothing for a VM.
    let config = config_of(
        "timeouts-only",
        &format!("[share]\ngrace_ms = 5\n{text}"),
        &[],
    )
    .unwrap();
    assert!(config.share.groups.is_empty());
    assert_eq!(config.vms[0].share, None);
}

#[test]
fn sharing_defaults_are_applied() {
    let config = config_of("defaults", &format!("{ALPHA}{BETA}{CAMERA}"), &[]).unwrap();
    assert_eq!(
        config.share.timeouts,
        ShareTimeouts {
            revoke: Duration::from_millis(1000),
            unmap: Duration::from_millis(2000),
            grace: Duration::from_millis(20),
        }
    );
    let group = config.share.group("camera").unwrap();
    assert_eq!(group.access, ShareAccess::ReadOnly);
    assert_eq!(group.max_importers, 4);
    assert!(group.kind_map.is_empty());
    assert!(group.is_exporter("alpha") && !group.is_importer("alpha"));
    assert!(group.is_importer("beta") && !group.is_exporter("beta"));
    let alpha = config.vm_share("alpha").unwrap();
    assert_eq!(alpha.exporter_groups, ["camera"]);
    assert!(alpha.importer_groups.is_empty());
    assert!(alpha.is_exporter() && !alpha.is_importer());
    assert_eq!(alpha.window, None);
    assert_eq!(alpha.limits, ShareLimits::default());
    assert_eq!(
        alpha.limits,
        ShareLimits {
            max_imports: 16,
            max_import_bytes: 256 << 20,
            max_mappings: 8,
            max_shares: 16,
            max_shared_bytes: 256 << 20,
            max_quarantine_bytes: 64 << 20,
        }
    );
    let beta = config.vm_share("beta").unwrap();
    assert_eq!(beta.importer_groups, ["camera"]);
    assert_eq!(beta.window, Some(64 << 20));
    assert_eq!(config.window("beta"), Some(64 << 20));
    assert_eq!(config.window("alpha"), None);
    assert!(config.is_share_member("alpha") && config.is_share_member("beta"));
    // A share pool is 2 MiB aligned unless it says otherwise.
    let share_pool = &config.vms[0].device.pool.allocators[0];
    assert!(share_pool.share);
    assert_eq!(share_pool.placement.align, 2 << 20);
    assert!(!config.vms[0].device.pool.allocators[1].share);
}

#[test]
fn sharing_tables_take_their_values() {
    let text = format!(
        r#"
[share]
revoke_timeout_ms = 50
unmap_timeout_ms = 60000
grace_ms = 0
[limits.share]
window = "2M"
{KINDS}{ALPHA}{BETA}
[[vm]]
name = "gamma"
socket = "/run/gamma.sock"
[[share_group]]
name = "camera_2-x"
exporters = ["alpha"]
importers = ["beta", "alpha"]
access = "read-write"
max_importers = 1
[share_group.kind_map]
scanout = ["carveout", "scanout"]
carveout = ["carveout"]
"#
    );
    let config = config_of("values", &text, &["-s", "delta=/run/delta.sock"]).unwrap();
    assert_eq!(config.share.timeouts.revoke, Duration::from_millis(50));
    assert_eq!(config.share.timeouts.unmap, Duration::from_secs(60));
    assert_eq!(config.share.timeouts.grace, Duration::ZERO);
    let group = &config.share.groups[0];
    assert_eq!(group.name, "camera_2-x");
    assert_eq!(group.access, ShareAccess::ReadWrite);
    assert_eq!(group.max_importers, 1);
    assert_eq!(
        group.kind_map,
        vec![
            KindMapping {
                importer_kind: "carveout".into(),
                importer_bit: 8,
                exporter_kinds: vec!["carveout".into()],
                exporter_mask: 1 << 8,
            },
            KindMapping {
                importer_kind: "scanout".into(),
                importer_bit: 9,
                exporter_kinds: vec!["carveout".into(), "scanout".into()],
                exporter_mask: 1 << 8 | 1 << 9,
            },
        ]
    );
    // Alpha exports and imports in one group (it never imports its own
    // shares: nothing to check here); its window is every VM's.
    let alpha = config.vm_share("alpha").unwrap();
    assert!(alpha.is_exporter() && alpha.is_importer());
    assert_eq!(alpha.window, Some(2 << 20));
    assert_eq!(config.window("beta"), Some(64 << 20));
    // Gamma ([[vm]]) and delta (--socket-path) are in no group.
    for vm in ["gamma", "delta"] {
        assert!(!config.is_share_member(vm), "{vm}");
        assert_eq!(config.vm_share(vm), None, "{vm}");
        assert_eq!(config.window(vm), None, "{vm}");
    }
    // A member named on the command line gets [limits.share].
    let text = text.replace("[\"beta\", \"alpha\"]", "[\"beta\", \"delta\"]");
    let config = config_of("socket-member", &text, &["-s", "delta=/run/delta.sock"]).unwrap();
    assert_eq!(config.window("delta"), Some(2 << 20));
    assert_eq!(
        config.vm_share("delta").unwrap().importer_groups,
        ["camera_2-x"]
    );
    assert_eq!(config.window("alpha"), None);
}

#[test]
fn sharing_timeouts_out_of_range_are_refused() {
    for (line, key) in [
        ("revoke_timeout_ms = 0", "[share] revoke_timeout_ms"),
        ("revoke_timeout_ms = 60001", "[share] revoke_timeout_ms"),
        ("unmap_timeout_ms = 0", "[share] unmap_timeout_ms"),
        ("grace_ms = 1001", "[share] grace_ms"),
    ] {
        let (got, reason) = share_error("timeouts", &format!("[share]\n{line}\n{ALPHA}"));
        assert_eq!(got, key, "{line}: {reason}");
    }
}

#[test]
fn a_bad_group_name_is_refused() {
    for name in ["", "Camera", "a.b", "sixteen-bytes-xx", "caméra"] {
        let text = format!("{ALPHA}{BETA}{}", CAMERA.replace("camera", name));
        let (key, reason) = share_error("name", &text);
        assert_eq!(key, "[[share_group]] name", "{name:?}");
        assert!(reason.contains("1..=15 bytes"), "{reason}");
    }
    assert!(valid_group_name("fifteen-bytes-x"));
}

#[test]
fn a_duplicate_group_is_refused() {
    let (key, reason) = share_error("duplicate", &format!("{ALPHA}{BETA}{CAMERA}{CAMERA}"));
    assert_eq!(key, "[[share_group]] name");
    assert!(reason.contains("\"camera\" is used twice"), "{reason}");
}

#[test]
fn an_unknown_member_is_refused() {
    for (list, from, to) in [
        ("exporters", "[\"alpha\"]", "[\"zeta\"]"),
        ("importers", "[\"beta\"]", "[\"beta\", \"zeta\"]"),
    ] {
        let text = format!("{ALPHA}{BETA}{}", CAMERA.replace(from, to));
        let (key, reason) = share_error("unknown", &text);
        assert_eq!(key, format!("[[share_group]] \"camera\" {list}"));
        assert!(reason.contains("\"zeta\" is not a VM"), "{reason}");
        assert!(reason.contains("alpha, beta"), "{reason}");
    }
}

#[test]
fn group_members_are_listed_once_and_groups_are_not_empty() {
    for (from, to, list, says) in [
        ("[\"alpha\"]", "[]", "exporters", "names no VM"),
        ("[\"beta\"]", "[]", "importers", "names no VM"),
        (
            "[\"beta\"]",
            "[\"beta\", \"beta\"]",
            "importers",
            "listed twice",
        ),
    ] {
        let text = format!("{ALPHA}{BETA}{}", CAMERA.replace(from, to));
        let (key, reason) = share_error("members", &text);
        assert_eq!(key, format!("[[share_group]] \"camera\" {list}"));
        assert!(reason.contains(says), "{reason}");
    }
    let (key, _) = share_error(
        "max-importers",
        &format!("{ALPHA}{BETA}{CAMERA}max_importers = 0\n"),
    );
    assert_eq!(key, "[[share_group]] \"camera\" max_importers");
    // access is one of two words.
    let error = config_of(
        "access",
        &format!("{ALPHA}{BETA}{CAMERA}access = \"rw\"\n"),
        &[],
    )
    .unwrap_err();
    assert!(matches!(error, Error::ParseConfig { .. }), "{error}");
    assert!(error.to_string().contains("read-only"), "{error}");
}

#[test]
fn an_exporter_without_a_share_pool_is_refused() {
    let alpha = ALPHA.replace("share = true\n", "");
    let (key, reason) = share_error("no-share-pool", &format!("{alpha}{BETA}{CAMERA}"));
    assert_eq!(key, "[[share_group]] \"camera\" exporters");
    assert!(
        reason.contains("VM \"alpha\" has no share pool"),
        "{reason}"
    );
    // The default layout has none either.
    let text = CAMERA.replace("[\"alpha\"]", "[\"plain\"]");
    let result = config_of(
        "default-layout",
        &format!("{BETA}{text}"),
        &["-s", "plain=/run/p.sock"],
    );
    assert!(
        matches!(&result, Err(Error::Share { reason, .. }) if reason.contains("\"plain\" has no share pool")),
        "{result:?}"
    );
}

#[test]
fn a_share_pool_that_is_not_contiguous_is_refused() {
    for (from, to) in [
        ("kind = \"contig\"", "kind = \"system\""),
        (
            "kind = \"contig\"",
            "kind = \"contig\"\nstrategy = \"scatter\"\nkinds = [\"system\"]",
        ),
    ] {
        let alpha = ALPHA.replace(from, to);
        let (key, reason) = share_error("not-contiguous", &format!("{alpha}{BETA}{CAMERA}"));
        assert_eq!(key, "pool \"share\" share", "{to}");
        assert!(reason.contains("must be contiguous"), "{reason}");
        // In a VM of no group too: a share pool is one wherever it is.
        let (key, _) = share_error("not-contiguous-alone", &alpha);
        assert_eq!(key, "pool \"share\" share");
    }
}

#[test]
fn a_bad_share_pool_align_is_refused() {
    for align in ["\"12K\"", "2048", "0"] {
        let alpha = ALPHA.replace("share = true", &format!("share = true\nalign = {align}"));
        let (key, reason) = share_error("align", &format!("{alpha}{BETA}{CAMERA}"));
        assert_eq!(key, "pool \"share\" align", "{align}");
        assert!(
            reason.contains("power of two of at least 4 KiB"),
            "{reason}"
        );
    }
    // A share pool may say its own, 4 KiB included.
    let alpha = ALPHA.replace("share = true", "share = true\nalign = \"4K\"");
    let config = config_of("align-4k", &format!("{alpha}{BETA}{CAMERA}"), &[]).unwrap();
    assert_eq!(
        config.vms[0].device.pool.allocators[0].placement.align,
        4096
    );
    // A share pool the default align does not divide is refused by the
    // pool size check, which names the alignment.
    let alpha = ALPHA.replace("size = \"32M\"", "size = \"1M\"");
    let result = config_of("align-size", &format!("{alpha}{BETA}{CAMERA}"), &[]);
    assert!(
        matches!(
            &result,
            Err(Error::PoolSize {
                align: 0x200000,
                ..
            })
        ),
        "{result:?}"
    );
}

#[test]
fn an_importer_without_a_window_is_refused() {
    let beta = BETA.replace("window = \"64M\"\n", "");
    let (key, reason) = share_error("no-window", &format!("{ALPHA}{beta}{CAMERA}"));
    assert_eq!(key, "[[share_group]] \"camera\" importers");
    assert!(reason.contains("VM \"beta\" has no window"), "{reason}");
}

#[test]
fn a_window_that_is_not_a_power_of_two_or_out_of_range_is_refused() {
    for window in ["\"3M\"", "\"1M\"", "\"2G\"", "0", "\"96M\""] {
        let beta = BETA.replace("\"64M\"", window);
        let (key, reason) = share_error("window", &format!("{ALPHA}{beta}{CAMERA}"));
        assert_eq!(key, "[[vm]] \"beta\" [vm.share] window", "{window}");
        assert!(
            reason.contains("power of two from 2 MiB to 1 GiB"),
            "{reason}"
        );
        // The same in [limits.share].
        let text = format!("[limits.share]\nwindow = {window}\n{ALPHA}");
        let (key, _) = share_error("window-every", &text);
        assert_eq!(key, "[limits.share] window", "{window}");
    }
    for window in ["\"2M\"", "\"1G\""] {
        let beta = BETA.replace("\"64M\"", window);
        assert!(config_of("window-ok", &format!("{ALPHA}{beta}{CAMERA}"), &[]).is_ok());
    }
}

#[test]
fn a_window_of_a_vm_that_imports_nothing_is_refused_in_its_own_table() {
    // Alpha's own [vm.share] window: alpha imports in no group.
    let alpha = format!("{ALPHA}[vm.share]\nwindow = \"64M\"\n");
    let (key, reason) = share_error("exporter-window", &format!("{alpha}{BETA}{CAMERA}"));
    assert_eq!(key, "[[vm]] \"alpha\" [vm.share] window");
    assert!(reason.contains("imports in no [[share_group]]"), "{reason}");
    // Every VM's window is the importers' only.
    let text = format!("[limits.share]\nwindow = \"4M\"\n{ALPHA}{BETA}{CAMERA}");
    let config = config_of("every-window", &text, &[]).unwrap();
    assert_eq!(config.window("alpha"), None);
    assert_eq!(config.window("beta"), Some(64 << 20));
}

#[test]
fn max_mappings_0_is_refused() {
    let beta = format!("{BETA}max_mappings = 0\n");
    let (key, reason) = share_error("mappings-0", &format!("{ALPHA}{beta}{CAMERA}"));
    assert_eq!(key, "[[vm]] \"beta\" [vm.share] max_mappings");
    assert!(reason.contains("must be 1..=64"), "{reason}");
}

#[test]
fn max_mappings_65_is_refused() {
    let text = format!("[limits.share]\nmax_mappings = 65\n{ALPHA}{BETA}{CAMERA}");
    let (key, reason) = share_error("mappings-65", &text);
    assert_eq!(key, "[limits.share] max_mappings");
    assert!(reason.contains("must be 1..=64"), "{reason}");
    let text = format!("[limits.share]\nmax_mappings = 64\n{ALPHA}{BETA}{CAMERA}");
    let config = config_of("mappings-64", &text, &[]).unwrap();
    assert_eq!(config.vm_share("beta").unwrap().limits.max_mappings, 64);
}

#[test]
fn an_unknown_kind_in_kind_map_is_refused() {
    for (line, key) in [
        // The importer's side.
        (
            "nosuch = [\"carveout\"]",
            "[[share_group]] \"camera\" kind_map",
        ),
        // The exporter's side.
        (
            "scanout = [\"carveout\", \"nosuch\"]",
            "[[share_group]] \"camera\" kind_map scanout",
        ),
        // Well-known kinds mean the same in every VM: no mapping.
        (
            "contig = [\"carveout\"]",
            "[[share_group]] \"camera\" kind_map",
        ),
        (
            "scanout = [\"system\"]",
            "[[share_group]] \"camera\" kind_map scanout",
        ),
        (
            "scanout = []",
            "[[share_group]] \"camera\" kind_map scanout",
        ),
    ] {
        let text = format!("{KINDS}{ALPHA}{BETA}{CAMERA}[share_group.kind_map]\n{line}\n");
        let (got, reason) = share_error("kind-map", &text);
        assert_eq!(got, key, "{line}: {reason}");
    }
    let text =
        format!("{KINDS}{ALPHA}{BETA}{CAMERA}[share_group.kind_map]\nnosuch = [\"carveout\"]\n");
    let (_, reason) = share_error("kind-map-reason", &text);
    assert!(
        reason.contains("\"nosuch\" is not a custom kind"),
        "{reason}"
    );
}

#[test]
fn vm_limits_share_is_not_a_vm_s_sharing_table() {
    let beta = format!("{BETA}[vm.limits.share]\nmax_imports = 2\n");
    let (key, reason) = share_error("vm-limits-share", &format!("{ALPHA}{beta}{CAMERA}"));
    assert_eq!(key, "[[vm]] \"beta\" [vm.limits.share]");
    assert!(reason.contains("[vm.share]"), "{reason}");
}

#[test]
fn unknown_sharing_keys_are_refused_with_their_name() {
    for (text, key) in [
        ("[share]\nrevoke_ms = 5\n".to_string(), "revoke_ms"),
        (format!("{CAMERA}acess = \"read-only\"\n"), "acess"),
        ("[limits.share]\nwindows = \"2M\"\n".to_string(), "windows"),
        (format!("{BETA}max_import = 1\n"), "max_import"),
        (
            "[[pool]]\nsize = \"2M\"\nshared = true\n".to_string(),
            "shared",
        ),
    ] {
        let error = config_from_toml("unknown-share", &text).unwrap_err();
        assert!(
            matches!(error, Error::ParseConfig { .. }),
            "{text}: {error}"
        );
        assert!(error.to_string().contains(key), "{text}: {error}");
    }
}

/// `key = every` in `[limits.share]`, `key = own` in beta's `[vm.share]`:
/// beta gets `own`, gamma (an importer too) `every`, and with neither
/// both get `default`. `limit` reads the key of a [`VmShare`].
fn inherited_and_overridden(
    key: &str,
    every: &str,
    own: &str,
    values: [u64; 3],
    limit: fn(&VmShare) -> u64,
) {
    let [every_value, own_value, default] = values;
    let gamma =
        "[[vm]]\nname = \"gamma\"\nsocket = \"/run/gamma.sock\"\n[vm.share]\nwindow = \"2M\"\n";
    let camera = CAMERA.replace("[\"beta\"]", "[\"beta\", \"gamma\"]");
    let with = |every_line: &str, own_line: &str| {
        let text =
            format!("[limits.share]\n{every_line}\n{ALPHA}{BETA}{own_line}\n{gamma}{camera}");
        config_of(&format!("inherit-{key}"), &text, &[]).unwrap()
    };
    let config = with(&format!("{key} = {every}"), &format!("{key} = {own}"));
    assert_eq!(
        limit(config.vm_share("beta").unwrap()),
        own_value,
        "{key}: beta's own"
    );
    assert_eq!(
        limit(config.vm_share("gamma").unwrap()),
        every_value,
        "{key}: every VM's"
    );
    assert_eq!(
        limit(config.vm_share("alpha").unwrap()),
        every_value,
        "{key}: the exporter's"
    );
    let config = with(&format!("{key} = {every}"), "");
    assert_eq!(
        limit(config.vm_share("beta").unwrap()),
        every_value,
        "{key}: inherited"
    );
    let config = with("", "");
    assert_eq!(
        limit(config.vm_share("alpha").unwrap()),
        default,
        "{key}: default"
    );
}

#[test]
fn limit_window_is_inherited_and_overridden() {
    // Beta's own window is BETA's; [limits.share] gives alpha none (it
    // imports nothing) and gamma its own.
    let text = format!(
        "[limits.share]\nwindow = \"8M\"\n{ALPHA}{BETA}[[vm]]\nname = \"gamma\"\nsocket = \"/run/gamma.sock\"\n{}",
        CAMERA.replace("[\"beta\"]", "[\"beta\", \"gamma\"]")
    );
    let config = config_of("inherit-window", &text, &[]).unwrap();
    assert_eq!(config.window("beta"), Some(64 << 20));
    assert_eq!(config.window("gamma"), Some(8 << 20));
    assert_eq!(config.window("alpha"), None);
}

/// The window reaches the importer's device (its shared memory region);
/// the exporter's device has none, as a VM in no group.
#[test]
fn the_window_is_the_importers_device_region() {
    let text = format!("{ALPHA}{BETA}{CAMERA}");
    let config = config_of("device-window", &text, &[]).unwrap();
    let device = |name: &str| {
        let vm = config.vms.iter().find(|vm| vm.name == name).unwrap();
        vm.device.window
    };
    assert_eq!(device("beta"), Some(64 << 20));
    assert_eq!(device("alpha"), None);
}

#[test]
fn limit_max_imports_is_inherited_and_overridden() {
    inherited_and_overridden("max_imports", "3", "5", [3, 5, 16], |s| {
        s.limits.max_imports.into()
    });
}

#[test]
fn limit_max_import_bytes_is_inherited_and_overridden() {
    inherited_and_overridden(
        "max_import_bytes",
        "\"1G\"",
        "\"8M\"",
        [1 << 30, 8 << 20, 256 << 20],
        |s| s.limits.max_import_bytes,
    );
}

#[test]
fn limit_max_mappings_is_inherited_and_overridden() {
    inherited_and_overridden("max_mappings", "1", "64", [1, 64, 8], |s| {
        s.limits.max_mappings.into()
    });
}

#[test]
fn limit_max_shares_is_inherited_and_overridden() {
    inherited_and_overridden("max_shares", "0", "100", [0, 100, 16], |s| {
        s.limits.max_shares.into()
    });
}

#[test]
fn limit_max_shared_bytes_is_inherited_and_overridden() {
    inherited_and_overridden(
        "max_shared_bytes",
        "4096",
        "\"2G\"",
        [4096, 2 << 30, 256 << 20],
        |s| s.limits.max_shared_bytes,
    );
}

#[test]
fn limit_max_quarantine_bytes_is_inherited_and_overridden() {
    inherited_and_overridden(
        "max_quarantine_bytes",
        "0",
        "\"128M\"",
        [0, 128 << 20, 64 << 20],
        |s| s.limits.max_quarantine_bytes,
    );
}

#[test]
fn print_config_shows_the_share_section() {
    let config = config_of(
        "print",
        &format!("{KINDS}{ALPHA}{BETA}{CAMERA}[share_group.kind_map]\nscanout = [\"carveout\"]\n"),
        &[],
    )
    .unwrap();
    let printed: toml::Value = toml::from_str(&config.describe()).unwrap();
    let (alpha, beta) = (&printed["vm"][0], &printed["vm"][1]);
    assert_eq!(alpha["name"].as_str(), Some("alpha"));
    assert_eq!(alpha["socket"].as_str(), Some("/run/alpha.sock"));
    assert_eq!(alpha["pool"][0]["share"].as_bool(), Some(true));
    assert_eq!(alpha["pool"][0]["align"].as_str(), Some("2M"));
    assert_eq!(alpha["pool"][1].get("share"), None);
    assert_eq!(
        alpha["share"]["exporter_groups"][0].as_str(),
        Some("camera")
    );
    assert_eq!(alpha["share"].get("window"), None);
    assert_eq!(beta["share"]["window"].as_str(), Some("64M"));
    assert_eq!(beta["share"]["max_mappings"].as_integer(), Some(8));
    assert_eq!(beta["share"]["max_quarantine_bytes"].as_str(), Some("64M"));
    assert_eq!(
        printed["share"]["revoke_timeout_ms"].as_integer(),
        Some(1000)
    );
    assert_eq!(printed["share"]["grace_ms"].as_integer(), Some(20));
    let group = &printed["share_group"][0];
    assert_eq!(group["name"].as_str(), Some("camera"));
    assert_eq!(group["access"].as_str(), Some("read-only"));
    assert_eq!(group["max_importers"].as_integer(), Some(4));
    assert_eq!(group["importers"][0].as_str(), Some("beta"));
    assert_eq!(group["kind_map"]["scanout"][0].as_str(), Some("carveout"));
    // Without a group: no share section, no VM's [vm.share].
    let config = Config::try_from(args(&["-s", "one=/tmp/one.sock"])).unwrap();
    let text = config.describe();
    assert!(text.contains("no [[share_group]]"), "{text}");
    let printed: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(printed.get("share"), None);
    assert_eq!(printed.get("share_group"), None);
    assert_eq!(printed["vm"][0].get("share"), None);
    assert_eq!(printed["vm"][0]["pool"].as_array().unwrap().len(), 4);
}
