
# Copyright: the bento extension's authors.

# Reliability under process failures, replication, DDL and concurrency:
#  1. kill -9 of the postmaster while a request hangs, three times in a row: the server starts
#     again at once each time (the worker left the transfer), and in the end every event is
#     delivered, re-sent only after a request whose outcome is unknown;
#  2. pg_terminate_backend of an idle worker: it comes back, later events are delivered;
#  3. pg_ctl restart -m fast with a backlog of 5000 events behind a hung request;
#  4. hot standby: no worker, bento_track refused (25006); after promotion the standby's worker
#     delivers what the primary had queued;
#  5. DROP EXTENSION while a request hangs, then CREATE EXTENSION again without a restart;
#  6. 16 concurrent producers (pgbench) while the worker drains in batches of 100.

use strict;
use warnings;

use FindBin;
use lib $FindBin::Bin;

use BentoTest;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();

my $mock = BentoTest::Mock->start(name => 'reliability');
# request_timeout above the mock's 120 s hang limit: a hung request ends only when the worker
# walks away from it (or the mock is released).
my $node = bento_node(
	'reliability', $mock,
	restart_after_crash     => 'on',
	'bento.request_timeout' => '150s');

# ---------------------------------------------------------------------------------------------
# Helpers

sub delivery_mark
{
	my ($n) = @_;
	return ($n // $node)->safe_psql('postgres', 'SELECT coalesce(max(id), 0) FROM bento.deliveries');
}

sub deliveries_after
{
	my ($mark, $n) = @_;
	return json_query($n // $node, "SELECT * FROM bento.deliveries WHERE id > $mark ORDER BY id");
}

sub rows_like
{
	my ($prefix, $n) = @_;
	return json_query($n // $node,
		"SELECT * FROM bento.outbox WHERE email LIKE " . sql_literal("$prefix%") . " ORDER BY id");
}

# Track $count events with emails PREFIX-0001@example.com ... in one transaction.
sub queue
{
	my ($prefix, $count, $n) = @_;
	my @emails = map { sprintf('%s-%04d@example.com', $prefix, $_) } 1 .. $count;
	track($n // $node, map { +{ type => '$reliability', email => $_ } } @emails);
	return @emails;
}

# Does bento.<relation> have that column?  (bento.outbox.in_doubt and bento.status.in_doubt are
# being added; their assertions run only once they exist.)
sub has_column
{
	my ($n, $relation, $column) = @_;
	return $n->safe_psql(
		'postgres', qq{SELECT EXISTS (SELECT 1 FROM information_schema.columns
		                WHERE table_schema = 'bento' AND table_name = '$relation'
		                  AND column_name = '$column')}) eq 't';
}

# Wait until the mock has seen exactly $count batch requests, the last one hanging and none of
# the earlier ones still open.  Returns the requests (with bodies).
sub wait_hung
{
	my ($m, $count, $label) = @_;
	my $ok = BentoTest::wait_until(
		"$label: request #$count hangs at the mock",
		sub {
			my $r = $m->requests('bodies=0');
			return @$r == $count
			  && $r->[-1]{action} eq 'in_flight'
			  && !(grep { $_->{action} eq 'in_flight' } @$r[ 0 .. $count - 2 ]);
		});
	ok($ok, "$label: request #$count hangs");
	return $m->requests;
}

# The request at $index must end without an answer because the client left.
sub check_abandoned
{
	my ($m, $index, $label) = @_;
	my $reqs;
	BentoTest::wait_until("$label: the mock saw the client leave request #" . ($index + 1),
		sub { $reqs = $m->requests('bodies=0'); $reqs->[$index]{action} ne 'in_flight' });
	is($reqs->[$index]{action}, 'abandoned',
		"$label: the worker walked away from the hung request #" . ($index + 1));
	return;
}

sub request_emails
{
	my ($req) = @_;
	return [ sort map { $_->{email} } @{ $req->{body}{events} // [] } ];
}

# Emails received more than once must all belong to requests that got no clean answer.
sub emails_in_unclean_requests
{
	my ($m) = @_;
	my %unclean;
	foreach my $r (@{ $m->requests })
	{
		next if defined $r->{status} && $r->{status} >= 200 && $r->{status} < 300
		  && $r->{action} !~ /^(truncate|drop|abandoned|in_flight)$/;
		$unclean{ $_->{email} } = 1 foreach @{ $r->{body}{events} // [] };
	}
	return \%unclean;
}

# pids of every process of a running node: the postmaster and everything in pg_stat_activity.
sub server_pids
{
	my ($n) = @_;
	my @pids = split /\n/, $n->safe_psql('postgres',
		'SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()');
	return ($n->{_pid}, @pids);
}

# Log lines, from byte $offset, that are ERROR/FATAL/PANIC reports of bento worker processes:
# the pids given and every pid that logged "bento worker started" after $offset.
sub worker_error_lines
{
	my ($n, $offset, @pids) = @_;
	my @lines = split /\n/, slurp_file($n->logfile, $offset);
	my %pid = map { $_ => 1 } grep { defined } @pids;
	/\[(\d+)\] .*bento worker started/ and $pid{$1} = 1 foreach @lines;
	return grep { /\[(\d+)\] .*\b(?:ERROR|FATAL|PANIC):/ && $pid{$1} } @lines;
}

sub worker_exits
{
	my ($n, $offset) = @_;
	return count_log_matches($n,
		qr/background worker "bento(?: worker)?" \(PID \d+\) (?:exited|was terminated)/, $offset);
}

# Wait until the server log, from byte $offset, has a line matching $regex; false after the
# TAP timeout (unlike wait_for_log, which dies and would end the whole file).
sub log_has
{
	my ($n, $regex, $offset) = @_;
	return BentoTest::wait_until("the server log matches $regex",
		sub { count_log_matches($n, $regex, $offset) > 0 });
}

# ---------------------------------------------------------------------------------------------
note('1. kill -9 of the postmaster while a request hangs, three times in a row');
{
	$mock->reset;
	my $mark = delivery_mark();
	my (@pm1, @extra);

	# Request #1 carries pm1 and hangs; Bento got it (record) but the worker never hears back.
	$mock->script({ hang => 1, record => 1 });
	@pm1 = queue('pm1', 5);
	# After each restart the recovered batch (plus what was tracked meanwhile) is request #i+1.
	my %record_next = (1 => 0, 2 => 1);
	my @expected_in_request = ([@pm1]);

	foreach my $i (1 .. 3)
	{
		my $label = "pmkill $i";
		my $reqs = wait_hung($mock, $i, $label);
		is_deeply(request_emails($reqs->[-1]), [ sort @{ $expected_in_request[-1] } ],
			"$label: the hung request carries the claimed and recovered events");
		is($node->safe_psql('postgres', "SELECT count(*) FROM bento.outbox WHERE status = 'sending'"),
			scalar @{ $expected_in_request[-1] }, "$label: those rows are 'sending'");

		# Committed while the request hangs: they stay pending.
		my @x = queue("pm${i}x", 5);
		push @extra, @x;

		my $worker = worker_pid($node);
		ok($worker, "$label: worker pid " . ($worker // 'none'));
		my @pids = server_pids($node);
		my $postmaster = $pids[0];
		$node->kill9;
		check_abandoned($mock, $i - 1, $label);
		ok(BentoTest::wait_until("$label: worker $worker has exited", sub { !-e "/proc/$worker" }),
			"$label: the worker exited without its postmaster");
		ok( BentoTest::wait_until(
				"$label: every process of the killed server is gone (postmaster $postmaster)",
				sub { !(grep { -e "/proc/$_" } @pids) }),
			"$label: the postmaster and all its children are gone");

		$mock->script({ hang => 1, record => $record_next{$i} }) if $i < 3;
		my $offset = -s $node->logfile;
		my $started = $node->start(fail_ok => 1);
		ok($started, "$label: the server starts again at once");
		unless ($started)
		{
			# Keep going so that the other cases still run (and say what they can).
			BentoTest::wait_until("$label: the server starts eventually",
				sub { $node->start(fail_ok => 1) });
		}
		is(count_log_matches($node, qr/pre-existing shared memory block/, $offset), 0,
			"$label: no pre-existing shared memory block in use");
		my $claimed = scalar @{ $expected_in_request[-1] };
		ok( log_has($node,
				qr/bento requeued $claimed events from 1 requests whose outcome is unknown/, $offset),
			"$label: the restarted worker requeued the $claimed claimed events");
		push @expected_in_request, [ @{ $expected_in_request[-1] }, @x ];
	}

	$mock->release;
	wait_settled($node, 'pmkill: everything settled after the third restart');

	my @all = (@pm1, @extra);
	my $d = deliveries_after($mark);
	is_deeply([ map { $_->{outcome} } @$d ], [ 'unknown', 'unknown', 'unknown', 'delivered' ],
		'pmkill: three requests of unknown outcome, then one delivered');
	is(scalar(grep { !defined $_->{finished_at} } @$d), 0, 'pmkill: every delivery finished');
	my $rows = rows_like('pm');
	is(scalar @$rows, scalar @all, 'pmkill: one outbox row per tracked event');
	is_deeply({ map { ($_->{email} => [ $_->{status}, $_->{attempts} ]) } @$rows },
		{
			(map { ($_ => [ 'sent', 4 ]) } @pm1),
			(map { ($_ => [ 'sent', 3 ]) } grep { /^pm1x-/ } @extra),
			(map { ($_ => [ 'sent', 2 ]) } grep { /^pm2x-/ } @extra),
			(map { ($_ => [ 'sent', 1 ]) } grep { /^pm3x-/ } @extra),
		},
		'pmkill: all sent; attempts = 1 + the requests of unknown outcome that carried them');

	# Bento kept requests #1 and #3 (record), not #2.
	my $counts = email_counts($mock->events);
	is_deeply(
		$counts,
		{
			(map { ($_ => 3) } @pm1),
			(map { ($_ => 2) } grep { /^pm[12]x-/ } @extra),
			(map { ($_ => 1) } grep { /^pm3x-/ } @extra),
		},
		'pmkill: Bento got each event once more than the hung requests it kept');
	my $unclean = emails_in_unclean_requests($mock);
	is_deeply([ grep { $counts->{$_} > 1 && !$unclean->{$_} } sort keys %$counts ], [],
		'pmkill: duplicates only for events of requests without a complete answer');
	check_delivery_history($mock, \@all, 'pmkill');

	is($node->safe_psql('postgres', "SELECT count(*) FROM bento.outbox WHERE status = 'sending'"),
		0, "pmkill: no row left 'sending'");
	is($node->safe_psql('postgres',
		"SELECT count(*) FROM bento.deliveries WHERE outcome = 'in_flight' OR finished_at IS NULL"),
		0, 'pmkill: no delivery left in flight');

  SKIP:
	{
		skip 'bento.outbox.in_doubt does not exist (yet)', 1
		  unless has_column($node, 'outbox', 'in_doubt');
		is_deeply(
			{ map { ($_->{email} => ($_->{in_doubt} ? 1 : 0)) } @{ rows_like('pm') } },
			{
				(map { ($_ => 1) } @pm1, grep { /^pm[12]x-/ } @extra),
				(map { ($_ => 0) } grep { /^pm3x-/ } @extra),
			},
			'pmkill: in_doubt exactly for the events that were in a request of unknown outcome');
	}
  SKIP:
	{
		skip 'bento.status.in_doubt does not exist (yet)', 1
		  unless has_column($node, 'status', 'in_doubt');
		is($node->safe_psql('postgres', 'SELECT in_doubt FROM bento.status'),
			$node->safe_psql('postgres', 'SELECT count(*) FROM bento.outbox WHERE in_doubt'),
			'pmkill: bento.status.in_doubt counts the in-doubt rows');
	}
}

# ---------------------------------------------------------------------------------------------
note('2. pg_terminate_backend of the worker while it is idle');
{
	$mock->reset;
	my $mark = delivery_mark();
	my @before = queue('idle-a', 3);
	wait_settled($node, 'idle: the first events are delivered');
	is($mock->stats->{in_flight}, 0, 'idle: no request in flight');

	my $offset = -s $node->logfile;
	my $pid = worker_pid($node);
	ok($pid, "idle: worker pid $pid");
	is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)"), 't',
		'idle: pg_terminate_backend');
	wait_sql($node, "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $pid)",
		'idle: the worker exited');

	# Committed while no worker runs (or just as it comes back).
	my @during = queue('idle-b', 3);
	wait_sql($node,
		"SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'bento' AND pid <> $pid)",
		'idle: a new worker runs (bgw_restart_time)');
	my $new_pid = worker_pid($node);
	isnt($new_pid, $pid, "idle: new worker pid $new_pid");
	my @after = queue('idle-c', 3);
	wait_settled($node, 'idle: the later events are delivered');

	my @all = (@before, @during, @after);
	is_deeply([ map { [ $_->{status}, $_->{attempts} ] } @{ rows_like('idle-') } ],
		[ ([ 'sent', 1 ]) x 9 ], 'idle: all sent, one attempt each');
	is_deeply(email_counts($mock->events), { map { ($_ => 1) } @all }, 'idle: each received once');
	is(scalar(grep { $_->{outcome} ne 'delivered' } @{ deliveries_after($mark) }), 0,
		'idle: every delivery delivered (no outcome was in doubt)');
	is(count_log_matches($node, qr/bento requeued/, $offset), 0, 'idle: nothing to requeue');
	is(worker_exits($node, $offset), 1, 'idle: the worker exited once');
	is_deeply([ worker_error_lines($node, $offset, $pid, $new_pid) ], [],
		'idle: no ERROR or FATAL from the worker');
  SKIP:
	{
		skip 'bento.outbox.in_doubt does not exist (yet)', 1
		  unless has_column($node, 'outbox', 'in_doubt');
		is($node->safe_psql('postgres', "SELECT count(*) FROM bento.outbox WHERE email LIKE 'idle-%' AND in_doubt"),
			0, 'idle: no event in doubt');
	}
}

# ---------------------------------------------------------------------------------------------
note('3. pg_ctl restart -m fast with a backlog of 5000 events behind a hung request');
{
	set_conf($node, 'bento.batch_size' => 1000);
	$mock->reset;
	my $mark = delivery_mark();
	# Bento got the hung request (record), the worker never hears back.
	$mock->script({ hang => 1, record => 1 });
	my @head = queue('fhead', 1);
	wait_hung($mock, 1, 'fast');
	$node->safe_psql('postgres',
		q{SELECT count(bento_track('$backlog', format('fb-%s@example.com', lpad(g::text, 5, '0'))))
		  FROM generate_series(1, 5000) g});
	my @backlog = map { sprintf('fb-%05d@example.com', $_) } 1 .. 5000;
	is($node->safe_psql('postgres',
		"SELECT count(*) FROM bento.outbox WHERE email LIKE 'fb-%' AND status = 'pending'"),
		5000, 'fast: 5000 events pending behind the hung request');

	my $offset = -s $node->logfile;
	my $ok;
	{
		local %ENV = $node->_get_env(PGAPPNAME => undef);
		$ok = PostgreSQL::Test::Utils::system_log('pg_ctl', '-w', '-D', $node->data_dir, '-l',
			$node->logfile, '-m', 'fast', 'restart') == 0;
	}
	ok($ok, 'fast: pg_ctl restart -m fast succeeded');
	$node->_update_pid(1);
	check_abandoned($mock, 0, 'fast');
	wait_settled($node, 'fast: everything delivered after the restart');

	my $reqs = $mock->requests;
	my @sizes = map { scalar @{ $_->{body}{events} // [] } } @$reqs;
	ok(!(grep { $_ > 1000 } @sizes), 'fast: no request over 1000 events (' . join(',', @sizes) . ')');
	my $d = deliveries_after($mark);
	is($d->[0]{outcome}, 'unknown', 'fast: the interrupted delivery is unknown');
	is_deeply([ map { $_->{outcome} } @$d[ 1 .. $#$d ] ], [ ('delivered') x $#$d ],
		'fast: every later delivery delivered');
	is(scalar(grep { $_->{status} eq 'sent' } @{ rows_like('fb-') }), 5000, 'fast: all 5000 sent');
	is($node->safe_psql('postgres',
		"SELECT count(*) FROM bento.outbox WHERE email LIKE 'fb-%' AND attempts <> 1"),
		0, 'fast: each backlog event sent in one attempt');

	my $counts = email_counts($mock->events);
	my $unclean = emails_in_unclean_requests($mock);
	is_deeply([ sort keys %$unclean ], [@head], 'fast: only the hung request went unanswered');
	is($counts->{ $head[0] }, 2, 'fast: the hung event twice (its outcome was unknown)');
	is(scalar(grep { ($counts->{$_} // 0) == 1 } @backlog), 5000,
		'fast: each backlog event received exactly once');
	is(scalar(keys %$counts), 5001, 'fast: nothing else received');
	check_delivery_history($mock, [ @head, @backlog ], 'fast');
	is(count_log_matches($node, qr/pre-existing shared memory block/, $offset), 0,
		'fast: no stale shared memory at restart');
  SKIP:
	{
		skip 'bento.outbox.in_doubt does not exist (yet)', 1
		  unless has_column($node, 'outbox', 'in_doubt');
		is($node->safe_psql('postgres',
			"SELECT string_agg(email, ',' ORDER BY id) FROM bento.outbox WHERE (email LIKE 'fb-%' OR email LIKE 'fhead-%') AND in_doubt"),
			$head[0], 'fast: in_doubt only for the event of the unknown delivery');
	}
}

# ---------------------------------------------------------------------------------------------
note('4. hot standby: no worker, read-only; after promotion it delivers');
{
	my $smock   = BentoTest::Mock->start(name => 'standby');
	my $primary = bento_node(
		'primary', $smock,
		wal_level       => 'replica',
		max_wal_senders => 10,
		hot_standby     => 'on');
	$primary->backup('b1');
	my $standby = PostgreSQL::Test::Cluster->new('standby');
	$standby->init_from_backup($primary, 'b1', has_streaming => 1);
	# The same bento settings, pointing at the same mock (whatever the primary has by then).
	$standby->append_conf('postgresql.conf',
		BentoTest::conf_lines(
			'bento.api_url'         => $smock->api_url,
			'bento.site_uuid'       => $SITE_UUID,
			'bento.publishable_key' => $PUBLISHABLE_KEY,
			'bento.secret_key'      => $SECRET_KEY));
	$standby->start;
	wait_sql($standby,
		"SELECT pg_is_in_recovery() AND EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'walreceiver')",
		'standby: in recovery and streaming');

	# The primary stops sending: no secret key.
	my $poffset = -s $primary->logfile;
	set_conf($primary, 'bento.secret_key' => undef);
	ok(log_has($primary, qr/bento worker is idle: credentials are not configured/, $poffset),
		'standby: the primary worker idles without credentials');

	my ($ret, $out, $err) = (0, '', '');
	$ret = $standby->psql('postgres', q{SELECT bento_track('$standby', 'ro@example.com')},
		stdout => \$out, stderr => \$err, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	isnt($ret, 0, 'standby: bento_track fails on the standby');
	like($err, qr/ERROR:\s+25006:/, 'standby: with SQLSTATE 25006 (read_only_sql_transaction)');

	my @emails = queue('sb', 20, $primary);
	$primary->wait_for_catchup($standby);
	is($standby->safe_psql('postgres',
		"SELECT count(*) FROM bento.outbox WHERE email LIKE 'sb-%' AND status = 'pending' AND attempts = 0"),
		20, 'standby: the 20 pending events replicated');
	is($standby->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'bento'"),
		0, 'standby: no bento worker on the standby');
	is($standby->safe_psql('postgres', 'SELECT worker_running FROM bento.status'), 'f',
		'standby: bento.status says no worker');
	is(count_log_matches($standby, qr/bento worker started/), 0,
		'standby: the standby never started a bento worker');
	is(scalar @{ $smock->requests('bodies=0') }, 0, 'standby: nothing was sent by either server');

	$primary->stop('fast');
	my $soffset = -s $standby->logfile;
	$standby->promote;
	wait_sql($standby, 'SELECT NOT pg_is_in_recovery()', 'standby: promoted');
	wait_sql($standby, "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'bento')",
		'standby: the worker starts after promotion');
	wait_settled($standby, 'standby: the promoted standby delivered the pending events');
	ok(log_has($standby, qr/bento worker started/, $soffset), 'standby: worker started log');

	is_deeply([ map { [ $_->{status}, $_->{attempts} ] } @{ rows_like('sb-', $standby) } ],
		[ ([ 'sent', 1 ]) x 20 ], 'standby: all 20 sent, one attempt each');
	is_deeply(email_counts($smock->events), { map { ($_ => 1) } @emails },
		'standby: the mock received each event once');
	is_deeply([ map { $_->{outcome} } @{ deliveries_after(0, $standby) } ], ['delivered'],
		'standby: one delivery, delivered');
	is_deeply([ worker_error_lines($standby, 0) ], [], 'standby: no ERROR or FATAL from the worker');

	$standby->stop;
	$smock->stop;
}

# ---------------------------------------------------------------------------------------------
note('5. DROP EXTENSION while a request hangs, then CREATE EXTENSION again');
{
	$mock->reset;
	# A session that used bento_track before the drop and uses it again after the re-create.
	my $session = $node->background_psql('postgres');
	$session->query_safe(q{SELECT bento_track('$session', 'sess-1@example.com')});
	wait_settled($node, 'drop: the session\'s first event is delivered');
	$mock->reset;

	$mock->script({ hang => 1 });
	my @hung = queue('drop', 3);
	wait_hung($mock, 1, 'drop');
	my $pid = worker_pid($node);
	ok($pid, "drop: worker pid $pid");
	my $offset = -s $node->logfile;

	my ($stderr, $stdout) = ('', '');
	my $ret = $node->psql('postgres', "SET statement_timeout = '30s'; DROP EXTENSION bento;",
		stdout => \$stdout, stderr => \$stderr);
	is($ret, 0, 'drop: DROP EXTENSION completed while the request hangs');
	is($stderr, '', 'drop: without error');
	is($mock->stats->{in_flight}, 1, 'drop: the request was still hanging when the DROP finished');
	is($node->safe_psql('postgres', "SELECT count(*) FROM pg_extension WHERE extname = 'bento'"),
		0, 'drop: the extension is gone');

	$mock->release;
	ok(log_has($node, qr/bento did not record delivery \d+: the extension was dropped/, $offset),
		'drop: the worker says it could not record the delivery');
	ok(log_has($node, qr/bento worker is idle: extension "bento" is not installed/, $offset),
		'drop: the worker says the extension is not installed');

	$node->safe_psql('postgres', 'CREATE EXTENSION bento');
	my @redo = queue('redo', 4);
	$session->query_safe(q{SELECT bento_track('$session', 'sess-2@example.com')});
	$session->quit;
	wait_settled($node, 'drop: events tracked after CREATE EXTENSION are delivered');

	is_deeply([ map { [ $_->{email}, $_->{status} ] } @{ json_query($node, 'SELECT email, status FROM bento.outbox ORDER BY id') } ],
		[ (map { [ $_, 'sent' ] } @redo), [ 'sess-2@example.com', 'sent' ] ],
		'drop: the new outbox holds the new events, sent');
	my $counts = email_counts($mock->events);
	is_deeply({ map { ($_ => $counts->{$_}) } @redo, 'sess-2@example.com' },
		{ map { ($_ => 1) } @redo, 'sess-2@example.com' }, 'drop: each new event received once');
	is_deeply([ map { $_->{outcome} } @{ deliveries_after(0) } ], [ ('delivered') x scalar @{ deliveries_after(0) } ],
		'drop: every delivery since the re-create delivered');

	my @errors = worker_error_lines($node, $offset, $pid, worker_pid($node));
	is_deeply(\@errors, [], 'drop: no ERROR or FATAL from the worker after the DROP');
	cmp_ok(worker_exits($node, $offset), '<=', 1, 'drop: the worker restarted at most once');
	is(count_log_matches($node, qr/bento worker is idle: extension "bento" is not installed/, $offset),
		1, 'drop: the not-installed message was logged once');
}

# ---------------------------------------------------------------------------------------------
note('6. 16 concurrent producers with pgbench while the worker drains in batches of 100');
{
	set_conf($node, 'bento.batch_size' => 100);
	$mock->reset;
	my $mark   = delivery_mark();
	my $offset = -s $node->logfile;

	# pg_current_xact_id() is unique per transaction cluster-wide: unique external_ids.
	my $script = q{SELECT bento_track('$bench', 'pgb-' || :client_id || '-' || pg_current_xact_id() || '@example.com', NULL, NULL, 'pgb-' || :client_id || '-' || pg_current_xact_id());
};
	my $t0 = Time::HiRes::time();
	$node->pgbench(
		'--no-vacuum --client=16 --jobs=4 --transactions=200',
		0,
		[ qr{actually processed: 3200/3200}, qr{number of failed transactions: 0 } ],
		[ qr{\A(?!.*(?:deadlock|abort|ERROR))}si ],
		'pgbench: 16 producers x 200 transactions, none failed',
		{ '005_reliability_track.sql' => $script },
		'postgres');
	my $t1 = Time::HiRes::time();

	wait_settled($node, 'pgbench: the outbox drained');
	my $reqs = $mock->requests('bodies=0');
	my $during = grep { $_->{received_at} < $t1 } @$reqs;
	ok($during > 0,
		sprintf('pgbench: the worker was sending while the producers ran (%d of %d requests before pgbench ended after %.1fs)',
			$during, scalar @$reqs, $t1 - $t0));
	my $full = $mock->requests;
	ok(!(grep { @{ $_->{body}{events} // [] } > 100 } @$full), 'pgbench: no request over 100 events');

	my $events = $mock->events;
	my $counts = email_counts($events);
	is(scalar @$events, 3200, 'pgbench: the mock received 3200 events');
	is(scalar keys %$counts, 3200, 'pgbench: 3200 distinct events');
	is(scalar(grep { $_ != 1 } values %$counts), 0, 'pgbench: each exactly once');
	my %per_client;
	/^pgb-(\d+)-\d+\@example\.com$/ and $per_client{$1}++ foreach keys %$counts;
	is_deeply(\%per_client, { map { ($_ => 200) } 0 .. 15 }, 'pgbench: 200 events from each of the 16 clients');

	is($node->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE status = 'sent') || '/' || count(*) FROM bento.outbox WHERE email LIKE 'pgb-%'"),
		'3200/3200', "pgbench: the outbox has 3200 rows, all 'sent'");
	is($node->safe_psql('postgres', "SELECT count(*) FROM bento.dedupe WHERE external_id LIKE 'pgb-%'"),
		3200, 'pgbench: 3200 external_ids in bento.dedupe');
	my %outbox = map { ($_ => 1) } split /\n/,
	  $node->safe_psql('postgres', "SELECT email FROM bento.outbox WHERE email LIKE 'pgb-%'");
	is_deeply(\%outbox, { map { ($_ => 1) } keys %$counts }, 'pgbench: the mock got exactly the outbox events');
	is(scalar(grep { $_->{outcome} ne 'delivered' } @{ deliveries_after($mark) }), 0,
		'pgbench: every delivery delivered');
	is(count_log_matches($node, qr/deadlock detected/, $offset), 0, 'pgbench: no deadlock in the log');
	my @errors = grep { /\b(?:ERROR|FATAL|PANIC):/ } split /\n/, slurp_file($node->logfile, $offset);
	is_deeply(\@errors, [], 'pgbench: no ERROR in the server log');
}

$node->stop;
done_testing();
