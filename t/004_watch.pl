
# Copyright: the bento extension's authors.

# Watches end to end: rows inserted, updated and deleted in watched tables by an application role
# that has no privilege on schema bento become the events the mock Bento receives (the three
# stories of the README, odd identifiers, a bulk insert, skipped invalid rows); pg_dump and
# pg_restore keep the watches working; dropping a watched table or the extension removes them.

use strict;
use warnings;

use FindBin;
use lib $FindBin::Bin;

use BentoTest;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $mock = BentoTest::Mock->start;
my $node = bento_node('watch', $mock);

my $DATE_RE = qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$/;

# SQL as the application role: it may write to the shop's tables and nothing else.
sub as_app
{
	my ($sql, $dbname) = @_;
	my ($out, $err);
	my $ret = $node->psql($dbname // 'postgres', $sql,
		stdout => \$out, stderr => \$err, extra_params => [ '-U', 'app' ]);
	return ($ret, $out, $err);
}

# The events the mock received, sorted by email then type, without their dates.
sub received
{
	my @ev = sort { $a->{email} cmp $b->{email} || $a->{type} cmp $b->{type} } @{ $mock->events };
	return [ map { my %e = %$_; delete $e{date}; \%e } @ev ];
}

$node->safe_psql('postgres', q{
	CREATE ROLE shop_owner;
	CREATE ROLE app LOGIN;
	CREATE SCHEMA shop AUTHORIZATION shop_owner;
	SET ROLE shop_owner;
	CREATE TABLE shop.orders (
		id			integer PRIMARY KEY,
		email		text,
		total		numeric(10,2) NOT NULL,
		currency	text NOT NULL DEFAULT 'EUR',
		placed_at	timestamptz NOT NULL DEFAULT now()
	);
	CREATE TABLE shop.deals (
		id			integer PRIMARY KEY,
		owner_email	text NOT NULL,
		status		text NOT NULL DEFAULT 'open',
		amount		integer NOT NULL
	);
	CREATE TABLE shop."User Accounts" (
		"User ID"	bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
		"E-Mail"	text NOT NULL,
		"Full Name"	text,
		"order"		text
	);
	GRANT USAGE ON SCHEMA shop TO app;
	GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA shop TO app;
	RESET ROLE;

	SELECT bento_watch('shop.orders', '$purchase', 'email',
		details => $$jsonb_build_object('value', jsonb_build_object('amount', total, 'currency', currency),
										'order_id', id)$$,
		occurred_at => 'placed_at');
	SELECT bento_watch('shop.deals', 'crm.deal_won', 'owner_email', operations => '{update}',
		condition => $$old.status IS DISTINCT FROM new.status AND status = 'won'$$,
		details => $$jsonb_build_object('deal_id', id, 'value', jsonb_build_object('amount', amount, 'currency', 'USD'))$$,
		external_id => $$'deal-' || id || '-won'$$);
	SELECT bento_watch('shop."User Accounts"', '$subscribe', 'lower("E-Mail")',
		fields => $${"first_name": "split_part(\"Full Name\", ' ', 1)",
					 "last_name": "substring(\"Full Name\" from ' (.*)$')",
					 "order": "order"}$$,
		details => 'NULL');
	SELECT bento_watch('shop."User Accounts"', 'account.closed', '"E-Mail"', operations => '{delete}');
});

is($node->safe_psql('postgres', 'SELECT count(*) FROM bento.watched'), 4, 'four watch triggers');

# ---------------------------------------------------------------------------------------------
note('an application role without privileges on schema bento queues events, nothing more');
{
	my ($ret, $out, $err) = as_app('SELECT count(*) FROM bento.outbox');
	isnt($ret, 0, 'app cannot read the outbox');
	like($err, qr/permission denied for schema bento/, 'permission denied for schema bento');
	($ret, $out, $err) = as_app('SELECT bento_watch($$shop.orders$$, $$x$$, $$email$$)');
	like($err, qr/permission denied for function bento_watch/, 'app cannot create watches');
}

# ---------------------------------------------------------------------------------------------
note('story 1: an order inserted sends $purchase');
{
	$mock->reset;
	my ($ret, $out, $err) = as_app(q{
		INSERT INTO shop.orders (id, email, total, placed_at) VALUES
			(1, 'ada@example.com', 49.50, '2026-11-30 14:05:00+01'),
			(2, NULL, 10, '2026-11-30 14:06:00+01'),
			(3, 'bob@example.com', 12, '2026-11-30 14:07:00+01');
	});
	is($ret, 0, 'the insert succeeded');
	like($err, qr/WARNING:  bento skipped 1 of 3 events of trigger "bento_\$purchase_insert" on table shop\.orders/,
		'the row without an email was skipped, with a warning');
	is($node->safe_psql('postgres', 'SELECT count(*) FROM shop.orders'), 3, 'all three rows written');
	wait_settled($node, 'the purchases were delivered');

	my $ev = $mock->events;
	is(scalar @$ev, 2, 'two events received');
	is_deeply(
		$ev->[0],
		{
			type    => '$purchase',
			email   => 'ada@example.com',
			date    => '2026-11-30T13:05:00.000000Z',
			details => {
				value    => { amount => 49.50, currency => 'EUR' },
				order_id => 1,
				unique   => { key => '$purchase:shop.orders:insert:1' }
			}
		},
		'the first purchase as Bento receives it: row values, date from placed_at, unique.key');
	is($ev->[1]{email}, 'bob@example.com', 'the second purchase');
	is($ev->[1]{details}{unique}{key}, '$purchase:shop.orders:insert:3', 'its unique.key');
	is($node->safe_psql('postgres',
		q{SELECT skipped_events FROM bento.watched WHERE trigger_name = 'bento_$purchase_insert'}),
		1, 'bento.watched counts the skipped event');

	# A replayed write: the same order deleted and inserted again is not sent again.
	as_app(q{DELETE FROM shop.orders WHERE id = 1;
			 INSERT INTO shop.orders (id, email, total) VALUES (1, 'ada@example.com', 49.50);});
	is($node->safe_psql('postgres', q{SELECT count(*) FROM bento.outbox WHERE type = '$purchase'}),
		2, 'the replayed insert queued nothing');
}

# ---------------------------------------------------------------------------------------------
note('story 2: a deal whose status becomes won sends crm.deal_won, once');
{
	$mock->reset;
	as_app(q{INSERT INTO shop.deals (id, owner_email, amount) VALUES
				(1, 'sam@example.com', 3000), (2, 'kim@example.com', 10), (3, 'lee@example.com', 7);});
	as_app(q{UPDATE shop.deals SET status = 'won' WHERE id IN (1, 2);});
	as_app(q{UPDATE shop.deals SET amount = amount + 1;});
	as_app(q{UPDATE shop.deals SET status = 'lost' WHERE id = 1;});
	as_app(q{UPDATE shop.deals SET status = 'won' WHERE id = 1;});
	wait_settled($node, 'the won deals were delivered');
	is_deeply(
		received(),
		[
			{
				type        => 'crm.deal_won',
				email       => 'kim@example.com',
				details     => { deal_id => 2, value => { amount => 10, currency => 'USD' } }
			},
			{
				type        => 'crm.deal_won',
				email       => 'sam@example.com',
				details     => { deal_id => 1, value => { amount => 3000, currency => 'USD' } }
			}
		],
		'one event per deal won; the second win of deal 1 has the same external_id and is not sent');
}

# ---------------------------------------------------------------------------------------------
note('story 3 and odd identifiers: a user who signs up sends $subscribe with name fields');
{
	$mock->reset;
	as_app(q{INSERT INTO shop."User Accounts" ("E-Mail", "Full Name", "order") VALUES
				('Ada@Example.COM', 'Ada Lovelace', 'first'), ('grace@example.com', 'Grace', NULL);});
	wait_settled($node, 'the subscriptions were delivered');
	is_deeply(
		received(),
		[
			{
				type   => '$subscribe',
				email  => 'ada@example.com',
				fields => { first_name => 'Ada', last_name => 'Lovelace', order => 'first' }
			},
			{
				type   => '$subscribe',
				email  => 'grace@example.com',
				fields => { first_name => 'Grace' }
			}
		],
		'fields mapped and renamed, NULL fields left out, the email lower-cased');

	$mock->reset;
	as_app(q{DELETE FROM shop."User Accounts" WHERE "Full Name" = 'Grace';});
	wait_settled($node, 'the deletion was delivered');
	my $ev = $mock->events;
	is(scalar @$ev, 1, 'one account.closed event');
	is_deeply(
		$ev->[0]{details},
		{
			table     => 'shop."User Accounts"',
			operation => 'DELETE',
			row       => { 'User ID' => 2, 'E-Mail' => 'grace@example.com', 'Full Name' => 'Grace', order => undef }
		},
		'default details of a DELETE: the table, the operation and the old row');
	like($ev->[0]{date}, $DATE_RE, 'dated');
}

# ---------------------------------------------------------------------------------------------
note('a bulk insert: 3000 rows, set-based, delivered in batches of 1000');
{
	$mock->reset;
	my ($ret, $out, $err) = as_app(q{
		INSERT INTO shop.orders (id, email, total)
		SELECT g, 'bulk-' || g || '@example.com', g FROM generate_series(1001, 4000) g;
	});
	is($ret, 0, 'the bulk insert succeeded');
	is($err, '', 'no warning');
	wait_settled($node, 'the bulk was delivered');
	my $ev = $mock->events;
	is(scalar @$ev, 3000, '3000 events received');
	my %keys = map { $_->{details}{unique}{key} => 1 } @$ev;
	is(scalar keys %keys, 3000, 'each with its own unique.key');
	is_deeply([ map { $_->{details}{order_id} } @$ev ], [ 1001 .. 4000 ], 'in the order of the rows');
	is(scalar @{ $mock->requests('bodies=0') }, 3, 'in three requests');
}

# ---------------------------------------------------------------------------------------------
note('pg_dump and pg_restore keep the watches working');
{
	my $dump = $node->basedir . '/watch.dump';
	command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('postgres') ], 'pg_dump');
	$node->safe_psql('postgres', 'CREATE DATABASE restored');
	command_ok([ 'pg_restore', '--exit-on-error', '-d', $node->connstr('restored'), $dump ],
		'pg_restore, without an error');
	is($node->safe_psql('restored',
		'SELECT string_agg(trigger_name, \' \' ORDER BY trigger_name) FROM bento.watched'),
		$node->safe_psql('postgres',
		'SELECT string_agg(trigger_name, \' \' ORDER BY trigger_name) FROM bento.watched'),
		'the same watches after the restore');
	is($node->safe_psql('restored', q{SELECT count(*) FROM bento.outbox WHERE status <> 'sent'}),
		0, 'the restored outbox holds only sent events');

	# The worker moves to the restored database.
	$mock->reset;
	set_conf($node, 'bento.database' => 'restored');
	wait_sql($node, q{SELECT worker_running FROM bento.status}, 'the worker serves the restored database',
		'restored');
	as_app(q{INSERT INTO shop.orders (id, email, total) VALUES (5000, 'restored@example.com', 5);
			 DELETE FROM shop.orders WHERE id = 3;
			 INSERT INTO shop.orders (id, email, total) VALUES (3, 'bob@example.com', 12);}, 'restored');
	wait_settled($node, 'the restored database delivered', 'restored');
	my $ev = $mock->events;
	is_deeply([ map { $_->{email} } @$ev ], ['restored@example.com'],
		'a new order is sent; the replayed one is not (the dedupe keys were restored too)');

	# Dropping a watched table removes its watch; the others keep working.
	$node->safe_psql('restored', 'DROP TABLE shop.deals');
	is($node->safe_psql('restored', q{SELECT count(*) FROM bento.watched}), 3,
		'dropping a watched table removed its watch');

	# DROP EXTENSION ... CASCADE removes the triggers and nothing else.
	$node->safe_psql('restored', 'DROP EXTENSION bento CASCADE');
	is($node->safe_psql('restored',
		q{SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
		  WHERE c.relnamespace = 'shop'::regnamespace AND NOT t.tgisinternal}),
		0, 'no trigger left on the shop tables');
	my ($ret, $out, $err) = as_app(q{INSERT INTO shop.orders (id, email, total) VALUES (5001, 'x@example.com', 1);
		UPDATE shop.orders SET total = total + 1 WHERE id = 5001;
		DELETE FROM shop.orders WHERE id = 5001;}, 'restored');
	is($ret, 0, 'the tables are written as before') or diag($err);
}

done_testing();
