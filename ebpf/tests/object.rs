//! The embedded BPF object, checked without loading it (no root needed): a little-endian ELF64
//! for `EM_BPF` with the program section, the BTF maps, the license, and the symbols `lib.rs`
//! looks up by name.

use o7s_ebpf::{MAP_NAMES, PROGRAM_NAME, PROGRAM_SECTION, object};

const EM_BPF: u16 = 247;
const SHT_SYMTAB: u32 = 2;

struct Section<'a> {
    name: String,
    kind: u32,
    link: u32,
    data: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    let bytes = b.get(at..at + 2).expect("u16 within the object");
    u16::from_le_bytes([bytes[0], bytes[1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let bytes = b.get(at..at + 4).expect("u32 within the object");
    u32::from_le_bytes(bytes.try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> usize {
    let bytes = b.get(at..at + 8).expect("u64 within the object");
    usize::try_from(u64::from_le_bytes(bytes.try_into().expect("8 bytes"))).expect("fits usize")
}

/// The NUL-terminated string at `offset` in a string table.
fn c_str(table: &[u8], offset: usize) -> String {
    let rest = table.get(offset..).expect("string offset within its table");
    let end = rest.iter().position(|&b| b == 0).expect("NUL-terminated");
    String::from_utf8_lossy(&rest[..end]).into_owned()
}

fn sections(elf: &[u8]) -> Vec<Section<'_>> {
    assert_eq!(elf.get(..4), Some(&b"\x7fELF"[..]), "ELF magic");
    assert_eq!(elf[4], 2, "ELFCLASS64");
    assert_eq!(elf[5], 1, "ELFDATA2LSB (bpfel)");
    assert_eq!(u16_at(elf, 0x12), EM_BPF, "e_machine");
    let shoff = u64_at(elf, 0x28);
    let shentsize = usize::from(u16_at(elf, 0x3a));
    let shnum = usize::from(u16_at(elf, 0x3c));
    let shstrndx = usize::from(u16_at(elf, 0x3e));
    assert_eq!(shentsize, 64, "ELF64 section header size");

    let raw: Vec<(u32, u32, u32, &[u8])> = (0..shnum)
        .map(|i| {
            let h = shoff + i * shentsize;
            let (offset, size) = (u64_at(elf, h + 0x18), u64_at(elf, h + 0x20));
            let kind = u32_at(elf, h + 4);
            // SHT_NOBITS sections have no bytes in the file.
            let data = if kind == 8 {
                &[][..]
            } else {
                elf.get(offset..offset + size)
                    .expect("section within the object")
            };
            (u32_at(elf, h), kind, u32_at(elf, h + 0x28), data)
        })
        .collect();
    let names = raw.get(shstrndx).expect("shstrndx names a section").3;
    raw.iter()
        .map(|&(name, kind, link, data)| Section {
            name: c_str(names, name as usize),
            kind,
            link,
            data,
        })
        .collect()
}

fn symbols(sections: &[Section<'_>]) -> Vec<String> {
    let symtab = sections
        .iter()
        .find(|s| s.kind == SHT_SYMTAB)
        .expect("a symbol table");
    let strtab = sections[symtab.link as usize].data;
    symtab
        .data
        .chunks_exact(24)
        .map(|sym| c_str(strtab, u32_at(sym, 0) as usize))
        .collect()
}

#[test]
fn embedded_object_is_a_bpf_elf_with_our_sections() {
    if !o7s_ebpf::is_built() {
        eprintln!("skipping: built with O7S_EBPF_SKIP=1, the embedded object is an empty stub");
        return;
    }
    let elf = object();
    assert!(elf.len() > 64, "object is only {} bytes", elf.len());
    assert_eq!(elf.as_ptr().align_offset(8), 0, "object is 8-aligned");

    let sections = sections(elf);
    let names: Vec<&str> = sections.iter().map(|s| s.name.as_str()).collect();
    for wanted in [PROGRAM_SECTION, ".maps", "license", ".BTF", ".BTF.ext"] {
        assert!(names.contains(&wanted), "no section {wanted} in {names:?}");
    }
    let program = sections
        .iter()
        .find(|s| s.name == PROGRAM_SECTION)
        .expect("program section");
    assert!(
        !program.data.is_empty() && program.data.len() % 8 == 0,
        "BPF instructions are 8 bytes each"
    );
    let license = sections
        .iter()
        .find(|s| s.name == "license")
        .expect("license section");
    assert_eq!(license.data, b"GPL\0");

    let symbols = symbols(&sections);
    for wanted in MAP_NAMES.iter().chain([&PROGRAM_NAME]) {
        assert!(
            symbols.iter().any(|s| s == wanted),
            "no symbol {wanted} in {symbols:?}"
        );
    }
}
