//! Test harness shared by the integration tests and benches of several packages (a
//! dev-dependency only):
//!
//! - [`build_bins`]: builds binaries of other packages into the test's target directory;
//! - `Irmd`: a real `irmd` on a temporary run directory, stopped (with its IPCPs and the
//!   processes started through it) and cleaned up on drop (feature `hosts`, on by default);
//! - [`process`]: running tool processes with timeouts, reading their output line by line;
//! - `netns`: a pair of network namespaces joined by a veth pair, deleted on drop, the skip
//!   check of the tests needing them, and a capture of the eth-dix frames in a namespace
//!   (feature `hosts`);
//! - [`CountingAlloc`]: the global allocator of the tests that check a path allocates nothing;
//! - [`bench`]: quantiles and the machine facts (load, CPUs two threads get) the benches report;
//! - `Leftovers`, `alive`, `shm_objects`, `assert_no_netns`: checks that a teardown left no
//!   process, namespace or shared memory (feature `hosts`);
//! - `AnyoneBin`: programs linked into a directory any uid may run them from (feature `hosts`).

mod alloc;
#[cfg(feature = "hosts")]
mod anyone;
pub mod bench;
mod build;
#[cfg(feature = "hosts")]
mod irmd;
#[cfg(feature = "hosts")]
pub mod netns;
pub mod process;
#[cfg(feature = "hosts")]
mod teardown;

pub use alloc::CountingAlloc;
#[cfg(feature = "hosts")]
pub use anyone::AnyoneBin;
pub use build::{build_bins, cargo_build};
#[cfg(feature = "hosts")]
pub use irmd::{Irmd, Options, Stop, eth_dix, temp_dir};
pub use process::{Lines, run, run_timed, text, wait_output};
#[cfg(feature = "hosts")]
pub use teardown::{Leftovers, alive, assert_no_netns, shm_objects};

use std::time::Duration;

/// Declares `[$vis] struct $name(Irmd)`, a test's own host type around an [`Irmd`] (for the test's
/// helpers), that derefs to the [`Irmd`].
#[cfg(feature = "hosts")]
#[macro_export]
macro_rules! irmd_host {
    ($(#[$meta:meta])* $vis:vis $name:ident) => {
        $(#[$meta])*
        $vis struct $name($crate::Irmd);

        impl ::std::ops::Deref for $name {
            type Target = $crate::Irmd;
            fn deref(&self) -> &$crate::Irmd {
                &self.0
            }
        }

        impl ::std::ops::DerefMut for $name {
            fn deref_mut(&mut self) -> &mut $crate::Irmd {
                &mut self.0
            }
        }
    };
}

/// How long the harness waits for a process (the IRMd's socket, a tool's line or exit).
pub const TIMEOUT: Duration = Duration::from_secs(20);
