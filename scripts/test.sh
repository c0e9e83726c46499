#!/usr/bin/env bash
# Installs what the tests need on a fresh machine, then runs every check and test: formatting,
# clippy (host and wasm32, warnings are errors), the engine's, server's and CLI's tests, the
# end-to-end tests in headless Chromium, and the browser UI's own tests.
source "$(dirname "$0")/common.sh"

need_cargo
need_lint_tools
say "checking formatting"
cargo fmt --all --check

build_backend
build_frontend
obtain_data
need_chromium
need_vulkan
need_postgres

say "clippy (warnings are errors)"
cargo clippy --release --workspace --exclude unlearn-frontend --all-targets -- -D warnings
cargo clippy --release -p unlearn-frontend --target wasm32-unknown-unknown --all-targets -- -D warnings

say "running the tests (the end-to-end ones drive headless Chromium)"
cargo test --release --workspace --exclude unlearn-frontend

say "running the browser UI's tests in headless Chromium"
CHROMEDRIVER=$(command -v chromedriver) WASM_BINDGEN_TEST_TIMEOUT=120 \
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test --release -p unlearn-frontend --target wasm32-unknown-unknown
