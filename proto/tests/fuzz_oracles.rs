//! Runs the fuzz oracles (`o7s_proto::fuzzing`) under `cargo test`: over the fuzz seeds, over
//! every captured vector and mutations of it, and over arbitrary bytes.

mod util;

use std::path::PathBuf;

use o7s_proto::fuzzing;
use proptest::prelude::*;
use util::all_vectors;

/// The seed corpus of one fuzz target, `proto/fuzz/seeds/<target>/*`.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

#[test]
fn seeds_are_valid_frames() {
    // A seed the oracle rejects early would only exercise the error path.
    for seed in seeds("dix").iter().chain(&seeds("eth_mgmt")) {
        util::reemit_frame(seed, util::HASH_LEN).unwrap();
    }
}

#[test]
fn dix_oracle_over_seeds_and_vectors() {
    for seed in seeds("dix") {
        fuzzing::dix(&seed);
    }
    for (_, bytes) in all_vectors() {
        fuzzing::dix(&bytes);
    }
}

#[test]
fn eth_mgmt_oracle_over_seeds_and_vectors() {
    for seed in seeds("eth_mgmt") {
        fuzzing::eth_mgmt(&seed);
    }
    for (_, bytes) in all_vectors() {
        fuzzing::eth_mgmt(&bytes);
    }
}

#[test]
fn oap_oracle_over_seeds() {
    let seeds = seeds("oap");
    assert!(seeds.len() >= 4);
    for seed in seeds {
        // The seeds are valid headers: the oracle's full path runs.
        let (&sel, bytes) = seed.split_first().unwrap();
        let parsed = if sel % 4 == 0 {
            o7s_proto::oap::Repr::parse_request(bytes)
        } else {
            o7s_proto::oap::Repr::parse_response(bytes, 0)
        };
        assert!(parsed.is_ok(), "{parsed:?}");
        fuzzing::oap(&seed);
    }
}

fn vectors() -> Vec<Vec<u8>> {
    all_vectors().into_iter().map(|(_, b)| b).collect()
}

proptest! {
    #[test]
    fn oracles_over_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        fuzzing::dix(&bytes);
        fuzzing::eth_mgmt(&bytes);
        fuzzing::oap(&bytes);
    }

    #[test]
    fn oracles_over_mutated_vectors(
        frame in prop::sample::select(vectors()),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
        pad in 0usize..48,
    ) {
        let mut frame = frame;
        for (at, byte) in edits {
            let i = at.index(frame.len());
            frame[i] = byte;
        }
        frame.truncate(cut.index(frame.len() + 1));
        frame.resize(frame.len() + pad, 0);
        fuzzing::dix(&frame);
        fuzzing::eth_mgmt(&frame);
    }
}
