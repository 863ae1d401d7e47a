#!/usr/bin/env bash
# scripts/test.sh: build bento with warnings as errors and run every test:
# pg_regress (sql/, expected/), isolation (specs/) and TAP (t/).
#
# Run as root.  PostgreSQL refuses to run as root, so the tests run as the
# "postgres" user in a copy of the tree that user owns; the copy is kept
# when a test fails, and its diffs and logs are printed.
#
# Extra arguments go to "make installcheck", e.g.
#   scripts/test.sh PROVE_TESTS=t/001_delivery.pl REGRESS= ISOLATION=
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}

"$here/scripts/setup.sh" BENTO_WERROR=1

work=$(mktemp -d /tmp/bento-test.XXXXXX)
tar -C "$here" --exclude=.git --exclude='tmp_check*' --exclude=results \
	--exclude=output_iso -cf - . | tar -C "$work" -xf -
chown -R postgres: "$work"
cd "$work"

status=0
# The mock Bento server's own tests first: the TAP tests rely on it.
runuser -u postgres -- python3 mock/test_bento_mock.py || status=$?
[ "$status" -eq 0 ] && runuser -u postgres -- make -s installcheck PG_CONFIG="$PG_CONFIG" "$@" || status=$?

if [ "$status" -ne 0 ]; then
	echo "=== tests failed; the tree they ran in is kept at $work"
	for f in regression.diffs output_iso/regression.diffs; do
		if [ -f "$f" ]; then
			echo "=== $f"
			cat "$f"
		fi
	done
	for f in tmp_check/log/regress_log_* tmp_check/log/*.log; do
		if [ -f "$f" ]; then
			echo "=== $f (last 80 lines)"
			tail -n 80 "$f"
		fi
	done
	exit "$status"
fi

rm -rf "$work"
echo "scripts/test.sh: all tests passed"
