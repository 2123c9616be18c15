#!/usr/bin/env bash
# tern's full check, the README's test command and what CI runs after installing the
# interop tools (.ci/run): formatting, clippy with warnings as errors, every test of the
# workspace. With CI set, missing interop tools fail the interop tests instead of skipping
# them (TERN_REQUIRE_INTEROP=1). Prints the time each phase took.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${CI:-}" && "${CI}" != "false" ]]; then
    export TERN_REQUIRE_INTEROP=1
fi

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

total_start=$SECONDS
phase fmt cargo fmt --all -- --check
phase clippy cargo clippy --workspace --all-targets -- -D warnings
phase build-tests cargo test --workspace --no-run
phase test cargo test --workspace --no-fail-fast
printf '=== phase times (TERN_REQUIRE_INTEROP=%s)\n' "${TERN_REQUIRE_INTEROP:-0}"
printf '  %s\n' "${timings[@]}"
echo "=== all phases passed in $((SECONDS - total_start)) s"
