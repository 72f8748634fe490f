//! A small driver for pool objects, used by the multi-process and crash tests (and handy for
//! poking at a live pool): each subcommand runs one role in its own process.
//!
//! ```text
//! o7s-pool-tool open    POOL                       exit 0 if it opens, 13 on EACCES, 1 otherwise
//! o7s-pool-tool verify  POOL                       print the verify() report; exit 1 on problems
//! o7s-pool-tool storm   POOL SEED STOPFILE          random alloc/free/hold until STOPFILE exists
//! o7s-pool-tool produce POOL RING|- COUNT           write COUNT numbered packets (sizes vary)
//! o7s-pool-tool consume POOL RING|- COUNT           read and check COUNT numbered packets
//! o7s-pool-tool hang-in-lock POOL                   take a shard lock, half-pop, then sleep
//! o7s-pool-tool hold-locks POOL                     take every shard lock, then sleep
//! ```

use std::process::ExitCode;
use std::time::Duration;

use o7s_pool::{Error, Pool};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    let num = |i: usize| arg(i).parse::<u64>().unwrap_or(0);
    let result = match arg(0) {
        "open" => return open(arg(1)),
        "verify" => {
            return match Pool::open(arg(1)) {
                Ok(p) => {
                    let r = p.verify();
                    println!("{r:?}");
                    if r.is_ok() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("o7s-pool-tool: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        "storm" => storm(arg(1), num(2), arg(3)),
        "produce" => produce(arg(1), ring_id(arg(2)), num(3)),
        "consume" => consume(arg(1), ring_id(arg(2)), num(3)),
        "hang-in-lock" => Pool::open(arg(1)).map(|p| p.debug_hang_in_lock()),
        "hold-locks" => Pool::open(arg(1)).map(|p| p.debug_hold_shard_locks()),
        other => {
            eprintln!("o7s-pool-tool: unknown command {other:?} (see the source's doc comment)");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("o7s-pool-tool: {e}");
            ExitCode::FAILURE
        }
    }
}

fn open(name: &str) -> ExitCode {
    match Pool::open(name) {
        Ok(_) => ExitCode::SUCCESS,
        Err(Error::Sys { source, .. }) if source.raw_os_error() == Some(libc::EACCES) => {
            eprintln!("o7s-pool-tool: {name}: permission denied");
            ExitCode::from(13)
        }
        Err(e) => {
            eprintln!("o7s-pool-tool: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A ring id from argv, or from a line on stdin when given as `-` (ring ends are pids, so a
/// parent learns the child's pid first, then creates the ring and tells the child).
fn ring_id(arg: &str) -> u32 {
    if arg == "-" {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        line.trim().parse().unwrap_or(u32::MAX)
    } else {
        arg.parse().unwrap_or(u32::MAX)
    }
}

/// xorshift: deterministic per seed, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn storm(name: &str, seed: u64, stopfile: &str) -> Result<(), Error> {
    let pool = Pool::open(name)?;
    let mut rng = Rng(seed | 1);
    let mut live = Vec::new();
    let mut held = Vec::new();
    let max = pool.layout().max_len() as u64;
    let mut ops = 0u64;
    loop {
        if ops.is_multiple_of(4096) && std::path::Path::new(stopfile).exists() {
            break;
        }
        ops += 1;
        match rng.next() % 8 {
            0..=3 if live.len() < 24 => {
                let len = (rng.next() % (max + 1)).min(rng.next() % 5000) as usize;
                match pool.try_alloc(len) {
                    Ok(mut p) => {
                        if let Some(b) = p.data_mut().first_mut() {
                            *b = ops as u8;
                        }
                        live.push(p);
                    }
                    Err(e) if e.is_would_block() => {}
                    Err(e) => return Err(e),
                }
            }
            4 if !live.is_empty() => {
                let i = (rng.next() as usize) % live.len();
                let p = live.swap_remove(i);
                if held.len() < 8 && p.hold().is_ok() {
                    held.push(p.index());
                }
                drop(p);
            }
            5 if !held.is_empty() => {
                let index = held.swap_remove((rng.next() as usize) % held.len());
                pool.unhold(index)?;
            }
            _ if !live.is_empty() => {
                live.swap_remove((rng.next() as usize) % live.len());
            }
            _ => {}
        }
    }
    drop(live);
    for index in held {
        pool.unhold(index)?;
    }
    println!("storm ops {ops}");
    Ok(())
}

fn produce(name: &str, ring: u32, count: u64) -> Result<(), Error> {
    let pool = Pool::open(name)?;
    let writer = pool.ring_writer(ring)?;
    for n in 0..count {
        let len = 8 + (n % 1500) as usize;
        let mut p = pool.alloc(len, Some(Duration::from_secs(10)))?;
        let data = p.data_mut();
        data[..8].copy_from_slice(&n.to_le_bytes());
        for (k, b) in data[8..].iter_mut().enumerate() {
            *b = (n as usize + k) as u8;
        }
        writer
            .write(p, Some(Duration::from_secs(10)))
            .map_err(|(_, e)| e)?;
    }
    Ok(())
}

fn consume(name: &str, ring: u32, count: u64) -> Result<(), Error> {
    let pool = Pool::open(name)?;
    let reader = pool.ring_reader(ring)?;
    for n in 0..count {
        let p = reader.read(Some(Duration::from_secs(10)))?;
        let data = p.data();
        let expect_len = 8 + (n % 1500) as usize;
        let seq = data
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
        let body_ok = data[8.min(data.len())..]
            .iter()
            .enumerate()
            .all(|(k, &b)| b == (n as usize + k) as u8);
        if data.len() != expect_len || seq != Some(n) || !body_ok {
            eprintln!(
                "o7s-pool-tool: packet {n} corrupt or out of order: len {} seq {seq:?}",
                data.len()
            );
            std::process::exit(3);
        }
    }
    println!("consumed {count}");
    Ok(())
}
