//! Attaching the program to an interface through a `bpf_link` (the kernel
//! detaches it when the link's last descriptor closes, so a crashed relay
//! leaves nothing behind), choosing native or generic mode, and clearing a
//! stale tern program attached the old way (netlink). Owns nothing else: the
//! program and its maps belong to `Filter`.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::{Error, PROGRAM_NAME};

/// Which XDP mode to ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode where the driver supports it, generic otherwise.
    Auto,
    /// Native mode or an error.
    Native,
    /// Generic (skb) mode: works on every interface, after the skb is built.
    Generic,
}

/// The mode the program runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    /// In the driver, before an skb exists.
    Native,
    /// In the stack, on the skb.
    Generic,
}

impl AttachedMode {
    /// `native` or `generic`.
    pub fn label(self) -> &'static str {
        match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
        }
    }

    fn flag(self) -> u32 {
        match self {
            AttachedMode::Native => libbpf_sys::XDP_FLAGS_DRV_MODE,
            AttachedMode::Generic => libbpf_sys::XDP_FLAGS_SKB_MODE,
        }
    }
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The program on one interface. Dropping it detaches the program.
#[derive(Debug)]
pub struct Attachment {
    ifname: String,
    ifindex: u32,
    mode: AttachedMode,
    replaced: Option<u32>,
    native_error: Option<String>,
    link: OwnedFd,
}

impl Attachment {
    /// The interface's name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The interface's index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The mode the program runs in.
    pub fn mode(&self) -> AttachedMode {
        self.mode
    }

    /// The kernel id of a stale tern program this attachment replaced.
    pub fn replaced_stale(&self) -> Option<u32> {
        self.replaced
    }

    /// Why native mode was not used, when `Auto` fell back to generic.
    pub fn native_error(&self) -> Option<&str> {
        self.native_error.as_deref()
    }

    /// Detach now, reporting an error (dropping detaches silently).
    pub fn detach(self) -> Result<(), Error> {
        // SAFETY: `link` is an open bpf_link descriptor owned by self.
        let rc = unsafe { libbpf_sys::bpf_link_detach(self.link.as_raw_fd()) };
        if rc < 0 {
            return Err(Error::Sys {
                what: "bpf_link_detach",
                source: io::Error::from_raw_os_error(-rc),
            });
        }
        Ok(())
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        // Closing the descriptor detaches too, unless a forked child still
        // holds a copy; detaching the link explicitly covers that case.
        // SAFETY: `link` is an open bpf_link descriptor owned by self.
        unsafe { libbpf_sys::bpf_link_detach(self.link.as_raw_fd()) };
    }
}

/// An XDP program found on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// The mode it runs in.
    pub mode: AttachedMode,
    /// Its kernel id.
    pub id: u32,
    /// Its name (tern's is [`PROGRAM_NAME`]).
    pub name: String,
}

/// The XDP programs on `ifname`, any owner.
pub fn installed(ifname: &str) -> Result<Vec<Installed>, Error> {
    let now = query(ifindex(ifname)?)?;
    let mut out = Vec::new();
    for (held, mode) in [
        (now.native, AttachedMode::Native),
        (now.generic, AttachedMode::Generic),
    ] {
        if let Some(id) = held {
            out.push(Installed {
                mode,
                id,
                name: program_name(id)?,
            });
        }
    }
    Ok(out)
}

/// What is attached to an interface now, by mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Attached {
    pub(crate) native: Option<u32>,
    pub(crate) generic: Option<u32>,
}

pub(crate) fn attach(
    prog: BorrowedFd<'_>,
    ifname: &str,
    mode: AttachMode,
) -> Result<Attachment, Error> {
    let ifindex = ifindex(ifname)?;
    let mut replaced = None;
    let now = query(ifindex)?;
    for (held, m) in [
        (now.native, AttachedMode::Native),
        (now.generic, AttachedMode::Generic),
    ] {
        if let Some(id) = held {
            clear_stale(ifname, ifindex, id, m)?;
            replaced = Some(id);
        }
    }
    let (mode, link, native_error) = match mode {
        AttachMode::Native => (
            AttachedMode::Native,
            link_create(prog, ifindex, ifname, AttachedMode::Native)?,
            None,
        ),
        AttachMode::Generic => (
            AttachedMode::Generic,
            link_create(prog, ifindex, ifname, AttachedMode::Generic)?,
            None,
        ),
        AttachMode::Auto => match link_create(prog, ifindex, ifname, AttachedMode::Native) {
            Ok(link) => (AttachedMode::Native, link, None),
            Err(native) => {
                let link = link_create(prog, ifindex, ifname, AttachedMode::Generic)?;
                (AttachedMode::Generic, link, Some(native.to_string()))
            }
        },
    };
    Ok(Attachment {
        ifname: ifname.to_string(),
        ifindex,
        mode,
        replaced,
        native_error,
        link,
    })
}

/// The XDP programs on `ifindex` by mode.
pub(crate) fn query(ifindex: u32) -> Result<Attached, Error> {
    let mut opts = libbpf_sys::bpf_xdp_query_opts {
        sz: size_of::<libbpf_sys::bpf_xdp_query_opts>() as _,
        ..Default::default()
    };
    // SAFETY: `opts` is a properly sized, writable bpf_xdp_query_opts.
    let rc = unsafe { libbpf_sys::bpf_xdp_query(ifindex as i32, 0, &mut opts) };
    if rc < 0 {
        return Err(Error::Sys {
            what: "bpf_xdp_query",
            source: io::Error::from_raw_os_error(-rc),
        });
    }
    let some = |id: u32| (id != 0).then_some(id);
    Ok(Attached {
        native: some(opts.drv_prog_id),
        generic: some(opts.skb_prog_id),
    })
}

/// The name of program `id`.
pub(crate) fn program_name(id: u32) -> Result<String, Error> {
    let fd = program_fd(id)?;
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: `info` is a writable bpf_prog_info of `len` bytes; `fd` is open.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if rc < 0 {
        return Err(Error::Sys {
            what: "bpf_prog_get_info_by_fd",
            source: io::Error::from_raw_os_error(-rc),
        });
    }
    let bytes: Vec<u8> = info
        .name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

pub(crate) fn ifindex(ifname: &str) -> Result<u32, Error> {
    let c = CString::new(ifname).map_err(|_| Error::NoInterface(ifname.to_string()))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(Error::NoInterface(ifname.to_string()));
    }
    Ok(idx)
}

fn program_fd(id: u32) -> Result<OwnedFd, Error> {
    // SAFETY: plain syscall wrapper, no pointers.
    let fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return Err(Error::Sys {
            what: "bpf_prog_get_fd_by_id",
            source: io::Error::from_raw_os_error(-fd),
        });
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Remove program `id` (in `mode`) from the interface if it is a stale tern
/// program attached through netlink; refuse anything else.
fn clear_stale(ifname: &str, ifindex: u32, id: u32, mode: AttachedMode) -> Result<(), Error> {
    let name = program_name(id)?;
    if name != PROGRAM_NAME {
        return Err(Error::Occupied {
            ifname: ifname.to_string(),
            name,
            id,
        });
    }
    let old = program_fd(id)?;
    let opts = libbpf_sys::bpf_xdp_attach_opts {
        sz: size_of::<libbpf_sys::bpf_xdp_attach_opts>() as _,
        old_prog_fd: old.as_raw_fd(),
        ..Default::default()
    };
    // XDP_FLAGS_REPLACE with old_prog_fd: detach only if `id` is still the
    // one attached, so a program attached in between is never removed.
    let flags = mode.flag() | libbpf_sys::XDP_FLAGS_REPLACE;
    // SAFETY: `opts` is a properly sized bpf_xdp_attach_opts; `old` is open.
    let rc = unsafe { libbpf_sys::bpf_xdp_detach(ifindex as i32, flags, &opts) };
    match rc {
        0 => {
            tracing::warn!(ifname, id, mode = %mode, "replaced a stale tern XDP program");
            Ok(())
        }
        rc if -rc == libc::EBUSY => Err(Error::HeldByLink {
            ifname: ifname.to_string(),
            id,
        }),
        rc => Err(Error::Sys {
            what: "bpf_xdp_detach (stale tern program)",
            source: io::Error::from_raw_os_error(-rc),
        }),
    }
}

fn link_create(
    prog: BorrowedFd<'_>,
    ifindex: u32,
    ifname: &str,
    mode: AttachedMode,
) -> Result<OwnedFd, Error> {
    let opts = libbpf_sys::bpf_link_create_opts {
        sz: size_of::<libbpf_sys::bpf_link_create_opts>() as _,
        flags: mode.flag(),
        ..Default::default()
    };
    // SAFETY: `opts` is a properly sized bpf_link_create_opts; `prog` is an
    // open program descriptor.
    let fd = unsafe {
        libbpf_sys::bpf_link_create(prog.as_raw_fd(), ifindex as i32, libbpf_sys::BPF_XDP, &opts)
    };
    if fd < 0 {
        return Err(Error::Attach {
            ifname: ifname.to_string(),
            mode,
            source: io::Error::from_raw_os_error(-fd),
        });
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
