#!/bin/sh
# Send a sha256 and a vector_add message with redis-cli, then read both results.
#
#   examples/redis-cli/produce.sh [queue] [reply-stream]
#
# REDIS_CLI (default redis-cli), REDIS_HOST and REDIS_PORT choose the server.
# Results go to the reply stream (default gpufeed:{queue}:reply:cli-PID), which
# shares the queue's {hash tag} as Redis Cluster requires; delete it when done.
set -eu

queue=${1:-default}
in="gpufeed:{$queue}:in"
reply=${2:-"gpufeed:{$queue}:reply:cli-$$"}
cli="${REDIS_CLI:-redis-cli} -h ${REDIS_HOST:-127.0.0.1} -p ${REDIS_PORT:-6379}"

# sha256 of the three bytes "abc".
$cli XADD "$in" '*' op sha256 cid cli-sha reply_to "$reply" data abc >/dev/null

# vector_add of a = [1, 2, 3] and b = [0.5, 0.5, 0.5]: six little-endian float32,
# binary, so it goes through stdin: -x appends stdin as the last argument (data).
printf '\000\000\200\077\000\000\000\100\000\000\100\100\000\000\000\077\000\000\000\077\000\000\000\077' \
  | $cli -x XADD "$in" '*' op vector_add cid cli-vec reply_to "$reply" data >/dev/null

# Wait up to 30 s for both results (the worker answers each one once), then print
# them together: reading them as they come would need the last id read, which
# redis-cli's output does not give a shell script without parsing it.
waited=0
while [ "$($cli XLEN "$reply")" -lt 2 ]; do
  if [ "$waited" -ge 300 ]; then
    echo "no results within 30 s: is a worker serving queue $queue?" >&2
    exit 2
  fi
  sleep 0.1
  waited=$((waited + 1))
done
$cli --no-raw XRANGE "$reply" - +
echo "results are in $reply"
