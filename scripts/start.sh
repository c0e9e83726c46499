#!/usr/bin/env bash
# Sets everything up and runs the workbench: builds it, obtains CIFAR-10, installs a base
# model, and forgets one class (default: cat) on the best device available.
#   scripts/start.sh [CLASS] [extra `backend unlearn` options]
source "$(dirname "$0")/common.sh"

need_cargo
build_backend
obtain_data

base=data/models/base.safetensors
reference=../shared/models/resnet18-cifar10-seed-recipe-torch.safetensors
if [ ! -f "$base" ]; then
  if [ -f "$reference" ]; then
    say "installing the PyTorch-trained reference ResNet18 as the base model"
    backend import "$reference" --out "$base"
  else
    say "no base model yet: training one with the seed recipe (use a GPU; on a CPU this takes days)"
    backend train --out "$base"
  fi
fi

class=${1:-cat}
shift || true
# Subsampled so that a CPU finishes in minutes; WORKBENCH_FULL=1 runs the real experiment.
limits=(--forget-limit 256 --full-limit 1024 --test-limit 500)
[ -n "${WORKBENCH_FULL:-}" ] && limits=()
say "forgetting class '$class' with SSD"
backend unlearn --class "$class" "${limits[@]}" --json data/last-unlearn.json "$@"
