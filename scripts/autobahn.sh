#!/usr/bin/env bash
# Runs the Autobahn|Testsuite (RFC 6455 conformance) against the WebSocket transport: builds
# and starts examples/autobahn-testee.rs (an echo server on the transport's own upgrade, frame
# reader, writer and close handling), runs the suite's `wstest -m fuzzingclient` on it, and
# fails on any case whose behavior (or close behavior) is not OK, NON-STRICT or INFORMATIONAL.
# docs/autobahn.md has the results and how to read them.
#
#   scripts/autobahn.sh            # every case; report in target/autobahn/report/index.html
#
# The suite is Python 2 only. It is installed when missing, with pip, into AUTOBAHN_DIR
# (default ~/.cache/chat-engine/autobahntestsuite-py27), from CPython 2.7: AUTOBAHN_PYTHON when
# set, else pyenv's 2.7.18 (PYENV_VERSION=2.7.18), else `python2.7` on the PATH. Without one
# this fails (it never skips).
set -euo pipefail
cd "$(dirname "$0")/.."

# The suite's version, pinned: its cases and verdicts are what docs/autobahn.md reports.
SUITE_VERSION=25.10.1
# Cases to leave out (none: 12 and 13 are permessage-deflate, which the testee offers).
EXCLUDE_CASES=''
# Verdicts that pass. NON-STRICT: a failure detected later than it could have been (e.g.
# invalid UTF-8 found at the end of a frame rather than in its middle).
PASSING='OK NON-STRICT INFORMATIONAL'

DIR=${AUTOBAHN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/chat-engine/autobahntestsuite-py27}
WORK=${CARGO_TARGET_DIR:-target}/autobahn
start=$(date +%s)

# CPython 2.7.
py=()
pyenv_python=${PYENV_ROOT:-$HOME/.pyenv}/versions/2.7.18/bin/python
if [ -n "${AUTOBAHN_PYTHON:-}" ]; then
  py=("$AUTOBAHN_PYTHON")
elif [ -x "$pyenv_python" ]; then
  py=("$pyenv_python") # pyenv's 2.7.18, whether or not pyenv is on the PATH
elif command -v pyenv >/dev/null 2>&1 && PYENV_VERSION=2.7.18 pyenv exec python --version >/dev/null 2>&1; then
  py=(env PYENV_VERSION=2.7.18 pyenv exec python)
elif command -v python2.7 >/dev/null 2>&1; then
  py=(python2.7)
fi
if [ ${#py[@]} -eq 0 ] || ! "${py[@]}" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; then
  echo "autobahn: the suite needs CPython 2.7 and none was found. Install one with pyenv" >&2
  echo "  (pyenv install 2.7.18; needs a C toolchain and libssl/zlib/libffi headers)," >&2
  echo "  or the distribution's python2.7 package where it still has one, or set AUTOBAHN_PYTHON." >&2
  exit 1
fi

# The suite: `zope` is a namespace package, so DIR goes on the path with site.addsitedir
# (a .pth file in it makes `zope` importable), not PYTHONPATH.
import_suite="import site, sys; site.addsitedir(sys.argv[1]); import autobahntestsuite"
if ! "${py[@]}" -c "$import_suite" "$DIR" >/dev/null 2>&1; then
  echo "autobahn: installing autobahntestsuite $SUITE_VERSION into $DIR"
  mkdir -p "$DIR"
  "${py[@]}" -m pip install --quiet --disable-pip-version-check --target "$DIR" "autobahntestsuite==$SUITE_VERSION"
  "${py[@]}" -c "$import_suite" "$DIR"
fi
wstest() {
  "${py[@]}" -c "import site, sys; site.addsitedir(sys.argv.pop(1)); from autobahntestsuite.wstest import run; sys.exit(run())" \
    "$DIR" "$@"
}

# The testee, in release (the 9.x cases send up to 16 MiB, slow in debug), on a free port.
cargo build --release --quiet --example autobahn-testee
rm -rf "$WORK"
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
cargo run --release --quiet --example autobahn-testee -- 127.0.0.1:0 >"$WORK/testee.out" 2>"$WORK/testee.err" &
testee=$!
trap 'kill "$testee" 2>/dev/null || true' EXIT
addr=
for _ in $(seq 1 300); do
  addr=$(sed -n 's/^listening //p' "$WORK/testee.out")
  [ -n "$addr" ] && break
  kill -0 "$testee" 2>/dev/null || { cat "$WORK/testee.err" >&2; echo "autobahn: the testee exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "autobahn: the testee did not print its address" >&2; exit 1; }
echo "autobahn: testee listening on $addr"

cat >"$WORK/fuzzingclient.json" <<EOF
{
  "outdir": "$WORK/report",
  "servers": [{ "agent": "chat-transport-ws", "url": "ws://$addr/" }],
  "cases": ["*"],
  "exclude-cases": [$EXCLUDE_CASES],
  "exclude-agent-cases": {}
}
EOF
(cd "$WORK" && wstest -m fuzzingclient -s fuzzingclient.json) >"$WORK/wstest.log" 2>&1 || {
  tail -n 30 "$WORK/wstest.log" >&2
  echo "autobahn: wstest failed (log: $WORK/wstest.log)" >&2
  exit 1
}
kill -0 "$testee" 2>/dev/null || { cat "$WORK/testee.err" >&2; echo "autobahn: the testee died during the run" >&2; exit 1; }

# The verdicts: counts by behavior, and every case that does not pass.
"${py[@]}" - "$WORK/report/index.json" "$PASSING" "$(($(date +%s) - start))" <<'EOF'
import json, sys
from collections import Counter
index, passing, took = json.load(open(sys.argv[1])), sys.argv[2].split(), sys.argv[3]
cases = list(index.values())[0]
key = lambda c: [int(p) for p in c.split(".")]
behavior = Counter(r["behavior"] for r in cases.values())
close = Counter(r["behaviorClose"] for r in cases.values())
print("autobahn: %d cases in %s s" % (len(cases), took))
print("  behavior:      " + ", ".join("%s %d" % kv for kv in sorted(behavior.items())))
print("  behaviorClose: " + ", ".join("%s %d" % kv for kv in sorted(close.items())))
failed = [c for c in sorted(cases, key=key)
          if cases[c]["behavior"] not in passing or cases[c]["behaviorClose"] not in passing]
for c in sorted(cases, key=key):
    if cases[c]["behavior"] == "NON-STRICT":
        print("  non-strict: %s" % c)
for c in failed:
    print("  FAILED %s: behavior %s, behaviorClose %s" % (c, cases[c]["behavior"], cases[c]["behaviorClose"]))
if failed:
    print("autobahn: %d case(s) failed; report: %s" % (len(failed), sys.argv[1].replace("index.json", "index.html")))
    sys.exit(1)
EOF
