//! Properties: no input bytes make the layer panic, and every drop is counted exactly once.

mod util;

use o7s_proto::MacAddr;
use o7s_proto::dix::{self, HEADER_LEN};
use o7s_proto::eth_mgmt;
use o7s_xdp_ipcp::{Instant, Layer, RxAction};
use proptest::prelude::*;
use util::{A, B, Pair, RAW_QOS};

const H1: [u8; 32] = [0x11; 32];

/// A and B with flows in every state: B has 64 allocated (to A), 65 arrived (from A) and 66
/// requested (to A, never answered); A has 64 allocated and 65 requested.
fn busy_pair() -> Pair {
    let mut p = Pair::new();
    p.allocate(&H1, RAW_QOS);
    p.a.flow_alloc(&H1, RAW_QOS, b"").unwrap();
    p.pump(); // B: 65 arrived
    p.a.register(&[0x33; 32]).unwrap();
    p.b.query(&[0x33; 32], p.now).unwrap();
    p.pump();
    p.b.flow_alloc(&[0x33; 32], RAW_QOS, b"").unwrap(); // B: 66 requested, not delivered
    p.b.poll_transmit().unwrap();
    p.events_a();
    p.events_b();
    p
}

/// Feeds `frame` to `layer` and checks the drop counters moved by exactly one iff it was dropped.
fn feed(layer: &mut Layer, frame: &[u8]) {
    let before = layer.stats().dropped_total();
    let action = layer.handle_rx(frame, Instant::from_millis(1));
    let after = layer.stats().dropped_total();
    match action {
        RxAction::Drop(_) => assert_eq!(after, before + 1),
        RxAction::Data { payload, .. } | RxAction::Mgmt { payload } => {
            assert_eq!(after, before);
            assert!(payload.start == HEADER_LEN && payload.end <= frame.len());
        }
    }
    while layer.poll_transmit().is_some() {}
    while layer.poll_event().is_some() {}
}

fn mac() -> impl Strategy<Value = MacAddr> {
    prop_oneof![
        Just(A),
        Just(B),
        Just(MacAddr::BROADCAST),
        any::<[u8; 6]>().prop_map(MacAddr)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut p = busy_pair();
        feed(&mut p.b, &bytes);
        let _ = p.b.classify_rx(&bytes);
        let _ = p.b.handle_mgmt(&bytes, Instant::ZERO);
    }

    #[test]
    fn plausible_frames_never_panic(
        dst in mac(),
        src in mac(),
        eid in prop_oneof![Just(0u16), 60u16..70, any::<u16>()],
        code in 0u8..6,
        seid in prop_oneof![Just(0u16), 64u16..67, any::<u16>()],
        len_delta in -3i32..3,
        hash_first in prop_oneof![Just(0x11u8), any::<u8>()],
        body in proptest::collection::vec(any::<u8>(), 0..120),
        padding in 0usize..40,
    ) {
        let mut p = busy_pair();
        // A management-looking payload: 39-byte fixed part with a plausible code, a hash that
        // is sometimes registered, then arbitrary bytes.
        let mut payload = vec![0u8; eth_mgmt::HEADER_LEN];
        payload[..2].copy_from_slice(&seid.to_be_bytes());
        payload[eth_mgmt::field::CODE] = code;
        payload.push(hash_first);
        payload.extend_from_slice(&[0x11; 31]);
        payload.extend_from_slice(&body);
        let truncate = body.len().min(3);
        payload.truncate(payload.len() - truncate);
        let len = i32::try_from(payload.len()).unwrap() + len_delta;
        let len = u16::try_from(len.max(0)).unwrap();
        let mut frame = vec![0u8; HEADER_LEN];
        dix::Repr { dst_addr: dst, src_addr: src, ethertype: dix::DEFAULT_ETHERTYPE, eid, payload_len: len }
            .emit_header((&mut frame[..HEADER_LEN]).try_into().unwrap());
        frame.extend_from_slice(&payload);
        frame.resize(frame.len() + padding, 0);
        feed(&mut p.b, &frame);
        feed(&mut p.a, &frame);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// The fuzz oracle (`o7s_xdp_ipcp::fuzzing::layer`, also run by `xdp-ipcp/fuzz`): scripts
    /// of frames, management messages, upper-layer calls and time steps keep every invariant.
    #[test]
    fn layer_oracle_holds_on_arbitrary_scripts(
        script in proptest::collection::vec(any::<u8>(), 0..2000)
    ) {
        o7s_xdp_ipcp::fuzzing::layer(&script);
    }
}

/// The oracle on a few hand-made scripts that reach deep paths: a data frame from the
/// allocated flow, a FLOW_REPLY completing the requested flow, the eid table overflowing.
#[test]
fn layer_oracle_scripted() {
    use o7s_xdp_ipcp::DropReason;
    use o7s_xdp_ipcp::fuzzing::layer;
    let set_up = layer(&[]);
    // Set-up 0 (plain). op 5: data from A's flow 64, 3 bytes.
    let s = layer(&[0, 5, 0, 3, b'a', b'b', b'c']);
    assert_eq!(s.data_rx, set_up.data_rx + 1);
    // op 3: management from A to B, hash choice 2 (A's name), no OAP, FLOW_REPLY (3) with
    // seid choice 1 (64 + 0) and deid choice 1 (64 + 2 = 66), response choice 0 (success),
    // no mutation: completes B's requested flow 66.
    let s = layer(&[0, 3, 1, 0, 2, 0, 3, 1, 0, 1, 2, 0, 3]);
    assert_eq!(s.mgmt_rx[1], set_up.mgmt_rx[1] + 1);
    assert_eq!(s.dropped_total(), set_up.dropped_total());
    // Set-up 1 (crowded). op 6: 5 FLOW_REQs take the 2 free eids, then 3 are refused; then
    // time passes.
    let s = layer(&[1, 6, 5, 9, 0x10, 0]);
    assert_eq!(
        s.dropped(DropReason::NoEid),
        5 - o7s_xdp_ipcp::fuzzing::CROWDED_FREE as u64
    );
}
