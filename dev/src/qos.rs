//! The predefined QoS specifications, with the reference implementation's values.

use o7s_proto::irm::QosSpec;

/// Peer timeout of the predefined specifications, ms.
pub const DEFAULT_PEER_TIMEOUT: u32 = 120_000;

fn spec(
    delay: u32,
    bandwidth: u64,
    availability: u32,
    loss: u32,
    ber: u32,
    in_order: u32,
    max_gap: u32,
) -> QosSpec {
    QosSpec {
        delay,
        bandwidth,
        availability,
        loss,
        ber,
        in_order,
        max_gap,
        timeout: DEFAULT_PEER_TIMEOUT,
    }
}

/// No guarantees, no FRCT.
pub fn raw() -> QosSpec {
    spec(u32::MAX, 0, 0, 1, 1, 0, u32::MAX)
}

/// As [`raw`], without bit errors tolerated.
pub fn raw_no_errors() -> QosSpec {
    spec(u32::MAX, 0, 0, 1, 0, 0, u32::MAX)
}

/// In order, no retransmission.
pub fn best_effort() -> QosSpec {
    spec(u32::MAX, 0, 0, 1, 0, 1, u32::MAX)
}

/// The video cube.
pub fn video() -> QosSpec {
    spec(100, u64::MAX, 3, 1, 0, 1, 100)
}

/// The voice cube.
pub fn voice() -> QosSpec {
    spec(50, 100_000, 5, 1, 0, 1, 50)
}

/// Reliable: in order with retransmission.
pub fn data() -> QosSpec {
    spec(1000, 0, 0, 0, 0, 1, 2000)
}

/// A predefined specification by the name the tools use (`raw`, `best`, `video`, `voice`,
/// `data`).
pub fn by_name(name: &str) -> Option<QosSpec> {
    Some(match name {
        "raw" => raw(),
        "raw_no_errors" => raw_no_errors(),
        "best" | "best_effort" => best_effort(),
        "video" => video(),
        "voice" => voice(),
        "data" => data(),
        _ => return None,
    })
}
