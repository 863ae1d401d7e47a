#!/usr/bin/env bash
# scripts/setup.sh: install what bento needs to build, test and run on
# Debian 12 (PostgreSQL 15 from Debian), then build and install it.
#
# Run as root from anywhere.  Idempotent.  Extra arguments go to make,
# e.g. "scripts/setup.sh BENTO_WERROR=1".
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)

if [ "$(id -u)" -ne 0 ]; then
	echo "setup.sh: run as root (it installs packages with apt-get and the extension into PostgreSQL)" >&2
	exit 1
fi

packages=(
	build-essential            # gcc, make
	postgresql-15              # the server
	postgresql-contrib         # pgbench (benchmarks)
	postgresql-server-dev-15   # PGXS, pg_regress, isolation tester, TAP modules
	libcurl4-openssl-dev       # HTTP client
	libcjson-dev               # JSON
	libipc-run-perl            # TAP tests (PostgreSQL::Test::Cluster)
	python3                    # the mock Bento server
	curl                       # the demo reads the mock's record
)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "setup.sh: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's postgresql-common may create and start a "main" cluster on port
# 5432; bento's scripts use clusters of their own and leave it alone.

cd "$here"
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
make -s PG_CONFIG="$PG_CONFIG" "$@"
make -s PG_CONFIG="$PG_CONFIG" install "$@"
echo "setup.sh: bento built and installed into $("$PG_CONFIG" --pkglibdir)"
