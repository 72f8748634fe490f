//! End to end: frames of the steered EtherType land in an AF_XDP socket (xdpilone, copy mode on
//! veth) registered with [`SteerProgram::register_socket`]; other frames still reach the kernel.
//!
//! Needs root; without it the test prints why and returns.

mod util;

use std::{
    ffi::CString,
    num::NonZeroU32,
    ptr::NonNull,
    time::{Duration, Instant},
};

use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, munmap};
use o7s_ebpf::{DEFAULT_ETHERTYPE, Mode, Verdict};
use util::{NetnsPair, can_run, in_netns, load_or_skip, wait_counters};
use xdpilone::{IfInfo, Socket, SocketConfig, Umem, UmemConfig};

const FRAMES: u32 = 64;
const FRAME_SIZE: u32 = 4096;
const XDP_BIND_NEED_WAKEUP: u16 = 1 << 3;
const OTHER_ETHERTYPE: u16 = 0x88b5;
const WAIT: Duration = Duration::from_secs(5);

#[test]
fn matching_frames_reach_the_registered_socket() {
    let test = "matching_frames_reach_the_registered_socket";
    if !can_run(test) {
        return;
    }
    let Some(mut steer) = load_or_skip(test, DEFAULT_ETHERTYPE) else {
        return;
    };
    let pair = NetnsPair::new(1500);
    let (ns_a, veth_a) = (pair.ns_a.clone(), pair.veth_a.clone());
    let (ns_b, veth_b) = (pair.ns_b.clone(), pair.veth_b.clone());

    // Everything that binds the socket to veth_a runs in ns_a; ns_b sends from its own thread.
    in_netns(&ns_a, move || {
        assert_eq!(
            steer.attach(veth_a.as_str(), Mode::Native).expect("attach"),
            Mode::Native
        );

        let len = std::num::NonZeroUsize::new((FRAMES * FRAME_SIZE) as usize).expect("non-zero");
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it. It is unmapped
        // below, after every xdpilone object using it has been dropped.
        let area = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_POPULATE,
            )
        }
        .expect("mmap UMEM");
        let region = NonNull::slice_from_raw_parts(area.cast::<u8>(), len.get());

        let config = UmemConfig {
            fill_size: FRAMES,
            complete_size: FRAMES,
            frame_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
        };
        // SAFETY: `region` is page-aligned (mmap), FRAMES * FRAME_SIZE bytes long, and outlives
        // the Umem (dropped before munmap below).
        let umem = unsafe { Umem::new(config, region) }.expect("Umem::new");
        let mut info = IfInfo::invalid();
        let name = CString::new(veth_a.as_str()).expect("no NUL in name");
        info.from_name(&name).expect("IfInfo::from_name");
        info.set_queue(0);
        let socket = Socket::with_shared(&info, &umem).expect("Socket::with_shared");
        let mut device = umem.fq_cq(&socket).expect("fq_cq");
        let user = umem
            .rx_tx(
                &socket,
                &SocketConfig {
                    rx_size: NonZeroU32::new(FRAMES),
                    tx_size: None,
                    bind_flags: XDP_BIND_NEED_WAKEUP,
                },
            )
            .expect("rx_tx");
        let mut rx = user.map_rx().expect("map_rx");
        umem.bind(&user).expect("bind");
        {
            let mut fill = device.fill(FRAMES);
            let filled = fill.insert((0..u64::from(FRAMES)).map(|i| i * u64::from(FRAME_SIZE)));
            assert_eq!(filled, FRAMES);
            fill.commit();
        }

        steer
            .register_socket(0, user.as_raw_fd())
            .expect("register_socket");

        let sender = in_netns_sender(&ns_b, &veth_b);
        sender(DEFAULT_ETHERTYPE, 4);
        sender(OTHER_ETHERTYPE, 3);

        // Read the 4 frames from the RX ring.
        let mut got = Vec::new();
        let deadline = Instant::now() + WAIT;
        while got.len() < 4 && Instant::now() < deadline {
            let mut batch = rx.receive(FRAMES);
            while let Some(desc) = batch.read() {
                let start = usize::try_from(desc.addr).expect("addr fits usize");
                let end = start + desc.len as usize;
                assert!(end <= len.get(), "descriptor outside the UMEM: {desc:?}");
                // SAFETY: the kernel wrote this frame into the UMEM and handed it to us through
                // the RX ring (acquire in `receive`); the range is checked to lie in `region`.
                let frame = unsafe { &region.as_ref()[start..end] };
                got.push(frame.to_vec());
            }
            batch.release();
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(got.len(), 4, "frames received on the AF_XDP socket");
        for frame in &got {
            assert_eq!(frame.len(), 60);
            assert_eq!(frame[12..14], DEFAULT_ETHERTYPE.to_be_bytes());
            assert_eq!(&frame[14..20], b"o7s-t\0");
        }

        let c = wait_counters(&steer, WAIT, |c| c.passed >= 3);
        assert_eq!(c.matched, 4, "{c:?}");
        assert_eq!(c.redirect_failed, 0, "a socket took them: {c:?}");
        assert!(c.passed >= 3, "{c:?}");

        // Without the socket, our frames go to the kernel again.
        steer.unregister(0).expect("unregister");
        sender(DEFAULT_ETHERTYPE, 2);
        let d = wait_counters(&steer, WAIT, |d| d.redirect_failed >= 2);
        assert_eq!(d.matched, 6, "{d:?}");
        assert_eq!(d.redirect_failed, 2, "{d:?}");
        assert_eq!(rx.available(), 0, "nothing more on the socket");

        // BPF_PROG_TEST_RUN sees the registered socket too (the test run reports the verdict
        // without delivering the frame).
        steer
            .register_socket(0, user.as_raw_fd())
            .expect("register_socket again");
        let mut frame = [0u8; 60];
        frame[12..14].copy_from_slice(&DEFAULT_ETHERTYPE.to_be_bytes());
        assert_eq!(steer.test_run(&frame).expect("test_run"), Verdict::Redirect);

        drop(steer);
        drop((rx, user, device, socket, umem));
        // SAFETY: `area` came from mmap above with this length, and no xdpilone object that
        // referenced it is alive any more.
        unsafe { munmap(area, len.get()) }.expect("munmap UMEM");
    });
    assert!(pair.wait_xdp_detached_a(WAIT), "{}", pair.link_details_a());
}

/// A function that sends frames from `veth` inside `ns` (each call runs on its own thread).
fn in_netns_sender(ns: &str, veth: &str) -> impl Fn(u16, usize) {
    let (ns, veth) = (ns.to_owned(), veth.to_owned());
    move |ethertype, count| {
        let veth = veth.clone();
        in_netns(&ns, move || util::send_frames(&veth, ethertype, count));
    }
}
