#!/usr/bin/env bash
# tools/demo.sh: `make demo`. A real federation on this machine: installs the packages (make
# deps), builds, creates a development CA and a server certificate for localhost under demo/,
# writes a commented configuration file, the initial model and one token per client, starts
# fedcoord and CLIENTS example trainers (build/bin/fedtrain) over TLS, shows the live round
# table (fedctl rounds --follow), and ends with
#     final accuracy: A (centralized baseline B)
#     the path of the exported final model, and the dashboard URL.
# Every child process is stopped and waited for on every exit path (trap), Ctrl-C included.
#
# Knobs (environment, or `make demo KNOB=value`):
#   RULE=fedavg ROUNDS=30 CLIENTS=10 ALPHA=0.5 MU=0 OPT=sgd SEED=42
#   RULE_PARAMS= OPT_PARAMS=   (KEY=VALUE,... for [aggregator] / [optimizer] params)
#   HTTP_PORT=7080 (the first free port from there is used)   DEMO_TIMEOUT=300 (seconds)
#   JOBS=2 (parallel build jobs)   DEMO_SKIP_BUILD=1 (use the existing build/)
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

RULE=${RULE:-fedavg}
ROUNDS=${ROUNDS:-30}
CLIENTS=${CLIENTS:-10}
ALPHA=${ALPHA:-0.5}
MU=${MU:-0}
OPT=${OPT:-sgd}
SEED=${SEED:-42}
RULE_PARAMS=${RULE_PARAMS:-}
OPT_PARAMS=${OPT_PARAMS:-}
HTTP_PORT=${HTTP_PORT:-7080}
DEMO_TIMEOUT=${DEMO_TIMEOUT:-300}
JOBS=${JOBS:-2}

DEMO=$ROOT/demo
BIN=$ROOT/build/bin

say() { printf 'demo: %s\n' "$*"; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

# ---- knobs are checked before anything runs ----
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_num() { [[ $1 =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$ ]]; }
is_uint "$ROUNDS" && [ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 100000 ] ||
    die "ROUNDS='$ROUNDS': expected an integer 1..100000"
is_uint "$CLIENTS" && [ "$CLIENTS" -ge 1 ] && [ "$CLIENTS" -le 200 ] ||
    die "CLIENTS='$CLIENTS': expected an integer 1..200"
is_num "$ALPHA" && [ "$(awk -v a="$ALPHA" 'BEGIN{print (a > 0)}')" = 1 ] ||
    die "ALPHA='$ALPHA': expected a number > 0"
is_num "$MU" || die "MU='$MU': expected a number >= 0"
is_uint "$SEED" || die "SEED='$SEED': expected a non-negative integer"
is_uint "$HTTP_PORT" && [ "$HTTP_PORT" -ge 1 ] && [ "$HTTP_PORT" -le 65535 ] ||
    die "HTTP_PORT='$HTTP_PORT': expected a port 1..65535"
is_uint "$DEMO_TIMEOUT" || die "DEMO_TIMEOUT='$DEMO_TIMEOUT': expected seconds"
[[ $RULE =~ ^[a-z0-9_]+$ ]] || die "RULE='$RULE': expected a rule name (docs/aggregators.md)"
[[ $OPT =~ ^[a-z0-9_]+$ ]] || die "OPT='$OPT': expected sgd, adam, yogi or adagrad"
[[ $RULE_PARAMS =~ ^[-A-Za-z0-9_.=,\ ]*$ ]] || die "RULE_PARAMS='$RULE_PARAMS': expected K=V,..."
[[ $OPT_PARAMS =~ ^[-A-Za-z0-9_.=,\ ]*$ ]] || die "OPT_PARAMS='$OPT_PARAMS': expected K=V,..."

# ---- children and cleanup ----
DAEMON_PID=""
TABLE_PID=""
TRAINER_PIDS=()
CLEANED=0

stop_pid() { # pid: SIGTERM, then SIGKILL after 10 s; always reaped
    local pid=$1 i
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    [ "$CLEANED" = 1 ] && return 0
    CLEANED=1
    local p
    stop_pid "$TABLE_PID"
    for p in "${TRAINER_PIDS[@]}"; do
        stop_pid "$p"
    done
    stop_pid "$DAEMON_PID"
    TABLE_PID="" DAEMON_PID="" TRAINER_PIDS=()
}
trap cleanup EXIT
trap 'echo; say "interrupted; stopping every process"; cleanup; exit 130' INT
trap 'say "terminated; stopping every process"; cleanup; exit 143' TERM HUP

T0=$SECONDS

# ---- 1. packages and build ----
if [ "${DEMO_SKIP_BUILD:-0}" != 1 ]; then
    say "installing missing packages (make deps) and building (make -j$JOBS)"
    # The knobs came in through make's command line; the inner make must not see them.
    env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u MAKEOVERRIDES make --no-print-directory deps
    env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u MAKEOVERRIDES \
        make --no-print-directory -j"$JOBS" all >"$ROOT/build-demo.log" 2>&1 ||
        { tail -n 30 "$ROOT/build-demo.log" >&2; die "build failed (full log: build-demo.log)"; }
    rm -f "$ROOT/build-demo.log"
fi
for b in fedcoord fedctl fedtrain centralized; do
    [ -x "$BIN/$b" ] || die "$BIN/$b is missing: the build did not produce it"
done
command -v openssl >/dev/null || die "the openssl command is missing (make deps installs it)"

# ---- 2. a fresh demo folder ----
rm -rf -- "$DEMO"
mkdir -p "$DEMO/tls" "$DEMO/tokens" "$DEMO/logs" "$DEMO/data"
chmod 700 "$DEMO/tls" "$DEMO/tokens"

# ---- 3. development TLS material: a CA and a server certificate for localhost ----
say "creating a development CA and a server certificate for localhost in demo/tls"
(
    cd "$DEMO/tls"
    umask 077
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null
    openssl req -x509 -new -key ca.key -sha256 -days 30 -subj "/CN=fedcoord demo CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out server.key 2>/dev/null
    openssl req -new -key server.key -sha256 -subj "/CN=localhost" -out server.csr
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" \
        "subjectAltName=DNS:localhost,IP:127.0.0.1" >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 \
        -days 30 -extfile server.ext -out server.pem 2>/dev/null
    openssl verify -CAfile ca.pem server.pem >/dev/null
    chmod 644 ca.pem server.pem
    rm -f server.csr server.ext ca.srl
) || die "creating the TLS material with openssl failed"

# ---- 4. the HTTP port: the first free one from HTTP_PORT ----
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for ((p = HTTP_PORT; p < HTTP_PORT + 100 && p <= 65535; p++)); do
    port_in_use "$p" || break
done
port_in_use "$p" && die "no free HTTP port in $HTTP_PORT..$((HTTP_PORT + 99))"
HTTP_PORT=$p

# The daemon's round limit: [round] max_rounds counts committed training rounds; the scheduler
# stops after the evaluation of the last version (docs/rounds.md).
MAX_ROUNDS=$ROUNDS
MIN_UPDATES=$(((CLIENTS + 1) / 2))

# ---- 5. the configuration file: a readable example for operators ----
CONFIG=$DEMO/fedcoord.ini
cat >"$CONFIG" <<EOF
; fedcoord.ini, written by tools/demo.sh for \`make demo\`.
;
; A working example of a fedcoord configuration. Every key is described in
; docs/configuration.md; keys left out keep their defaults. Paths are used as given, relative
; to the daemon's working folder (the demo writes absolute ones). Check a configuration without
; starting anything with:  fedcoord --config fedcoord.ini --check-config

[server]
; The demo's clients run on this machine. Port 0 picks any free port; the daemon logs it in
; its "msg=listening port=N" line.
listen    = 127.0.0.1
port      = 0
; The SQLite database (fedcoord.db) and the staging area of uploads live here.
data_dir  = $DEMO/data
log_level = info

[tls]
; A development CA made by the demo with the openssl command (demo/tls). Clients verify the
; server against ca.pem and the name "localhost". In production, use your own CA.
; Clients authenticate with tokens (fedctl client add), not with certificates.
cert = $DEMO/tls/server.pem
key  = $DEMO/tls/server.key

[round]
; Start a round once every demo client is connected, and train with all of them.
min_clients       = $CLIENTS
clients_per_round = $CLIENTS
; Quorum: a round that has fewer accepted updates at its deadline fails.
min_updates       = $MIN_UPDATES
round_timeout     = 60s
; Evaluate every new model version on the clients' held-out test splits.
eval_every        = 1
; Stop after this many committed training rounds (failed ones do not count) and the
; evaluation of the last model; then clients are told the federation is done.
max_rounds        = $MAX_ROUNDS
; Seed of the client selection.
seed              = $SEED
; FedProx coefficient sent to the clients with each task (0 = plain local SGD).
mu                = $MU
; The first model (fedtrain --write-initial). Used only while the database holds none.
initial_model     = $DEMO/initial.safetensors

[aggregator]
; Any rule of docs/aggregators.md, with its parameters as KEY=VALUE,KEY=VALUE.
rule   = $RULE
params = $RULE_PARAMS

[optimizer]
; The server optimizer applied to the aggregate: sgd with lr=1 is plain FedAvg.
name   = $OPT
params = $OPT_PARAMS

[storage]
; Model versions whose tensors are kept (older versions keep their metadata).
keep_last = 5

[limits]
; Every demo client connects from 127.0.0.1, and the default allows 16 connections per
; address (a guard against one host hogging the daemon). Room for all of them, and for the
; overlap while a client reconnects.
max_connections_per_peer = $((2 * CLIENTS + 16))

[http]
; The dashboard and the operator API, on this machine only.
enabled = true
listen  = 127.0.0.1
port    = $HTTP_PORT
EOF
say "configuration: demo/fedcoord.ini (rule $RULE, optimizer $OPT, $ROUNDS rounds, $CLIENTS clients, alpha $ALPHA, mu $MU)"

# ---- 6. the initial model and the clients' tokens ----
"$BIN/fedtrain" --write-initial "$DEMO/initial.safetensors" --seed "$SEED" >/dev/null ||
    die "fedtrain --write-initial failed"
DB=$DEMO/data/fedcoord.db
for ((i = 0; i < CLIENTS; i++)); do
    (umask 077 && "$BIN/fedctl" client add "site-$i" --db "$DB" >"$DEMO/tokens/site-$i.token" \
        2>/dev/null) || die "fedctl client add site-$i failed"
done
say "registered $CLIENTS clients (tokens in demo/tokens, mode 600)"

# ---- 7. the daemon ----
"$BIN/fedcoord" --config "$CONFIG" 2>"$DEMO/logs/fedcoord.log" &
DAEMON_PID=$!
PORT=""
for ((i = 0; i < 200; i++)); do
    PORT=$(grep 'msg=listening' "$DEMO/logs/fedcoord.log" 2>/dev/null |
        grep -o 'port=[0-9]*' | cut -d= -f2 | grep -vx "$HTTP_PORT" | head -n 1 || true)
    [ -n "$PORT" ] && break
    kill -0 "$DAEMON_PID" 2>/dev/null || {
        tail -n 20 "$DEMO/logs/fedcoord.log" >&2
        die "fedcoord exited at start (log: demo/logs/fedcoord.log)"
    }
    sleep 0.1
done
[ -n "$PORT" ] || die "fedcoord did not log msg=listening within 20 s (demo/logs/fedcoord.log)"
say "fedcoord (pid $DAEMON_PID) listens on localhost:$PORT; dashboard http://127.0.0.1:$HTTP_PORT/"

# ---- 8. the clients ----
for ((i = 0; i < CLIENTS; i++)); do
    "$BIN/fedtrain" --server "localhost:$PORT" --ca "$DEMO/tls/ca.pem" --name "site-$i" \
        --token-file "$DEMO/tokens/site-$i.token" --client-index "$i" --clients "$CLIENTS" \
        --alpha "$ALPHA" --seed "$SEED" >"$DEMO/logs/site-$i.log" 2>&1 &
    TRAINER_PIDS+=($!)
done
say "started $CLIENTS fedtrain clients (logs in demo/logs)"

# ---- 9. the baseline, while the federation runs ----
B=$("$BIN/centralized" --clients "$CLIENTS" --alpha "$ALPHA" --seed "$SEED" |
    sed -n 's/^centralized baseline accuracy: //p')
[ -n "$B" ] || die "build/bin/centralized did not print a baseline"

# ---- 10. the live table ----
echo
"$BIN/fedctl" rounds --db "$DB" --follow --until "$ROUNDS" --while-pid "$DAEMON_PID" \
    --interval 250 &
TABLE_PID=$!
alive_trainers() {
    local p n=0
    for p in "${TRAINER_PIDS[@]}"; do
        kill -0 "$p" 2>/dev/null && n=$((n + 1))
    done
    echo "$n"
}
# The daemon must outlive the run: it stops by itself only when signalled.
daemon_gone() {
    kill -0 "$DAEMON_PID" 2>/dev/null && return 0
    local rc=0
    wait "$DAEMON_PID" || rc=$?
    DAEMON_PID=""
    if [ "$rc" = 0 ]; then
        # Ctrl-C reaches the whole process group, the daemon included.
        say "fedcoord was stopped (interrupt or SIGTERM); stopping the demo"
        cleanup
        exit 130
    fi
    tail -n 20 "$DEMO/logs/fedcoord.log" >&2
    die "fedcoord exited with status $rc during the run (demo/logs/fedcoord.log)"
}
DEADLINE=$((SECONDS + DEMO_TIMEOUT))
all_done_at=""
while kill -0 "$TABLE_PID" 2>/dev/null; do
    if [ "$SECONDS" -ge "$DEADLINE" ]; then
        die "no result after DEMO_TIMEOUT=$DEMO_TIMEOUT s (logs in demo/logs)"
    fi
    daemon_gone
    # Every client was told "done" (or failed): give the table one more poll, then end it.
    if [ "$(alive_trainers)" = 0 ]; then
        [ -n "$all_done_at" ] || all_done_at=$SECONDS
        [ $((SECONDS - all_done_at)) -ge 3 ] && break
    fi
    sleep 0.25
done
if kill -0 "$TABLE_PID" 2>/dev/null; then
    stop_pid "$TABLE_PID"
else
    wait "$TABLE_PID" || die "fedctl rounds failed"
fi
TABLE_PID=""
echo
daemon_gone

# ---- 11. the clients finish ("done" from the daemon), then the daemon is stopped ----
failed_clients=0
finish_by=$((SECONDS + 30))
while [ "$(alive_trainers)" != 0 ] && [ "$SECONDS" -lt "$finish_by" ]; do
    sleep 0.1
done
for ((i = 0; i < ${#TRAINER_PIDS[@]}; i++)); do
    p=${TRAINER_PIDS[$i]}
    if kill -0 "$p" 2>/dev/null; then
        say "site-$i did not finish within 30 s of the last round; stopping it"
        stop_pid "$p"
        failed_clients=$((failed_clients + 1))
    elif ! wait "$p"; then
        say "site-$i exited with an error (demo/logs/site-$i.log):"
        tail -n 3 "$DEMO/logs/site-$i.log" | sed 's/^/    /'
        failed_clients=$((failed_clients + 1))
    fi
done
TRAINER_PIDS=()
kill -TERM "$DAEMON_PID" 2>/dev/null || true
daemon_rc=0
wait "$DAEMON_PID" || daemon_rc=$?
DAEMON_PID=""
[ "$daemon_rc" = 0 ] || say "fedcoord exited with status $daemon_rc (demo/logs/fedcoord.log)"

# ---- 12. the result: A from the last evaluation round, the exported final model ----
LAST=$("$BIN/fedctl" rounds --db "$DB" --limit 1 | tail -n 1)
A=$(awk '{print $4}' <<<"$LAST")
VERSION=$(awk '{print $6}' <<<"$LAST")
is_num "$A" || die "the last round ($LAST) has no evaluation accuracy"
FINAL=$DEMO/final-model.safetensors
"$BIN/fedctl" export --db "$DB" --version "$VERSION" --out "$FINAL" >/dev/null ||
    die "fedctl export failed"

ELAPSED=$((SECONDS - T0))
echo "final accuracy: $A (centralized baseline $B)"
echo "final model: ${FINAL#"$ROOT"/} (model version $VERSION, safetensors)"
echo "dashboard (while it ran): http://127.0.0.1:$HTTP_PORT/"
say "finished in ${ELAPSED} s; logs in demo/logs, database demo/data/fedcoord.db"
[ "$failed_clients" = 0 ] || die "$failed_clients client(s) did not finish cleanly"
[ "$daemon_rc" = 0 ] || exit 1
exit 0
