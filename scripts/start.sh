#!/usr/bin/env bash
# Sets everything up and runs the workbench: builds it, obtains CIFAR-10, installs a base
# model, and serves the app on http://127.0.0.1:8080 from the best device available.
#   scripts/start.sh [extra `backend serve` options, e.g. --addr 0.0.0.0:8080 --public]
source "$(dirname "$0")/common.sh"

need_cargo
build_backend
build_frontend
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

say "starting the workbench (Ctrl-C stops it)"
exec ./target/release/backend serve "$@"
