#!/bin/sh
# compose-setup.sh: one-shot set-up of the compose demo (runs as root in the `setup` service).
# Creates in /demo: a development CA and a server certificate for the name "fedcoord", the
# configuration, the initial model and CLIENTS tokens registered in the daemon's database.
# Idempotent: an existing /demo/fedcoord.ini is kept.
set -eu
demo=/demo
data=/var/lib/fedcoord
clients=${CLIENTS:-3}
rounds=${ROUNDS:-30}
if [ -f "$demo/fedcoord.ini" ]; then
    echo "setup: $demo/fedcoord.ini exists; keeping it"
    exit 0
fi
umask 077
mkdir -p "$demo/tokens" "$demo/claims"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=fedcoord demo CA" -keyout "$demo/ca.key" -out "$demo/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=fedcoord" \
    -keyout "$demo/server.key" -out "$demo/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:fedcoord,DNS:localhost,IP:127.0.0.1\n' > "$demo/san.ext"
openssl x509 -req -in "$demo/server.csr" -CA "$demo/ca.pem" -CAkey "$demo/ca.key" \
    -CAcreateserial -days 30 -extfile "$demo/san.ext" -out "$demo/server.pem" 2>/dev/null
fedtrain --write-initial "$demo/initial.safetensors" --data /usr/local/share/fedcoord/digits.csv.gz
cat > "$demo/fedcoord.ini" <<INI
[server]
listen = 0.0.0.0
port = 7443
data_dir = $data
[tls]
cert = $demo/server.pem
key = $demo/server.key
[round]
min_clients = $clients
clients_per_round = $clients
min_updates = $clients
round_timeout = 2m
max_rounds = $rounds
eval_every = 1
initial_model = $demo/initial.safetensors
[http]
listen = 0.0.0.0
port = 7080
INI
i=0
while [ "$i" -lt "$clients" ]; do
    fedctl client add "client$i" --db "$data/fedcoord.db" > "$demo/tokens/client$i"
    i=$((i + 1))
done
chown -R 10001:10001 "$demo" "$data"
chmod 0755 "$demo" "$demo/claims"
echo "setup: $clients clients, $rounds rounds; configuration in $demo/fedcoord.ini"
