#!/usr/bin/env bash
# Everything only a GPU shows, in one call on a lent CUDA machine (see benchmarks/README.md, "On a GPU"):
#   1. the `cuda` tests (tests/test_cuda.py): CUDA vs CPU logits and decoding, bf16, SDPA kernels, bf16 training;
#   2. the training-step benchmark on the GPU (bf16 autocast);
#   3. the sampler benchmark on the GPU (200 held-out problems, lengths 64 and 256, batch 16);
#   4. block diffusion against AR on the GPU in bf16 (the block-diffusion table of benchmarks/README.md: lengths 256
#      and 1024, batch 1 and 16, 32 held-out problems per length, the entry's thresholds 0.998 and 0.999);
#   5. the VLM and text-to-image benchmarks on the GPU (the shipped mnist-grid-vlm and mnist-t2i entries);
#   6. training at scale (benchmarks/scale.py): MFU of a 125 M and a 1 B core, LoRA memory of a LLaDA-8B shape
#      (an 80 GB card; not in the default STAGES run, name it: STAGES="scale-bench");
#   7. decoding at scale (benchmarks/decode_scale.py): tokens/s of a LLaDA-8B-shaped block-diffusion core against
#      transformers' generate of a same-shape Llama with its static cache (an 80 GB card; named only:
#      STAGES="decode-bench").
#
#   scripts/gpu_check.sh OUT_DIR          # from the repository root; works from an installed checkout or a bare copy
#   STAGES="cuda-tests t2i-bench" scripts/gpu_check.sh OUT_DIR      # only the named stages
#
# A bare copy (no `pip install -e .`) gets the zoo entries through a `mmdiff/zoo_entries` link, as the install does.
# Each stage has its own time limit so that one slow stage cannot eat the others; logs and JSON land in OUT_DIR.
set -u
OUT=${1:?usage: scripts/gpu_check.sh OUT_DIR}
source "$(dirname "$0")/gpu_env.sh"

stage() {  # stage NAME SECONDS COMMAND...: runs, keeps the whole log, prints its tail
    local name=$1 limit=$2
    shift 2
    [[ -z "${STAGES:-}" || " $STAGES " == *" $name "* ]] || return 0
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc $rc, $((SECONDS - start)) s"
    tail -n "${TAIL:-25}" "$OUT/$name.log" | cut -c1-220
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers, timm; print('torch', torch.__version__, 'transformers', transformers.__version__,
'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"
TAIL=12 stage cuda-tests 120 $PY -m pytest -m cuda tests/test_cuda.py -q -rs -p no:cacheprovider
TAIL=14 stage train-bench 150 $PY benchmarks/train.py --device cuda --out "$OUT"
TAIL=40 stage sampling-bench 240 $PY benchmarks/sampling.py --device cuda --lengths 64 256 --batch-sizes 16 --out "$OUT"
mkdir -p "$OUT/block-diffusion"
TAIL=30 stage block-bench 300 $PY benchmarks/sampling.py --device cuda --dtype bfloat16 --lengths 256 1024 \
    --problems 32 --thresholds 0.998 0.999 --only AR "block diffusion" --out "$OUT/block-diffusion"
TAIL=10 stage vlm-bench 90 $PY benchmarks/vlm.py --device cuda --out "$OUT"
TAIL=14 stage t2i-bench 120 $PY benchmarks/t2i.py --device cuda --captions 200 --out "$OUT"
if [[ " ${STAGES:-} " == *" scale-bench "* ]]; then
    TAIL=12 stage scale-bench 420 $PY benchmarks/scale.py --device cuda --out "$OUT"
fi
if [[ " ${STAGES:-} " == *" decode-bench "* ]]; then
    TAIL=16 stage decode-bench 300 $PY benchmarks/decode_scale.py --device cuda --out "$OUT"
fi
