
# Copyright: the bento extension's authors.

# The worker stopped in the middle of a request: kill -9 (crash and restart of the cluster),
# pg_terminate_backend (SIGTERM), a fast shutdown, an immediate shutdown with a backlog.
# Nothing may be lost; an event may reach Bento twice only if a request that carried it ended
# without a complete answer (outcome unknown).

use strict;
use warnings;

use FindBin;
use lib $FindBin::Bin;

use BentoTest qw(:DEFAULT delivery_mark deliveries_after rows_like);
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $mock = BentoTest::Mock->start;
# request_timeout above the mock's 120 s hang limit: a hung request ends only when the worker
# gives up on it.  If the worker ignored a stop, the mock would answer after 120 s and the
# request would show as answered (not "abandoned") in its log.
my $node = bento_node(
	'crash', $mock,
	restart_after_crash     => 'on',
	'bento.request_timeout' => '150s');

my @all_emails;

sub queue
{
	my ($prefix, $n) = @_;
	my @emails = map { sprintf('%s-%04d@example.com', $prefix, $_) } 1 .. $n;
	track($node, map { +{ type => '$crash_test', email => $_ } } @emails);
	push @all_emails, @emails;
	return @emails;
}

# The hung request the worker must have walked away from.
sub check_abandoned
{
	my ($label) = @_;
	my $reqs;
	BentoTest::wait_until('the mock saw the client leave',
		sub { $reqs = $mock->requests('bodies=0'); $reqs->[0]{action} ne 'in_flight' });
	is($reqs->[0]{action}, 'abandoned', "$label: the worker left the hung request unanswered");
	return;
}

sub wait_worker_back
{
	my ($label, $old_pid) = @_;
	wait_sql(
		$node,
		"SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'bento'"
		  . ($old_pid ? " AND pid <> $old_pid" : '') . ')',
		"$label: a worker runs again");
	return;
}

# ---------------------------------------------------------------------------------------------
note('kill -9 of the worker while a request hangs');
{
	$mock->reset;
	my $mark = delivery_mark($node);
	# record => 1: Bento got the batch, but the worker never heard back.
	$mock->script({ hang => 1, record => 1 });
	my @emails = queue('kill9', 5);
	ok($mock->wait_in_flight(1), 'kill9: the request hangs');
	is($node->safe_psql('postgres',
		"SELECT string_agg(DISTINCT status::text, ',') FROM bento.outbox WHERE email LIKE 'kill9-%'"),
		'sending', 'kill9: the rows are claimed (sending)');
	my $pid = worker_pid($node);
	ok($pid, "kill9: worker pid $pid");
	kill 'KILL', $pid;
	check_abandoned('kill9');

	wait_settled($node, 'kill9: after the crash restart everything is settled');
	my $d = deliveries_after($node, $mark);
	is($d->[0]{outcome}, 'unknown', 'kill9: the interrupted delivery is marked unknown');
	ok(defined $d->[0]{finished_at}, 'kill9: and finished');
	is($d->[-1]{outcome}, 'delivered', 'kill9: then the events were delivered');
	is_deeply([ map { [ $_->{status}, $_->{attempts} ] } @{ rows_like($node, 'kill9-') } ],
		[ ([ 'sent', 2 ]) x 5 ], 'kill9: all sent, two attempts each');
	is_deeply(email_counts($mock->events), { map { $_ => 2 } @emails },
		'kill9: Bento got each twice (the first outcome was unknown)');
	check_delivery_history($mock, \@emails, 'kill9');
	my $log = slurp_file($node->logfile);
	like($log, qr/terminated by signal 9/, 'kill9: the postmaster saw the crash');
}

# ---------------------------------------------------------------------------------------------
note('pg_terminate_backend of the worker while a request hangs');
{
	$mock->reset;
	my $mark = delivery_mark($node);
	$mock->script({ hang => 1 });
	my @emails = queue('term', 3);
	ok($mock->wait_in_flight(1), 'term: the request hangs');
	my $pid = worker_pid($node);
	is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)"), 't',
		'term: pg_terminate_backend');
	wait_sql($node, "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $pid)",
		'term: the worker exited');
	check_abandoned('term');
	my $d = deliveries_after($node, $mark);
	is($d->[0]{outcome}, 'unknown', 'term: the interrupted delivery is recorded as unknown');
	ok(defined $d->[0]{finished_at}, 'term: and finished');
	like($d->[0]{transport_error} // '', qr/./, "term: transport_error: " . ($d->[0]{transport_error} // 'NULL'));

	wait_worker_back('term', $pid);
	wait_settled($node, 'term: the restarted worker delivered the batch');
	is_deeply([ map { [ $_->{status}, $_->{attempts} ] } @{ rows_like($node, 'term-') } ],
		[ ([ 'sent', 2 ]) x 3 ], 'term: all sent, two attempts each');
	is_deeply(email_counts($mock->events), { map { $_ => 1 } @emails }, 'term: each received once');
	check_delivery_history($mock, \@emails, 'term');
}

# ---------------------------------------------------------------------------------------------
note('fast shutdown while a request hangs');
{
	$mock->reset;
	my $mark = delivery_mark($node);
	$mock->script({ hang => 1 });
	my @emails = queue('fast', 4);
	ok($mock->wait_in_flight(1), 'fast: the request hangs');
	ok($node->stop('fast', fail_ok => 1), 'fast: pg_ctl stop -m fast succeeded');
	check_abandoned('fast');
	$node->start;
	wait_settled($node, 'fast: delivered after the start');
	my $d = deliveries_after($node, $mark);
	is($d->[0]{outcome}, 'unknown', 'fast: the interrupted delivery is unknown');
	is($d->[-1]{outcome}, 'delivered', 'fast: then delivered');
	is_deeply([ map { $_->{status} } @{ rows_like($node, 'fast-') } ], [ ('sent') x 4 ], 'fast: all sent');
	is_deeply(email_counts($mock->events), { map { $_ => 1 } @emails }, 'fast: each received once');
	check_delivery_history($mock, \@emails, 'fast');
}

# ---------------------------------------------------------------------------------------------
note('immediate shutdown with a backlog, then a restart');
{
	$mock->reset;
	my $mark = delivery_mark($node);
	# The first request hangs (Bento got it); 2500 events pile up behind it.
	$mock->script({ hang => 1, record => 1 });
	my @head = queue('head', 1);
	ok($mock->wait_in_flight(1), 'backlog: the first request hangs');
	my @backlog = queue('backlog', 2500);
	is($node->safe_psql('postgres',
		"SELECT count(*) FROM bento.outbox WHERE email LIKE 'backlog-%' AND status = 'pending'"),
		2500, 'backlog: 2500 events pending');
	$node->stop('immediate');
	check_abandoned('backlog');
	$node->start;
	wait_settled($node, 'backlog: all delivered after the restart');

	my $reqs = $mock->requests;
	my @sizes = map { scalar @{ $_->{body}{events} } } @$reqs;
	ok(!(grep { $_ > 1000 } @sizes), 'backlog: no request over 1000 events (' . join(',', @sizes) . ')');
	is(scalar(grep { $_->{status} eq 'sent' } @{ rows_like($node, 'backlog-') }), 2500,
		'backlog: all 2500 sent');
	my $counts = email_counts($mock->events);
	is(scalar(grep { $counts->{$_} == 1 } @backlog), 2500, 'backlog: each received exactly once');
	is($counts->{ $head[0] }, 2, 'backlog: the hung event twice (its first outcome was unknown)');
	my $d = deliveries_after($node, $mark);
	is($d->[0]{outcome}, 'unknown', 'backlog: the interrupted delivery is unknown');
	is(scalar(grep { $_->{outcome} ne 'delivered' } @$d[ 1 .. $#$d ]), 0,
		'backlog: every later delivery delivered');
	check_delivery_history($mock, [ @head, @backlog ], 'backlog');
	my @sent_order = map { @{ $_->{body}{events} } } @$reqs[ 1 .. $#$reqs ];
	is_deeply([ grep { /^backlog-/ } map { $_->{email} } @sent_order ], \@backlog,
		'backlog: sent in outbox id order');
}

# ---------------------------------------------------------------------------------------------
note('kill -9 of the postmaster while a request hangs');
{
	$mock->reset;
	my $mark = delivery_mark($node);
	$mock->script({ hang => 1 });
	my @emails = queue('pmkill', 3);
	ok($mock->wait_in_flight(1), 'pmkill: the request hangs');
	my @pids = split /\n/, $node->safe_psql('postgres',
		'SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()');
	push @pids, $node->{_pid};
	$node->kill9;
	# The worker must notice that the postmaster is gone although it is inside libcurl.
	check_abandoned('pmkill');
	ok( BentoTest::wait_until(
			'every process of the killed server is gone',
			sub { !(grep { -e "/proc/$_" } @pids) }),
		'pmkill: every server process exited (the worker too)');
	ok($node->start(fail_ok => 1), 'pmkill: the server starts again');
	wait_settled($node, 'pmkill: delivered after the start');
	my $d = deliveries_after($node, $mark);
	is($d->[0]{outcome}, 'unknown', 'pmkill: the interrupted delivery is unknown');
	is_deeply([ map { $_->{status} } @{ rows_like($node, 'pmkill-') } ], [ ('sent') x 3 ],
		'pmkill: all sent');
	is_deeply(email_counts($mock->events), { map { $_ => 1 } @emails }, 'pmkill: each received once');
	check_delivery_history($mock, \@emails, 'pmkill');
}

# ---------------------------------------------------------------------------------------------
note('nothing lost overall');
{
	is($node->safe_psql('postgres',
		"SELECT count(*) FROM bento.outbox WHERE status <> 'sent'"), 0, 'every event sent');
	is($node->safe_psql('postgres', 'SELECT count(*) FROM bento.outbox'), scalar @all_emails,
		'the outbox holds every tracked event once');
	is($node->safe_psql('postgres',
		"SELECT count(*) FROM bento.deliveries WHERE outcome = 'in_flight' OR finished_at IS NULL"),
		0, 'no delivery left in flight');
	my $log = slurp_file($node->logfile);
	unlike($log, qr/pre-existing shared memory block/, 'no stale shared memory at restart');
}

$node->stop;
done_testing();
