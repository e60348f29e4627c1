#!/bin/sh
# fedcoord-entrypoint: the container's entry point.
#   serve [--set k=v]...   run the daemon (default)
#   check                  print the effective configuration and exit (0 = valid)
#   fedctl ARGS...         run fedctl
#   trainer ARGS...        run the example trainer (fedtrain)
#   anything else          exec'ed as given
# FEDCOORD_CONFIG (default /etc/fedcoord/fedcoord.ini) names the configuration file and
# FEDCOORD_DATA (default /var/lib/fedcoord) the data folder, which overrides [server] data_dir.
set -eu

config=${FEDCOORD_CONFIG:-/etc/fedcoord/fedcoord.ini}
data=${FEDCOORD_DATA:-/var/lib/fedcoord}

need_config() {
    if [ ! -r "$config" ]; then
        echo "fedcoord-entrypoint: configuration $config is not readable; mount a folder with" \
             "fedcoord.ini at /etc/fedcoord or set FEDCOORD_CONFIG (see docs/operations.md)" >&2
        exit 2
    fi
}

need_data() {
    if [ ! -d "$data" ] || [ ! -w "$data" ]; then
        echo "fedcoord-entrypoint: data folder $data is missing or not writable by uid $(id -u);" \
             "mount a volume there owned by that user" >&2
        exit 2
    fi
}

cmd=${1:-serve}
[ $# -gt 0 ] && shift
case "$cmd" in
serve)
    need_config
    need_data
    exec fedcoord --config "$config" --set "server.data_dir=$data" "$@"
    ;;
check)
    need_config
    exec fedcoord --config "$config" --set "server.data_dir=$data" --check-config "$@"
    ;;
fedctl)
    exec fedctl "$@"
    ;;
trainer)
    exec fedtrain "$@"
    ;;
*)
    exec "$cmd" "$@"
    ;;
esac
