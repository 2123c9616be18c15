#!/usr/bin/env bash
# tern's full check, the README's test command and what CI runs after installing the
# interop tools (.ci/run): formatting, clippy with warnings as errors, the default build
# (no OpenSSL, no libbpf), every test of the workspace with tern's features xdp and dtls,
# the tuning suite, the Debian package and the README's operating commands.
# With CI set, missing interop tools fail the interop tests instead of skipping them
# (TERN_REQUIRE_INTEROP=1). Prints the time each phase took.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${CI:-}" && "${CI}" != "false" ]]; then
    export TERN_REQUIRE_INTEROP=1
fi

# The interop tools (coturn, redis-server, aioice, shellcheck, chromium, certutil, nft,
# aiortc, janus): installed here when missing and we are root; otherwise those tests say
# "skipped" (or fail under TERN_REQUIRE_INTEROP=1). TERN_NO_INSTALL=1 never installs.
if [[ $EUID -eq 0 && -z "${TERN_NO_INSTALL:-}" ]]; then
    if ! command -v turnutils_uclient >/dev/null || ! command -v redis-server >/dev/null \
        || ! command -v shellcheck >/dev/null || ! python3 -c 'import aioice' 2>/dev/null \
        || ! command -v clang >/dev/null || [[ ! -e /usr/include/bpf/bpf_helpers.h ]] \
        || [[ ! -e /usr/include/gelf.h ]] || [[ ! -e /usr/include/openssl/ssl.h ]] \
        || ! command -v gst-launch-1.0 >/dev/null || ! gst-inspect-1.0 srtpenc >/dev/null 2>&1 \
        || ! command -v curl >/dev/null || ! cargo deb --version >/dev/null 2>&1 \
        || ! command -v chromium >/dev/null || ! command -v certutil >/dev/null \
        || ! command -v nft >/dev/null || ! python3 -c 'import aiortc' 2>/dev/null \
        || ! command -v janus >/dev/null; then
        tests/install-deps.sh
    fi
fi

# The tuning suite needs root (it makes network namespaces); it never touches the
# host's own settings.
tuning_suite() {
    if [[ $EUID -ne 0 ]]; then
        if [[ -n "${TERN_REQUIRE_INTEROP:-}" ]]; then
            echo "tuning/tests/run.sh needs root" >&2
            return 1
        fi
        echo "skipped: tuning/tests/run.sh needs root (network namespaces)"
        return 0
    fi
    tuning/tests/run.sh
}

# The Debian package (tests/package.sh) and the README's "Operating tern" commands
# (tests/operating.sh) install, run and purge the package on this machine: root only.
root_phase() {
    if [[ $EUID -ne 0 ]]; then
        if [[ -n "${TERN_REQUIRE_INTEROP:-}" ]]; then
            echo "$1 needs root" >&2
            return 1
        fi
        echo "skipped: $1 needs root (dpkg -i, a system user, network namespaces)"
        return 0
    fi
    "$@"
}

declare -a timings=()
phase() {
    local name=$1
    shift
    local start=$SECONDS
    echo "=== ${name}: $*"
    if "$@"; then
        timings+=("${name}: $((SECONDS - start)) s")
        echo "=== ${name}: ok in $((SECONDS - start)) s"
    else
        local rc=$?
        timings+=("${name}: FAILED (exit ${rc}) after $((SECONDS - start)) s")
        printf '=== phase times\n'
        printf '  %s\n' "${timings[@]}"
        exit "${rc}"
    fi
}

# tern's optional features (relay/tern/Cargo.toml): off by default so that the README's
# first command builds with nothing but Rust; every test here runs with them on (and the
# workspace phases with tern-bench's AF_XDP harness too).
FEATURES=tern/xdp,tern/dtls

# The default build (`cargo run --release -p tern`): OpenSSL must not be in its
# dependency graph, it must be clippy-clean, and its own tests (listen-dtls refused,
# naming the feature) must pass.
default_build() {
    local linked
    linked=$(cargo tree -q -p tern -e normal,build --prefix none | grep -E '^(openssl|openssl-sys|libbpf-sys) ' || true)
    if [[ -n $linked ]]; then
        printf 'the default build of tern links:\n%s\n' "$linked" >&2
        return 1
    fi
    cargo clippy -p tern --all-targets -- -D warnings
    cargo test -p tern --lib --test cli
}

total_start=$SECONDS
phase fmt cargo fmt --all -- --check
phase clippy cargo clippy --workspace --all-targets --features "$FEATURES,tern-bench/xdp" -- -D warnings
phase default-build default_build
phase build-tests cargo test --workspace --features "$FEATURES,tern-bench/xdp" --no-run
phase test cargo test --workspace --features "$FEATURES,tern-bench/xdp" --no-fail-fast
# The default run uses the back end `auto` picks (io_uring where the kernel offers
# it); the daemon's and the end-to-end/interop tests run again on the portable one.
phase test-mmsg env TERN_TEST_IO_BACKEND=mmsg cargo test -p tern -p tern-tests --features "$FEATURES" --no-fail-fast
phase tuning tuning_suite
# The benchmark harness end to end, bounded (bench/smoke.sh says what it checks).
phase bench-smoke root_phase bench/smoke.sh
phase package root_phase tests/package.sh
phase operating root_phase tests/operating.sh
printf '=== phase times (TERN_REQUIRE_INTEROP=%s)\n' "${TERN_REQUIRE_INTEROP:-0}"
printf '  %s\n' "${timings[@]}"
echo "=== all phases passed in $((SECONDS - total_start)) s"
