#!/usr/bin/env bash
# The CUDA figures of the benches, in one prepared run on a GPU machine:
#   classify latency (body-region on a 512x512x300 CT; the brain-tumour model on a 512x512 slice and a
#   512x512x150 volume), NLM and bilateral Mvox/s on a 512x512x300 CT, and training images/s with AMP and the
#   GPU's busy share (2D disease network; 3D fine-tuning UNet), each next to its anchor of the same run.
#
#   bash bench/gpu.sh [LOG_DIR]
#
# Each bench runs in its own process under its own time limit, so one failure does not cost the others; each
# one's output goes to LOG_DIR/<bench>.log as well as to the terminal. Data: the brain tumour training file
# (BRAIN_DATA, default ../shared/data/brain_tumor_mri/brain_tumor_mri_trainval.npz) and the TotalSegmentator
# examples (MEDDEEPRECOG_SHARED_DATA, default ../shared/data). CPU threads: BENCH_THREADS (default 2, so the
# CPU-side stages compare with the 2-core CPU figures). QUICK=1 runs small sizes (a dry run of the script itself,
# also on a CPU-only machine, where every bench falls back to the CPU). PARTS picks some of: tests (the CUDA paths'
# tests, Testing/Python/test_cuda_paths.py, skipped without CUDA) classify disease denoise finetune (default: all).
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
logs=${1:-.}
mkdir -p "$logs"
threads=${BENCH_THREADS:-2}
brain=${BRAIN_DATA:-../shared/data/brain_tumor_mri/brain_tumor_mri_trainval.npz}
export PYTHONUNBUFFERED=1 PYTHONPATH="$here/MedDeepRecog${PYTHONPATH:+:$PYTHONPATH}"
device=cuda
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || device=cpu
if [ "${QUICK:-0}" = 1 ]; then
    ct="128 128 40"; steps=2; fsteps=1; rounds=1; limit=600
else
    ct="512 512 300"; steps=8; fsteps=8; rounds=2; limit=130
fi

date -u
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null \
    || echo "no nvidia-smi: CPU only"
python3 -c "import torch, monai, numpy; print('torch', torch.__version__, 'CUDA', torch.version.cuda, \
'monai', monai.__version__, 'numpy', numpy.__version__)"
echo "CPU threads for torch: $threads of $(nproc); device $device"

run() {
    local name=$1; shift
    local start=$SECONDS
    echo "=== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$logs/$name.log"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}

for part in ${PARTS:-tests classify disease denoise finetune}; do
    case $part in
    tests) run tests python3 -m pytest -q -p no:cacheprovider Testing/Python/test_cuda_paths.py ;;
    classify) run classify python3 bench/classify.py --device "$device" --size $ct --repeats 3 --threads "$threads" ;;
    disease) run disease python3 bench/disease.py --device "$device" --threads "$threads" --repeats 3 \
        --train-steps "$steps" --data "$brain" ;;
    denoise) run denoise python3 bench/preprocess.py --gpu-only --size $ct --threads "$threads" ;;
    finetune) run finetune python3 bench/finetune.py --device "$device" --steps "$fsteps" --rounds "$rounds" \
        --threads "$threads" ;;
    *) echo "unknown part $part" ;;
    esac
done
