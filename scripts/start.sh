#!/usr/bin/env bash
# Sets everything up and runs the workbench: builds it, obtains CIFAR-10, and serves the app
# on http://127.0.0.1:8080 from the best device available, on the reference ResNet18 that
# ships in models/reference (nothing is downloaded but the dataset and the build's crates).
#   scripts/start.sh [extra `backend serve` options, e.g. --addr 0.0.0.0:8080 --public]
source "$(dirname "$0")/common.sh"

need_cargo
build_backend
build_frontend
obtain_data

if ! compgen -G "models/*/model.safetensors.index.json" >/dev/null && ! compgen -G "models/*.safetensors" >/dev/null \
  && ! compgen -G "data/models/*" >/dev/null; then
  cat >&2 <<'MSG'
There is no model to unlearn from: models/reference (the reference ResNet18 that ships with
the repository) is missing and data/models/ is empty. Any one of these fixes it:
  git checkout -- models/                          # restore the shipped model
  target/release/backend import CHECKPOINT.safetensors --name mine
                                                   # a torchvision-layout ResNet18 of your own
  target/release/backend train --name mine         # the seed recipe: about an hour on a GPU, days on a CPU
MSG
  exit 1
fi

say "starting the workbench (Ctrl-C stops it)"
exec ./target/release/backend serve "$@"
