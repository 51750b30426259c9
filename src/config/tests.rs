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
