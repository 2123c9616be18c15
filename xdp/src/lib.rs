//! tern's XDP pre-filter: the eBPF program in `src/bpf/tern.bpf.c` (built by
//! `build.rs` into a libbpf-rs skeleton), and the loader the relay drives.
//!
//! [`Filter::load`] loads the program with a [`FilterConfig`];
//! [`Filter::attach`] puts it on an interface in native mode where the driver
//! allows it and generic mode otherwise (or the mode asked for), through a
//! `bpf_link`, so the kernel detaches it when the process exits — even when it
//! crashes. A stale tern program attached the old way (netlink, e.g. by an
//! earlier version or by hand) is recognised by its name and replaced; any
//! other program already on the interface is left alone and reported as an
//! error. Dropping the [`Attachment`] detaches. [`Filter::set_config`] changes
//! ports, ranges and limits while the program runs; [`Filter::counters`] sums
//! the per-CPU counters of every verdict and reason.
//!
//! This crate owns the program and its maps; it does not own sockets: the
//! AF_XDP back end registers its sockets through [`Filter::register_xsk`].

mod attach;
mod config;
mod counters;

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, OpenObject};

pub use attach::{installed, AttachMode, AttachedMode, Attachment, Installed};
pub use config::{ConfigError, FilterConfig, MAX_LISTEN_PORTS};
pub use counters::{Counter, Counters, Verdict};

#[allow(
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    rust_2018_idioms
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/tern.skel.rs"));
}

use skel::{TernSkel, TernSkelBuilder};

/// The program's name as the kernel reports it (`bpftool prog`); how a stale
/// tern program is recognised.
pub const PROGRAM_NAME: &str = "tern_xdp";

/// Default size of the per-source table of the unauthenticated-request limit.
pub const DEFAULT_SOURCE_TABLE: u32 = 65_536;

/// What went wrong loading, attaching or talking to the program.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration was refused before reaching the kernel.
    #[error("XDP configuration: {0}")]
    Config(#[from] ConfigError),
    /// Opening or loading the BPF object failed (no CAP_BPF/CAP_SYS_ADMIN,
    /// memlock, verifier).
    #[error("loading the XDP program: {0}")]
    Load(#[source] libbpf_rs::Error),
    /// A map operation failed.
    #[error("XDP map {map}: {source}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// What libbpf said.
        #[source]
        source: libbpf_rs::Error,
    },
    /// No interface of that name.
    #[error("no network interface named {0:?}")]
    NoInterface(String),
    /// The interface already runs an XDP program that is not tern's.
    #[error("{ifname} already runs XDP program {name:?} (id {id}); tern does not replace it")]
    Occupied {
        /// The interface.
        ifname: String,
        /// The other program's name.
        name: String,
        /// Its kernel id.
        id: u32,
    },
    /// Another live process holds tern's program on the interface by a link.
    #[error("{ifname}: another process holds tern's XDP program (id {id}) by a bpf_link")]
    HeldByLink {
        /// The interface.
        ifname: String,
        /// The program's kernel id.
        id: u32,
    },
    /// The driver or kernel refused the attach mode.
    #[error("attaching XDP to {ifname} in {mode} mode: {source}")]
    Attach {
        /// The interface.
        ifname: String,
        /// The mode tried.
        mode: AttachedMode,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
    /// A system call around the attachment failed.
    #[error("{what}: {source}")]
    Sys {
        /// The operation.
        what: &'static str,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
    /// The program and this crate disagree (a build mismatch).
    #[error("XDP program layout mismatch: {0}")]
    Layout(String),
}

/// The verdict `BPF_PROG_TEST_RUN` returned for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// XDP_ABORTED.
    Aborted,
    /// XDP_DROP.
    Drop,
    /// XDP_PASS.
    Pass,
    /// XDP_TX.
    Tx,
    /// XDP_REDIRECT.
    Redirect,
    /// A value the program never returns.
    Other(u32),
}

impl From<u32> for Action {
    fn from(v: u32) -> Action {
        match v {
            0 => Action::Aborted,
            1 => Action::Drop,
            2 => Action::Pass,
            3 => Action::Tx,
            4 => Action::Redirect,
            other => Action::Other(other),
        }
    }
}

/// The loaded program and its maps. Attachments made from it keep the program
/// in the kernel on their own; dropping the `Filter` first is fine.
pub struct Filter {
    // Declared before `storage`: it borrows it and must be dropped first.
    skel: Option<TernSkel<'static>>,
    storage: *mut MaybeUninit<OpenObject>,
    config: FilterConfig,
}

// SAFETY: `TernSkel` is Send; `storage` is only reached through `skel`, which
// moves with the `Filter`, and is freed in `Drop` after `skel`.
unsafe impl Send for Filter {}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Filter {
    /// Load the program with `config` and a per-source table of
    /// [`DEFAULT_SOURCE_TABLE`] entries. Needs CAP_BPF (or root).
    pub fn load(config: &FilterConfig) -> Result<Filter, Error> {
        Filter::load_with_table(config, DEFAULT_SOURCE_TABLE)
    }

    /// [`Filter::load`] with `sources` entries in the LRU table of the
    /// unauthenticated-request limit (fixed at load).
    pub fn load_with_table(config: &FilterConfig, sources: u32) -> Result<Filter, Error> {
        let raw = config.to_raw()?;
        let storage = Box::into_raw(Box::new(MaybeUninit::<OpenObject>::uninit()));
        let mut filter = Filter {
            skel: None,
            storage,
            config: config.clone(),
        };
        // SAFETY: `storage` came from Box::into_raw above and lives until
        // `Drop for Filter`, which drops the skeleton (the only borrower)
        // first; so the 'static borrow never outlives the allocation.
        let object: &'static mut MaybeUninit<OpenObject> = unsafe { &mut *storage };
        let mut open = TernSkelBuilder::default()
            .open(object)
            .map_err(Error::Load)?;
        open.maps
            .unauth_tat
            .set_max_entries(sources.max(1))
            .map_err(|source| Error::Map {
                map: "unauth_tat",
                source,
            })?;
        let skel = open.load().map_err(Error::Load)?;
        let slots = skel.maps.counters.max_entries() as usize;
        if slots != Counter::ALL.len() {
            return Err(Error::Layout(format!(
                "the program has {slots} counters, the loader knows {}",
                Counter::ALL.len()
            )));
        }
        let value = skel.maps.config.value_size() as usize;
        if value != raw.len() {
            return Err(Error::Layout(format!(
                "config value is {value} bytes in the program, {} in the loader",
                raw.len()
            )));
        }
        filter.skel = Some(skel);
        filter.write_config(&raw)?;
        Ok(filter)
    }

    /// The configuration in force.
    pub fn config(&self) -> &FilterConfig {
        &self.config
    }

    /// Replace the configuration; the running program sees it from its next
    /// packet (a packet racing the update may see a mix of old and new).
    pub fn set_config(&mut self, config: &FilterConfig) -> Result<(), Error> {
        let raw = config.to_raw()?;
        self.write_config(&raw)?;
        self.config = config.clone();
        Ok(())
    }

    /// Sum of the per-CPU counters.
    pub fn counters(&self) -> Result<Counters, Error> {
        let map = &self.skel().maps.counters;
        let mut counters = Counters::default();
        for counter in Counter::ALL {
            let key = (counter as u32).to_ne_bytes();
            let per_cpu = map
                .lookup_percpu(&key, MapFlags::ANY)
                .map_err(|source| Error::Map {
                    map: "counters",
                    source,
                })?
                .unwrap_or_default();
            let total = per_cpu
                .iter()
                .filter_map(|v| v.get(..8))
                .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
                .fold(0u64, u64::wrapping_add);
            counters.set(counter, total);
        }
        Ok(counters)
    }

    /// Attach to `ifname` in `mode` (see [`AttachMode`]). The returned
    /// attachment detaches when dropped.
    pub fn attach(&self, ifname: &str, mode: AttachMode) -> Result<Attachment, Error> {
        attach::attach(self.program_fd(), ifname, mode)
    }

    /// Put AF_XDP socket `xsk_fd` in the redirect map for `queue`.
    pub fn register_xsk(&self, queue: u32, xsk_fd: BorrowedFd<'_>) -> Result<(), Error> {
        let fd = u32::try_from(xsk_fd.as_raw_fd()).map_err(|_| Error::Sys {
            what: "register_xsk",
            source: std::io::Error::from_raw_os_error(libc::EBADF),
        })?;
        self.skel()
            .maps
            .xsks
            .update(&queue.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| Error::Map {
                map: "xsks",
                source,
            })
    }

    /// Redirect relay traffic received on `queue` into its AF_XDP socket only
    /// for ports in `ports` (the slice of the worker serving that queue);
    /// other relay ports go up the stack to their worker's socket. `None`
    /// lifts the restriction.
    pub fn set_queue_slice(
        &self,
        queue: u32,
        ports: Option<std::ops::RangeInclusive<u16>>,
    ) -> Result<(), Error> {
        let (lo, hi) = ports.map_or((0, 0), |r| (*r.start(), *r.end()));
        let mut value = [0u8; 4];
        value[..2].copy_from_slice(&lo.to_ne_bytes());
        value[2..].copy_from_slice(&hi.to_ne_bytes());
        self.skel()
            .maps
            .queue_slices
            .update(&queue.to_ne_bytes(), &value, MapFlags::ANY)
            .map_err(|source| Error::Map {
                map: "queue_slices",
                source,
            })
    }

    /// Put AF_XDP socket `xsk_fd`, bound to queue `queue` of interface
    /// `ifindex`, in the redirect map (for relays with sockets on several
    /// interfaces; the interface gets a slot the first time). At most 16
    /// interfaces and 256 queues.
    pub fn register_xsk_on(
        &self,
        ifindex: u32,
        queue: u32,
        xsk_fd: BorrowedFd<'_>,
    ) -> Result<(), Error> {
        let slots = &self.skel().maps.if_slots;
        let key = ifindex.to_ne_bytes();
        let slot = match slots.lookup(&key, MapFlags::ANY) {
            Ok(Some(v)) if v.len() == 4 => u32::from_ne_bytes([v[0], v[1], v[2], v[3]]),
            Ok(_) => {
                let next = slots.keys().count() as u32;
                slots
                    .update(&key, &next.to_ne_bytes(), MapFlags::NO_EXIST)
                    .map_err(|source| Error::Map {
                        map: "if_slots",
                        source,
                    })?;
                next
            }
            Err(source) => {
                return Err(Error::Map {
                    map: "if_slots",
                    source,
                })
            }
        };
        if queue >= 256 || slot >= 16 {
            return Err(Error::Sys {
                what: "register_xsk_on",
                source: std::io::Error::from_raw_os_error(libc::E2BIG),
            });
        }
        self.register_xsk(slot * 256 + queue, xsk_fd)
    }

    /// Remove the AF_XDP socket of `queue` from the redirect map (absent is fine).
    pub fn unregister_xsk(&self, queue: u32) -> Result<(), Error> {
        match self.skel().maps.xsks.delete(&queue.to_ne_bytes()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Map {
                map: "xsks",
                source,
            }),
        }
    }

    /// Run the program once on `frame` with `BPF_PROG_TEST_RUN` (counters
    /// count it like a received frame). Frames shorter than an Ethernet header
    /// are refused by the kernel.
    pub fn test_run(&self, frame: &[u8]) -> Result<Action, Error> {
        let input = libbpf_rs::ProgramInput {
            data_in: Some(frame),
            ..Default::default()
        };
        let out = self
            .skel()
            .progs
            .tern_xdp
            .test_run(input)
            .map_err(|source| Error::Map {
                map: "test_run",
                source,
            })?;
        Ok(Action::from(out.return_value))
    }

    /// Forget every source in the unauthenticated-request table (tests, and
    /// after a limit change).
    pub fn clear_sources(&self) -> Result<(), Error> {
        let map = &self.skel().maps.unauth_tat;
        let keys: Vec<Vec<u8>> = map.keys().collect();
        for key in keys {
            match map.delete(&key) {
                Ok(()) => {}
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Map {
                        map: "unauth_tat",
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// The program's descriptor (for `bpftool`-style inspection and tests).
    pub fn program_fd(&self) -> BorrowedFd<'_> {
        self.skel().progs.tern_xdp.as_fd()
    }

    fn skel(&self) -> &TernSkel<'static> {
        // INVARIANT: `skel` is Some from the end of `load_with_table` until Drop.
        self.skel.as_ref().expect("skeleton is loaded")
    }

    fn write_config(&self, raw: &[u8]) -> Result<(), Error> {
        self.skel()
            .maps
            .config
            .update(&0u32.to_ne_bytes(), raw, MapFlags::ANY)
            .map_err(|source| Error::Map {
                map: "config",
                source,
            })
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        drop(self.skel.take());
        // SAFETY: `storage` came from Box::into_raw in `load_with_table` and
        // nothing borrows it any more: the skeleton was dropped just above.
        drop(unsafe { Box::from_raw(self.storage) });
    }
}
