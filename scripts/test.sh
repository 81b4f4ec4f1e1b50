#!/usr/bin/env bash
# The whole test suite: system set-up, build, lint, unit + integration tests, and the
# end-to-end checks (replication, membership, regions, scheduling, versions). This is the README's test command and
# what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
echo "== build"
# One build of every dependency serves build, clippy (check mode) and test alike, RocksDB's C++
# included: Cargo.toml states the build-script profile ([profile.dev.build-override]) so that
# check mode does not give build scripts different dependency hashes. Keep the flags of these
# commands aligned (--workspace --all-targets --locked) so their feature sets agree too.
cargo build --workspace --all-targets --locked
echo "== fmt + clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
cargo test --workspace --locked -- --test-threads=2
echo "== verify-replication"
bash scripts/verify-replication.sh
echo "== verify-replication over TLS"
bash scripts/verify-replication.sh --tls
echo "== verify-membership"
bash scripts/verify-membership.sh
echo "== verify-regions"
bash scripts/verify-regions.sh
echo "== verify-scheduling"
bash scripts/verify-scheduling.sh
echo "== verify-versions"
bash scripts/verify-versions.sh
