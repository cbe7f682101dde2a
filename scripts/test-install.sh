#!/usr/bin/env bash
# The three ways in, as a user takes them (called by scripts/test.sh after the build):
#  1. `cmake --install` to a prefix, then the prefix is MOVED: its CLI trains from the installed
#     presets and corpus, its Python package imports and runs `python -m eformer`, and an out-of-tree
#     project builds against its CMake package (tests/consumer);
#  2. `pip install .` into a fresh virtual environment (build backend and pybind11 from PyPI, pinned in
#     pyproject.toml): `import eformer` with no PYTHONPATH, the `eformer` command, `python -m eformer`;
#  3. one version everywhere: CMakeLists.txt's, reported by the CLI, the module and the package metadata.
# EFORMER_SKIP_PIP=1 skips 2 (e.g. offline).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
version="$(sed -n 's/^project(eformer VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)"
check_version() {  # what, actual
  [ "$2" = "$version" ] || { echo "test-install: $1 reports version '$2', CMakeLists.txt says '$version'" >&2; exit 1; }
}

echo "-- cmake --install, then move the prefix"
cmake --install build --prefix "$tmp/installed" > /dev/null
mv "$tmp/installed" "$tmp/moved"
check_version "the installed CLI" "$("$tmp/moved/bin/eformer" --version | awk '{print $2}')"
(cd "$tmp" && "$tmp/moved/bin/eformer" train --preset tiny --steps 2 --quiet --out "$tmp/run" > /dev/null)
test -f "$tmp/run/checkpoint.safetensors"
site="$tmp/moved/lib/python3/site-packages"
(cd "$tmp" && PYTHONPATH="$site" /usr/bin/python3 - "$version" <<'PY'
import sys, eformer
assert eformer.__version__ == sys.argv[1], eformer.__version__
assert "/moved/" in eformer.__file__, eformer.__file__
assert "/moved/" in eformer.data.default_corpus_path(), eformer.data.default_corpus_path()
PY
)
(cd "$tmp" && PYTHONPATH="$site" /usr/bin/python3 -m eformer info --mechanisms > /dev/null)
cmake -S tests/consumer -B "$tmp/consumer" -DCMAKE_PREFIX_PATH="$tmp/moved" > /dev/null
cmake --build "$tmp/consumer" > /dev/null
"$tmp/consumer/consumer"

if [ "${EFORMER_SKIP_PIP:-0}" = 1 ]; then
  echo "-- pip install: skipped (EFORMER_SKIP_PIP=1)"
  exit 0
fi
echo "-- pip install . into a fresh virtual environment"
/usr/bin/python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q "$root" > "$tmp/pip.log" 2>&1 || { tail -40 "$tmp/pip.log"; exit 1; }
cd "$tmp"  # away from the source tree: nothing may come from it
check_version "the pip-installed module" "$("$tmp/venv/bin/python" -c 'import eformer; print(eformer.__version__)')"
check_version "the package metadata" "$("$tmp/venv/bin/python" -c 'import importlib.metadata as m; print(m.version("eformer"))')"
check_version "the eformer command" "$("$tmp/venv/bin/eformer" --version | awk '{print $2}')"
"$tmp/venv/bin/python" -m eformer train --preset tiny --steps 2 --quiet --out "$tmp/pip-run" > /dev/null
test -f "$tmp/pip-run/checkpoint.safetensors"
# Both engines of the wheel (x86-64-v3, and x86-64-v4 where this CPU has AVX-512) give the same numbers.
cat > "$tmp/isa.py" <<'PY'
import sys, numpy as np, eformer as ef
rng = np.random.default_rng(0)
q, k, v = (ef.tensor(rng.standard_normal((1, 2, 300, 64)).astype(np.float32)) for _ in range(3))
outs = [ef.attention(q, k, v, kind=kind, causal=True).numpy() for kind in ("flash", "performer", "linear")]
np.save(sys.argv[1], np.stack(outs))
print(ef.isa)
PY
[ "$(EFORMER_ISA=base "$tmp/venv/bin/python" "$tmp/isa.py" "$tmp/base.npy")" = x86-64-v3 ]
if grep -q avx512vl /proc/cpuinfo; then
  [ "$("$tmp/venv/bin/python" "$tmp/isa.py" "$tmp/v4.npy")" = x86-64-v4 ]  # chosen by default here
  "$tmp/venv/bin/python" -c "
import numpy as np
a, b = np.load('$tmp/base.npy'), np.load('$tmp/v4.npy')
assert np.allclose(a, b, rtol=1e-4, atol=1e-5), np.abs(a - b).max()"
fi
echo "-- installs: ok"
