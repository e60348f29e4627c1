#!/usr/bin/env bash
# Installs the Debian packages fedcoord needs, only those that are missing. Safe to run again:
# when everything is present it prints nothing and exits 0.
set -eu
pkgs=(
    build-essential pkg-config bc
    libuv1-dev libprotobuf-c-dev protobuf-c-compiler libssl-dev openssl
    libsqlite3-dev sqlite3 libcmocka-dev libhttp-parser-dev libjansson-dev libinih-dev
    python3 python3-numpy
    clang libclang-rt-dev llvm
    prometheus wrk gnuplot-nox
    chromium chromium-driver nodejs
)
missing=()
for p in "${pkgs[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$status" = installed ] || missing+=("$p")
done
# npm drives Chromium in the dashboard test: Debian's package, unless an npm command is there
# already (NodeSource's nodejs bundles npm and conflicts with Debian's npm package).
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps: installing ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
    sudo=""
elif command -v sudo >/dev/null 2>&1; then
    sudo="sudo"
else
    echo "deps: missing packages (${missing[*]}) and not root; install them and run again" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
