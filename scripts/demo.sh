#!/usr/bin/env bash
# scripts/demo.sh: from a fresh Debian 12 machine to a running bento demo.
#
# Installs the packages, builds and installs bento, starts a throwaway
# PostgreSQL cluster (as the "postgres" user) with bento preloaded and,
# unless Bento credentials are in the environment, a local mock of Bento.
# Then it tracks a few events and shows them delivered.  The cluster and
# the mock keep running; "scripts/demo.sh stop" stops them.
#
# Against the real Bento instead of the mock:
#   BENTO_SITE_UUID=... BENTO_PUBLISHABLE_KEY=... BENTO_SECRET_KEY=... \
#   BENTO_DEMO_EMAIL=you@yourdomain.com scripts/demo.sh
#
# Settings: BENTO_DEMO_DIR (default /tmp/bento-demo), BENTO_DEMO_PORT (5499).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
dir=${BENTO_DEMO_DIR:-/tmp/bento-demo}
port=${BENTO_DEMO_PORT:-5499}
bindir=/usr/lib/postgresql/15/bin

as_postgres() { runuser -u postgres -- "$@"; }
psql_demo() { as_postgres "$bindir/psql" -X -h "$dir" -p "$port" -d postgres "$@"; }

stop_demo() {
	if [ -f "$dir/data/postmaster.pid" ]; then
		as_postgres "$bindir/pg_ctl" -D "$dir/data" -m fast stop >/dev/null || true
	fi
	if [ -f "$dir/mock.pid" ]; then
		kill "$(cat "$dir/mock.pid")" 2>/dev/null || true
		rm -f "$dir/mock.pid"
	fi
}

if [ "$(id -u)" -ne 0 ]; then
	echo "demo.sh: run as root (it installs packages and starts servers as the postgres user)" >&2
	exit 1
fi

if [ "${1:-}" = "stop" ]; then
	stop_demo
	rm -rf "$dir"
	echo "demo.sh: stopped and removed $dir"
	exit 0
fi

"$here/scripts/setup.sh"

stop_demo
rm -rf "$dir"
mkdir -p "$dir"
chown postgres: "$dir"

if [ -n "${BENTO_SITE_UUID:-}" ] && [ -n "${BENTO_PUBLISHABLE_KEY:-}" ] && [ -n "${BENTO_SECRET_KEY:-}" ]; then
	target=bento
	api_url=${BENTO_API_URL:-https://app.bentonow.com/api/v1}
	site=$BENTO_SITE_UUID
	pub=$BENTO_PUBLISHABLE_KEY
	secret=$BENTO_SECRET_KEY
	email=${BENTO_DEMO_EMAIL:-}
	if [ -z "$email" ]; then
		echo "demo.sh: set BENTO_DEMO_EMAIL to an address of yours; the demo creates that subscriber in Bento" >&2
		exit 1
	fi
else
	target=mock
	cp "$here/mock/bento_mock.py" "$dir/bento_mock.py"
	as_postgres python3 "$dir/bento_mock.py" --host 127.0.0.1 --port 0 \
		--port-file "$dir/mock.port" --publishable-key demo-publishable \
		--secret-key demo-secret --quiet >"$dir/mock.log" 2>&1 &
	echo $! >"$dir/mock.pid"
	for _ in $(seq 1 100); do
		[ -s "$dir/mock.port" ] && break
		sleep 0.1
	done
	[ -s "$dir/mock.port" ] || { echo "demo.sh: the mock did not start; see $dir/mock.log" >&2; exit 1; }
	mock_port=$(cat "$dir/mock.port")
	api_url="http://127.0.0.1:$mock_port/api/v1"
	site=demo-site
	pub=demo-publishable
	secret=demo-secret
	email=ada@example.com
fi

as_postgres "$bindir/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
# The secret goes to a file only postgres can read (bento.secret_key_file).
install -o postgres -g postgres -m 0600 /dev/null "$dir/data/bento_secret"
printf '%s\n' "$secret" >"$dir/data/bento_secret"
cat >>"$dir/data/postgresql.conf" <<CONF

# --- bento demo ---
port = $port
listen_addresses = ''
unix_socket_directories = '$dir'
shared_preload_libraries = 'bento'
bento.database = 'postgres'
bento.api_url = '$api_url'
bento.site_uuid = '$site'
bento.publishable_key = '$pub'
bento.secret_key_file = 'bento_secret'
CONF
as_postgres "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null

echo "== CREATE EXTENSION bento, then track events in one transaction"
psql_demo -v ON_ERROR_STOP=1 -v email="$email" <<'SQL'
CREATE EXTENSION bento;
BEGIN;
SELECT bento_track('$signup', :'email',
                   fields => '{"first_name": "Ada", "plan": "growth"}',
                   external_id => 'demo-signup-1') AS signup_id;
SELECT bento_track('crm.deal_won', :'email',
                   details => '{"deal_id": "deal_123", "value": {"amount": 3000, "currency": "USD"}}',
                   external_id => 'demo-deal-123') AS deal_id;
-- the same business event again: deduplicated, the first row's id comes back
SELECT bento_track('crm.deal_won', :'email', external_id => 'demo-deal-123') AS deal_id_again;
COMMIT;

-- a rolled-back transaction queues nothing
BEGIN;
SELECT bento_track('never.sent', :'email');
ROLLBACK;
SQL

echo "== bad input is refused with an error naming the argument"
psql_demo -c "SELECT bento_track('\$signup', 'not-an-email')" 2>&1 | sed 's/^/   /' || true

echo "== waiting for the worker to deliver"
delivered=no
for _ in $(seq 1 150); do
	left=$(psql_demo -Atc "SELECT pending + sending FROM bento.status")
	if [ "$left" = "0" ]; then
		delivered=yes
		break
	fi
	sleep 0.2
done

psql_demo -c "SELECT * FROM bento.status" -x
psql_demo -c "SELECT id, type, email, status, attempts, delivery_id, sent_at FROM bento.outbox ORDER BY id"
psql_demo -c "SELECT id, event_count, outcome, http_status, results, failed, round(duration_ms::numeric, 1) AS ms, response_body FROM bento.deliveries ORDER BY id"

if [ "$target" = mock ]; then
	echo "== what the mock Bento received"
	curl -s "http://127.0.0.1:$mock_port/_mock/events" | python3 -m json.tool
fi

if [ "$delivered" != yes ]; then
	echo "demo.sh: events were not delivered within 30 s; see $dir/server.log" >&2
	exit 1
fi

cat <<EOT

The demo is running ($target at $api_url).
  connect:  runuser -u postgres -- $bindir/psql -h $dir -p $port postgres
  log:      $dir/server.log
  stop:     $0 stop
EOT
