//! Helpers for the root-only tests: skip checks, a pair of network namespaces joined by a veth
//! (deleted on drop), running code inside a namespace, and sending raw Ethernet frames.
//!
//! All traffic the tests make stays on the veth pair between the two namespaces created here.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use o7s_ebpf::{Counters, Error, SteerProgram};
use o7s_testkit::netns::VethPair;
pub use o7s_testkit::netns::{in_netns, run};

/// Returns false, after printing why, when the test cannot run here (not root, or no `ip`).
pub fn can_run(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping {test}: needs root (BPF, network namespaces)");
        return false;
    }
    if !o7s_ebpf::is_built() {
        eprintln!("skipping {test}: built with O7S_EBPF_SKIP=1, no XDP object");
        return false;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        eprintln!("skipping {test}: iproute2 `ip` not found (run `cargo xtask setup`)");
        return false;
    }
    true
}

/// Loads the program, or returns `None` after printing why when the kernel refuses BPF.
pub fn load_or_skip(test: &str, ethertype: u16) -> Option<SteerProgram> {
    match SteerProgram::load(ethertype) {
        Ok(steer) => Some(steer),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EPERM | libc::ENOSYS | libc::EACCES)
            ) =>
        {
            eprintln!("skipping {test}: the kernel refuses BPF: {e}");
            None
        }
        Err(e) => panic!("loading the steering program: {e}"),
    }
}

/// Two fresh network namespaces `a` and `b` joined by a veth pair (`veth_a` in `a`, `veth_b` in
/// `b`), both up, IPv6 off (so the kernel sends nothing by itself). Dropping it deletes both
/// namespaces, which also destroys the veth pair.
pub struct NetnsPair {
    pub ns_a: String,
    pub ns_b: String,
    pub veth_a: String,
    pub veth_b: String,
    _pair: VethPair,
}

/// 10.199.0.1 (in `a`) and 10.199.0.2 (in `b`), used only by tests that give the pair addresses.
pub const ADDR_A: &str = "10.199.0.1";
pub const ADDR_B: &str = "10.199.0.2";

impl NetnsPair {
    /// Creates the pair with the given MTU on both ends.
    pub fn new(mtu: u32) -> Self {
        // Names `o7s-ebpf-<pid>-<n>{a,b}` and, at most 15 bytes, `o7e<pid><n>{a,b}`.
        let pair = VethPair::new("o7s-ebpf", "o7e", mtu);
        Self {
            ns_a: pair.ns[0].clone(),
            ns_b: pair.ns[1].clone(),
            veth_a: pair.veth[0].clone(),
            veth_b: pair.veth[1].clone(),
            _pair: pair,
        }
    }

    /// Gives the two ends their IPv4 addresses ([`ADDR_A`], [`ADDR_B`], /24).
    pub fn with_addresses(mut self) -> Self {
        self._pair = self._pair.with_addresses([ADDR_A, ADDR_B]);
        self
    }

    /// The ifindex of `veth_a` inside `ns_a`.
    pub fn ifindex_a(&self) -> u32 {
        let veth = self.veth_a.clone();
        in_netns(&self.ns_a, move || {
            nix::net::if_::if_nametoindex(veth.as_str())
                .unwrap_or_else(|e| panic!("if_nametoindex({veth}): {e}"))
        })
    }

    /// `ip -d link show` of `veth_a`.
    pub fn link_details_a(&self) -> String {
        let output = run(&[
            "ip",
            "-n",
            &self.ns_a,
            "-d",
            "link",
            "show",
            "dev",
            &self.veth_a,
        ]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Whether any XDP program (native, generic or offloaded) is attached to `veth_a`.
    pub fn xdp_attached_a(&self) -> bool {
        let details = self.link_details_a();
        details.contains("prog/xdp") || details.contains(" xdp")
    }

    /// Waits up to `timeout` for `veth_a` to have no XDP program; returns whether it got there.
    pub fn wait_xdp_detached_a(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.xdp_attached_a() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `count` minimum-size broadcast frames of `ethertype` out of `veth_b`, so they
    /// arrive on `veth_a`.
    pub fn send_from_b(&self, ethertype: u16, count: usize) {
        let veth = self.veth_b.clone();
        in_netns(&self.ns_b, move || send_frames(&veth, ethertype, count));
    }
}

/// Sends `count` 60-byte frames (broadcast destination, locally administered source) of
/// `ethertype` on interface `ifname` of the calling thread's namespace, with an AF_PACKET socket.
pub fn send_frames(ifname: &str, ethertype: u16, count: usize) {
    let ifindex = nix::net::if_::if_nametoindex(ifname)
        .unwrap_or_else(|e| panic!("if_nametoindex({ifname}): {e}"));
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        raw >= 0,
        "socket(AF_PACKET): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };

    let mut frame = [0u8; 60];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&[0x02, 0x00, 0x5e, 0x00, 0x07, 0x05]);
    frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
    frame[14..20].copy_from_slice(b"o7s-t\0");

    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ethertype.to_be();
    addr.sll_ifindex = i32::try_from(ifindex).expect("ifindex fits in i32");
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);

    for i in 0..count {
        // SAFETY: `frame` and `addr` are live for the call and their lengths are passed.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(
            sent,
            frame.len() as isize,
            "sendto frame {i} on {ifname}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Polls the counters until `done` holds or `timeout` passes; returns the last reading.
pub fn wait_counters(
    steer: &SteerProgram,
    timeout: Duration,
    done: impl Fn(&Counters) -> bool,
) -> Counters {
    let deadline = Instant::now() + timeout;
    loop {
        let counters = steer
            .counters()
            .unwrap_or_else(|e: Error| panic!("reading counters: {e}"));
        if done(&counters) || Instant::now() > deadline {
            return counters;
        }
        thread::sleep(Duration::from_millis(20));
    }
}
