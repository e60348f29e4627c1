#!/usr/bin/env bash
# tests/deploy/test-deploy.sh BUILD_DIR: checks the deployment files against what `make install`
# produces. The Docker engine cannot run here, so this tests what can be tested without it:
#   - every program the image, its entry point and the compose scripts run is installed;
#   - the entry point refuses a missing configuration and an unwritable data folder with a
#     message and status 2, checks a valid configuration, passes fedctl through, and execs the
#     daemon so that SIGTERM reaches it (orderly stop, status 0);
#   - the systemd unit starts the installed binaries (systemd-analyze verify when present).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-build}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/fc-deploy.XXXXXX")
pid=""
cleanup() {
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "test-deploy: FAIL: $*" >&2; exit 1; }
pass=0
ok() { pass=$((pass + 1)); }

make -s -C "$root" BUILD="$build" install DESTDIR="$tmp/out" PREFIX=/usr/local >/dev/null
prefix=$tmp/out/usr/local

# 1. programs the image uses
for prog in fedcoord fedctl fedtrain; do
    [ -x "$prefix/bin/$prog" ] || fail "make install does not install bin/$prog (used by docker/)"
done
grep -q 'COPY --from=build /out/usr/local/ /usr/local/' "$root/docker/Dockerfile" ||
    fail "Dockerfile does not copy the make install tree"
for used in $(grep -ho 'exec [a-z]*' "$root"/docker/*.sh | awk '{print $2}' | sort -u); do
    [ "$used" = "exec" ] && continue
    case "$used" in fedcoord|fedctl|fedtrain) [ -x "$prefix/bin/$used" ] ||
        fail "docker scripts exec $used, which make install does not provide";; esac
done
ok

# 2. the entry point
export PATH="$prefix/bin:$PATH"
ep=$root/docker/entrypoint.sh
set +e
out=$(FEDCOORD_CONFIG=$tmp/none.ini FEDCOORD_DATA=$tmp "$ep" serve 2>&1); rc=$?
set -e
[ $rc -eq 2 ] && [[ $out == *"none.ini is not readable"* ]] ||
    fail "missing configuration: status $rc, output: $out"
ok

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$tmp/key.pem" -out "$tmp/cert.pem" \
    2>/dev/null
mkdir -p "$tmp/data" "$tmp/ro"
chmod 555 "$tmp/ro"
cat > "$tmp/fc.ini" <<INI
[server]
listen = 127.0.0.1
port = 0
data_dir = /nonexistent
[tls]
cert = $tmp/cert.pem
key = $tmp/key.pem
[http]
enabled = false
INI
if [ "$(id -u)" -ne 0 ]; then
    set +e
    out=$(FEDCOORD_CONFIG=$tmp/fc.ini FEDCOORD_DATA=$tmp/ro "$ep" serve 2>&1); rc=$?
    set -e
    [ $rc -eq 2 ] && [[ $out == *"not writable"* ]] || fail "read-only data folder: $rc: $out"
fi
out=$(FEDCOORD_CONFIG=$tmp/fc.ini FEDCOORD_DATA=$tmp/data "$ep" check)
[[ $out == *"data_dir = $tmp/data"* ]] || fail "check did not apply FEDCOORD_DATA: $out"
out=$(FEDCOORD_CONFIG=$tmp/fc.ini "$ep" fedctl --help 2>&1) || fail "fedctl passthrough failed"
[[ $out == *"usage"* ]] || fail "fedctl --help printed: $out"
ok

FEDCOORD_CONFIG=$tmp/fc.ini FEDCOORD_DATA=$tmp/data "$ep" serve 2> "$tmp/daemon.log" &
pid=$!
for _ in $(seq 100); do
    grep -q 'msg=listening' "$tmp/daemon.log" && break
    sleep 0.1
done
grep -q 'msg=listening' "$tmp/daemon.log" || fail "daemon did not start: $(cat "$tmp/daemon.log")"
[ -f "$tmp/data/fedcoord.db" ] || fail "the daemon did not use FEDCOORD_DATA for its database"
kill -TERM "$pid"
set +e
wait "$pid"; rc=$?
set -e
pid=""
[ $rc -eq 0 ] || fail "daemon under the entry point exited $rc after SIGTERM: $(tail -3 "$tmp/daemon.log")"
grep -q 'msg=stopped' "$tmp/daemon.log" || fail "no orderly stop logged"
ok

# 3. the systemd unit
unit=$root/packaging/fedcoord.service
for exe in $(grep -E '^Exec(Start|StartPre)=' "$unit" | sed -E 's/^[^=]*=([^ ]*).*/\1/'); do
    [ -x "$tmp/out$exe" ] || fail "fedcoord.service runs $exe, which make install does not provide"
done
grep -q '^NoNewPrivileges=yes' "$unit" && grep -q '^ProtectSystem=strict' "$unit" ||
    fail "fedcoord.service lost its hardening"
if command -v systemd-analyze >/dev/null 2>&1; then
    sed "s|/usr/local/bin/|$prefix/bin/|g" "$unit" > "$tmp/fedcoord.service"
    systemd-analyze verify "$tmp/fedcoord.service" 2>&1 | grep -v 'Documentation\|User=\|Group=' |
        grep -i 'error\|invalid\|unknown' && fail "systemd-analyze verify found problems"
fi
ok
echo "test-deploy: $pass checks passed"
