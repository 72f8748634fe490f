//! The async API over a real IRMd, on `current_thread` runtimes: if any call blocked the one
//! thread, the echo tests below would deadlock instead of finishing.

mod util;

use std::time::{Duration, Instant};

use o7s::Error;
use o7s::aio::{AsyncClient, AsyncFlow};
use tokio::runtime::Runtime;
use util::{Helper, TIMEOUT, irmd};

const ECHO: &str = "O7S_TEST_AIO_ECHO";
const SDUS: u32 = 10_000;
/// The longest an echo run may take before it counts as stuck.
const RUN_LIMIT: Duration = Duration::from_secs(120);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current_thread runtime")
}

/// Echoes SDUs until the flow ends, copying; returns how many.
async fn echo_copy(flow: &AsyncFlow) -> u32 {
    let mut buf = vec![0u8; 65536];
    let mut n = 0;
    loop {
        match flow.read(&mut buf).await {
            Ok(len) => flow.write(&buf[..len]).await.expect("echo write"),
            Err(e) if e.is_flow_end() => return n,
            Err(e) => panic!("echo read: {e}"),
        }
        n += 1;
    }
}

/// Echoes SDUs until the flow ends without a copy: the block read is the block sent back.
async fn echo_zero_copy(flow: &AsyncFlow) -> u32 {
    let mut n = 0;
    loop {
        match flow.read_packet().await {
            Ok(packet) => flow.write_packet(packet).await.expect("echo write"),
            Err(e) if e.is_flow_end() => return n,
            Err(e) => panic!("echo read: {e}"),
        }
        n += 1;
    }
}

/// The SDU number `seq`: its number, then a pattern; 8 to 1407 bytes.
fn sdu(seq: u32, buf: &mut [u8]) -> usize {
    let len = 8 + (seq % 1400) as usize;
    buf[..4].copy_from_slice(&seq.to_le_bytes());
    for (k, b) in buf[4..len].iter_mut().enumerate() {
        *b = (seq as usize + k) as u8;
    }
    len
}

/// Writes [`SDUS`] SDUs and reads their echoes concurrently, on the caller's task; checks
/// each echo's length, number and bytes. Returns the SDUs echoed per second.
async fn echo_client(flow: &AsyncFlow) -> f64 {
    let start = Instant::now();
    let writer = async {
        let mut buf = vec![0u8; 2048];
        for seq in 0..SDUS {
            let len = sdu(seq, &mut buf);
            flow.write(&buf[..len]).await.expect("client write");
        }
    };
    let reader = async {
        let (mut got, mut want) = (vec![0u8; 2048], vec![0u8; 2048]);
        for seq in 0..SDUS {
            let n = flow.read(&mut got).await.expect("client read");
            let len = sdu(seq, &mut want);
            assert_eq!(&got[..n], &want[..len], "echo {seq} wrong or out of order");
        }
    };
    tokio::join!(writer, reader);
    f64::from(SDUS) / start.elapsed().as_secs_f64()
}

/// Helper process (run by `echo_with_a_server_process`): `O7S_TEST_AIO_ECHO=NAME` binds NAME,
/// prints `listening`, accepts one flow and echoes it without a copy on a `current_thread`
/// runtime until it ends, then prints `echoed N`. Does nothing when run directly.
#[test]
#[ignore = "helper process for the aio tests"]
fn echo_process() {
    let Ok(name) = std::env::var(ECHO) else {
        return;
    };
    runtime().block_on(async {
        let client = AsyncClient::connect().await.expect("helper connects");
        client.bind(&name).await.expect("bind");
        println!("listening");
        let flow = client
            .flow_accept(Some(TIMEOUT))
            .await
            .expect("helper accepts");
        let n = echo_zero_copy(&flow).await;
        println!("echoed {n}");
    });
}

#[test]
fn echo_10000_sdus_in_order_with_server_and_client_on_one_current_thread_runtime() {
    let host = irmd();
    runtime().block_on(async {
        let client = AsyncClient::connect_to(&host.rundir)
            .await
            .expect("connect");
        client.bind("aio-echo").await.expect("bind");
        let acceptor = client.clone();
        let server = tokio::spawn(async move {
            let flow = acceptor.flow_accept(Some(TIMEOUT)).await.expect("accept");
            echo_copy(&flow).await
        });
        let flow = client
            .flow_alloc("aio-echo", None, Some(TIMEOUT))
            .await
            .expect("alloc");
        let rate = tokio::time::timeout(RUN_LIMIT, echo_client(&flow))
            .await
            .expect("the echo finishes: nothing blocked the runtime");
        println!("one runtime, both ends: {rate:.0} SDUs/s echoed");
        flow.dealloc().await.expect("dealloc");
        let echoed = tokio::time::timeout(TIMEOUT, server)
            .await
            .expect("the server sees the end")
            .expect("server task");
        assert_eq!(echoed, SDUS);
    });
}

#[test]
fn echo_10000_sdus_in_order_with_a_server_process() {
    let host = irmd();
    let mut server = Helper::spawn(&host, "echo_process", (ECHO, "aio-echo-process"));
    server.wait_for("listening");
    runtime().block_on(async {
        let client = AsyncClient::connect_to(&host.rundir)
            .await
            .expect("connect");
        let flow = client
            .flow_alloc("aio-echo-process", None, Some(TIMEOUT))
            .await
            .expect("alloc");
        assert_eq!(flow.peer_pid(), server.pid());
        let rate = tokio::time::timeout(RUN_LIMIT, echo_client(&flow))
            .await
            .expect("the echo finishes: nothing blocked the runtime");
        println!("server process, zero-copy echo: {rate:.0} SDUs/s echoed");
        flow.dealloc().await.expect("dealloc");
    });
    let line = server.wait_for("echoed");
    assert_eq!(line, format!("echoed {SDUS}"));
    server.finish();
}

/// Two async ends of one flow in this process: (allocating, accepting).
async fn pair(client: &AsyncClient, name: &str) -> (AsyncFlow, AsyncFlow) {
    client.bind(name).await.expect("bind");
    let (alloc, accept) = tokio::join!(
        client.flow_alloc(name, None, Some(TIMEOUT)),
        client.flow_accept_for(Some(name), Some(TIMEOUT))
    );
    (alloc.expect("alloc"), accept.expect("accept"))
}

#[test]
fn a_write_to_a_full_ring_waits_for_room_and_cancelling_it_sends_nothing() {
    let host = irmd();
    runtime().block_on(async {
        let client = AsyncClient::connect_to(&host.rundir)
            .await
            .expect("connect");
        let (a, b) = pair(&client, "aio-full").await;
        let capacity = a.pool().layout().config.ring_capacity;
        for _ in 0..capacity {
            a.write(b"fill").await.expect("write");
        }
        assert_eq!(b.rx_queue_len().expect("len"), capacity);
        // The ring is full: the write waits (the timer on this same thread still fires).
        let cancelled = tokio::time::timeout(Duration::from_millis(100), a.write(b"late")).await;
        assert!(cancelled.is_err(), "a write to a full ring waits");
        assert_eq!(b.rx_queue_len().expect("len"), capacity, "nothing sent");
        // Room comes when the other end reads: the waiting write completes.
        let (written, read) =
            tokio::join!(tokio::time::timeout(TIMEOUT, a.write(b"last")), async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let mut buf = [0u8; 16];
                b.read(&mut buf).await.map(|n| buf[..n].to_vec())
            });
        written.expect("woken by the read").expect("write");
        assert_eq!(read.expect("read"), b"fill");
        assert_eq!(b.rx_queue_len().expect("len"), capacity);
        // Zero-copy write of an allocated packet takes the same path.
        let mut packet = a.alloc_packet(4).await.expect("alloc");
        packet.data_mut().copy_from_slice(b"zero");
        let (sent, _) = tokio::join!(a.write_packet(packet), async {
            let mut buf = [0u8; 16];
            b.read(&mut buf).await.expect("read")
        });
        sent.expect("write_packet");
    });
}

#[test]
fn a_waiting_read_is_cancellable_and_ends_when_the_peer_deallocates() {
    let host = irmd();
    runtime().block_on(async {
        let client = AsyncClient::connect_to(&host.rundir)
            .await
            .expect("connect");
        let (a, b) = pair(&client, "aio-read").await;
        let mut buf = [0u8; 16];
        let idle = tokio::time::timeout(Duration::from_millis(100), a.read(&mut buf)).await;
        assert!(idle.is_err(), "nothing to read: the read waits");
        b.write(b"after").await.expect("write");
        let n = tokio::time::timeout(TIMEOUT, a.read(&mut buf))
            .await
            .expect("woken")
            .expect("read");
        assert_eq!(&buf[..n], b"after");
        let (ended, dealloc) =
            tokio::join!(tokio::time::timeout(TIMEOUT, a.read(&mut buf)), async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                b.dealloc().await
            });
        dealloc.expect("dealloc");
        assert!(matches!(
            ended.expect("woken by the end"),
            Err(Error::FlowDown)
        ));
    });
}

#[test]
fn dropping_async_flows_in_a_runtime_deallocates_them() {
    let host = irmd();
    runtime().block_on(async {
        let client = AsyncClient::connect_to(&host.rundir)
            .await
            .expect("connect");
        let (a, b) = pair(&client, "aio-drop").await;
        drop((a, b));
        drop(client);
    });
    let deadline = Instant::now() + TIMEOUT;
    while !host.flows().is_empty() {
        assert!(Instant::now() < deadline, "flows left: {:?}", host.flows());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_killed_process_leaves_no_event_set_behind() {
    let host = irmd();
    let mut server = Helper::spawn(&host, "echo_process", (ECHO, "aio-killed"));
    server.wait_for("listening");
    let tag = format!(".ev.{}.", server.pid());
    let event_sets = || -> Vec<String> {
        std::fs::read_dir("/dev/shm")
            .expect("/dev/shm")
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(&host.shm_prefix()) && n.contains(&tag))
            .collect()
    };
    assert_eq!(event_sets().len(), 1, "the server's client made its set");
    server.kill();
    let deadline = Instant::now() + TIMEOUT;
    while !event_sets().is_empty() {
        assert!(Instant::now() < deadline, "left behind: {:?}", event_sets());
        std::thread::sleep(Duration::from_millis(10));
    }
}
