#!/usr/bin/env bash
# A/B timing of the fast LayerNorm kernels: REV's src/kernels/layernorm_fast.cpp
# against the working tree's, linked into one program (ab_layernorm.cpp), for
# one -march (default x86-64-v4; x86-64-v3 for the AVX2 kernels).
#
#   bench/kernel_ab/run.sh REV [MARCH] -- N D THREADS [ROUNDS] [ROW_MEAN]
#   e.g. bench/kernel_ab/run.sh 4a0f3bc -- 4096 1024 2 20
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
rev="$1"; shift
march=x86-64-v4
if [[ "${1:-}" != "--" ]]; then march="$1"; shift; fi
shift  # --
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
git -C "$repo" show "$rev:src/kernels/layernorm_fast.cpp" >"$out/old.cpp"
fl=(-O3 -DNDEBUG "-march=$march" -fopenmp -std=c++20 "-I$repo/include" "-I$repo/src"
    -DNORMLAB_ISA_DISPATCH=0)
g++ "${fl[@]}" -DNORMLAB_ISA_NAMESPACE=isa_old -c "$out/old.cpp" -o "$out/old.o"
g++ "${fl[@]}" -DNORMLAB_ISA_NAMESPACE=isa_new -c "$repo/src/kernels/layernorm_fast.cpp" \
  -o "$out/new.o"
g++ "${fl[@]}" -c "$repo/bench/kernel_ab/ab_layernorm.cpp" -o "$out/ab.o"
g++ -fopenmp "$out/ab.o" "$out/old.o" "$out/new.o" -o "$out/ab"
"$out/ab" "$@"
