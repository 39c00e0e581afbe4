#!/usr/bin/env bash
# scripts/fetch-data against a mirror served on loopback (python3's http.server
# on 127.0.0.1), and against --mnist-from: good files are installed, a damaged
# file is never installed, a dead mirror falls through to the next one, and
# when nothing works the message says what to do. Needs the four MNIST .gz
# files of ../shared/data/mnist (exit 77 = skipped, with the reason, without).
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
src="${NORMLAB_TEST_MNIST:-$repo/../shared/data/mnist}"
names=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
for n in "${names[@]}"; do
  if [[ ! -f "$src/$n" ]]; then
    echo "SKIP: $src/$n is missing (the test serves the real MNIST files; set NORMLAB_TEST_MNIST)"
    exit 77
  fi
done
command -v python3 >/dev/null || { echo "FAIL: python3 is needed for the loopback mirror"; exit 1; }

work="$(mktemp -d)"
server_pid=""
cleanup() {
  [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# The mirror: good/ holds the real files, bad/ the same with one byte changed in one file.
mkdir -p "$work/www/good" "$work/www/bad"
cp "${names[@]/#/$src/}" "$work/www/good/"
cp "${names[@]/#/$src/}" "$work/www/bad/"
printf '\x00' | dd of="$work/www/bad/t10k-labels-idx1-ubyte.gz" bs=1 seek=100 conv=notrunc status=none
python3 -c '
import http.server, socketserver, sys, os
os.chdir(sys.argv[1])
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass
srv = socketserver.TCPServer(("127.0.0.1", 0), Quiet)
open(sys.argv[2] + ".tmp", "w").write(str(srv.server_address[1]))
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
srv.serve_forever()
' "$work/www" "$work/port" &
server_pid=$!
for _ in $(seq 100); do [[ -f "$work/port" ]] && break; sleep 0.1; done
[[ -f "$work/port" ]] || { echo "FAIL: the loopback server did not start"; exit 1; }
base="http://127.0.0.1:$(cat "$work/port")"
# A port nothing listens on: the dead mirror.
dead="http://127.0.0.1:9/"

passed=0 failed=0
check() {  # check NAME CONDITION...
  local name="$1"
  shift
  if "$@"; then
    echo "ok: $name"
    passed=$((passed + 1))
  else
    echo "FAILED: $name"
    failed=$((failed + 1))
  fi
}
fetch() {  # fetch DEST [args...]: runs fetch-data mnist with no shared copy; output in $work/log
  local dest="$1"
  shift
  NORMLAB_SHARED_DATA="" NORMLAB_FETCH_DEST="$dest" "$repo/scripts/fetch-data" mnist "$@" >"$work/log" 2>&1
}
all_four() {
  local n
  for n in "${names[@]}"; do cmp -s "$src/$n" "$1/mnist/$n" || return 1; done
}
none_there() { [[ ! -e "$1/mnist/t10k-labels-idx1-ubyte.gz" ]]; }
log_has() { grep -q -- "$1" "$work/log"; }

NORMLAB_MNIST_MIRRORS="$base/good/" fetch "$work/d1"
check "download from a good mirror exits 0" test $? -eq 0
check "download from a good mirror installs the four files" all_four "$work/d1"
NORMLAB_MNIST_MIRRORS="$base/good/" fetch "$work/d1"
check "a second run only re-verifies" log_has "already present"

NORMLAB_MNIST_MIRRORS="$dead $base/bad/ $base/good/" fetch "$work/d2"
check "a dead and a damaged mirror fall through to a good one" test $? -eq 0
check "the files then are the right ones" all_four "$work/d2"
check "the damaged file is reported" log_has "checksum mismatch"

NORMLAB_MNIST_MIRRORS="$dead $base/bad/" fetch "$work/d3"
check "no good mirror exits 1" test $? -eq 1
check "no good mirror installs nothing" none_there "$work/d3"
check "no good mirror says what to do" log_has "--mnist-from DIR"

fetch "$work/d4" --mnist-from "$work/www/good"
check "--mnist-from a good copy exits 0" test $? -eq 0
check "--mnist-from a good copy installs it" all_four "$work/d4"
fetch "$work/d5" --mnist-from "$work/www/bad"
check "--mnist-from a damaged copy exits 1" test $? -eq 1
check "--mnist-from a damaged copy installs nothing" none_there "$work/d5"
fetch "$work/d6" --mnist-from "$work/nowhere"
check "--mnist-from a missing directory names it" log_has "$work/nowhere is not a directory"

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
