//! The AF_XDP back end [`XdpIo`] and its pieces: [`Xsk`], one AF_XDP socket with its
//! own UMEM and rings, [`frame`], the Ethernet/IP/UDP framing the relay
//! does itself when it bypasses the kernel's stack, and [`neigh`], the
//! next-hop MAC addresses it takes from the kernel's route and neighbour
//! tables.

pub mod frame;
mod io;
pub mod neigh;
mod socket;

pub(crate) use io::probe;
pub use io::{XdpConfig, XdpIo, XdpIoStats};
pub use socket::{Xsk, XskConfig, XskMode, XskStats};
