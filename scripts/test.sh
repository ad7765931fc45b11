#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and the integration tests once on
# SQLite and once on PostgreSQL. The PostgreSQL half needs the URL of a
# database in which the tests may create schemas:
#
#   CYLTRACK_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/cyltrack_test scripts/test.sh
#
# Without it, the PostgreSQL half is skipped and this script prints so. The
# Redis tests likewise need CYLTRACK_TEST_REDIS_URL, such as
# redis://127.0.0.1:6379/0; each test writes under a key prefix of its own.
set -euo pipefail
cd "$(dirname "$0")/.."

# Without a PostgreSQL or Redis URL those tests are filtered out, so that
# the summary counts them as skipped rather than passed.
skipped=()
cargo_test_skip=()
if [ -z "${CYLTRACK_TEST_POSTGRES_URL:-}" ]; then
    postgres_note="PostgreSQL half SKIPPED: CYLTRACK_TEST_POSTGRES_URL is not set, so only SQLite was tested."
    skipped+=('test(/::postgres$/)')
    cargo_test_skip+=(--skip ::postgres)
else
    postgres_note="PostgreSQL half ran against the database in CYLTRACK_TEST_POSTGRES_URL."
fi
if [ -z "${CYLTRACK_TEST_REDIS_URL:-}" ]; then
    redis_note="Redis tests SKIPPED: CYLTRACK_TEST_REDIS_URL is not set."
    skipped+=('test(/_redis$/)')
    cargo_test_skip+=(--skip _redis)
else
    redis_note="Redis tests ran against the server in CYLTRACK_TEST_REDIS_URL."
fi
nextest_filter=()
if [ ${#skipped[@]} -gt 0 ]; then
    expression=""
    for filter in "${skipped[@]}"; do
        expression+="${expression:+ or }$filter"
    done
    nextest_filter=(-E "not ($expression)")
fi
echo "==> $postgres_note"
echo "==> $redis_note"

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --all-targets --no-fail-fast "${nextest_filter[@]}" "$@"
else
    echo "==> cargo-nextest is not installed; running cargo test instead"
    cargo test --all-targets --no-fail-fast "$@" -- "${cargo_test_skip[@]}"
fi

echo "==> $postgres_note"
echo "==> $redis_note"
