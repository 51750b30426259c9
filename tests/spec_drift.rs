//! Keeps the device specification (`docs/virtio-dmabuf.md`) and the wire
//! definition (`guest-driver/cenalloc_proto.h`) together: every constant,
//! enum, opcode, event type, struct and field of the header must be in the
//! specification, with the same value, number or field order. A protocol
//! addition that is not documented fails `cargo test`.

use std::collections::BTreeMap;
use std::path::PathBuf;

fn read(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The header without its comments.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        match rest[start..].find("*/") {
            Some(end) => rest = &rest[start + end + 2..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

/// Parses a C integer expression of the header or of the spec: decimal,
/// hexadecimal, `1 << n`, with optional parentheses and `u`/`ull` suffixes.
fn parse_value(expr: &str) -> Option<u64> {
    let expr = expr
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .trim();
    if let Some((a, b)) = expr.split_once("<<") {
        return Some(parse_value(a)? << parse_value(b)?);
    }
    let digits = expr.trim_end_matches(['u', 'U', 'l', 'L']);
    match digits.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => digits.parse().ok(),
    }
}

struct Header {
    defines: BTreeMap<String, u64>,
    enums: BTreeMap<String, Vec<(String, u64)>>,
    structs: BTreeMap<String, Vec<String>>,
    functions: Vec<String>,
}

fn parse_header(text: &str) -> Header {
    let text = strip_comments(text);
    let mut header = Header {
        defines: BTreeMap::new(),
        enums: BTreeMap::new(),
        structs: BTreeMap::new(),
        functions: Vec::new(),
    };
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if let Some(def) = line.strip_prefix("#define") {
            let mut parts = def.trim().splitn(2, char::is_whitespace);
            let name = parts.next().unwrap_or_default();
            let value = parts.next().unwrap_or_default();
            if name == "CENALLOC_PROTO_H" {
                continue;
            }
            let v = parse_value(value)
                .unwrap_or_else(|| panic!("cannot read the value of {name}: {value:?}"));
            header.defines.insert(name.to_string(), v);
        } else if let Some(rest) = line.strip_prefix("enum ") {
            let name = rest.trim_end_matches('{').trim().to_string();
            let mut members = Vec::new();
            for member in lines.by_ref() {
                let member = member.trim();
                if member.starts_with('}') {
                    break;
                }
                if let Some((m, v)) = member.trim_end_matches(',').split_once('=') {
                    let value = parse_value(v).expect("enum value");
                    members.push((m.trim().to_string(), value));
                }
            }
            header.enums.insert(name, members);
        } else if let Some(rest) = line.strip_prefix("struct ") {
            if !rest.ends_with('{') {
                continue;
            }
            let name = rest.trim_end_matches('{').trim().to_string();
            let fields = struct_fields(lines.by_ref());
            header.structs.insert(name, fields);
        } else if line.starts_with("static inline") {
            if let Some(name) = line
                .split('(')
                .next()
                .and_then(|s| s.split_whitespace().last())
            {
                header.functions.push(name.to_string());
            }
        }
    }
    header
}

/// Field names of a struct body, up to its closing `};`.
fn struct_fields<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut fields = Vec::new();
    for line in lines {
        let line = line.trim();
        if line.starts_with('}') {
            break;
        }
        let Some(decl) = line.strip_suffix(';') else {
            continue;
        };
        let name = decl.split('[').next().unwrap_or(decl);
        if let Some(field) = name.split_whitespace().last() {
            fields.push(field.to_string());
        }
    }
    fields
}

/// The structs of the spec's ```c blocks.
fn spec_structs(spec: &str) -> BTreeMap<String, Vec<String>> {
    let mut structs = BTreeMap::new();
    let mut in_c = false;
    let mut lines = spec.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_c = trimmed == "```c";
            continue;
        }
        if !in_c {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("struct ") {
            if rest.ends_with('{') {
                let name = rest.trim_end_matches('{').trim().to_string();
                structs.insert(name, struct_fields(lines.by_ref()));
            }
        }
    }
    structs
}

/// Rows `| a | b | ...` of the spec's tables, cells trimmed, backticks off.
fn spec_rows(spec: &str) -> Vec<Vec<String>> {
    spec.lines()
        .filter(|l| l.trim_start().starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect()
        })
        .collect()
}

fn mentions(spec: &str, name: &str) -> bool {
    spec.contains(&format!("`{name}`")) || spec.contains(&format!("`{name}("))
}

#[test]
fn every_constant_is_specified_with_its_value() {
    let header = parse_header(&read("guest-driver/cenalloc_proto.h"));
    let spec = read("docs/virtio-dmabuf.md");
    let rows = spec_rows(&spec);
    assert!(header.defines.len() > 30, "header parse found too little");
    let mut missing = Vec::new();
    for (name, value) in &header.defines {
        let row = rows.iter().find(|r| r.len() >= 2 && &r[0] == name);
        match row {
            None => missing.push(format!("{name} (no row in the constants table)")),
            Some(r) => {
                let spec_value = parse_value(&r[1]);
                if spec_value != Some(*value) {
                    missing.push(format!("{name}: header {value:#x}, spec {:?}", r[1]));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/virtio-dmabuf.md lacks or misstates: {missing:#?}"
    );
}

#[test]
fn every_enum_member_is_specified_with_its_number() {
    let header = parse_header(&read("guest-driver/cenalloc_proto.h"));
    let spec = read("docs/virtio-dmabuf.md");
    let rows = spec_rows(&spec);
    assert!(header.enums.contains_key("cenalloc_opcode"));
    let mut missing = Vec::new();
    for (name, members) in &header.enums {
        if !spec.contains(&format!("`enum {name}`")) {
            missing.push(format!("enum {name}"));
        }
        for (member, value) in members {
            let found = rows
                .iter()
                .any(|r| r.len() >= 2 && parse_value(&r[0]) == Some(*value) && &r[1] == member);
            if !found {
                missing.push(format!(
                    "{member} = {value} (no table row `| {value} | {member} |`)"
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/virtio-dmabuf.md lacks: {missing:#?}"
    );
}

#[test]
fn every_struct_is_specified_with_its_fields_in_order() {
    let header = parse_header(&read("guest-driver/cenalloc_proto.h"));
    let spec = read("docs/virtio-dmabuf.md");
    let documented = spec_structs(&spec);
    assert!(header.structs.len() > 20, "header parse found too little");
    let mut wrong = Vec::new();
    for (name, fields) in &header.structs {
        match documented.get(name) {
            None => wrong.push(format!("struct {name} (no ```c block)")),
            Some(doc) if doc != fields => {
                wrong.push(format!("struct {name}: header {fields:?}, spec {doc:?}"))
            }
            Some(_) => {}
        }
    }
    for name in documented.keys() {
        if !header.structs.contains_key(name) {
            wrong.push(format!(
                "struct {name} is in the spec but not in the header"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/virtio-dmabuf.md differs: {wrong:#?}"
    );
}

#[test]
fn every_function_of_the_header_is_mentioned() {
    let text = read("guest-driver/cenalloc_proto.h");
    let header = parse_header(&text);
    let spec = read("docs/virtio-dmabuf.md");
    // Every function the header defines was parsed (a `static
    // __always_inline` or a name on the next line would otherwise leave
    // the loop below with nothing to check).
    let declared = text
        .lines()
        .filter(|line| line.starts_with("static ") && line.contains('('))
        .count();
    assert!(!header.functions.is_empty(), "no function parsed");
    assert_eq!(
        header.functions.len(),
        declared,
        "parsed {:?} of {declared} static functions",
        header.functions
    );
    for f in &header.functions {
        assert!(
            mentions(&spec, f),
            "docs/virtio-dmabuf.md does not mention {f}()"
        );
    }
}

#[test]
fn the_checker_reads_what_it_must() {
    assert_eq!(parse_value("(1u << 3)"), Some(8));
    assert_eq!(parse_value("0x00000100000001b3ull"), Some(0x100000001b3));
    assert_eq!(parse_value("1 << 0"), Some(1));
    assert_eq!(parse_value("37"), Some(37));
    let h = parse_header("/* x */\n#define A_B\t(1u << 2) /* c */\nstruct s {\n\t__le32 a;\n\tchar n[4];\n};\nenum e {\n\tX = 3,\n};\n");
    assert_eq!(h.defines.get("A_B"), Some(&4));
    assert_eq!(
        h.structs.get("s"),
        Some(&vec!["a".to_string(), "n".to_string()])
    );
    assert_eq!(h.enums.get("e"), Some(&vec![("X".to_string(), 3)]));
}
