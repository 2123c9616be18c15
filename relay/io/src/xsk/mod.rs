//! The pieces of the AF_XDP back end: [`Xsk`], one AF_XDP socket with its
//! own UMEM and rings, and [`frame`], the Ethernet/IP/UDP framing the relay
//! does itself when it bypasses the kernel's stack.

pub mod frame;
mod socket;

pub use socket::{Xsk, XskConfig, XskMode, XskStats};
