#!/usr/bin/env bash
# The benchmarks in a bounded, shortened form (CI's "bench-smoke" phase, from
# tests/run-all.sh): the back-end comparison of issue 5 — tern on AF_XDP,
# io_uring and recvmmsg, and coturn — across the three-namespace topology with
# the AF_XDP harness, two 1-second windows of 2,000 pps over 20 flows each, and
# a checked JSON report: every target delivered every probe it was sent, and
# the harness's own datagrams all went through its XSKs. Speed is not checked
# (that is what the full runs are for; see README "Benchmarks").
#
# Needs root (namespaces, XDP), coturn, and the debug binaries the test phase
# built with --features tern/xdp,tern-bench/xdp. Traffic stays inside the
# namespaces the harness creates and deletes.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${TERN_BENCH_BIN_DIR:-target/debug}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

"$bin/tern-bench" compare --topology netns --harness-io xsk \
    --targets tern-xdp,tern-uring,tern-mmsg,coturn --tern-bin "$bin/tern" \
    --flows 20 --payload 100 --rate 2000 --duration 1 --reps 2 --tick-us 1000 --burst 4 \
    --idle-pct 100 --json-out "$out/compare.json"

python3 - "$out/compare.json" <<'PY'
import json, sys
runs = json.load(open(sys.argv[1]))["runs"]
want = {"tern-xdp", "tern-uring", "tern-mmsg", "coturn"}
seen = {r["target"] for r in runs}
assert seen == want, f"targets {seen}, expected {want}"
for r in runs:
    name = r["target"]
    assert r["sent"] >= 0.9 * r["requested"], f"{name}: sent {r['sent']} of {r['requested']}"
    assert r["received"] == r["sent"], f"{name}: received {r['received']} of {r['sent']}"
    h = r.get("harness_xsk")
    assert h and h["sent_kernel"] == 0 and h["received_kernel"] == 0, f"{name}: harness {h}"
    assert h["sent_xsk"] == r["sent"] and h["received_xsk"] >= r["received"], f"{name}: {h}"
    assert r["cpu"]["relay_cpu_s"] is not None, f"{name}: no relay CPU"
print(f"bench smoke: {len(runs)} windows, every probe delivered, harness all AF_XDP")
PY
