#!/usr/bin/env bash
# The whole test suite: system set-up, build, lint, unit + integration tests, and the
# end-to-end replication check. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
echo "== build"
cargo build --workspace --all-targets --locked
echo "== fmt + clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
cargo test --workspace --locked -- --test-threads=2
echo "== verify-replication"
bash scripts/verify-replication.sh
