#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and the integration tests once on
# SQLite and once on PostgreSQL. The PostgreSQL half needs the URL of a
# database in which the tests may create schemas:
#
#   CYLTRACK_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/cyltrack_test scripts/test.sh
#
# Without it, the PostgreSQL half is skipped and this script prints so.
set -euo pipefail
cd "$(dirname "$0")/.."

# Without a PostgreSQL URL the PostgreSQL tests are filtered out, so that
# the summary counts them as skipped rather than passed.
nextest_filter=()
cargo_test_skip=()
if [ -z "${CYLTRACK_TEST_POSTGRES_URL:-}" ]; then
    postgres_note="PostgreSQL half SKIPPED: CYLTRACK_TEST_POSTGRES_URL is not set, so only SQLite was tested."
    nextest_filter=(-E 'not test(/::postgres$/)')
    cargo_test_skip=(--skip ::postgres)
else
    postgres_note="PostgreSQL half ran against the database in CYLTRACK_TEST_POSTGRES_URL."
fi
echo "==> $postgres_note"

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --all-targets --no-fail-fast "${nextest_filter[@]}" "$@"
else
    echo "==> cargo-nextest is not installed; running cargo test instead"
    cargo test --all-targets --no-fail-fast "$@" -- "${cargo_test_skip[@]}"
fi

echo "==> $postgres_note"
