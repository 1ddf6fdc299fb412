#!/usr/bin/env bash
# Instructions per publish + process round trip through the layers, counted by callgrind
# (repeatable, unlike wall-clock time on a shared machine). Prints one line per case:
#
#   CASE INSTRUCTIONS_PER_ROUND_TRIP (ALLOCATIONS_PER_ROUND_TRIP allocations)
#
# and then the instructions each case adds over `bare`. Needs valgrind.
#
#   scripts/bench-instructions.sh [iterations]     (default 2000 round trips per case)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

iterations="${1:-2000}"
command -v valgrind >/dev/null || { echo "bench-instructions.sh: valgrind is needed" >&2; exit 1; }

# Build the bench binary once and find it (with the idempotency layer, for `unsampled-dedup`).
bin="$(cargo bench --bench layers --features dedup --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "layers" and m.get("executable"):
        print(m["executable"])')"
[[ -x "$bin" ]] || { echo "bench-instructions.sh: could not build benches/layers.rs" >&2; exit 1; }

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
declare -A per
for case in bare no-sdk unsampled sampled sdk-floor unsampled-dedup unsampled-dlq; do
    EVENTSCOPE_CALLGRIND="$case" EVENTSCOPE_CALLGRIND_ITERATIONS="$iterations" \
        valgrind --tool=callgrind --callgrind-out-file="$out/$case.out" \
        --toggle-collect='*measured_round_trip*' "$bin" >/dev/null 2>"$out/$case.log"
    # awk reads to the end: leaving early would break the pipe (and `pipefail` with it).
    total="$(callgrind_annotate "$out/$case.out" 2>/dev/null |
        awk '/PROGRAM TOTALS/ && !found {gsub(",", "", $1); print $1; found = 1}')"
    [[ -n "$total" ]] || { echo "bench-instructions.sh: no count for $case, see $out/$case.log" >&2; exit 1; }
    per[$case]=$(( total / iterations ))
    # The bench counts them itself (its global allocator), over the measured round trips.
    allocs="$(awk '/^allocations / {print $2}' "$out/$case.log")"
    echo "$case ${per[$case]} (${allocs:-?} allocations)"
done
echo
for case in no-sdk unsampled sampled; do
    echo "added $case $(( per[$case] - per[bare] ))"
done
# What the OpenTelemetry SDK costs by itself for the spans of an unsampled round trip; the
# rest of `unsampled` is the layers' own work.
echo "added sdk-floor $(( per[sdk-floor] - per[bare] ))"
echo "layers' own share of unsampled $(( per[unsampled] - per[sdk-floor] ))"
# The idempotency layer with its in-memory store, over `unsampled`.
echo "added unsampled-dedup over unsampled $(( per[unsampled-dedup] - per[unsampled] ))"
# A retry policy and a dead-letter destination, paid by a message that succeeds.
echo "added unsampled-dlq over unsampled $(( per[unsampled-dlq] - per[unsampled] ))"

# The same through the consumer core on the embedded broker, per message.
consumer="$(cargo bench --bench consumer --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "consumer" and m.get("executable"):
        print(m["executable"])')"
[[ -x "$consumer" ]] || { echo "bench-instructions.sh: could not build benches/consumer.rs" >&2; exit 1; }
messages=20000
for case in consume consume-dlq consume-core; do
    EVENTSCOPE_CALLGRIND="$case" EVENTSCOPE_CALLGRIND_MESSAGES="$messages" \
        valgrind --tool=callgrind --callgrind-out-file="$out/$case.out" \
        --toggle-collect='*measured_consume*' "$consumer" >/dev/null 2>"$out/$case.log"
    total="$(callgrind_annotate "$out/$case.out" 2>/dev/null |
        awk '/PROGRAM TOTALS/ && !found {gsub(",", "", $1); print $1; found = 1}')"
    [[ -n "$total" ]] || { echo "bench-instructions.sh: no count for $case, see $out/$case.log" >&2; exit 1; }
    per[$case]=$(( total / messages ))
done
echo
echo "consume ${per[consume]} per message"
echo "consume-dlq ${per[consume-dlq]} per message"
echo "added consume-dlq over consume $(( per[consume-dlq] - per[consume] ))"
# The core and the embedded broker without the process layer: what the core itself costs.
echo "consume-core ${per[consume-core]} per message (no process layer)"
