#!/usr/bin/env bash
# The Debian package, end to end on this machine (root only):
#
#   build    cargo deb -p tern through tests/build-deb.sh: the dev-profile
#            binary the tests built, or TERN_DEB_PROFILE=release for a
#            shipping build
#   inspect  dpkg-deb -I / -c: files, modes, conffiles, depends, scripts
#   install  dpkg -i: the tern system user, root:tern 0640 on the config,
#            tern check-config on the packaged config, systemd-analyze
#            verify of the unit and of every example drop-in
#   run      the installed unit's own ExecStartPre and ExecStart lines, as
#            user tern, with the packaged config; only listen, admin and
#            relay-ports are overridden (flags), with free ports probed here.
#            /readyz 200, /metrics and /load served, SIGHUP reloads, SIGTERM
#            drains and exits 0
#   systemd  where systemd is PID 1: systemctl start/reload/stop with a
#            runtime drop-in that sets the same free ports
#   upgrade  dpkg -i again over an edited config: the edit stays
#   purge    dpkg --purge: binary, unit, config, user, group, statoverride gone
#
# Leaves the machine as it found it; refuses to start when a tern package or
# a tern user is already there. With TERN_DEB=FILE it tests that .deb instead
# of building one. Prints "N passed, N failed"; exits non-zero on failure.
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1

PASS=0
FAIL=0
ok() { PASS=$((PASS + 1)); printf 'ok   %s\n' "$1"; }
bad() { FAIL=$((FAIL + 1)); printf 'FAIL %s\n' "$1"; [[ -n ${2:-} ]] && printf '%s\n' "$2" | sed 's/^/     /'; }
check() { # check NAME CMD...: pass when CMD succeeds
	local name=$1; shift
	if "$@"; then ok "$name"; else bad "$name"; fi
}
has() { grep -Eq -- "$1" <<<"$2"; }   # has REGEX TEXT
lacks() { ! grep -Eq -- "$1" <<<"$2"; }
quiet() { "$@" >/dev/null; }
finish() {
	printf '%d passed, %d failed\n' "$PASS" "$FAIL"
	((FAIL == 0))
}

if [[ $EUID -ne 0 ]]; then
	echo "tests/package.sh needs root (dpkg -i, a system user)" >&2
	exit 1
fi
for tool in dpkg dpkg-deb curl setpriv python3; do
	command -v "$tool" >/dev/null || { echo "tests/package.sh needs $tool" >&2; exit 1; }
done
if dpkg-query -W -f '${Status}' tern 2>/dev/null | grep -q installed; then
	echo "a tern package is already installed here; not touching it" >&2
	exit 1
fi
if getent passwd tern >/dev/null || getent group tern >/dev/null; then
	echo "a tern user or group exists that no tern package made; purge would remove it, so stopping" >&2
	exit 1
fi

TMP=$(mktemp -d /tmp/tern-package.XXXXXX)
chmod 755 "$TMP"
PID=""
INSTALLED=0
DROPIN=/run/systemd/system/tern.service.d/tpkg-test-ports.conf
cleanup() {
	if [[ -n $PID ]] && kill -0 "$PID" 2>/dev/null; then
		kill -KILL "$PID" 2>/dev/null
		wait "$PID" 2>/dev/null
	fi
	if [[ -e $DROPIN ]]; then
		systemctl stop tern 2>/dev/null
		rm -f "$DROPIN"
		rmdir "$(dirname "$DROPIN")" 2>/dev/null
		systemctl daemon-reload 2>/dev/null
	fi
	if ((INSTALLED)); then
		dpkg --purge tern >/dev/null 2>&1
	fi
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ build --
if [[ -n ${TERN_DEB:-} ]]; then
	DEB=$TERN_DEB
else
	if ! cargo deb --version >/dev/null 2>&1; then
		echo "cargo-deb is missing: tests/install-deps.sh installs it" >&2
		exit 1
	fi
	start=$SECONDS
	how="the dev-profile binary the tests built"
	[[ -n ${TERN_DEB_PROFILE:-} ]] && how="profile $TERN_DEB_PROFILE"
	if out=$(tests/build-deb.sh "$TMP/deb" 2>&1); then
		DEB=$(ls "$TMP"/deb/tern_*.deb)
		ok "cargo deb -p tern, $how ($(cargo deb --version 2>&1 | head -n1), $((SECONDS - start)) s)"
	else
		bad "cargo deb -p tern ($how)" "$(tail -n 20 <<<"$out")"
		finish
		exit 1
	fi
fi
echo "package: $DEB"

# ---------------------------------------------------------------- inspect --
info=$(dpkg-deb -I "$DEB")
contents=$(dpkg-deb -c "$DEB")
has_file() { # has_file MODE PATH: dpkg-deb -c lists PATH with MODE, owned by root
	grep -Eq -- "^$1 0/0 +[0-9]+ [0-9-]+ [0-9:]+ \./${2#/}\$" <<<"$contents"
}
check "contains /usr/bin/tern (0755)" has_file -rwxr-xr-x /usr/bin/tern
check "contains /usr/sbin/tern-tune (0755)" has_file -rwxr-xr-x /usr/sbin/tern-tune
check "contains the unit" has_file -rw-r--r-- /usr/lib/systemd/system/tern.service
check "contains /etc/tern/tern.toml (0640)" has_file -rw-r----- /etc/tern/tern.toml
for f in cpu-placement drain-timeout environment; do
	check "contains the $f drop-in example" has_file -rw-r--r-- "/usr/share/doc/tern/examples/tern.service.d/$f.conf"
done
check "contains the tern-tune.service example" has_file -rw-r--r-- /usr/share/doc/tern/examples/tern-tune.service
check "contains copyright" has "/usr/share/doc/tern/copyright$" "$contents"
check "contains changelog.Debian.gz" has "/usr/share/doc/tern/changelog.Debian.gz$" "$contents"
check "control: Package tern" has "^ Package: tern$" "$info"
check "control: Depends adduser" has "^ Depends: .*adduser" "$info"
ctl=$TMP/control
dpkg-deb -e "$DEB" "$ctl"
check "conffiles: /etc/tern/tern.toml" grep -qx /etc/tern/tern.toml "$ctl/conffiles"
check "postinst creates the tern user" grep -q "adduser --system" "$ctl/postinst"
check "postrm removes the user on purge" grep -q "deluser --system" "$ctl/postrm"
check "postinst starts no service" lacks "deb-systemd-invoke|systemctl .*(start|restart)" "$(grep -v '^\s*echo' "$ctl/postinst")"
check "postinst enables the unit only where it was enabled before" \
	has "was-enabled tern.service" "$(cat "$ctl/postinst")"
if command -v lintian >/dev/null; then
	# Optional (not installed in CI: 150 packages); errors fail, warnings show.
	out=$(lintian --tag-display-limit 0 "$DEB" 2>&1 | grep -v "running with root privileges")
	if grep -q '^E:' <<<"$out"; then
		bad "lintian: no errors" "$out"
	else
		ok "lintian: no errors"
		[[ -n $out ]] && printf '%s\n' "$out" | sed 's/^/     lintian: /'
	fi
fi

# ---------------------------------------------------------------- install --
if out=$(dpkg -i "$DEB" 2>&1); then
	INSTALLED=1
	ok "dpkg -i"
else
	INSTALLED=1
	bad "dpkg -i" "$out"
	finish
	exit 1
fi
check "postinst tells what to do next" grep -q "tern check-config /etc/tern/tern.toml" <<<"$out"
passwd=$(getent passwd tern)
IFS=: read -r _ _ uid _ _ home shell <<<"$passwd"
check "tern is a system user without login ($passwd)" \
	test -n "$uid" -a "${uid:-1000}" -lt 1000 -a "$shell" = /usr/sbin/nologin -a "$home" = /nonexistent
check "group tern exists" quiet getent group tern
check "the config is root:tern 0640" test "$(stat -c '%U:%G %a' /etc/tern/tern.toml)" = "root:tern 640"
check "statoverride recorded" quiet dpkg-statoverride --list /etc/tern/tern.toml
check "tern --version runs" quiet /usr/bin/tern --version
out=$(tern check-config /etc/tern/tern.toml 2>&1)
if [[ $? -eq 0 && $out == *": ok: listen 0.0.0.0:3478"* ]]; then ok "the packaged config passes tern check-config"; else bad "tern check-config" "$out"; fi
# The package is built with tern's dtls feature: its tern accepts listen-dtls (a
# default build refuses it, naming the feature).
printf 'realm = "example.org"\nlisten-dtls = ["127.0.0.1:5349"]\nrelay-ip = ["127.0.0.1"]\nuser = ["alice:secret"]\ntls-cert = "/etc/tern/cert.pem"\ntls-key = "/etc/tern/key.pem"\n' >"$TMP/dtls.toml"
out=$(tern check-config "$TMP/dtls.toml" 2>&1)
if [[ $? -eq 0 && $out == *": ok: "* ]]; then ok "the packaged tern has DTLS (check-config accepts listen-dtls)"; else bad "the packaged tern has DTLS (built with --features dtls)" "$out"; fi
check "the packaged config is not the loopback development default" \
	lacks '^listen = .*127\.0\.0\.1|^allow-peer' "$(cat /etc/tern/tern.toml)"
check "tern-tune --help runs" quiet tern-tune --help
UNIT=/usr/lib/systemd/system/tern.service
if command -v systemd-analyze >/dev/null; then
	if out=$(systemd-analyze verify "$UNIT" 2>&1); then ok "systemd-analyze verify tern.service"; else bad "systemd-analyze verify tern.service" "$out"; fi
	for d in /usr/share/doc/tern/examples/tern.service.d/*.conf; do
		dir=$TMP/units-${d##*/}
		mkdir -p "$dir/tern.service.d"
		cp "$UNIT" "$dir/"
		cp "$d" "$dir/tern.service.d/"
		if out=$(SYSTEMD_UNIT_PATH="$dir:" systemd-analyze verify "$dir/tern.service" 2>&1); then ok "systemd-analyze verify with ${d##*/}"; else bad "systemd-analyze verify with ${d##*/}" "$out"; fi
	done
	if out=$(systemd-analyze verify /usr/share/doc/tern/examples/tern-tune.service "$UNIT" 2>&1); then ok "systemd-analyze verify tern-tune.service"; else bad "systemd-analyze verify tern-tune.service" "$out"; fi
else
	echo "note: systemd-analyze missing; unit not verified"
fi

# -------------------------------------------- run the unit's command line --
# Free ports: a UDP listen port, a TCP admin port, 64 free relay ports.
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
lo = next(lo for lo in (random.randrange(20000, 30000) for _ in range(200)) if range_free(lo, 64))
print(free(socket.SOCK_DGRAM), free(socket.SOCK_STREAM), lo, lo + 63)
EOF
)
ADMIN=127.0.0.1:$ADMIN_PORT
PORTS=(--listen "127.0.0.1:$LISTEN_PORT" --admin "$ADMIN" --relay-ports "$RELAY_LO-$RELAY_HI")
echo "ports: listen $LISTEN_PORT, admin $ADMIN_PORT, relay $RELAY_LO-$RELAY_HI"

exec_line() { sed -n "s/^$1=//p" "$UNIT" | head -n1; }
PRE=$(exec_line ExecStartPre)
START=$(exec_line ExecStart)
check "the unit runs /usr/bin/tern with /etc/tern/tern.toml" \
	test "$START" = "/usr/bin/tern --config /etc/tern/tern.toml"
read -r -a pre <<<"$PRE"
read -r -a cmd <<<"$START"
as_tern=(setpriv --reuid=tern --regid=tern --init-groups --)
check "ExecStartPre as user tern: $PRE" quiet "${as_tern[@]}" "${pre[@]}"

LOG=$TMP/tern.log
env -u NOTIFY_SOCKET -u WATCHDOG_USEC "${as_tern[@]}" "${cmd[@]}" "${PORTS[@]}" >"$LOG" 2>&1 &
PID=$!
ready=0
for _ in $(seq 1 100); do
	if [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$ADMIN/readyz") == 200 ]]; then ready=1; break; fi
	kill -0 "$PID" 2>/dev/null || break
	sleep 0.1
done
if ((ready)); then ok "ExecStart as user tern: /readyz 200"; else bad "ExecStart: /readyz 200 within 10 s" "$(cat "$LOG")"; fi
check "the relay runs as user tern" test "$(ps -o user= -p "$PID" 2>/dev/null | tr -d ' ')" = tern
metrics=$(curl -s "http://$ADMIN/metrics")
check "/metrics serves tern_state active" has '^tern_state\{state="active"\} 1$' "$metrics"
check "/metrics serves tern_build_info" has '^tern_build_info\{' "$metrics"
load=$(curl -s "http://$ADMIN/load")
check "/load serves JSON (state active)" has '"state":"active"' "$load"
check "the NIC allowance reader ran (log)" grep -q "NIC allowance counters" "$LOG"
kill -HUP "$PID"
reloaded=0
for _ in $(seq 1 50); do
	grep -q "reloaded credentials" "$LOG" && { reloaded=1; break; }
	sleep 0.1
done
check "SIGHUP reloads /etc/tern/tern.toml" test "$reloaded" = 1
kill -TERM "$PID"
code=""
for _ in $(seq 1 150); do
	if ! kill -0 "$PID" 2>/dev/null; then wait "$PID"; code=$?; break; fi
	sleep 0.1
done
if [[ $code == 0 ]] && grep -q "relay stopped" "$LOG"; then
	ok "SIGTERM: drains and exits 0"
else
	bad "SIGTERM: drains and exits 0 (exit ${code:-still running})" "$(tail -n 20 "$LOG")"
fi
PID=""

# ------------------------------------------------------------ systemd unit --
if [[ $(ps -p 1 -o comm= 2>/dev/null) == systemd ]]; then
	mkdir -p "$(dirname "$DROPIN")"
	printf '[Service]\nExecStart=\nExecStart=%s %s\n' "$START" "${PORTS[*]}" >"$DROPIN"
	systemctl daemon-reload
	if systemctl start tern; then ok "systemctl start tern (drop-in with free ports)"; else bad "systemctl start tern" "$(journalctl -u tern -n 30 --no-pager)"; fi
	check "systemd unit: /readyz 200" test "$(curl -s -o /dev/null -w '%{http_code}' "http://$ADMIN/readyz")" = 200
	check "systemctl reload tern" systemctl reload tern
	check "systemctl stop tern" systemctl stop tern
	check "the unit exited 0" test "$(systemctl show -p ExecMainStatus --value tern)" = 0
	rm -f "$DROPIN"
	rmdir "$(dirname "$DROPIN")" 2>/dev/null
	systemctl daemon-reload
else
	echo "note: PID 1 is $(ps -p 1 -o comm=), not systemd: systemctl start not tested here (the unit's command line was)"
fi

# ---------------------------------------------------------------- upgrade --
echo "# an operator's edit" >>/etc/tern/tern.toml
if out=$(dpkg -i "$DEB" 2>&1 </dev/null); then ok "dpkg -i over the installed package"; else bad "dpkg -i again" "$out"; fi
check "the edited conffile is kept" grep -qx "# an operator's edit" /etc/tern/tern.toml
check "the config is still root:tern 0640" test "$(stat -c '%U:%G %a' /etc/tern/tern.toml)" = "root:tern 640"

# ------------------------------------------------------------------ purge --
if out=$(dpkg --purge tern 2>&1); then ok "dpkg --purge tern"; else bad "dpkg --purge tern" "$out"; fi
INSTALLED=0
for path in /usr/bin/tern /usr/sbin/tern-tune "$UNIT" /etc/tern /usr/share/doc/tern; do
	check "purge removed $path" test ! -e "$path"
done
check "purge removed the tern user" test -z "$(getent passwd tern)"
check "purge removed the tern group" test -z "$(getent group tern)"
check "purge removed the statoverride" test -z "$(dpkg-statoverride --list /etc/tern/tern.toml)"

finish
