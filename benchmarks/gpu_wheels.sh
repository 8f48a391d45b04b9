#!/usr/bin/env bash
# Build kdbench's own wheel and download, on a machine with PyPI, the wheels
# that kdbench needs and the lent GPU image lacks (pydantic and mlxtend with
# their own needs), for Python 3.12 on x86-64, into .whl/ (ignored by git;
# carry it to the GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
platforms=()
for n in 28 27 17; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform any)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d .whl \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.7.0 typing-inspection \
  typing-extensions mlxtend==0.25.0 safetensors
python3 -m pip wheel -q --no-deps -w .whl .
ls -la .whl
