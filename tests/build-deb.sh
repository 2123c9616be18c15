#!/usr/bin/env bash
# Builds the tern .deb into OUTDIR for tests/package.sh and tests/operating.sh;
# extra arguments go to cargo deb (e.g. --deb-version 0.1.0-2).
#
# By default it packages the dev-profile `tern` binary that `cargo test` has
# already built (stripped): the package, its scripts and the daemon's
# behaviour are what CI checks, and this costs seconds instead of a second
# full optimised build (~3 min of CPU). TERN_DEB_PROFILE=release (or another
# profile) builds the package the way it ships: `cargo deb -p tern`. Both
# ways the binary has the features the package declares
# ([package.metadata.deb] features in relay/tern/Cargo.toml: xdp, dtls).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: tests/build-deb.sh OUTDIR [cargo deb args]}
shift
mkdir -p "$out"
if [[ -n ${TERN_DEB_PROFILE:-} ]]; then
    cargo deb -p tern --profile "$TERN_DEB_PROFILE" -o "$out/" "$@"
    exit
fi
cargo build -q -p tern --features xdp,dtls --bin tern
target=$(cargo metadata -q --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
# cargo deb --no-build takes the binary from <target>/release/: a scratch one.
scratch=$(mktemp -d /tmp/tern-build-deb.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/release"
cp "$target/debug/tern" "$scratch/release/tern"
CARGO_TARGET_DIR=$scratch cargo deb -p tern --no-build --strip --no-dbgsym --fast -o "$out/" "$@"
