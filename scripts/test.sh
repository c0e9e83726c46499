#!/usr/bin/env bash
# Installs what the tests need on a fresh machine, then runs every test.
source "$(dirname "$0")/common.sh"

need_cargo
if command -v rustup >/dev/null && ! rustup target list --installed | grep -q wasm32-unknown-unknown; then
  say "adding the wasm32 target (the browser runs the shared crate)"
  rustup target add wasm32-unknown-unknown
fi
build_backend
obtain_data

say "running the tests"
cargo test --release --workspace

say "checking that the shared crate builds for the browser"
cargo build --release -p unlearn-shared --target wasm32-unknown-unknown
