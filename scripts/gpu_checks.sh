#!/usr/bin/env bash
# Distributed-training checks that need CUDA GPUs (CPU machines run tests/test_ddp*.py instead).
# Prints one line per check with its wall time; copy the summary into docs/benchmarks.md.
#
#   bash scripts/gpu_checks.sh            # uses every visible GPU (1 GPU: the multi-GPU checks are skipped)
#
# 1. the headline demo LDM on synthetic data, 1 GPU, DDP strategy code path off;
# 2. with >= 2 GPUs: the same under DDP on 2 GPUs;
# 3. FSDP block by block (1 or 2 GPUs; lightning.fsdp): train, then load the checkpoint into ONE process and sample from it,
#    which is what "FSDP checkpoints load back into a single process" means.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python}
OUT=${LDM_GPU_CHECKS_OUT:-/tmp/ldm_gpu_checks}
rm -rf "$OUT"; mkdir -p "$OUT"
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
if [ "$NGPU" -lt 1 ]; then echo "no CUDA device visible: nothing to check here" >&2; exit 2; fi
MULTI=$(( NGPU >= 2 ? 2 : 1 ))
# The demo LDM, first stage randomly initialised (fine for a smoke run), 64 steps of batches of 16.
TINY=(--base configs/demo/ldm_uncond.yaml -t --no-test --accelerator gpu --logger csv --max_steps 64
      lightning.trainer.val_check_interval=32 lightning.trainer.limit_val_batches=1
      lightning.callbacks.image_logger.params.batch_frequency=32
      lightning.trainer.enable_progress_bar=false)

check() {  # name, command...
    local name=$1; shift
    local t0=$SECONDS
    if "$@" >"$OUT/$name.log" 2>&1; then
        echo "PASS $name $((SECONDS - t0)) s"
    else
        echo "FAIL $name $((SECONDS - t0)) s (log: $OUT/$name.log)"; tail -20 "$OUT/$name.log"
    fi
}

$PY -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning', pl.__version__, \
'gpus', [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"
check train_1gpu $PY main.py "${TINY[@]}" --devices 1 -l "$OUT/logs1" -n gpu1
if [ "$NGPU" -ge 2 ]; then
    check train_ddp_2gpu env LDM_RUN_NOW="$(date +%Y-%m-%dT%H-%M-%S)" $PY main.py "${TINY[@]}" --devices 2 --strategy ddp -l "$OUT/logs2" -n ddp2
    check ddp_one_run_dir test "$(ls "$OUT/logs2" | wc -l)" -eq 1
fi
check train_fsdp env LDM_RUN_NOW="$(date +%Y-%m-%dT%H-%M-%S)" $PY main.py "${TINY[@]}" --devices "$MULTI" --strategy fsdp \
    lightning.fsdp.activation_checkpointing=true -l "$OUT/logsf" -n fsdp
RUN=$(ls -d "$OUT"/logsf/*_fsdp 2>/dev/null | head -1)
check fsdp_checkpoint_single_process $PY scripts/sample_diffusion.py -r "${RUN:-missing}" -n 4 --batch_size 4 -c 5 \
    --seed 1 --no-progress -l "$OUT/fsdp_samples"
check sample_torchrun_2proc $PY -m torch.distributed.run --nproc_per_node "$MULTI" scripts/sample_diffusion.py \
    -r "${RUN:-missing}" -n 4 --batch_size 3 -c 5 --seed 1 --no-progress -l "$OUT/fsdp_samples_tr"
check samples_equal $PY -c "import numpy as n,glob,sys; a,b=(n.load(glob.glob(d+'/*.npz')[0])['arr_0'] for d in sys.argv[1:]); \
assert (a==b).all(), 'samples differ'" "$OUT/fsdp_samples" "$OUT/fsdp_samples_tr"
