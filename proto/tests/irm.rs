//! The IRM protocol (`o7s_proto::irm`): every request kind round-trips through the codec and the
//! chunked decoder, and no byte stream or chunking makes the decoder panic or over-buffer.

use o7s_proto::fuzzing;
use o7s_proto::irm::*;
use proptest::prelude::*;

/// One sample of every request kind. `kind_index` below matches exhaustively, so a new kind
/// fails to compile until it has a sample here.
fn samples() -> Vec<Request> {
    vec![
        CreateIpcp {
            ipcp_type: IpcpType::EthDix.into(),
            name: "eth".into(),
        }
        .into(),
        DestroyIpcp {
            ipcp: Some(IpcpSelector::Pid(42)),
        }
        .into(),
        ListIpcps {}.into(),
        BootstrapIpcp {
            name: "eth".into(),
            config: Some(IpcpConfig {
                layer: "eth-layer".into(),
                hash: HashAlgo::Sha3_256.into(),
                type_config: Some(IpcpTypeConfig::Eth(EthConfig {
                    dev: "veth0".into(),
                    ethertype: 0xa000,
                    mode: EthMode::Xdp.into(),
                })),
            }),
        }
        .into(),
        CreateName {
            name: "oping".into(),
            lb: LbPolicy::RoundRobin.into(),
        }
        .into(),
        DestroyName {
            name: "oping".into(),
        }
        .into(),
        ListNames {}.into(),
        RegisterName {
            name: "oping".into(),
            target: Some(RegisterTarget::Layer("eth-layer".into())),
        }
        .into(),
        UnregisterName {
            name: "oping".into(),
            target: Some(RegisterTarget::Ipcp("eth".into())),
        }
        .into(),
        BindProgram {
            name: "oping".into(),
            program: "/usr/bin/oping".into(),
            args: vec!["--listen".into()],
            auto: true,
        }
        .into(),
        UnbindProgram {
            program: "/usr/bin/oping".into(),
            name: None,
        }
        .into(),
        BindProcess {
            pid: 7,
            name: "oping".into(),
        }
        .into(),
        UnbindProcess {
            pid: 7,
            name: Some("oping".into()),
        }
        .into(),
        ProcessAnnounce {
            pid: 7,
            program: "oping".into(),
        }
        .into(),
        ProcessExit { pid: 7 }.into(),
        FlowAlloc {
            dst: "oping".into(),
            qos: Some(QosSpec {
                delay: 100,
                bandwidth: 1 << 40,
                availability: 1,
                loss: 1,
                ber: 1,
                in_order: 1,
                max_gap: 10,
                timeout: 120_000,
            }),
            timeout_ms: Some(0),
        }
        .into(),
        FlowAccept {
            name: None,
            timeout_ms: Some(1000),
        }
        .into(),
        FlowDealloc { flow_id: 3 }.into(),
        ListFlows {}.into(),
        IpcpStats { name: "eth".into() }.into(),
        ListProcesses {}.into(),
        ListPrograms {}.into(),
        IpcpHello {
            pid: 42,
            name: "local".into(),
            ipcp_type: IpcpType::Local.into(),
        }
        .into(),
        IpcpBootstrap {
            config: Some(IpcpConfig {
                layer: "local-layer".into(),
                hash: HashAlgo::Sha3_256.into(),
                type_config: None,
            }),
        }
        .into(),
        IpcpRegister {
            hash: vec![0xab; 32],
        }
        .into(),
        IpcpUnregister {
            hash: vec![0xab; 32],
        }
        .into(),
        IpcpQuery { hash: vec![1, 2] }.into(),
        IpcpFlowAlloc {
            flow_id: 9,
            hash: vec![0xcd; 32],
            qos: Some(QosSpec::default()),
            n_pid: 7,
            pool: "o7s.pool".into(),
            tx_ring: 3,
            rx_ring: 4,
            timeout_ms: 20_000,
            piggyback: vec![0x88; 36],
            uid: 65534,
        }
        .into(),
        IpcpFlowDealloc { flow_id: 9 }.into(),
        FlowReqArrived {
            hash: vec![0xcd; 32],
            qos: None,
            timeout_ms: 1000,
            piggyback: vec![0x88; 36],
            max_sdu: Some(1496),
        }
        .into(),
    ]
}

const KINDS: usize = 30;

fn kind_index(kind: &RequestKind) -> usize {
    match kind {
        RequestKind::CreateIpcp(_) => 0,
        RequestKind::DestroyIpcp(_) => 1,
        RequestKind::ListIpcps(_) => 2,
        RequestKind::BootstrapIpcp(_) => 3,
        RequestKind::CreateName(_) => 4,
        RequestKind::DestroyName(_) => 5,
        RequestKind::ListNames(_) => 6,
        RequestKind::RegisterName(_) => 7,
        RequestKind::UnregisterName(_) => 8,
        RequestKind::BindProgram(_) => 9,
        RequestKind::UnbindProgram(_) => 10,
        RequestKind::BindProcess(_) => 11,
        RequestKind::UnbindProcess(_) => 12,
        RequestKind::ProcessAnnounce(_) => 13,
        RequestKind::ProcessExit(_) => 14,
        RequestKind::FlowAlloc(_) => 15,
        RequestKind::FlowAccept(_) => 16,
        RequestKind::FlowDealloc(_) => 17,
        RequestKind::ListFlows(_) => 18,
        RequestKind::IpcpStats(_) => 19,
        RequestKind::ListProcesses(_) => 20,
        RequestKind::ListPrograms(_) => 21,
        RequestKind::IpcpHello(_) => 22,
        RequestKind::IpcpBootstrap(_) => 23,
        RequestKind::IpcpRegister(_) => 24,
        RequestKind::IpcpUnregister(_) => 25,
        RequestKind::IpcpQuery(_) => 26,
        RequestKind::IpcpFlowAlloc(_) => 27,
        RequestKind::IpcpFlowDealloc(_) => 28,
        RequestKind::FlowReqArrived(_) => 29,
    }
}

/// Encodes all envelopes into one stream, decodes it in chunks of the given sizes (cycled).
fn round_trip(envelopes: &[Envelope], chunks: &[usize]) -> Vec<Envelope> {
    let mut stream = Vec::new();
    for e in envelopes {
        Codec::encode(e, &mut stream).expect("encodes");
    }
    let mut decoder = FrameDecoder::new();
    let mut out = Vec::new();
    let mut rest = &stream[..];
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().expect("non-empty chunks")).clamp(1, rest.len());
        let (mut piece, tail) = rest.split_at(n);
        rest = tail;
        while let Some(e) = decoder.decode(&mut piece).expect("decodes") {
            out.push(e);
        }
    }
    decoder.finish().expect("ends on a frame boundary");
    out
}

#[test]
fn every_request_kind_has_a_sample_and_round_trips() {
    let samples = samples();
    let mut seen = [false; KINDS];
    for r in &samples {
        seen[kind_index(r.kind.as_ref().expect("sample has a kind"))] = true;
    }
    assert!(seen.iter().all(|&s| s), "a request kind has no sample");

    let envelopes: Vec<Envelope> = samples
        .iter()
        .enumerate()
        .map(|(i, r)| Envelope::request(i as u64, r.clone()))
        .collect();
    for chunk in [1, 2, 3, 7, 64, 100_000] {
        assert_eq!(round_trip(&envelopes, &[chunk]), envelopes);
    }
    for (i, e) in envelopes.iter().enumerate() {
        let bytes = Codec::encode_to_vec(e).expect("encodes");
        fuzzing::irm(&[[i as u8].as_slice(), &bytes].concat());
    }
}

#[test]
fn responses_round_trip() {
    let responses: Vec<Response> = vec![
        Response::ok(),
        Response::error(
            ErrorCode::NotSupported,
            "flow allocation not implemented yet",
        ),
        ResponseKind::Names(NameList {
            names: vec![NameInfo {
                name: "oping".into(),
                lb: LbPolicy::Spillover.into(),
                programs: vec!["/usr/bin/oping".into()],
                processes: vec![1, 2, 3],
                ipcps: vec!["eth".into()],
            }],
        })
        .into(),
        ResponseKind::Processes(ProcessList {
            processes: vec![ProcessInfo {
                pid: 9,
                program: "oping".into(),
                names: vec!["oping".into()],
            }],
        })
        .into(),
        ResponseKind::Flow(FlowInfo {
            flow_id: 1,
            n_pid: 2,
            n_1_pid: 3,
            mpl: 100,
            qos: Some(QosSpec::default()),
            pool: "o7s.pool".into(),
            tx_ring: 4,
            rx_ring: 5,
            name: "oping".into(),
            n_state: EndState::Active.into(),
            n_1_state: EndState::Dead.into(),
            max_sdu: Some(1496),
            piggyback: vec![1; 84],
            uid: 1000,
        })
        .into(),
        ResponseKind::Announced(AnnounceReply {
            pool: "o7s.pup.1000".into(),
            uid: 1000,
        })
        .into(),
        Response::error(
            ErrorCode::PoolMismatch,
            "the ends use different packet pools",
        ),
        ResponseKind::IpcpFlow(IpcpFlowReply {
            piggyback: vec![2; 84],
            max_sdu: None,
        })
        .into(),
        Response::error(ErrorCode::Auth, "stale OAP header"),
    ];
    let envelopes: Vec<Envelope> = responses
        .into_iter()
        .enumerate()
        .map(|(i, r)| Envelope::response(i as u64 + 1, r))
        .collect();
    assert_eq!(round_trip(&envelopes, &[5]), envelopes);
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,24}"
}

fn code() -> impl Strategy<Value = i32> {
    prop_oneof![0..8i32, any::<i32>()]
}

fn qos() -> impl Strategy<Value = QosSpec> {
    (any::<u32>(), any::<u64>(), any::<[u32; 6]>()).prop_map(|(delay, bandwidth, r)| QosSpec {
        delay,
        bandwidth,
        availability: r[0],
        loss: r[1],
        ber: r[2],
        in_order: r[3],
        max_gap: r[4],
        timeout: r[5],
    })
}

fn target() -> impl Strategy<Value = Option<RegisterTarget>> {
    proptest::option::of(prop_oneof![
        text().prop_map(RegisterTarget::Ipcp),
        text().prop_map(RegisterTarget::Layer),
    ])
}

fn request() -> impl Strategy<Value = Request> {
    use proptest::option::of;
    prop_oneof![
        (code(), text()).prop_map(|(t, name)| CreateIpcp { ipcp_type: t, name }.into()),
        of(prop_oneof![
            text().prop_map(IpcpSelector::Name),
            any::<u32>().prop_map(IpcpSelector::Pid)
        ])
        .prop_map(|ipcp| DestroyIpcp { ipcp }.into()),
        Just(ListIpcps {}.into()),
        (
            text(),
            of((text(), code(), of((text(), any::<u32>(), code()))))
        )
            .prop_map(|(name, config)| BootstrapIpcp {
                name,
                config: config.map(|(layer, hash, eth)| IpcpConfig {
                    layer,
                    hash,
                    type_config: eth.map(|(dev, ethertype, mode)| {
                        IpcpTypeConfig::Eth(EthConfig {
                            dev,
                            ethertype,
                            mode,
                        })
                    }),
                }),
            }
            .into()),
        (text(), code()).prop_map(|(name, lb)| CreateName { name, lb }.into()),
        text().prop_map(|name| DestroyName { name }.into()),
        Just(ListNames {}.into()),
        (text(), target()).prop_map(|(name, target)| RegisterName { name, target }.into()),
        (text(), target()).prop_map(|(name, target)| UnregisterName { name, target }.into()),
        (
            text(),
            text(),
            proptest::collection::vec(text(), 0..4),
            any::<bool>()
        )
            .prop_map(|(name, program, args, auto)| BindProgram {
                name,
                program,
                args,
                auto
            }
            .into()),
        (text(), of(text())).prop_map(|(program, name)| UnbindProgram { program, name }.into()),
        (any::<u32>(), text()).prop_map(|(pid, name)| BindProcess { pid, name }.into()),
        (any::<u32>(), of(text())).prop_map(|(pid, name)| UnbindProcess { pid, name }.into()),
        (any::<u32>(), text()).prop_map(|(pid, program)| ProcessAnnounce { pid, program }.into()),
        any::<u32>().prop_map(|pid| ProcessExit { pid }.into()),
        (text(), of(qos()), of(any::<u32>())).prop_map(|(dst, qos, timeout_ms)| FlowAlloc {
            dst,
            qos,
            timeout_ms
        }
        .into()),
        (of(text()), of(any::<u32>())).prop_map(|(name, timeout_ms)| FlowAccept {
            name,
            timeout_ms
        }
        .into()),
        any::<u32>().prop_map(|flow_id| FlowDealloc { flow_id }.into()),
        Just(ListFlows {}.into()),
        text().prop_map(|name| IpcpStats { name }.into()),
        Just(ListProcesses {}.into()),
        Just(ListPrograms {}.into()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn requests_round_trip_in_any_chunking(
        requests in proptest::collection::vec((any::<u64>(), request()), 1..8),
        chunks in proptest::collection::vec(1usize..80, 1..6),
    ) {
        let envelopes: Vec<Envelope> = requests
            .into_iter()
            .map(|(id, r)| Envelope::request(id, r))
            .collect();
        prop_assert_eq!(round_trip(&envelopes, &chunks), envelopes.clone());
        let mut stream = vec![chunks[0] as u8];
        for e in &envelopes {
            Codec::encode(e, &mut stream).expect("encodes");
        }
        fuzzing::irm(&stream);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzzing::irm(&data);
    }

    #[test]
    fn plausible_frames_never_panic(
        chunk in any::<u8>(),
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..6),
        lie in proptest::option::of(any::<u32>()),
    ) {
        // Well-framed garbage bodies, and optionally one frame whose prefix lies.
        let mut data = vec![chunk];
        for (i, body) in frames.iter().enumerate() {
            let len = match lie {
                Some(l) if i == 0 => l,
                _ => body.len() as u32,
            };
            data.extend_from_slice(&len.to_le_bytes());
            data.extend_from_slice(body);
        }
        fuzzing::irm(&data);
    }
}

#[test]
fn oversized_prefix_then_anything() {
    let mut data = vec![3u8];
    data.extend_from_slice(&u32::MAX.to_le_bytes());
    data.extend_from_slice(&[0u8; 100]);
    fuzzing::irm(&data);
}

/// The fuzz seeds `proto/fuzz/seeds/irm/*`: every sample request as one stream (chunk selector
/// byte first), written by `cargo test -p o7s-proto --test irm -- --ignored write_fuzz_seeds`.
fn seed_streams() -> Vec<(String, Vec<u8>)> {
    let mut all = vec![7u8];
    let mut seeds = Vec::new();
    for (i, r) in samples().into_iter().enumerate() {
        let bytes =
            Codec::encode_to_vec(&Envelope::request(i as u64 + 1, r.clone())).expect("encodes");
        all.extend_from_slice(&bytes);
        let name = r.name().to_ascii_lowercase();
        seeds.push((
            format!("{name}.bin"),
            [[0xffu8].as_slice(), &bytes].concat(),
        ));
    }
    seeds.push(("all-requests.bin".into(), all));
    seeds
}

#[test]
#[ignore = "writes the fuzz seeds"]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/irm");
    std::fs::create_dir_all(&dir).expect("seed dir");
    for (name, bytes) in seed_streams() {
        std::fs::write(dir.join(name), bytes).expect("write seed");
    }
}

#[test]
fn fuzz_seeds_are_current() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/irm");
    for (name, bytes) in seed_streams() {
        let on_disk = std::fs::read(dir.join(&name))
            .unwrap_or_else(|e| panic!("seed {name}: {e} (run write_fuzz_seeds)"));
        assert_eq!(
            on_disk, bytes,
            "seed {name} is stale (run write_fuzz_seeds)"
        );
        fuzzing::irm(&on_disk);
    }
}

/// The per-user-pool fields on the wire: the announce answer is response kind 12 (pool = field
/// 1, uid = field 2), `IpcpFlowAlloc.uid` field 10, `FlowInfo.uid` field 14.
#[test]
fn pool_fields_have_their_tags() {
    use prost::Message as _;
    let announced = Response::from(ResponseKind::Announced(AnnounceReply {
        pool: "p".into(),
        uid: 5,
    }));
    assert_eq!(announced.encode_to_vec(), [0x62, 5, 0x0a, 1, b'p', 0x10, 5]);
    let alloc = IpcpFlowAlloc {
        uid: 7,
        ..IpcpFlowAlloc::default()
    };
    assert_eq!(alloc.encode_to_vec(), [0x50, 7]);
    let info = FlowInfo {
        uid: 7,
        ..FlowInfo::default()
    };
    assert_eq!(info.encode_to_vec(), [0x70, 7]);
    assert_eq!(i32::from(ErrorCode::PoolMismatch), 11);
}
