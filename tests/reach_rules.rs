//! The rules by which the guest driver narrows an importer's mask to what
//! its device can address (`guest-driver/cenalloc_reach_rules.h`, used by
//! `cenalloc_reach.c`), compiled on the host and checked case by case: the
//! IOMMU case cannot run in the CI guest, which has no vIOMMU.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

const SYSTEM: u32 = 1;
const CONTIG: u32 = 2;
const DMA32: u32 = 4;
const CONTIG_DMA32: u32 = 8;
const CUSTOM: u32 = 0x100;
const ANY: u32 = u32::MAX;
const PLACE_CONTIG: u32 = 1;
const PLACE_DMA32: u32 = 2;

/// The default pool of cenallocd: system, dma32, contig, contig32.
const POOL: [(u32, u32); 4] = [
    (SYSTEM, 0),
    (SYSTEM | DMA32, PLACE_DMA32),
    (SYSTEM | CONTIG, PLACE_CONTIG),
    (
        SYSTEM | CONTIG | DMA32 | CONTIG_DMA32,
        PLACE_CONTIG | PLACE_DMA32,
    ),
];

/// A device: IOMMU, DMA limit covers all RAM, limit at least 4 GiB.
#[derive(Clone, Copy)]
struct Dev {
    iommu: bool,
    full: bool,
    covers_4g: bool,
}

const BITS64: Dev = Dev {
    iommu: false,
    full: true,
    covers_4g: true,
};
const BITS32_HIGH_RAM: Dev = Dev {
    iommu: false,
    full: false,
    covers_4g: true,
};
const BITS24_HIGH_RAM: Dev = Dev {
    iommu: false,
    full: false,
    covers_4g: false,
};
const IOMMU_32: Dev = Dev {
    iommu: true,
    full: true,
    covers_4g: true,
};

struct Case {
    what: &'static str,
    pool: &'static [(u32, u32)],
    dev: Dev,
    requested: u32,
    physical: bool,
    /// The effective mask: wanted & reach.
    expected: u32,
}

fn cases() -> Vec<Case> {
    let below = ANY & !(SYSTEM | CONTIG); // kinds of the default pool below 4 GiB
    vec![
        Case {
            what: "64-bit device keeps its mask",
            pool: &POOL,
            dev: BITS64,
            requested: CONTIG,
            physical: false,
            expected: CONTIG,
        },
        Case {
            what: "64-bit device, any",
            pool: &POOL,
            dev: BITS64,
            requested: ANY,
            physical: false,
            expected: ANY,
        },
        Case {
            what: "32-bit device, any: kinds below 4 GiB",
            pool: &POOL,
            dev: BITS32_HIGH_RAM,
            requested: ANY,
            physical: false,
            expected: below,
        },
        Case {
            what: "32-bit device, CONTIG stands for CONTIG_DMA32",
            pool: &POOL,
            dev: BITS32_HIGH_RAM,
            requested: CONTIG,
            physical: false,
            expected: CONTIG_DMA32,
        },
        Case {
            what: "32-bit device, CONTIG|CONTIG_DMA32",
            pool: &POOL,
            dev: BITS32_HIGH_RAM,
            requested: CONTIG | CONTIG_DMA32,
            physical: false,
            expected: CONTIG_DMA32,
        },
        Case {
            what: "32-bit device, SYSTEM stands for DMA32",
            pool: &POOL,
            dev: BITS32_HIGH_RAM,
            requested: SYSTEM,
            physical: false,
            expected: DMA32,
        },
        Case {
            what: "32-bit device, custom kind served above: nothing",
            pool: &[(CUSTOM, 0), (DMA32, PLACE_DMA32)],
            dev: BITS32_HIGH_RAM,
            requested: CUSTOM,
            physical: false,
            expected: 0,
        },
        Case {
            what: "32-bit device, custom kind served below: kept",
            pool: &[(CUSTOM, PLACE_DMA32), (SYSTEM, 0)],
            dev: BITS32_HIGH_RAM,
            requested: CUSTOM,
            physical: false,
            expected: CUSTOM,
        },
        Case {
            what: "24-bit device: nothing is known to fit",
            pool: &POOL,
            dev: BITS24_HIGH_RAM,
            requested: ANY,
            physical: false,
            expected: 0,
        },
        Case {
            what: "IOMMU, SGT importer: CONTIG admits any well-known kind",
            pool: &POOL,
            dev: IOMMU_32,
            requested: CONTIG,
            physical: false,
            expected: SYSTEM | CONTIG | DMA32 | CONTIG_DMA32,
        },
        Case {
            what: "IOMMU, physical importer: CONTIG stays CONTIG",
            pool: &POOL,
            dev: IOMMU_32,
            requested: CONTIG,
            physical: true,
            expected: CONTIG,
        },
        Case {
            what: "IOMMU: custom kinds are never widened",
            pool: &POOL,
            dev: IOMMU_32,
            requested: CUSTOM,
            physical: false,
            expected: CUSTOM,
        },
    ]
}

fn guest_driver() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("guest-driver")
}

#[test]
fn device_reach_rules() {
    let cases = cases();
    let mut c = String::from(
        "#include <stdbool.h>\n#include <stdint.h>\n#include <stdio.h>\ntypedef uint32_t u32;\n\
         #include \"cenalloc_reach_rules.h\"\nint main(void)\n{\n",
    );
    for (i, case) in cases.iter().enumerate() {
        let kinds: Vec<String> = case.pool.iter().map(|p| format!("{}u", p.0)).collect();
        let places: Vec<String> = case.pool.iter().map(|p| format!("{}u", p.1)).collect();
        writeln!(
            c,
            "\t{{ const u32 k[] = {{ {} }}, p[] = {{ {} }};\n\
             \t  u32 below = cenalloc_rule_kinds_below_4g(k, p, {});\n\
             \t  u32 reach = cenalloc_rule_reach({}, {}, {}, below);\n\
             \t  printf(\"{i} %u\\n\", cenalloc_rule_wanted({}u, {}, {}, {}) & reach); }}",
            kinds.join(", "),
            places.join(", "),
            case.pool.len(),
            case.dev.iommu,
            case.dev.full,
            case.dev.covers_4g,
            case.requested,
            case.dev.iommu,
            case.dev.full,
            case.physical,
        )
        .unwrap();
    }
    c.push_str("\treturn 0;\n}\n");

    let dir = std::env::temp_dir().join(format!("cenalloc-reach-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, exe) = (dir.join("reach.c"), dir.join("reach"));
    std::fs::write(&src, c).unwrap();
    let out = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src)
        .arg("-I")
        .arg(guest_driver())
        .output()
        .expect("running cc");
    assert!(
        out.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().expect("running the rules");
    std::fs::remove_dir_all(&dir).ok();
    assert!(run.status.success());
    let text = String::from_utf8(run.stdout).unwrap();
    let got: Vec<u32> = text
        .lines()
        .map(|l| l.split_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert_eq!(got.len(), cases.len());
    let wrong: Vec<String> = cases
        .iter()
        .zip(&got)
        .filter(|(case, got)| case.expected != **got)
        .map(|(case, got)| format!("{}: got {got:#x}, expected {:#x}", case.what, case.expected))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}
