#!/usr/bin/env bash
# Runs README.md's "Operating tern" commands, verbatim and in order, against the
# Debian package (root only). Every ```sh block preceded by a line
#   <!-- ci: operating -->          runs as root on this machine;
#   <!-- ci: operating netns -->    runs inside a network namespace made here
#                                   (TERN_TUNE_OPTS adds --scope netns, so
#                                   tern-tune changes that namespace only);
#   <!-- ci: operating systemd -->  runs as is where systemd is PID 1; elsewhere
#                                   `systemctl` and `journalctl` are stand-ins
#                                   defined below that run the installed unit's
#                                   own ExecStartPre/ExecStart/ExecReload lines as
#                                   its User=, and say so.
# All blocks share one shell (a variable set in one is seen by the next), with
# set -euo pipefail. The README's ${TERN_...} variables get free loopback ports
# and the package; TERN_DEB=FILE picks the package, else tests/build-deb.sh
# builds it. Around the drain block a TURN client
# (below) holds one allocation, so the drain is seen in progress, not over.
# Afterwards: the outputs are checked (readyz 503 while draining, reload
# logged, exit 0 on stop), the package must be purged and the user gone.
# Prints "N passed, N failed".
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD

PASS=0
FAIL=0
ok() { PASS=$((PASS + 1)); printf 'ok   %s\n' "$1"; }
bad() { FAIL=$((FAIL + 1)); printf 'FAIL %s\n' "$1"; [[ -n ${2:-} ]] && printf '%s\n' "$2" | sed 's/^/     /'; }
finish() {
	printf '%d passed, %d failed\n' "$PASS" "$FAIL"
	((FAIL == 0))
}

if [[ $EUID -ne 0 ]]; then
	echo "tests/operating.sh needs root (apt-get install, a system user, a network namespace)" >&2
	exit 1
fi
if dpkg-query -W -f '${Status}' tern 2>/dev/null | grep -q installed \
	|| getent passwd tern >/dev/null || getent group tern >/dev/null; then
	echo "a tern package, user or group is already here; not touching it" >&2
	exit 1
fi

TMP=$(mktemp -d /tmp/tern-operating.XXXXXX)
chmod 755 "$TMP"
NS=tpkg-op-$$
VETH=tpkgop$(($$ % 10000))
cleanup() {
	if [[ -f $TMP/tern.pid ]] && kill -0 "$(cat "$TMP/tern.pid")" 2>/dev/null; then
		kill -KILL "$(cat "$TMP/tern.pid")" 2>/dev/null
	fi
	[[ -f $TMP/hold.pid ]] && kill -KILL "$(cat "$TMP/hold.pid")" 2>/dev/null
	if [[ $(ps -p 1 -o comm= 2>/dev/null) == systemd ]]; then
		systemctl stop tern 2>/dev/null
		systemctl disable tern 2>/dev/null
	fi
	if dpkg-query -W -f '${Status}' tern 2>/dev/null | grep -q installed; then
		dpkg --purge tern >/dev/null 2>&1
	fi
	ip netns del "$NS" 2>/dev/null
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --------------------------------------------------------- the package --
# Two builds of the same tree: the one installed first, and one with the next
# Debian revision that the README's upgrade step installs over it.
if [[ -n ${TERN_DEB:-} ]]; then
	DEB=$(realpath "$TERN_DEB")
else
	if ! out=$(tests/build-deb.sh "$TMP/first" 2>&1); then
		bad "cargo deb -p tern" "$(tail -n 20 <<<"$out")"
		finish
		exit 1
	fi
	DEB=$(ls "$TMP"/first/tern_*.deb)
fi
version=$(dpkg-deb -f "$DEB" Version)
NEXT_VERSION=${version%-*}-$((${version##*-} + 1))
if ! out=$(tests/build-deb.sh "$TMP/next" --deb-version "$NEXT_VERSION" 2>&1); then
	bad "cargo deb -p tern --deb-version $NEXT_VERSION" "$(tail -n 20 <<<"$out")"
	finish
	exit 1
fi
NEXT_DEB=$(ls "$TMP"/next/tern_*.deb)
echo "packages: $DEB, then $NEXT_DEB"

# ------------------------------------------------- free ports, namespace --
read -r LISTEN_PORT ADMIN_PORT RELAY_LO RELAY_HI < <(python3 - <<'EOF'
import random, socket
def free(kind):
    s = socket.socket(socket.AF_INET, kind); s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]; s.close(); return p
def range_free(lo, n):
    socks = []
    try:
        for p in range(lo, lo + n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", p)); socks.append(s)
        return True
    except OSError:
        return False
    finally:
        for s in socks: s.close()
lo = next(lo for lo in (random.randrange(30000, 40000) for _ in range(200)) if range_free(lo, 64))
print(free(socket.SOCK_DGRAM), free(socket.SOCK_STREAM), lo, lo + 63)
EOF
)
export TERN_DEB=$DEB
export TERN_LISTEN=127.0.0.1:$LISTEN_PORT
export TERN_ADMIN=127.0.0.1:$ADMIN_PORT
export TERN_RELAY_PORTS=$RELAY_LO-$RELAY_HI
export TERN_PUBLIC_IP=127.0.0.1 TERN_PRIVATE_IP=127.0.0.1
export TERN_TUNE_OPTS="--scope netns --iface ${VETH}a --state-dir $TMP/tune-state"
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add "${VETH}a" type veth peer name "${VETH}b"
ip -n "$NS" link set "${VETH}a" up
ip -n "$NS" link set "${VETH}b" up
echo "ports: listen $TERN_LISTEN, admin $TERN_ADMIN, relay $TERN_RELAY_PORTS; tuning in namespace $NS on ${VETH}a"

# --------------------------------------- systemctl/journalctl stand-ins --
SYSTEMD=0
[[ $(ps -p 1 -o comm= 2>/dev/null) == systemd ]] && SYSTEMD=1
# The stand-ins, written to a file the generated script sources when systemd
# is not PID 1. They read the installed unit, so a change there is followed.
cat >"$TMP/standins.sh" <<'STANDINS'
UNIT=/usr/lib/systemd/system/tern.service
unit_value() { sed -n "s/^$1=//p" "$UNIT" | head -n1; }
tern_pid() { [[ -f $STATE/tern.pid ]] && cat "$STATE/tern.pid"; }
tern_running() { local p; p=$(tern_pid) && kill -0 "$p" 2>/dev/null; }
tern_start() {
	tern_running && return 0
	local user pre start
	user=$(unit_value User)
	read -r -a pre <<<"$(unit_value ExecStartPre)"
	read -r -a start <<<"$(unit_value ExecStart)"
	setpriv --reuid="$user" --regid="$user" --init-groups -- "${pre[@]}" >>"$STATE/tern.log" 2>&1 || return 1
	env -u NOTIFY_SOCKET -u WATCHDOG_USEC setpriv --reuid="$user" --regid="$user" --init-groups -- \
		"${start[@]}" >>"$STATE/tern.log" 2>&1 &
	echo $! >"$STATE/tern.pid"
	echo "$!" >>"$STATE/tern.pids"
	# Type=notify: start returns once READY=1 is sent, right after "relay started".

	for _ in $(seq 1 100); do
		grep -q "relay started" <(tail -n +"$(cat "$STATE/log.mark" 2>/dev/null || echo 1)" "$STATE/tern.log") && break
		tern_running || { echo "tern.service: start failed" >&2; tail -n 5 "$STATE/tern.log" >&2; return 1; }
		sleep 0.1
	done
	wc -l <"$STATE/tern.log" >"$STATE/log.mark"
}
tern_stop() {
	local p code
	tern_running || return 0
	p=$(tern_pid)
	kill -TERM "$p"
	for _ in $(seq 1 300); do
		if ! kill -0 "$p" 2>/dev/null; then
			wait "$p"
			code=$?
			echo "$code" >"$STATE/tern.exit"
			rm -f "$STATE/tern.pid"
			[[ $code == 0 ]] || { echo "tern.service: exited $code" >&2; return 1; }
			return 0
		fi
		sleep 0.1
	done
	echo "tern.service: still draining after 30 s" >&2
	return 1
}
systemctl() {
	local verb="" now=0 a
	for a in "$@"; do
		case $a in
		--now) now=1 ;;
		-*) ;;
		*) [[ -z $verb ]] && verb=$a ;;
		esac
	done
	echo "[stand-in: systemctl $*]"
	case $verb in
	enable) if ((now)); then tern_start; fi ;;
	start) tern_start ;;
	stop) tern_stop ;;
	restart) tern_stop && tern_start ;;
	reload) tern_running && kill -HUP "$(tern_pid)" ;;
	status)
		if tern_running; then
			echo "* tern.service - $(sed -n 's/^Description=//p' "$UNIT")"
			echo "     Active: active (running), Main PID: $(tern_pid)"
			ps -o pid=,user=,args= -p "$(tern_pid)"
		else
			echo "* tern.service: inactive (dead), last exit status $(cat "$STATE/tern.exit" 2>/dev/null || echo -)"
			return 3
		fi
		;;
	*) echo "stand-in systemctl: $verb not supported" >&2; return 1 ;;
	esac
}
journalctl() { echo "[stand-in: journalctl $*]"; cat "$STATE/tern.log"; }
STANDINS

# -------------------------------------------------- the README's blocks --
# Split README.md into its ci-marked blocks: BLOCK_KIND[i], BLOCK_TEXT[i].
declare -a BLOCK_KIND=() BLOCK_TEXT=()
kind="" inblock=0 text=""
while IFS= read -r line || [[ -n $line ]]; do
	if ((inblock)); then
		if [[ $line == '```' ]]; then
			BLOCK_KIND+=("$kind")
			BLOCK_TEXT+=("$text")
			inblock=0 kind="" text=""
		else
			text+="$line"$'\n'
		fi
	elif [[ $line =~ ^'<!-- ci: operating'( (netns|systemd))?' -->'$ ]]; then
		kind=${BASH_REMATCH[2]:-plain}
	elif [[ -n $kind && $line == '```sh' ]]; then
		inblock=1
	elif [[ -n $kind && -n $line ]]; then
		bad "README: a ci marker must be followed by a \`\`\`sh block" "$line"
		kind=""
	fi
done <"$ROOT/README.md"
if ((${#BLOCK_TEXT[@]} < 8)); then
	bad "README has its operating blocks (found ${#BLOCK_TEXT[@]})"
	finish
	exit 1
fi
ok "README: ${#BLOCK_TEXT[@]} operating blocks"

# A TURN client holding one allocation over the drain (REST credentials from
# the configured auth-secret): Allocate, wait for SIGTERM, Refresh(0).
cat >"$TMP/hold.py" <<'EOF'
import base64, hashlib, hmac, os, re, signal, socket, struct, sys, time
conf = open("/etc/tern/tern.toml").read()
secret = re.search(r'^auth-secret = \["([^"]+)"', conf, re.M).group(1)
host, port = os.environ["TERN_LISTEN"].rsplit(":", 1)
user = "%d:ci" % (time.time() + 600)
password = base64.b64encode(hmac.new(secret.encode(), user.encode(), hashlib.sha1).digest())
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(5)
def attr(t, v):
    return struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4)
def request(method, attrs, key=None):
    tid = os.urandom(12)
    body = b"".join(attrs)
    if key:
        head = struct.pack("!HHI", method, len(body) + 24, 0x2112A442) + tid
        body += attr(0x0008, hmac.new(key, head + body, hashlib.sha1).digest())
    sock.sendto(struct.pack("!HHI", method, len(body), 0x2112A442) + tid + body, (host, int(port)))
    data, _ = sock.recvfrom(2048)
    mtype, = struct.unpack("!H", data[:2])
    found, at = {}, 20
    while at + 4 <= len(data):
        t, n = struct.unpack("!HH", data[at:at + 4])
        found[t] = data[at + 4:at + 4 + n]
        at += 4 + n + (-n % 4)
    return mtype, found
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
transport = attr(0x0019, b"\x11\0\0\0")
mtype, a = request(0x0003, [transport])
assert mtype == 0x0113, hex(mtype)
realm, nonce = a[0x0014], a[0x0015]
key = hashlib.md5(user.encode() + b":" + realm + b":" + password).digest()
creds = [attr(0x0006, user.encode()), attr(0x0014, realm), attr(0x0015, nonce)]
mtype, a = request(0x0003, [transport] + creds, key)
assert mtype == 0x0103, "Allocate answered %s" % hex(mtype)
print("allocated", flush=True)
signal.sigwait([signal.SIGTERM])
mtype, a = request(0x0004, [attr(0x000D, b"\0\0\0\0")] + creds, key)
assert mtype == 0x0104, "Refresh(0) answered %s" % hex(mtype)
print("released", flush=True)
EOF

# Generate the script: each block between markers, the netns ones in the namespace.
SCRIPT=$TMP/operating-script.sh
{
	echo "set -euo pipefail"
	echo "STATE=$TMP"
	((SYSTEMD)) || echo "source $TMP/standins.sh"
	for i in "${!BLOCK_TEXT[@]}"; do
		echo "echo '=== README block $((i + 1)) (${BLOCK_KIND[$i]})'"
		block=${BLOCK_TEXT[$i]}
		if [[ $block == *"/admin/drain"* ]]; then
			echo "hold_allocation"
		fi
		if [[ $block == *"systemctl restart"* ]]; then
			# The upgrade: the next revision (the README says "install the new package").
			printf 'export TERN_DEB=%q\n' "$NEXT_DEB"
		fi
		case ${BLOCK_KIND[$i]} in
		netns)
			printf 'ip netns exec %q env TERN_TUNE_OPTS=%q PATH=%q bash -euo pipefail <<'"'"'TERN_README_BLOCK'"'"'\n%sTERN_README_BLOCK\n' \
				"$NS" "$TERN_TUNE_OPTS" "$PATH" "$block"
			;;
		*) printf '%s' "$block" ;;
		esac
		if [[ $block == *"/admin/drain"* ]]; then
			echo "release_allocation"
		fi
	done
} >"$SCRIPT"
hold_allocation() {
	python3 "$TMP/hold.py" >"$TMP/hold.out" 2>&1 &
	HOLDER=$!
	echo "$HOLDER" >"$TMP/hold.pid"
	for _ in $(seq 1 50); do
		grep -q allocated "$TMP/hold.out" && return 0
		kill -0 "$HOLDER" 2>/dev/null || break
		sleep 0.1
	done
	echo "the TURN client could not allocate:" >&2
	cat "$TMP/hold.out" >&2
	return 1
}
release_allocation() {
	kill -TERM "$HOLDER"
	wait "$HOLDER" || { cat "$TMP/hold.out" >&2; return 1; }
	rm -f "$TMP/hold.pid"
	sed 's/^/turn client: /' "$TMP/hold.out"
}
export -f hold_allocation release_allocation
export TMP

((SYSTEMD)) || echo "note: PID 1 is $(ps -p 1 -o comm=), not systemd: the systemctl/journalctl in the README's systemd blocks are this script's stand-ins, running the installed unit's ExecStartPre/ExecStart/ExecReload as its User="
OUT=$TMP/operating.out
start=$SECONDS
bash "$SCRIPT" 2>&1 | tee "$OUT"
rc=${PIPESTATUS[0]}
if [[ $rc == 0 ]]; then
	ok "every README operating command ran ($((SECONDS - start)) s)"
else
	bad "README operating commands: exit $rc (see the output above)"
fi

# ------------------------------------------------------ what they showed --
has() { grep -Eq -- "$1" "$2"; }
check_out() { if has "$2" "$OUT"; then ok "$1"; else bad "$1"; fi; }
check_out "check-config accepted the edited config" ': ok: listen 127\.0\.0\.1:[0-9]+; relay 127\.0\.0\.1 .* 0 user\(s\), 1 secret\(s\)'
check_out "tern-tune check exited 2 before apply" 'check: exit 2'
check_out "tern-tune apply changed settings in the namespace" '^apply: [1-9][0-9]* changed'
check_out "tern-tune check after apply: nothing off" ' 0 warn, 0 fail, '
check_out "tern-tune revert restored them" '^revert: [1-9][0-9]* restored, 0 failed'
check_out "/readyz 200 after start" '^ready$'
check_out "/metrics: tern_state active" '^tern_state\{state="active"\} 1$'
check_out "no NIC allowance counters on this machine, said so" 'no NIC with allowance counters'
check_out "/readyz 503 while draining" '^readyz 503$'
check_out "/load shows the drain with the allocation held" '"state":"draining","ready":false,"allocations":1'
check_out "the allocation was released" '^turn client: released$'
if ((SYSTEMD)); then
	check_out "systemctl stop: the unit is inactive" 'inactive'
else
	if grep -q "reloaded credentials" "$TMP/tern.log"; then ok "systemctl reload: SIGHUP reloaded the config"; else bad "reload logged"; fi
	check_out "systemctl stop: drained and exited 0" 'inactive \(dead\), last exit status 0'
	pids=$(wc -l <"$TMP/tern.pids")
	if [[ $pids == 2 ]]; then ok "restart after the upgrade ran a new process"; else bad "restart: $pids starts"; fi
fi
check_out "the upgrade installed $NEXT_VERSION" "Unpacking tern \\($NEXT_VERSION\\) over \\($version\\)"
if [[ $(grep -Ec ': ok: listen .* 1 secret\(s\)' "$OUT") -ge 2 ]]; then
	ok "the upgrade kept the edited /etc/tern/tern.toml"
else
	bad "the upgrade kept the edited /etc/tern/tern.toml"
fi
if dpkg-query -W -f '${Status}' tern 2>/dev/null | grep -q installed; then
	bad "apt-get purge removed the package"
else
	ok "apt-get purge removed the package"
fi
if [[ -z $(getent passwd tern) && ! -e /etc/tern ]]; then ok "purge removed the tern user and /etc/tern"; else bad "purge left the tern user or /etc/tern"; fi
finish
