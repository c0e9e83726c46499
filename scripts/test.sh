#!/usr/bin/env bash
# Installs what the tests need on a fresh machine, then runs every test.
source "$(dirname "$0")/common.sh"

need_cargo
build_backend
build_frontend
obtain_data
need_chromium

say "running the tests (the end-to-end ones drive headless Chromium)"
cargo test --release --workspace --exclude unlearn-frontend

say "running the browser UI's tests in headless Chromium"
CHROMEDRIVER=$(command -v chromedriver) WASM_BINDGEN_TEST_TIMEOUT=120 \
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test --release -p unlearn-frontend --target wasm32-unknown-unknown
