#!/usr/bin/env bash
# Installs the real clients and servers tern's interop tests drive, when missing
# (Debian 12; needs root). Called by .ci/run, and by tests/run-all.sh when it runs
# as root and a tool is missing.
#   coturn        turnutils_uclient, turnutils_peer, turnserver (interop, bench compare)
#   redis-server  the load-registry test (relay/tern/tests/registry.rs)
#   ShellCheck    the tuning suite lints its scripts with it
#   python3 aioice  tests/interop/aioice_relay.py
#   curl          tests/package.sh and tests/operating.sh talk to the admin endpoint
#   cargo-deb     builds the .deb (tests/package.sh); pinned, built from crates.io
#                 without default features (xz through the xz tool): ~3 min of CPU
#   clang libelf-dev zlib1g-dev pkg-config make linux-libc-dev libbpf-dev
#                 build the XDP pre-filter (xdp/: clang -target bpf, the UAPI and
#                 bpf_helpers.h headers; libbpf-sys's vendored libbpf needs libelf/zlib)
#   libssl-dev    OpenSSL headers for the `openssl` crate: TURN over DTLS
#                 (relay/tern/src/dtls/, tern's `dtls` feature, which CI and the
#                 package build with) runs on OpenSSL's DTLS (pkg-config finds it)
#   gstreamer1.0-tools -plugins-base -plugins-good -plugins-bad
#                 real media peers of the SFU test (relay/tern/tests/sfu_gst.rs):
#                 gst-launch-1.0, vp8enc/vp8dec, the RTP payloaders, rtpbin and
#                 rtpfunnel (-good), videoscale/videoconvert (-base), openh264enc/dec,
#                 srtpenc/srtpdec (-bad); 2 min 8 s to install on the development VM
#   chromium libnss3-tools nftables python3 aiortc
#                 tests/tests/chromium_turns.rs: headless Chromium in a network namespace
#                 reaching an aiortc peer only through turns: on tern; certutil puts the
#                 test CA in Chromium's NSS database, nft blocks UDP in the namespace
#                 (chromium: 117 MB download on the development VM; aiortc: 12 s of pip)
#   janus         Janus 1.1.2's VideoRoom (remote publishers + RTP forwarders), the second
#                 SFU of `tern-bench sfu --targets tern,janus` and of its CI smoke test
#                 (bench/tests/sfu_janus.rs); its packaged service is not used
set -euo pipefail

# The cargo-deb version the package is built with.
CARGO_DEB_VERSION=3.8.0
export DEBIAN_FRONTEND=noninteractive

need=()
command -v turnutils_uclient >/dev/null && command -v turnutils_peer >/dev/null || need+=(coturn)
command -v redis-server >/dev/null || need+=(redis-server)
command -v shellcheck >/dev/null || need+=(shellcheck)
command -v ethtool >/dev/null || need+=(ethtool)
command -v ip >/dev/null || need+=(iproute2)
command -v curl >/dev/null || need+=(curl)
command -v xz >/dev/null || need+=(xz-utils)
command -v clang >/dev/null || need+=(clang)
command -v make >/dev/null || need+=(make)
command -v pkg-config >/dev/null || need+=(pkg-config)
[[ -e /usr/include/gelf.h ]] || need+=(libelf-dev)
[[ -e /usr/include/openssl/ssl.h ]] || need+=(libssl-dev)
[[ -e /usr/include/zlib.h ]] || need+=(zlib1g-dev)
[[ -e /usr/include/linux/bpf.h ]] || need+=(linux-libc-dev)
[[ -e /usr/include/bpf/bpf_helpers.h ]] || need+=(libbpf-dev)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
command -v gst-launch-1.0 >/dev/null || need+=(gstreamer1.0-tools)
gst_has() { gst-inspect-1.0 "$1" >/dev/null 2>&1; }
gst_has vp8enc || need+=(gstreamer1.0-plugins-good)
gst_has videotestsrc || need+=(gstreamer1.0-plugins-base)
gst_has srtpenc || need+=(gstreamer1.0-plugins-bad)
command -v chromium >/dev/null || need+=(chromium)
command -v certutil >/dev/null || need+=(libnss3-tools)
command -v nft >/dev/null || need+=(nftables)
command -v janus >/dev/null || need+=(janus)
if ((${#need[@]})); then
    echo "installing: ${need[*]}"
    apt-get update -q
    # Neither coturn's nor redis's packaged service is used by the tests; they start
    # their own servers on probed loopback ports.
    apt-get install -y -q --no-install-recommends "${need[@]}" </dev/null
fi

if ! python3 -c 'import aioice' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore aioice \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages aioice
fi

if ! python3 -c 'import aiortc' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore aiortc \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages aiortc
fi

if [[ $(cargo deb --version 2>/dev/null) != *"$CARGO_DEB_VERSION"* ]]; then
    start=$SECONDS
    cargo install --quiet --locked --no-default-features cargo-deb --version "$CARGO_DEB_VERSION"
    echo "cargo-deb $CARGO_DEB_VERSION installed in $((SECONDS - start)) s"
fi

command -v turnutils_uclient turnutils_peer redis-server shellcheck curl clang chromium certutil nft
cargo deb --version
python3 -c 'import aioice; print("aioice", getattr(aioice, "__version__", "?"))'
python3 -c 'import aiortc; print("aiortc", aiortc.__version__)'
