//! The IRM control protocol: what processes, IPCPs and the `irm` tool say to the IRMd over its
//! Unix socket.
//!
//! This protocol never leaves the host, so it is ours (not the reference's `irm_msg`). Every
//! message is an [`Envelope`]: a correlation id chosen by the sender and either a [`Request`] or
//! a [`Response`]. A response carries the id of the request it answers, so one connection can
//! hold many requests in flight and the IRMd may answer them out of order.
//!
//! Messages are protobuf (prost structs written by hand, no `.proto` file). Enumerations travel
//! as `i32` and keep unknown values; the receiver validates them (e.g. with
//! `LbPolicy::try_from(v)`).
//!
//! # Framing
//!
//! On the stream socket each envelope is a frame: its length as a little-endian `u32`, then the
//! envelope's bytes. A frame of more than [`MAX_FRAME`] bytes is refused on both sides:
//! [`Codec::encode`] returns [`FrameError::TooLong`], and the sans-IO [`FrameDecoder`] reports it
//! as soon as it has read the length prefix, before buffering anything of the body.
//!
//! ```
//! use o7s_proto::irm::{Codec, CreateName, Envelope, FrameDecoder, LbPolicy, Request};
//!
//! let request = Request::from(CreateName { name: "oping".into(), lb: LbPolicy::Spillover.into() });
//! let bytes = Codec::encode_to_vec(&Envelope::request(7, request.clone()))?;
//!
//! // The bytes may arrive in any chunks.
//! let mut decoder = FrameDecoder::new();
//! let (first, second) = bytes.split_at(3);
//! assert_eq!(decoder.decode(&mut &first[..])?, None);
//! let envelope = decoder.decode(&mut &second[..])?.expect("a whole frame");
//! assert_eq!(envelope, Envelope::request(7, request));
//! # Ok::<(), o7s_proto::irm::FrameError>(())
//! ```

use prost::Message as _;

/// Bytes of the length prefix in front of every frame.
pub const LEN_PREFIX: usize = 4;

/// The largest envelope accepted, in bytes (not counting the length prefix).
pub const MAX_FRAME: usize = 64 * 1024;

/// Longest name (of a name, an IPCP or a layer) the IRMd accepts, as in the reference.
pub const MAX_NAME_LEN: usize = 255;

// ------------------------------------------------------------------------------------------
// Enumerations
// ------------------------------------------------------------------------------------------

/// Kind of an IPC process (same numbering as the reference's `ipcp_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum IpcpType {
    /// `ipcpd-local`: flows between processes of this host.
    Local = 0,
    /// `ipcpd-unicast`: a normal (recursive) layer.
    Unicast = 1,
    /// `ipcpd-broadcast`.
    Broadcast = 2,
    /// `ipcpd-eth-llc`: Ethernet with 802.2 LLC.
    EthLlc = 3,
    /// `ipcpd-eth-dix`: Ethernet DIX, the XDP IPCP.
    EthDix = 4,
    /// `ipcpd-udp4`.
    Udp4 = 5,
    /// `ipcpd-udp6`.
    Udp6 = 6,
}

/// Directory hash algorithm of a layer (same numbering as the reference).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum HashAlgo {
    /// SHA3-224.
    Sha3_224 = 0,
    /// SHA3-256 (the default of most layers).
    Sha3_256 = 1,
    /// SHA3-384.
    Sha3_384 = 2,
    /// SHA3-512.
    Sha3_512 = 3,
    /// MD5 (forced for UDP layers).
    Md5 = 5,
}

/// How a name picks among the processes waiting to accept a flow for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum LbPolicy {
    /// Newly accepting processes queue at the tail.
    RoundRobin = 0,
    /// The most recently ready process keeps getting flows (default for implicit names).
    Spillover = 1,
}

/// Which backend an Ethernet IPCP uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum EthMode {
    /// AF_XDP where it attaches, AF_PACKET otherwise.
    Auto = 0,
    /// AF_XDP only: fail if XDP cannot attach.
    Xdp = 1,
    /// AF_PACKET only.
    Packet = 2,
    /// AF_XDP with the program in the driver (native XDP) only.
    Native = 3,
    /// AF_XDP with the program in the core stack (generic XDP) only.
    Generic = 4,
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ErrorCode {
    /// A code this build does not know (never sent).
    Unspecified = 0,
    /// The envelope or request could not be understood (undecodable, no body, wrong kind).
    BadRequest = 1,
    /// The IRMd does not implement this (yet).
    NotSupported = 2,
    /// The name, IPCP, program, process or flow does not exist.
    NotFound = 3,
    /// It exists already, in a way that conflicts with the request.
    AlreadyExists = 4,
    /// A field is out of range or malformed.
    InvalidArgument = 5,
    /// The sender may not do this.
    PermissionDenied = 6,
    /// The request's deadline passed.
    TimedOut = 7,
    /// Out of some resource (flow ids, pool space, in-flight requests).
    Busy = 8,
    /// The IRMd failed internally; the message says how.
    Internal = 9,
    /// Authentication failed (the reference's `EAUTH`): a flow allocation's OAP header was
    /// malformed, stale, replayed, or its response did not match the request.
    Auth = 10,
    /// A direct local flow between processes whose packets live in different pools (a
    /// per-user pool and the shared pool, or two users' pools): no ring can be shared by both
    /// ends. An IPCP can join them, copying between the pools (register the name in a local
    /// IPCP's layer). o7s only; the reference falls back to its IPCP path silently.
    PoolMismatch = 11,
}

// ------------------------------------------------------------------------------------------
// Shared structures
// ------------------------------------------------------------------------------------------

/// A QoS cube, with the reference's fields.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct QosSpec {
    /// Largest acceptable delay, ms.
    #[prost(uint32, tag = "1")]
    pub delay: u32,
    /// Bandwidth, bit/s.
    #[prost(uint64, tag = "2")]
    pub bandwidth: u64,
    /// Availability class.
    #[prost(uint32, tag = "3")]
    pub availability: u32,
    /// Acceptable loss.
    #[prost(uint32, tag = "4")]
    pub loss: u32,
    /// Acceptable bit error rate.
    #[prost(uint32, tag = "5")]
    pub ber: u32,
    /// Non-zero: deliver in order (enables FRCT).
    #[prost(uint32, tag = "6")]
    pub in_order: u32,
    /// Largest acceptable gap, ms.
    #[prost(uint32, tag = "7")]
    pub max_gap: u32,
    /// Peer timeout (keepalive), ms.
    #[prost(uint32, tag = "8")]
    pub timeout: u32,
}

/// Configuration of an Ethernet (eth-dix / eth-llc) IPCP.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct EthConfig {
    /// Network interface.
    #[prost(string, tag = "1")]
    pub dev: String,
    /// EtherType of the layer (eth-dix only; 0 = the default 0xA000).
    #[prost(uint32, tag = "2")]
    pub ethertype: u32,
    /// Backend.
    #[prost(enumeration = "EthMode", tag = "3")]
    pub mode: i32,
}

/// Type-specific part of an [`IpcpConfig`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Oneof)]
pub enum IpcpTypeConfig {
    /// Ethernet IPCPs.
    #[prost(message, tag = "10")]
    Eth(EthConfig),
}

/// How to bootstrap an IPCP: the layer it founds.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct IpcpConfig {
    /// Name of the layer.
    #[prost(string, tag = "1")]
    pub layer: String,
    /// Directory hash algorithm of the layer.
    #[prost(enumeration = "HashAlgo", tag = "2")]
    pub hash: i32,
    /// Settings of the IPCP's type (absent for local and broadcast).
    #[prost(oneof = "IpcpTypeConfig", tags = "10")]
    pub type_config: Option<IpcpTypeConfig>,
}

/// Selects an IPCP by name or by pid.
#[derive(Clone, PartialEq, Eq, Hash, prost::Oneof)]
pub enum IpcpSelector {
    /// The IPCP's name.
    #[prost(string, tag = "1")]
    Name(String),
    /// The IPCP's process id.
    #[prost(uint32, tag = "2")]
    Pid(u32),
}

/// Where a name is registered: one IPCP, or every IPCP of a layer.
#[derive(Clone, PartialEq, Eq, Hash, prost::Oneof)]
pub enum RegisterTarget {
    /// An IPCP, by name.
    #[prost(string, tag = "2")]
    Ipcp(String),
    /// Every IPCP of a layer, by layer name.
    #[prost(string, tag = "3")]
    Layer(String),
}

// ------------------------------------------------------------------------------------------
// Requests
// ------------------------------------------------------------------------------------------

/// Create (spawn) an IPCP.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct CreateIpcp {
    /// Its type.
    #[prost(enumeration = "IpcpType", tag = "1")]
    pub ipcp_type: i32,
    /// Its name (unique on the host).
    #[prost(string, tag = "2")]
    pub name: String,
}

/// Destroy an IPCP.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct DestroyIpcp {
    /// Which one.
    #[prost(oneof = "IpcpSelector", tags = "1, 2")]
    pub ipcp: Option<IpcpSelector>,
}

/// List the IPCPs. Answered with [`IpcpList`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct ListIpcps {}

/// Bootstrap an IPCP as the first member of a layer.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct BootstrapIpcp {
    /// The IPCP's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The layer's configuration.
    #[prost(message, optional, tag = "2")]
    pub config: Option<IpcpConfig>,
}

/// Create a name. An existing name is not an error.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct CreateName {
    /// The name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its load-balancing policy.
    #[prost(enumeration = "LbPolicy", tag = "2")]
    pub lb: i32,
}

/// Destroy a name and its bindings (not its registrations in IPCPs).
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct DestroyName {
    /// The name.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// List the names. Answered with [`NameList`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct ListNames {}

/// Register a name in an IPCP or a layer (creating the name, spillover, if needed).
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct RegisterName {
    /// The name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Where.
    #[prost(oneof = "RegisterTarget", tags = "2, 3")]
    pub target: Option<RegisterTarget>,
}

/// Unregister a name from an IPCP or a layer.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct UnregisterName {
    /// The name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Where.
    #[prost(oneof = "RegisterTarget", tags = "2, 3")]
    pub target: Option<RegisterTarget>,
}

/// Bind a program to a name (creating both if needed).
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct BindProgram {
    /// The name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Absolute path of the executable.
    #[prost(string, tag = "2")]
    pub program: String,
    /// Arguments for an automatic start (without argv\[0\]).
    #[prost(string, repeated, tag = "3")]
    pub args: Vec<String>,
    /// Start the program on demand when a flow arrives for the name.
    #[prost(bool, tag = "4")]
    pub auto: bool,
}

/// Unbind a program from a name, or forget it entirely.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct UnbindProgram {
    /// Absolute path of the executable.
    #[prost(string, tag = "1")]
    pub program: String,
    /// The name; absent: remove the program and all its bindings.
    #[prost(string, optional, tag = "2")]
    pub name: Option<String>,
}

/// Bind an announced process to a name (creating the name if needed).
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct BindProcess {
    /// The process.
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    /// The name.
    #[prost(string, tag = "2")]
    pub name: String,
}

/// Unbind a process from a name, or remove the process from the registry.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct UnbindProcess {
    /// The process.
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    /// The name; absent: remove the process entry.
    #[prost(string, optional, tag = "2")]
    pub name: Option<String>,
}

/// A process announces itself (sent by the application library when it starts). Answered
/// with [`AnnounceReply`]: the pool the process's packets live in (the shared pool for root
/// and members of group `ouroboros`, else the uid's per-user pool, created on its first
/// process's announce).
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct ProcessAnnounce {
    /// Its pid.
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    /// Its program (path or basename), to inherit the program's bindings.
    #[prost(string, tag = "2")]
    pub program: String,
}

/// A process says goodbye (sent by the application library when it exits).
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct ProcessExit {
    /// Its pid.
    #[prost(uint32, tag = "1")]
    pub pid: u32,
}

/// Allocate a flow to a name. Answered with [`FlowInfo`].
///
/// A name registered in an operational IPCP of this host is allocated through that IPCP (the
/// answer's `n_1_pid` is the IPCP). Any other name gets a *direct local flow* to a process of
/// this host accepting for `dst`: a name the IRMd does not know fails at once with
/// [`ErrorCode::NotFound`]; a known name without an accepting process waits up to the timeout
/// and fails with [`ErrorCode::TimedOut`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct FlowAlloc {
    /// Destination name.
    #[prost(string, tag = "1")]
    pub dst: String,
    /// Requested QoS.
    #[prost(message, optional, tag = "2")]
    pub qos: Option<QosSpec>,
    /// Give up after this many ms (absent: the IRMd's default, 20 s).
    #[prost(uint32, optional, tag = "3")]
    pub timeout_ms: Option<u32>,
}

/// Wait for an incoming flow. Answered with [`FlowInfo`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct FlowAccept {
    /// Accept only for this name (absent: any name the process is bound to).
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Give up after this many ms (absent: wait forever).
    #[prost(uint32, optional, tag = "2")]
    pub timeout_ms: Option<u32>,
}

/// Deallocate a flow.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct FlowDealloc {
    /// The flow id.
    #[prost(uint32, tag = "1")]
    pub flow_id: u32,
}

/// List the flows. Answered with [`FlowList`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct ListFlows {}

/// Statistics of one IPCP. Answered with [`IpcpStatsReply`]. The IRMd forwards it to the IPCP
/// (same message), which answers with its counters.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct IpcpStats {
    /// The IPCP's name.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// List the announced processes. Answered with [`ProcessList`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct ListProcesses {}

/// List the bound programs. Answered with [`ProgramList`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct ListPrograms {}

// ------------------------------------------------------------------------------------------
// IPCP control: the IRMd and the IPCP processes it spawns
// ------------------------------------------------------------------------------------------
//
// An IPCP keeps one connection to the IRMd for its whole life. It opens it with
// [`IpcpHello`]; from then on both sides send requests on it and answer the other side's
// requests with responses carrying the request's id (each side numbers its own requests, so
// the ids never need to agree). The IRMd sends `Ipcp*` requests (bootstrap, register,
// unregister, query, flow allocation, deallocation); the IPCP sends [`FlowReqArrived`] and
// the ordinary [`FlowDealloc`] for its own flow ends. A flow allocation's reply (the
// reference's `IPCP_FLOW_ALLOC_REPLY`) is the response to [`IpcpFlowAlloc`], given when the
// layer has an answer: responses may come out of order, so a slow layer holds no one up.

/// First message of an IPCP on its connection: it is the process the IRMd spawned under this
/// name. Answered with [`OkReply`]; from then on the IRMd sends the IPCP requests on the same
/// connection.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct IpcpHello {
    /// Its pid (must be the sender's).
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    /// The name it was started with.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Its type.
    #[prost(enumeration = "IpcpType", tag = "3")]
    pub ipcp_type: i32,
}

/// IRMd → IPCP: found a layer with this configuration. Answered with [`OkReply`], or with
/// [`ResponseKind::Ipcp`] whose `backend` says which data path is in effect (Ethernet IPCPs).
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct IpcpBootstrap {
    /// The layer's configuration.
    #[prost(message, optional, tag = "1")]
    pub config: Option<IpcpConfig>,
}

/// IRMd → IPCP: make a name (its hash in the layer's algorithm) reachable in the layer.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct IpcpRegister {
    /// The name's hash.
    #[prost(bytes = "vec", tag = "1")]
    pub hash: Vec<u8>,
}

/// IRMd → IPCP: withdraw a registered hash.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct IpcpUnregister {
    /// The name's hash.
    #[prost(bytes = "vec", tag = "1")]
    pub hash: Vec<u8>,
}

/// IRMd → IPCP: can the layer reach this hash? [`OkReply`] if so, `NotFound` if not.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct IpcpQuery {
    /// The name's hash.
    #[prost(bytes = "vec", tag = "1")]
    pub hash: Vec<u8>,
}

/// IRMd → IPCP: allocate a flow through the layer to `hash` for the application `n_pid`.
/// The IRMd has created the flow's two rings between the application and the IPCP; the
/// IPCP reads `rx_ring` and writes `tx_ring`. The response is the allocation's reply:
/// [`OkReply`] once the other end accepted, an error otherwise.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct IpcpFlowAlloc {
    /// The flow id the IRMd gave the application's end.
    #[prost(uint32, tag = "1")]
    pub flow_id: u32,
    /// Destination: the name's hash in the layer's algorithm.
    #[prost(bytes = "vec", tag = "2")]
    pub hash: Vec<u8>,
    /// QoS asked for.
    #[prost(message, optional, tag = "3")]
    pub qos: Option<QosSpec>,
    /// The allocating application's pid.
    #[prost(uint32, tag = "4")]
    pub n_pid: u32,
    /// The pool of the rings.
    #[prost(string, tag = "5")]
    pub pool: String,
    /// Ring the IPCP writes (the application reads).
    #[prost(uint32, tag = "6")]
    pub tx_ring: u32,
    /// Ring the IPCP reads (the application writes).
    #[prost(uint32, tag = "7")]
    pub rx_ring: u32,
    /// Give up after this many ms.
    #[prost(uint32, tag = "8")]
    pub timeout_ms: u32,
    /// The allocating IRMd's OAP request header ([`crate::oap`]), carried opaquely through
    /// the layer to the accepting IRMd (in eth-dix: the body of the FLOW_REQ after the hash).
    #[prost(bytes = "vec", tag = "9")]
    pub piggyback: Vec<u8>,
    /// Owner of `pool`, as the reference's `uid` field: 0 for the shared pool, else the uid
    /// whose per-user pool the application maps. The IPCP opens that pool for the flow's
    /// rings and copies each SDU between it and its own pool.
    #[prost(uint32, tag = "10")]
    pub uid: u32,
}

/// IPCP → IRMd: the successful answer to [`IpcpFlowAlloc`] (an IPCP may also answer
/// [`OkReply`], which means an empty piggyback and no SDU limit of its own).
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct IpcpFlowReply {
    /// The accepting IRMd's OAP response header, as the layer carried it back.
    #[prost(bytes = "vec", tag = "1")]
    pub piggyback: Vec<u8>,
    /// The largest SDU the IPCP carries on this flow (eth-dix: MTU − 4); absent: no limit of
    /// its own (only the pool's block size).
    #[prost(uint32, optional, tag = "2")]
    pub max_sdu: Option<u32>,
}

/// IRMd → IPCP: the application end of flow `flow_id` deallocated it or died; the IPCP
/// releases its state for the flow (and deallocates its own ends). Answered with [`OkReply`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct IpcpFlowDealloc {
    /// The flow.
    #[prost(uint32, tag = "1")]
    pub flow_id: u32,
}

/// IPCP → IRMd: a flow request for a hash registered here arrived through the layer. The
/// IRMd checks the OAP request (`piggyback`), finds the name, waits for a process accepting
/// it (up to `timeout_ms`) and answers with the new flow between the IPCP (the allocating end)
/// and that process, as [`ResponseKind::Flow`] whose `piggyback` is the OAP response to send
/// back through the layer; that answer is the accepting side's response (the reference's
/// `IPCP_FLOW_ALLOC_RESP`).
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct FlowReqArrived {
    /// The destination hash.
    #[prost(bytes = "vec", tag = "1")]
    pub hash: Vec<u8>,
    /// QoS asked for.
    #[prost(message, optional, tag = "2")]
    pub qos: Option<QosSpec>,
    /// Give up after this many ms (0: the IRMd's default).
    #[prost(uint32, tag = "3")]
    pub timeout_ms: u32,
    /// The allocating IRMd's OAP request header, as the layer carried it.
    #[prost(bytes = "vec", tag = "4")]
    pub piggyback: Vec<u8>,
    /// The largest SDU the IPCP carries on this flow; absent: no limit of its own.
    #[prost(uint32, optional, tag = "5")]
    pub max_sdu: Option<u32>,
}

/// Defines the request oneof, `From` impls into [`Request`], and the variant names.
macro_rules! request_kinds {
    ($($tag:literal => $variant:ident),+ $(,)?) => {
        /// The kinds of request.
        #[derive(Clone, PartialEq, Eq, Hash, prost::Oneof)]
        pub enum RequestKind {
            $(
                #[doc = concat!("See [`", stringify!($variant), "`].")]
                #[prost(message, tag = $tag)]
                $variant($variant),
            )+
        }

        impl RequestKind {
            /// The variant's name, for logs.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => stringify!($variant),)+
                }
            }
        }

        $(
            impl From<$variant> for Request {
                fn from(body: $variant) -> Self {
                    Request { kind: Some(RequestKind::$variant(body)) }
                }
            }
        )+
    };
}

request_kinds! {
    "1" => CreateIpcp,
    "2" => DestroyIpcp,
    "3" => ListIpcps,
    "4" => BootstrapIpcp,
    "5" => CreateName,
    "6" => DestroyName,
    "7" => ListNames,
    "8" => RegisterName,
    "9" => UnregisterName,
    "10" => BindProgram,
    "11" => UnbindProgram,
    "12" => BindProcess,
    "13" => UnbindProcess,
    "14" => ProcessAnnounce,
    "15" => ProcessExit,
    "16" => FlowAlloc,
    "17" => FlowAccept,
    "18" => FlowDealloc,
    "19" => ListFlows,
    "20" => IpcpStats,
    "21" => ListProcesses,
    "22" => ListPrograms,
    "23" => IpcpHello,
    "24" => IpcpBootstrap,
    "25" => IpcpRegister,
    "26" => IpcpUnregister,
    "27" => IpcpQuery,
    "28" => IpcpFlowAlloc,
    "29" => IpcpFlowDealloc,
    "30" => FlowReqArrived,
}

/// A request to the IRMd. `kind` is `None` only in a malformed message (the IRMd answers
/// [`ErrorCode::BadRequest`]).
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Request {
    /// What is asked.
    #[prost(
        oneof = "RequestKind",
        tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, \
                24, 25, 26, 27, 28, 29, 30"
    )]
    pub kind: Option<RequestKind>,
}

impl Request {
    /// The request's name, for logs (`"(none)"` when it has no kind).
    pub fn name(&self) -> &'static str {
        self.kind.as_ref().map_or("(none)", RequestKind::name)
    }
}

// ------------------------------------------------------------------------------------------
// Responses
// ------------------------------------------------------------------------------------------

/// Success without a payload.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct OkReply {}

/// Failure.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct ErrorReply {
    /// What kind of failure.
    #[prost(enumeration = "ErrorCode", tag = "1")]
    pub code: i32,
    /// For humans: what failed and why.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// One IPCP.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct IpcpInfo {
    /// Its process id.
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    /// Its type.
    #[prost(enumeration = "IpcpType", tag = "2")]
    pub ipcp_type: i32,
    /// Its name.
    #[prost(string, tag = "3")]
    pub name: String,
    /// Its layer, once bootstrapped or enrolled.
    #[prost(string, optional, tag = "4")]
    pub layer: Option<String>,
    /// Its layer's hash algorithm (meaningful once it has a layer).
    #[prost(enumeration = "HashAlgo", tag = "5")]
    pub hash: i32,
    /// Where it is in its life.
    #[prost(enumeration = "IpcpState", tag = "6")]
    pub state: i32,
    /// The data path in effect, as the IPCP reported it at bootstrap (Ethernet IPCPs: e.g.
    /// `xdp native (zero-copy)`, `xdp generic (copy)`, `packet`); absent before, or for types
    /// without a choice.
    #[prost(string, optional, tag = "7")]
    pub backend: Option<String>,
}

/// Where an IPCP is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum IpcpState {
    /// A state this build does not know (never sent).
    Unspecified = 0,
    /// Spawned, its hello not yet received.
    Booting = 1,
    /// Said hello; waits for a bootstrap (or enrollment).
    Init = 2,
    /// Bootstrapped or enrolled: a member of a layer.
    Operational = 3,
}

/// Every IPCP.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct IpcpList {
    /// The IPCPs, by name.
    #[prost(message, repeated, tag = "1")]
    pub ipcps: Vec<IpcpInfo>,
}

/// One name and what it is bound to.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct NameInfo {
    /// The name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its load-balancing policy.
    #[prost(enumeration = "LbPolicy", tag = "2")]
    pub lb: i32,
    /// Programs bound to it (paths).
    #[prost(string, repeated, tag = "3")]
    pub programs: Vec<String>,
    /// Processes bound to it.
    #[prost(uint32, repeated, tag = "4")]
    pub processes: Vec<u32>,
    /// IPCPs it is registered in (names).
    #[prost(string, repeated, tag = "5")]
    pub ipcps: Vec<String>,
}

/// Every name.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct NameList {
    /// The names, sorted.
    #[prost(message, repeated, tag = "1")]
    pub names: Vec<NameInfo>,
}

/// One announced process.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct ProcessInfo {
    /// Its pid.
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    /// The program it announced.
    #[prost(string, tag = "2")]
    pub program: String,
    /// Names it is bound to.
    #[prost(string, repeated, tag = "3")]
    pub names: Vec<String>,
}

/// Every announced process.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct ProcessList {
    /// The processes, by pid.
    #[prost(message, repeated, tag = "1")]
    pub processes: Vec<ProcessInfo>,
}

/// One bound program.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct ProgramInfo {
    /// Its path.
    #[prost(string, tag = "1")]
    pub program: String,
    /// Arguments for an automatic start.
    #[prost(string, repeated, tag = "2")]
    pub args: Vec<String>,
    /// Started on demand.
    #[prost(bool, tag = "3")]
    pub auto: bool,
    /// Names it is bound to.
    #[prost(string, repeated, tag = "4")]
    pub names: Vec<String>,
}

/// Every bound program.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct ProgramList {
    /// The programs, by path.
    #[prost(message, repeated, tag = "1")]
    pub programs: Vec<ProgramInfo>,
}

/// One flow. In the answer to [`FlowAlloc`] or [`FlowAccept`] the receiver is the `n_pid`
/// end and `n_1_pid` its peer (for a direct local flow, the peer process itself); in a
/// [`FlowList`], `n_pid` is the allocating end and `n_1_pid` the accepting one.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct FlowInfo {
    /// System-wide flow id.
    #[prost(uint32, tag = "1")]
    pub flow_id: u32,
    /// Pid of the application end.
    #[prost(uint32, tag = "2")]
    pub n_pid: u32,
    /// Pid of the serving IPCP (or of the peer process for a direct flow).
    #[prost(uint32, tag = "3")]
    pub n_1_pid: u32,
    /// Maximum packet lifetime, ms.
    #[prost(uint32, tag = "4")]
    pub mpl: u32,
    /// The flow's QoS.
    #[prost(message, optional, tag = "5")]
    pub qos: Option<QosSpec>,
    /// Name of the pool the flow's packets live in.
    #[prost(string, tag = "6")]
    pub pool: String,
    /// Flow ring (in `pool`) that the `n_pid` end writes: the other end reads it.
    #[prost(uint32, tag = "7")]
    pub tx_ring: u32,
    /// Flow ring (in `pool`) that the `n_pid` end reads: the other end writes it.
    #[prost(uint32, tag = "8")]
    pub rx_ring: u32,
    /// The name the flow was allocated to.
    #[prost(string, tag = "9")]
    pub name: String,
    /// State of the `n_pid` end (in [`FlowList`]; [`EndState::Active`] in an allocation's
    /// answer).
    #[prost(enumeration = "EndState", tag = "10")]
    pub n_state: i32,
    /// State of the `n_1_pid` end.
    #[prost(enumeration = "EndState", tag = "11")]
    pub n_1_state: i32,
    /// The largest SDU the flow carries, as its IPCP reported it (eth-dix: MTU − 4); absent:
    /// no limit but the pool's largest block (direct flows, the local IPCP). The application
    /// library refuses larger writes.
    #[prost(uint32, optional, tag = "12")]
    pub max_sdu: Option<u32>,
    /// IRMd → IPCP only, in the answer to [`FlowReqArrived`]: the OAP response header for the
    /// layer to carry back to the allocating IRMd. Empty everywhere else.
    #[prost(bytes = "vec", tag = "13")]
    pub piggyback: Vec<u8>,
    /// Owner of `pool`: 0 for the shared pool, else the uid of a per-user pool (the
    /// reference's `uid`).
    #[prost(uint32, tag = "14")]
    pub uid: u32,
}

/// Where one end of a flow is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum EndState {
    /// A state this build does not know (never sent).
    Unspecified = 0,
    /// The end's process uses the flow.
    Active = 1,
    /// The end's process deallocated the flow (or said goodbye).
    Deallocated = 2,
    /// The end's process died.
    Dead = 3,
}

/// The answer to [`ProcessAnnounce`]: where the process's packets live.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct AnnounceReply {
    /// Name of the process's packet pool: its flows' rings and blocks, and its event sets.
    #[prost(string, tag = "1")]
    pub pool: String,
    /// Owner of the pool: 0 for the shared pool, else the process's uid (a per-user pool).
    #[prost(uint32, tag = "2")]
    pub uid: u32,
}

/// Every flow.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct FlowList {
    /// The flows, by id.
    #[prost(message, repeated, tag = "1")]
    pub flows: Vec<FlowInfo>,
}

/// Counters of one IPCP.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct IpcpStatsReply {
    /// The IPCP's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Counters as (name, value) pairs, in the IPCP's order.
    #[prost(message, repeated, tag = "2")]
    pub counters: Vec<Counter>,
}

/// One named counter.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Counter {
    /// What it counts.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its value.
    #[prost(uint64, tag = "2")]
    pub value: u64,
}

/// The kinds of response.
#[derive(Clone, PartialEq, Eq, Hash, prost::Oneof)]
pub enum ResponseKind {
    /// Success without a payload.
    #[prost(message, tag = "1")]
    Ok(OkReply),
    /// Failure.
    #[prost(message, tag = "2")]
    Error(ErrorReply),
    /// Answer to [`ListIpcps`].
    #[prost(message, tag = "3")]
    Ipcps(IpcpList),
    /// Answer to [`ListNames`].
    #[prost(message, tag = "4")]
    Names(NameList),
    /// Answer to [`ListProcesses`].
    #[prost(message, tag = "5")]
    Processes(ProcessList),
    /// Answer to [`ListPrograms`].
    #[prost(message, tag = "6")]
    Programs(ProgramList),
    /// Answer to [`ListFlows`].
    #[prost(message, tag = "7")]
    Flows(FlowList),
    /// Answer to [`FlowAlloc`] and [`FlowAccept`].
    #[prost(message, tag = "8")]
    Flow(FlowInfo),
    /// Answer to [`IpcpStats`].
    #[prost(message, tag = "9")]
    Stats(IpcpStatsReply),
    /// Answer to [`CreateIpcp`].
    #[prost(message, tag = "10")]
    Ipcp(IpcpInfo),
    /// An IPCP's answer to [`IpcpFlowAlloc`].
    #[prost(message, tag = "11")]
    IpcpFlow(IpcpFlowReply),
    /// Answer to [`ProcessAnnounce`].
    #[prost(message, tag = "12")]
    Announced(AnnounceReply),
}

/// A response from the IRMd.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Response {
    /// The answer.
    #[prost(oneof = "ResponseKind", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12")]
    pub kind: Option<ResponseKind>,
}

impl Response {
    /// Success without a payload.
    pub fn ok() -> Self {
        ResponseKind::Ok(OkReply {}).into()
    }

    /// Failure with a code and a message for humans.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ResponseKind::Error(ErrorReply {
            code: code.into(),
            message: message.into(),
        })
        .into()
    }

    /// The error, if this is one: its code (unknown codes read as
    /// [`ErrorCode::Unspecified`]) and message.
    pub fn as_error(&self) -> Option<(ErrorCode, &str)> {
        match &self.kind {
            Some(ResponseKind::Error(e)) => Some((e.code(), e.message.as_str())),
            _ => None,
        }
    }

    /// Whether this is [`ResponseKind::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self.kind, Some(ResponseKind::Ok(_)))
    }
}

impl From<ResponseKind> for Response {
    fn from(kind: ResponseKind) -> Self {
        Self { kind: Some(kind) }
    }
}

// ------------------------------------------------------------------------------------------
// Envelope
// ------------------------------------------------------------------------------------------

/// What an envelope carries.
#[derive(Clone, PartialEq, Eq, Hash, prost::Oneof)]
pub enum Body {
    /// A request (client → IRMd).
    #[prost(message, tag = "2")]
    Request(Request),
    /// A response (IRMd → client), with the id of the request it answers.
    #[prost(message, tag = "3")]
    Response(Response),
}

/// One message on the IRM socket.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Envelope {
    /// Correlation id: chosen by the requester, copied into the response. The IRMd answers an
    /// envelope it could not decode with id 0.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The message; `None` only in a malformed envelope.
    #[prost(oneof = "Body", tags = "2, 3")]
    pub body: Option<Body>,
}

impl Envelope {
    /// A request envelope.
    pub fn request(id: u64, request: impl Into<Request>) -> Self {
        Self {
            id,
            body: Some(Body::Request(request.into())),
        }
    }

    /// A response envelope.
    pub fn response(id: u64, response: Response) -> Self {
        Self {
            id,
            body: Some(Body::Response(response)),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Framing
// ------------------------------------------------------------------------------------------

/// Why a frame could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The envelope (or the length prefix read from the stream) exceeds [`MAX_FRAME`]. On the
    /// read side the stream cannot be resynchronised: the decoder stays failed.
    #[error("IRM frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLong {
        /// The envelope's length.
        len: usize,
        /// [`MAX_FRAME`].
        max: usize,
    },
    /// A whole frame arrived but its bytes are not an [`Envelope`]. The stream stays in sync.
    #[error("undecodable IRM envelope: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The stream ended inside a frame.
    #[error("IRM stream ends inside a frame: {have} of {need} bytes")]
    Truncated {
        /// Bytes of the frame received (prefix included).
        have: usize,
        /// Bytes the frame needs (prefix included; [`LEN_PREFIX`] while the prefix is cut).
        need: usize,
    },
    /// prost refused to encode (cannot happen into a `Vec`, kept so nothing panics).
    #[error("cannot encode IRM envelope: {0}")]
    Encode(#[from] prost::EncodeError),
}

/// Writes envelopes as frames: `u32` little-endian length, then the envelope.
#[derive(Debug, Clone, Copy, Default)]
pub struct Codec;

impl Codec {
    /// Appends the frame of `envelope` to `out`. Refuses envelopes over [`MAX_FRAME`] bytes,
    /// leaving `out` unchanged.
    pub fn encode(envelope: &Envelope, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let len = envelope.encoded_len();
        if len > MAX_FRAME {
            return Err(FrameError::TooLong {
                len,
                max: MAX_FRAME,
            });
        }
        out.reserve(LEN_PREFIX + len);
        // MAX_FRAME fits in a u32.
        out.extend_from_slice(&(len as u32).to_le_bytes());
        envelope.encode(out)?;
        Ok(())
    }

    /// The frame of `envelope` in a new buffer.
    pub fn encode_to_vec(envelope: &Envelope) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        Self::encode(envelope, &mut out)?;
        Ok(out)
    }
}

/// Buffers larger than this are released after a frame instead of kept for the next one.
const KEEP_CAPACITY: usize = 4096;

/// Sans-IO frame reader: takes bytes in any chunks, yields whole envelopes.
///
/// It buffers at most one frame, and never more than the frame's declared length (at most
/// [`LEN_PREFIX`] + [`MAX_FRAME`] bytes). After [`FrameError::TooLong`] it has lost the frame
/// boundaries and returns that error forever; after [`FrameError::Decode`] it goes on with the
/// next frame.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes bytes from the front of `input` until one frame is complete, and returns its
    /// envelope; returns `Ok(None)` once `input` is empty without completing a frame. Call it
    /// again while `input` is not empty.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Envelope>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.len() < LEN_PREFIX {
            let take = (LEN_PREFIX - self.buf.len()).min(input.len());
            self.take(input, take);
            if self.buf.len() < LEN_PREFIX {
                return Ok(None);
            }
        }
        let len = self.declared_len();
        if len > MAX_FRAME {
            let e = FrameError::TooLong {
                len,
                max: MAX_FRAME,
            };
            self.buf = Vec::new();
            self.failed = Some(e.clone());
            return Err(e);
        }
        let need = LEN_PREFIX + len;
        // A whole frame in `input` and nothing buffered but its prefix: decode in place.
        if self.buf.len() == LEN_PREFIX && input.len() >= len {
            let (body, rest) = input.split_at(len);
            *input = rest;
            self.buf.clear();
            return Ok(Some(Envelope::decode(body)?));
        }
        let take = (need - self.buf.len()).min(input.len());
        self.take(input, take);
        if self.buf.len() < need {
            return Ok(None);
        }
        let result = Envelope::decode(&self.buf[LEN_PREFIX..need]);
        self.buf.clear();
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
        Ok(Some(result?))
    }

    /// Checks that the stream ended on a frame boundary (call at end of stream).
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let need = if self.buf.len() < LEN_PREFIX {
            LEN_PREFIX
        } else {
            LEN_PREFIX + self.declared_len()
        };
        Err(FrameError::Truncated {
            have: self.buf.len(),
            need,
        })
    }

    /// Bytes buffered of an incomplete frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether a framing error made the decoder give up on the stream.
    pub fn has_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// The length declared by the buffered prefix. The caller has checked that it is there.
    fn declared_len(&self) -> usize {
        let mut prefix = [0u8; LEN_PREFIX];
        prefix.copy_from_slice(&self.buf[..LEN_PREFIX]);
        u32::from_le_bytes(prefix) as usize
    }

    /// Moves `n` bytes (at most `input.len()`) from `input` into the buffer, growing it only by
    /// what the current frame still needs.
    fn take(&mut self, input: &mut &[u8], n: usize) {
        let (head, rest) = input.split_at(n.min(input.len()));
        self.buf.extend_from_slice(head);
        *input = rest;
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn frame(env: &Envelope) -> Vec<u8> {
        Codec::encode_to_vec(env).expect("encodes")
    }

    #[test]
    fn one_frame_in_one_chunk() {
        let env = Envelope::request(1, ListNames {});
        let bytes = frame(&env);
        let mut dec = FrameDecoder::new();
        let mut input = &bytes[..];
        assert_eq!(dec.decode(&mut input), Ok(Some(env)));
        assert!(input.is_empty());
        assert_eq!(dec.finish(), Ok(()));
    }

    #[test]
    fn byte_at_a_time() {
        let env = Envelope::request(
            u64::MAX,
            BindProgram {
                name: "n".into(),
                program: "/bin/true".into(),
                args: vec!["a".into(), "b".into()],
                auto: true,
            },
        );
        let bytes = frame(&env);
        let mut dec = FrameDecoder::new();
        let mut got = None;
        for (i, b) in bytes.iter().enumerate() {
            let mut input = std::slice::from_ref(b);
            let out = dec.decode(&mut input).expect("no error");
            assert!(input.is_empty());
            if i + 1 < bytes.len() {
                assert_eq!(out, None);
                assert_eq!(dec.buffered(), i + 1);
            } else {
                got = out;
            }
        }
        assert_eq!(got, Some(env));
    }

    #[test]
    fn oversized_prefix_fails_without_buffering_and_stays_failed() {
        let bytes = ((MAX_FRAME + 1) as u32).to_le_bytes();
        let mut dec = FrameDecoder::new();
        let err = FrameError::TooLong {
            len: MAX_FRAME + 1,
            max: MAX_FRAME,
        };
        assert_eq!(dec.decode(&mut &bytes[..]), Err(err.clone()));
        assert_eq!(dec.buffered(), 0);
        assert!(dec.has_failed());
        let good = frame(&Envelope::request(1, ListNames {}));
        assert_eq!(dec.decode(&mut &good[..]), Err(err));
    }

    #[test]
    fn exactly_max_frame_is_accepted() {
        // A valid envelope whose encoding is exactly MAX_FRAME bytes.
        let mut env = Envelope::request(
            1,
            DestroyName {
                name: String::new(),
            },
        );
        let base = env.encoded_len();
        let mut n = MAX_FRAME - base;
        // The string's length varint grows with the string; shrink until it fits exactly.
        loop {
            env = Envelope::request(
                1,
                DestroyName {
                    name: "x".repeat(n),
                },
            );
            match env.encoded_len().cmp(&MAX_FRAME) {
                std::cmp::Ordering::Equal => break,
                std::cmp::Ordering::Greater => n -= 1,
                std::cmp::Ordering::Less => n += 1,
            }
        }
        let bytes = frame(&env);
        assert_eq!(bytes.len(), LEN_PREFIX + MAX_FRAME);
        let mut dec = FrameDecoder::new();
        assert_eq!(dec.decode(&mut &bytes[..]), Ok(Some(env.clone())));

        let too_big = Envelope::request(
            1,
            DestroyName {
                name: "x".repeat(n + 1),
            },
        );
        let mut out = vec![1, 2, 3];
        assert!(matches!(
            Codec::encode(&too_big, &mut out),
            Err(FrameError::TooLong { max: MAX_FRAME, .. })
        ));
        assert_eq!(out, [1, 2, 3], "a refused frame writes nothing");
    }

    #[test]
    fn garbage_body_is_an_error_but_the_stream_goes_on() {
        let mut bytes = vec![3, 0, 0, 0, 0xff, 0xff, 0xff];
        let good = Envelope::request(9, ListIpcps {});
        bytes.extend(frame(&good));
        let mut dec = FrameDecoder::new();
        let mut input = &bytes[..];
        assert!(matches!(dec.decode(&mut input), Err(FrameError::Decode(_))));
        assert!(!dec.has_failed());
        assert_eq!(dec.decode(&mut input), Ok(Some(good)));
        assert!(input.is_empty());
    }

    #[test]
    fn truncation_is_reported_at_finish() {
        let bytes = frame(&Envelope::request(1, ListNames {}));
        for cut in 1..bytes.len() {
            let mut dec = FrameDecoder::new();
            assert_eq!(dec.decode(&mut &bytes[..cut]), Ok(None));
            let need = if cut < LEN_PREFIX {
                LEN_PREFIX
            } else {
                bytes.len()
            };
            assert_eq!(dec.finish(), Err(FrameError::Truncated { have: cut, need }));
        }
    }

    #[test]
    fn empty_frame_is_an_envelope_without_body() {
        let mut dec = FrameDecoder::new();
        assert_eq!(
            dec.decode(&mut &[0u8, 0, 0, 0][..]),
            Ok(Some(Envelope::default()))
        );
    }

    #[test]
    fn response_helpers() {
        let r = Response::error(ErrorCode::NotFound, "no such name");
        assert_eq!(r.as_error(), Some((ErrorCode::NotFound, "no such name")));
        assert!(!r.is_ok());
        assert!(Response::ok().is_ok());
        let unknown = Response::from(ResponseKind::Error(ErrorReply {
            code: 1234,
            message: String::new(),
        }));
        assert_eq!(unknown.as_error(), Some((ErrorCode::Unspecified, "")));
    }
}
