//! The data path does not allocate: `classify_rx` (data and every drop reason it decides)
//! and `write_header` are run under a counting global allocator.
//!
//! This binary holds a single test, and only the test thread's allocations count: the code
//! under test runs on it alone, and the harness's main thread may allocate meanwhile (its first
//! wait for the test can come after counting started, on a loaded machine).

mod util;

use o7s_testkit::CountingAlloc;
use o7s_xdp_ipcp::RxAction;
use util::{Pair, RAW_QOS};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

#[test]
fn data_path_does_not_allocate() {
    let mut p = Pair::new();
    let (ea, eb) = p.allocate(&[7; 32], RAW_QOS);
    let mut frame = vec![0u8; 18 + 100];
    let mut unknown = frame.clone();
    let mut wrong_type = frame.clone();
    let runt = [0u8; 10];

    ALLOC.start_this_thread();
    let mut delivered = 0;
    for _ in 0..1000 {
        let header: &mut [u8; 18] = (&mut frame[..18]).try_into().unwrap();
        p.a.write_header(ea, 100, header).unwrap();
        if let RxAction::Data { eid, .. } = p.b.classify_rx(&frame) {
            assert_eq!(eid, eb);
            delivered += 1;
        }
        unknown.copy_from_slice(&frame);
        unknown[14..16].copy_from_slice(&999u16.to_be_bytes());
        assert!(matches!(p.b.classify_rx(&unknown), RxAction::Drop(_)));
        wrong_type.copy_from_slice(&frame);
        wrong_type[12] = 0x08;
        assert!(matches!(p.b.classify_rx(&wrong_type), RxAction::Drop(_)));
        assert!(matches!(p.b.classify_rx(&runt), RxAction::Drop(_)));
        assert!(p.a.check_sdu_len(100_000).is_err());
    }
    let allocs = ALLOC.stop();
    assert_eq!(delivered, 1000);
    assert_eq!(allocs, 0, "the data path allocated");
}
