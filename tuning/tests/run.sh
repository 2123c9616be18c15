#!/usr/bin/env bash
# Tests for tuning/tern-tune.
#
# (a) shellcheck on every script here;
# (b) check/apply/check/apply/revert inside a network namespace this test
#     creates, against a veth pair whose both ends live in namespaces this
#     test created, with --scope netns so only per-namespace settings change;
# (c) the root namespace's sysctls are compared before and after.
#
# Needs root (ip netns), iproute2, ethtool, shellcheck; nft is optional.
# Prints "N passed, N failed" and exits non-zero on any failure.

set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOOL=$HERE/../tern-tune
PASS=0
FAIL=0
NS_A=tern-tune-test-$$
NS_B=tern-tune-peer-$$
VA=ttva$$
VB=ttvb$$
TMP=$(mktemp -d /tmp/tern-tune-test.XXXXXX)
STATE=$TMP/state

ok() { PASS=$((PASS + 1)); printf 'ok   %s\n' "$1"; }
bad() { FAIL=$((FAIL + 1)); printf 'FAIL %s\n' "$1"; [[ -n ${2:-} ]] && printf '%s\n' "$2" | sed 's/^/     /'; }
check() { # check NAME CMD...: pass when CMD succeeds
	local name=$1; shift
	if "$@"; then ok "$name"; else bad "$name"; fi
}

cleanup() {
	ip netns del "$NS_A" 2>/dev/null
	ip netns del "$NS_B" 2>/dev/null
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Sysctls that move by themselves (counters, random, pid) are left out of the
# root-namespace comparison.
VOLATILE='^(fs\.(dentry-state|file-nr|inode-nr|inode-state|aio-nr|quota\.)|kernel\.(ns_last_pid|random\.|pty\.nr|sched_domain\.)|net\.netfilter\.nf_conntrack_count|vm\.(stat_refresh|drop_caches)|dev\.cdrom\.info|kernel\.tainted|kernel\.keys\.)'
snapshot() { sysctl -a 2>/dev/null | grep -Ev "$VOLATILE" | sort; }

in_ns() { ip netns exec "$NS_A" "$@"; }
tt() { in_ns "$TOOL" "$@" --iface "$VA" --workers 2 --state-dir "$STATE" --scope netns; }
nsval() { in_ns cat "/proc/sys/${1//.//}" | tr -s ' \t' '  '; }

# ------------------------------------------------------------ shellcheck --
if command -v shellcheck >/dev/null; then
	out=$(shellcheck -x "$TOOL" "$HERE"/*.sh "$HERE/fake-ethtool" 2>&1)
	if [[ -z $out ]]; then ok "shellcheck tern-tune and tests"; else bad "shellcheck" "$out"; fi
else
	bad "shellcheck installed (apt-get install -y shellcheck)"
fi

# -------------------------------------------------------------- cli basics --
check "--help exits 0" "$TOOL" --help >/dev/null
out=$("$TOOL" check --relay-ports 1100-1200 --listen-port 3478 --iface lo --scope netns 2>&1)
rc=$?
if [[ $out == *"net.ipv4.ip_local_port_range"*impossible*FAIL* ]]; then ok "impossible port range fails clearly"; else bad "impossible port range fails clearly (rc $rc)" "$(grep -i port_range <<<"$out")"; fi
"$TOOL" apply --scope netns --iface lo --state-dir "$TMP/never" >/dev/null 2>&1
rc=$?
if [[ $rc -ne 0 && ! -e $TMP/never ]]; then ok "--scope netns refuses to apply in the initial namespace"; else bad "--scope netns refused in the initial namespace (rc $rc)"; fi
cat >"$TMP/tern.toml" <<'EOF'
# a tern config
listen = [
  "0.0.0.0:3478",   # v4
  "[::]:5349",
]
relay-ports = "40000-44999"
workers = 3
realm = "example.org"

[something]
workers = 9
EOF
out=$("$TOOL" check --config "$TMP/tern.toml" --iface lo --scope netns 2>&1 | head -1)
if [[ $out == *"relay-ports 40000-44999, listen 3478 5349, workers 3"* ]]; then ok "reads listen, relay-ports, workers from --config"; else bad "reads --config" "$out"; fi

# --------------------------------------------------------- namespace setup --
[[ $(id -u) == 0 ]] || { bad "running as root (needed for ip netns)"; printf '\n%d passed, %d failed\n' "$PASS" "$FAIL"; exit 1; }
ROOT_BEFORE=$(snapshot)

if ! ip netns add "$NS_A" || ! ip netns add "$NS_B"; then bad "create namespaces"; exit 1; fi
# Create the pair inside our namespace, then move the peer to the other one:
# at no point does an interface of ours live in the root namespace.
# Up to 4 queues, 1 in use, so that apply has a queue count to change.
if ! in_ns ip link add "$VA" numrxqueues 4 numtxqueues 4 type veth peer name "$VB" numrxqueues 4 numtxqueues 4 ||
	! in_ns ethtool -L "$VA" rx 1 tx 1 >/dev/null ||
	! in_ns ip link set "$VB" netns "$NS_B" ||
	! in_ns ip link set "$VA" up || ! ip netns exec "$NS_B" ip link set "$VB" up; then
	bad "create veth pair in the namespaces"
	exit 1
fi
ok "namespaces $NS_A/$NS_B with veth $VA/$VB"

# The per-netns sysctls the tool may change, recorded before.
KEYS=(net.ipv4.ip_local_port_range net.ipv4.udp_rmem_min net.ipv4.udp_wmem_min)
declare -A ORIG
for k in "${KEYS[@]}"; do ORIG[$k]=$(nsval "$k"); done
ORIG_CHAN=$(in_ns ethtool -l "$VA" | tail -4)
ORIG_RPS=$(in_ns cat "/sys/class/net/$VA/queues/rx-0/rps_cpus")
ORIG_XPS=$(in_ns cat "/sys/class/net/$VA/queues/tx-0/xps_cpus")

# ------------------------------------------------------------ check before --
out=$(tt check 2>&1)
rc=$?
if [[ $rc -eq 2 ]]; then ok "check exits 2 before apply"; else bad "check exits 2 before apply (got $rc)" "$out"; fi
for what in "rings" "coalesce" "irq affinity" "cpu governor"; do
	if grep -E "^$what" <<<"$out" | grep -q 'N/A'; then ok "check reports '$what' as N/A on veth"; else bad "check reports '$what' as N/A on veth" "$(grep -E "^$what" <<<"$out")"; fi
done
if grep -E '^net.ipv4.ip_local_port_range' <<<"$out" | grep -q FAIL; then ok "check flags the default port range overlapping relay ports"; else bad "port range overlap flagged" "$(grep port_range <<<"$out")"; fi
if grep -E '^net.core.netdev_max_backlog' <<<"$out" | grep -q SKIP; then ok "global sysctls are SKIP in --scope netns"; else bad "global sysctls SKIP" "$(grep netdev_max_backlog <<<"$out")"; fi

# -------------------------------------------------------------- dry run --
out=$(tt apply --dry-run 2>&1)
rc=$?
after=$(nsval net.ipv4.ip_local_port_range)
if [[ $rc -eq 0 && $after == "${ORIG[net.ipv4.ip_local_port_range]}" && ! -e $STATE/saved && $out == *"+ sysctl"* ]]; then
	ok "apply --dry-run prints commands and changes/saves nothing"
else
	bad "apply --dry-run changes nothing (rc $rc)" "$out"
fi

# ----------------------------------------------------------------- apply --
out=$(tt apply 2>&1)
rc=$?
if [[ $rc -eq 0 ]]; then ok "apply exits 0"; else bad "apply exits 0 (got $rc)" "$out"; fi
for k in "${KEYS[@]}"; do
	v=$(nsval "$k")
	if [[ $v != "${ORIG[$k]}" ]]; then ok "apply changed $k (${ORIG[$k]} -> $v)"; else bad "apply changed $k (still $v)"; fi
	if grep -qP "^ns\tsysctl\t$k\t${ORIG[$k]}\$" "$STATE/saved"; then ok "state saved original $k"; else bad "state saved original $k" "$(cat "$STATE/saved")"; fi
done
read -r lo hi <<<"$(nsval net.ipv4.ip_local_port_range)"
if ((hi < 49152 && hi - lo + 1 >= 1024 && (3478 < lo || 3478 > hi))); then ok "new port range $lo-$hi is below relay ports and clear of 3478"; else bad "new port range $lo-$hi"; fi
chan=$(in_ns ethtool -l "$VA" | tail -4 | awk '/^RX:/ {print $2}')
if [[ $chan == 2 ]]; then ok "apply set veth rx channels 1 -> worker count (2)"; else bad "veth channels set (rx $chan)"; fi
if grep -qP "^ns\tchannels\t$VA\trx 1 tx 1\$" "$STATE/saved"; then ok "state saved original channels (rx 1 tx 1)"; else bad "state saved channels" "$(cat "$STATE/saved")"; fi
x=$(in_ns cat "/sys/class/net/$VA/queues/tx-1/xps_cpus")
if (($(nproc) < 2)); then ok "xps case skipped: one CPU"; elif [[ ${x//[0,]/} == 2 ]]; then ok "apply set xps_cpus tx-1 to worker 1's core"; else bad "xps tx-1 set ($x)"; fi
if command -v nft >/dev/null && [[ -e /proc/sys/net/netfilter/nf_conntrack_max ]]; then
	t=$(in_ns nft list table inet tern_notrack 2>&1)
	if [[ $t == *'dport { 3478, 49152-65535 } notrack'* && $t == *'sport { 3478, 49152-65535 } notrack'* ]]; then ok "apply added nft table tern_notrack in the namespace"; else bad "nft table tern_notrack added" "$t"; fi
	if ! nft list table inet tern_notrack >/dev/null 2>&1; then ok "root namespace has no tern_notrack table"; else bad "root namespace untouched by nft"; fi
fi

# ------------------------------------------------------------ check after --
out=$(tt check 2>&1)
rc=$?
if [[ $rc -eq 0 ]]; then ok "check exits 0 after apply (in scope)"; else bad "check exits 0 after apply (got $rc)" "$(grep -E 'WARN|FAIL' <<<"$out")"; fi

# ----------------------------------------------------------- apply twice --
cp "$STATE/saved" "$TMP/saved.1"
out=$(tt apply 2>&1)
rc=$?
if [[ $rc -eq 0 ]] && cmp -s "$STATE/saved" "$TMP/saved.1" && [[ $out == *"0 changed, 0 original"* ]]; then
	ok "apply twice changes and saves nothing new"
else
	bad "apply twice saves nothing new (rc $rc)" "$(diff "$TMP/saved.1" "$STATE/saved"; tail -2 <<<"$out")"
fi

# ---------------------------------------------------------------- revert --
out=$(tt revert 2>&1)
rc=$?
if [[ $rc -eq 0 ]]; then ok "revert exits 0"; else bad "revert exits 0 (got $rc)" "$out"; fi
for k in "${KEYS[@]}"; do
	v=$(nsval "$k")
	if [[ $v == "${ORIG[$k]}" ]]; then ok "revert restored $k exactly ($v)"; else bad "revert restored $k (${ORIG[$k]} != $v)"; fi
done
if [[ $(in_ns ethtool -l "$VA" | tail -4) == "$ORIG_CHAN" ]]; then ok "revert restored veth channels"; else bad "revert restored veth channels"; fi
if [[ $(in_ns cat "/sys/class/net/$VA/queues/rx-0/rps_cpus") == "$ORIG_RPS" ]]; then ok "revert restored rps_cpus"; else bad "revert restored rps_cpus"; fi
if [[ $(in_ns cat "/sys/class/net/$VA/queues/tx-0/xps_cpus") == "$ORIG_XPS" ]]; then ok "revert restored xps_cpus"; else bad "revert restored xps_cpus"; fi
if ! in_ns nft list table inet tern_notrack >/dev/null 2>&1; then ok "revert deleted nft table tern_notrack"; else bad "revert deleted nft table"; fi
if [[ ! -e $STATE/saved ]]; then ok "revert removed the state file"; else bad "revert removed the state file" "$(cat "$STATE/saved")"; fi
out=$(tt revert 2>&1)
if [[ $? -eq 0 && $out == *"nothing saved"* ]]; then ok "revert with no state is a no-op"; else bad "revert with no state" "$out"; fi
out=$(tt check 2>&1)
rc=$?
if [[ $rc -eq 2 ]]; then ok "check exits 2 again after revert"; else bad "check exits 2 after revert (got $rc)"; fi

# nft lists set elements in ascending order: with a listen port above the
# relay range, check after apply must still read the table as its own.
if command -v nft >/dev/null && [[ -e /proc/sys/net/netfilter/nf_conntrack_max ]]; then
	high=(--relay-ports 40000-44999 --listen-port 59000)
	tt apply "${high[@]}" >/dev/null 2>&1
	out=$(tt check "${high[@]}" 2>&1)
	if grep -Eq 'nft table inet tern_notrack +present +notrack \{ 40000-44999, 59000 \} +OK' <<<"$out"; then
		ok "nft table with a listen port above the relay range reads as present"
	else
		bad "nft table with a listen port above the relay range" "$(grep tern_notrack <<<"$out")"
	fi
	tt revert >/dev/null 2>&1
fi

# A saved host-wide line is outside --scope netns: revert keeps it, untouched.
mkdir -p "$TMP/s3"
printf 'host\tsysctl\tnet.core.netdev_max_backlog\t1000\n' >"$TMP/s3/saved"
out=$(in_ns "$TOOL" revert --iface "$VA" --state-dir "$TMP/s3" --scope netns 2>&1)
rc=$?
if [[ $rc -eq 0 && $(cat "$TMP/s3/saved") == *netdev_max_backlog* && $out == *"1 kept"* ]]; then ok "revert --scope netns keeps host-wide lines"; else bad "revert keeps out-of-scope lines (rc $rc)" "$out"; fi

# ------------------------------------------ RPS when queues < workers --
# A single-queue veth and two workers: apply spreads rx-0 over both cores.
if (($(nproc) >= 2)); then
	VC=ttvc$$
	VD=ttvd$$
	in_ns ip link add "$VC" numrxqueues 1 numtxqueues 1 type veth peer name "$VD" numrxqueues 1 numtxqueues 1 &&
		in_ns ip link set "$VD" netns "$NS_B"
	rps0=$(in_ns cat "/sys/class/net/$VC/queues/rx-0/rps_cpus")
	in_ns "$TOOL" apply --iface "$VC" --workers 2 --cpus 0-1 --state-dir "$TMP/s2" --scope netns >/dev/null 2>&1
	rps1=$(in_ns cat "/sys/class/net/$VC/queues/rx-0/rps_cpus")
	in_ns "$TOOL" revert --iface "$VC" --state-dir "$TMP/s2" --scope netns >/dev/null 2>&1
	rps2=$(in_ns cat "/sys/class/net/$VC/queues/rx-0/rps_cpus")
	if [[ ${rps1//[0,]/} == 3 ]]; then ok "1 queue, 2 workers: apply set rps_cpus to cores 0-1 ($rps1)"; else bad "rps_cpus spread ($rps0 -> $rps1)"; fi
	if [[ $rps2 == "$rps0" ]]; then ok "revert restored rps_cpus ($rps2)"; else bad "revert restored rps_cpus ($rps2 != $rps0)"; fi
else
	ok "RPS case skipped: one CPU"
fi

# ------------------------------- cloud NIC rules, with a fake ethtool --
# check only reads; a fake ethtool on PATH reports an ENA or gve NIC on lo.
mkdir -p "$TMP/bin"
cp "$HERE/fake-ethtool" "$TMP/bin/ethtool"
chmod +x "$TMP/bin/ethtool"
fake() { FAKE_DRIVER=$1 PATH="$TMP/bin:$PATH" "$TOOL" check --iface lo --workers 32 --cpus 0 2>&1; }
expect() { # expect NAME REGEX OUTPUT
	if grep -qE "$2" <<<"$3"; then ok "$1"; else bad "$1" "$(grep -E "^${2%% *}" <<<"$3")"; fi
}
out=$(fake ena)
expect "ena: 32 of 32 queues flagged, XDP wants 16" '^channels \(max 32\) +32 +16 +FAIL.*XDP will not attach' "$out"
expect "ena: MTU above 3498 fails for XDP" '^mtu \(ena XDP limit\) +65536 +<= 3498 +FAIL' "$out"
expect "ena: allowance counters printed" '^ena pps_allowance_exceeded +123 .*AWS host limit' "$out"
expect "rings: recommend the maximum" '^rings rx/tx +1024/1024 +16384/1024 +WARN' "$out"
expect "coalesce: adaptive-rx on flagged" '^coalesce .*adaptive-rx on.*WARN' "$out"
expect "rss: udp4 hashing without ports flagged" '^rss udp4 hash +sd +sdfn +WARN' "$out"
out=$(fake gve)
expect "gve: rx != tx queues fail for XDP, 8 recommended" '^channels \(max 16\) +16/8 +8 +FAIL.*rx == tx' "$out"
expect "gve: HW-GRO on flagged" '^rx-gro-hw +on +off +WARN' "$out"
expect "gve: MTU above 2032 fails for XDP" '^mtu \(gve XDP limit\) .*<= 2032 +FAIL' "$out"

# ------------------------------------------------------ root untouched --
ip netns del "$NS_A"
ip netns del "$NS_B"
ROOT_AFTER=$(snapshot)
d=$(diff <(printf '%s\n' "$ROOT_BEFORE") <(printf '%s\n' "$ROOT_AFTER"))
if [[ -z $d ]]; then ok "root namespace sysctl -a unchanged"; else bad "root namespace sysctl -a unchanged" "$d"; fi

printf '\n%d passed, %d failed\n' "$PASS" "$FAIL"
((FAIL == 0))
