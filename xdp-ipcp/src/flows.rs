//! Endpoint ids and the flow table.
//!
//! An eid is the receiving IPCP's endpoint id of an N+1 flow: the value peers put in the DIX
//! `eid` field of data frames to us. As the reference's fds, eids are 64..4095; 0 is the
//! management eid and 1..63 are never handed out. The lowest free eid is allocated first, so
//! the first flow of each side gets 64 (as in the captured exchanges) and freed eids are reused.

use o7s_proto::MacAddr;
use o7s_proto::eth_mgmt::QosSpec;

/// The lowest eid handed out to a flow.
pub const EID_MIN: u16 = 64;
/// One past the highest eid handed out to a flow.
pub const EID_END: u16 = 4096;

const WORDS: usize = EID_END as usize / 64;

/// A bitmap of the eids in use.
#[derive(Debug, Clone)]
pub struct EidAllocator {
    used: [u64; WORDS],
}

impl Default for EidAllocator {
    fn default() -> Self {
        // eids below EID_MIN are never free: word 0 covers exactly 0..64.
        let mut used = [0u64; WORDS];
        used[0] = u64::MAX;
        EidAllocator { used }
    }
}

impl EidAllocator {
    /// Takes the lowest free eid, or `None` when all 4032 are in use.
    pub fn alloc(&mut self) -> Option<u16> {
        for (i, word) in self.used.iter_mut().enumerate() {
            if *word != u64::MAX {
                let bit = word.trailing_ones();
                *word |= 1 << bit;
                // i < 64 and bit < 64, so this is < 4096.
                return u16::try_from(i * 64 + bit as usize).ok();
            }
        }
        None
    }

    /// Frees `eid`; returns whether it was allocated.
    pub fn free(&mut self, eid: u16) -> bool {
        if !(EID_MIN..EID_END).contains(&eid) {
            return false;
        }
        let (w, b) = (usize::from(eid / 64), eid % 64);
        let was = self.used[w] & (1 << b) != 0;
        self.used[w] &= !(1 << b);
        was
    }

    /// Whether `eid` is allocated.
    #[must_use]
    pub fn is_allocated(&self, eid: u16) -> bool {
        (EID_MIN..EID_END).contains(&eid)
            && self.used[usize::from(eid / 64)] & (1 << (eid % 64)) != 0
    }
}

/// Where a flow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowState {
    /// We sent a FLOW_REQ to `remote_mac`; waiting for its FLOW_REPLY.
    Requested,
    /// A FLOW_REQ arrived; waiting for the upper layer to accept or refuse it.
    Arrived,
    /// Allocated: data flows both ways.
    Allocated,
}

/// Per-flow data counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Data frames received for this flow.
    pub rx_packets: u64,
    /// SDU bytes received.
    pub rx_bytes: u64,
    /// Data frames for which a header was written.
    pub tx_packets: u64,
    /// SDU bytes sent.
    pub tx_bytes: u64,
    /// Data frames for this eid that never reached the upper layer: refused by the layer
    /// (flow not allocated yet, wrong source MAC; not in `rx_packets`) or dropped above it
    /// after being counted in `rx_packets` (flow ring full, no ring bound).
    pub rx_dropped: u64,
}

/// One N+1 flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Where the flow stands.
    pub state: FlowState,
    /// The peer IPCP's MAC address.
    pub remote_mac: MacAddr,
    /// The peer's eid for this flow (our data frames carry it); 0 until the peer told us.
    pub remote_eid: u16,
    /// The QoS of the request (transported, not enforced).
    pub qos: QosSpec,
    /// Data counters.
    pub stats: FlowStats,
}

/// The flow table, indexed directly by eid (no hashing, no allocation on lookup).
#[derive(Debug, Clone)]
pub struct FlowTable {
    eids: EidAllocator,
    flows: Box<[Option<Flow>]>,
    count: usize,
}

impl Default for FlowTable {
    fn default() -> Self {
        FlowTable {
            eids: EidAllocator::default(),
            flows: vec![None; usize::from(EID_END)].into_boxed_slice(),
            count: 0,
        }
    }
}

impl FlowTable {
    /// Allocates an eid for `flow`, or `None` when none is free.
    pub fn insert(&mut self, flow: Flow) -> Option<u16> {
        let eid = self.eids.alloc()?;
        self.flows[usize::from(eid)] = Some(flow);
        self.count += 1;
        Some(eid)
    }

    /// Removes the flow of `eid` and frees the eid.
    pub fn remove(&mut self, eid: u16) -> Option<Flow> {
        let flow = self.flows.get_mut(usize::from(eid))?.take()?;
        self.eids.free(eid);
        self.count -= 1;
        Some(flow)
    }

    /// The flow of `eid`.
    #[must_use]
    pub fn get(&self, eid: u16) -> Option<&Flow> {
        self.flows.get(usize::from(eid))?.as_ref()
    }

    /// The flow of `eid`, writable.
    pub fn get_mut(&mut self, eid: u16) -> Option<&mut Flow> {
        self.flows.get_mut(usize::from(eid))?.as_mut()
    }

    /// Number of flows in any state.
    #[must_use]
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there is no flow.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Every flow with its eid, lowest eid first.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &Flow)> + '_ {
        self.flows
            .iter()
            .enumerate()
            .filter_map(|(eid, flow)| Some((u16::try_from(eid).ok()?, flow.as_ref()?)))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn eids_start_at_64_and_are_reused() {
        let mut a = EidAllocator::default();
        assert_eq!(a.alloc(), Some(64));
        assert_eq!(a.alloc(), Some(65));
        assert_eq!(a.alloc(), Some(66));
        assert!(a.free(65));
        assert!(!a.free(65));
        assert!(!a.free(0));
        assert!(!a.free(63));
        assert!(!a.free(4096));
        assert_eq!(a.alloc(), Some(65));
        assert!(a.is_allocated(64));
        assert!(!a.is_allocated(67));
    }

    #[test]
    fn eids_run_out_at_4095() {
        let mut a = EidAllocator::default();
        let all: Vec<u16> = core::iter::from_fn(|| a.alloc()).collect();
        assert_eq!(all.len(), usize::from(EID_END - EID_MIN));
        assert_eq!(all.first(), Some(&64));
        assert_eq!(all.last(), Some(&4095));
        assert!(a.free(1000));
        assert_eq!(a.alloc(), Some(1000));
        assert_eq!(a.alloc(), None);
    }

    #[test]
    fn table_insert_remove() {
        let mut t = FlowTable::default();
        let flow = Flow {
            state: FlowState::Requested,
            remote_mac: MacAddr::default(),
            remote_eid: 0,
            qos: QosSpec::default(),
            stats: FlowStats::default(),
        };
        assert_eq!(t.insert(flow.clone()), Some(64));
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(64), Some(&flow));
        assert!(t.get(65).is_none());
        assert!(t.get(u16::MAX).is_none());
        assert_eq!(t.remove(64), Some(flow));
        assert!(t.remove(64).is_none());
        assert!(t.is_empty());
    }
}
