#!/bin/sh
# compose-trainer.sh: a replica of the `trainer` service claims the first free client identity
# (mkdir is atomic on the shared volume) and trains as that client until the run is done.
set -eu
demo=/demo
clients=${CLIENTS:-3}
i=0
while [ "$i" -lt "$clients" ]; do
    if mkdir "$demo/claims/$i" 2>/dev/null; then
        exec fedtrain --server fedcoord:7443 --ca "$demo/ca.pem" --name "client$i" \
            --token-file "$demo/tokens/client$i" --client-index "$i" --clients "$clients" \
            --data /usr/local/share/fedcoord/digits.csv.gz
    fi
    i=$((i + 1))
done
echo "trainer: all $clients client identities are taken; scale trainer to at most CLIENTS" >&2
exit 2
