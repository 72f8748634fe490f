//! Test vectors and fixtures shared by every crate's tests (feature `testing`): frames captured
//! from the reference implementation, embedded at compile time (no I/O), and the values of the
//! captured exchanges.

use crate::eth_mgmt::QosSpec;

/// Hash length of the captured layer (SHA3-256).
pub const HASH_LEN: usize = 32;

/// SHA3-256 of "oping.srv", the name every captured exchange looks up.
pub const OPING_SRV_HASH: &str = "2585c39091acfdf5ac6fa01d3d8b2c88577d4c63650125d6ff88de7aa195382a";

/// The QoS `oping` asks for by default (raw); `-q best` differs only in `in_order`.
pub const RAW_QOS: QosSpec = QosSpec {
    loss: 1,
    bandwidth: 0,
    ber: 1,
    max_gap: u32::MAX,
    delay: u32::MAX,
    timeout: 120_000,
    in_order: 0,
    availability: 0,
};

/// Every captured eth-dix frame, by name (capture and frame number; see each file's comment).
pub static VECTORS: &[(&str, &str)] = &[
    ("alloc-05", include_str!("../tests/vectors/alloc-05.hex")),
    ("alloc-06", include_str!("../tests/vectors/alloc-06.hex")),
    ("alloc-07", include_str!("../tests/vectors/alloc-07.hex")),
    ("alloc-08", include_str!("../tests/vectors/alloc-08.hex")),
    ("alloc-09", include_str!("../tests/vectors/alloc-09.hex")),
    ("alloc-10", include_str!("../tests/vectors/alloc-10.hex")),
    ("alloc-11", include_str!("../tests/vectors/alloc-11.hex")),
    ("alloc-12", include_str!("../tests/vectors/alloc-12.hex")),
    ("alloc-13", include_str!("../tests/vectors/alloc-13.hex")),
    ("alloc-14", include_str!("../tests/vectors/alloc-14.hex")),
    ("alloc-15", include_str!("../tests/vectors/alloc-15.hex")),
    ("alloc-16", include_str!("../tests/vectors/alloc-16.hex")),
    ("alloc-17", include_str!("../tests/vectors/alloc-17.hex")),
    ("alloc-18", include_str!("../tests/vectors/alloc-18.hex")),
    (
        "qos-best-01",
        include_str!("../tests/vectors/qos-best-01.hex"),
    ),
    (
        "qos-best-02",
        include_str!("../tests/vectors/qos-best-02.hex"),
    ),
    (
        "qos-best-03",
        include_str!("../tests/vectors/qos-best-03.hex"),
    ),
    (
        "qos-best-04",
        include_str!("../tests/vectors/qos-best-04.hex"),
    ),
    (
        "qos-best-05",
        include_str!("../tests/vectors/qos-best-05.hex"),
    ),
    (
        "qos-best-06",
        include_str!("../tests/vectors/qos-best-06.hex"),
    ),
    (
        "qos-best-07",
        include_str!("../tests/vectors/qos-best-07.hex"),
    ),
    (
        "qos-best-08",
        include_str!("../tests/vectors/qos-best-08.hex"),
    ),
    (
        "qos-best-11",
        include_str!("../tests/vectors/qos-best-11.hex"),
    ),
    (
        "qos-best-12",
        include_str!("../tests/vectors/qos-best-12.hex"),
    ),
    (
        "qos-best-13",
        include_str!("../tests/vectors/qos-best-13.hex"),
    ),
];

/// Decodes a `.hex` vector: `#` starts a comment, whitespace is ignored. Panics on bad hex
/// (test fixtures only).
pub fn decode_hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.bytes().filter(|b| !b.is_ascii_whitespace()))
        .collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits
        .chunks(2)
        .map(|p| {
            let s = std::str::from_utf8(p).unwrap_or("??");
            u8::from_str_radix(s, 16).unwrap_or_else(|_| panic!("bad hex {s:?}"))
        })
        .collect()
}

/// One captured frame by name (e.g. `alloc-07`). Panics if there is no such vector.
pub fn vector(name: &str) -> Vec<u8> {
    let (_, text) = VECTORS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no test vector {name:?}"));
    decode_hex(text)
}

/// Every captured frame, sorted by name.
pub fn all_vectors() -> Vec<(String, Vec<u8>)> {
    VECTORS
        .iter()
        .map(|(n, t)| ((*n).to_owned(), decode_hex(t)))
        .collect()
}

#[cfg(test)]
mod test {
    #[test]
    fn every_vector_file_is_embedded() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors");
        let files = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        assert_eq!(files, super::VECTORS.len(), "add new .hex files to VECTORS");
    }
}
