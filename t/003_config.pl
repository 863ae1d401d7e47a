
# Copyright: the bento extension's authors.

# Configuration: a worker without credentials idles and says so once; bento.api_url refuses
# plain http:// to anything but loopback; the secret key is hidden from ordinary users and never
# written to the server log or the delivery tables; bento.database moves the worker; the
# settings' defaults, bounds and context.

use strict;
use warnings;

use FindBin;
use lib $FindBin::Bin;

use BentoTest;
use JSON::PP;
use MIME::Base64 qw(encode_base64);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $mock = BentoTest::Mock->start;

# No keys: the worker must idle.  debug1 so that a debug message leaking the secret shows up too.
my $node = bento_node(
	'config', $mock,
	'bento.publishable_key' => undef,
	'bento.secret_key'      => undef,
	log_min_messages        => 'debug1');

my $IDLE_RE = qr/bento worker is idle: credentials are not configured/;

sub rows_like
{
	my ($prefix, $dbname) = @_;
	return json_query($node,
		"SELECT * FROM bento.outbox WHERE email LIKE " . sql_literal("$prefix%") . " ORDER BY id",
		$dbname);
}

# ---------------------------------------------------------------------------------------------
note('no credentials: the worker idles and says so once');
{
	track($node, map { +{ email => "idle-$_\@example.com" } } 1 .. 3);
	$node->wait_for_log($IDLE_RE);
	# Give the worker many rounds (poll_interval is 100ms) and a few wake-ups.
	for my $i (1 .. 4)
	{
		sleep 1;
		track($node, { email => "idle-more-$i\@example.com" });
	}
	my $log = slurp_file($node->logfile);
	my @lines = grep { /bento/i && /credentials|not configured/i } split /\n/, $log;
	is(scalar(grep { /$IDLE_RE/ } @lines), 1, 'the idle message was logged once')
	  or diag(join("\n", @lines));
	is(scalar @{ $mock->requests('bodies=0') }, 0, 'nothing was posted');
	is($node->safe_psql('postgres',
		"SELECT count(*) FROM bento.outbox WHERE status = 'pending' AND attempts = 0"),
		7, 'the events wait, untouched');
	is($node->safe_psql('postgres', 'SELECT count(*) FROM bento.deliveries'), 0, 'no delivery');
	my $status = json_query($node, 'SELECT * FROM bento.status')->[0];
	is($status->{pending}, 7, 'bento.status: 7 pending');
	ok($status->{worker_running}, 'bento.status: the worker runs');

	note('setting the keys with a reload starts delivery');
	set_conf($node, 'bento.publishable_key' => $PUBLISHABLE_KEY, 'bento.secret_key' => $SECRET_KEY);
	wait_settled($node, 'delivered once the keys are set');
	is(scalar @{ $mock->events }, 7, 'Bento got the 7 waiting events');
	is(scalar(grep { /$IDLE_RE/ } split /\n/, slurp_file($node->logfile)), 1,
		'still one idle message');
}

# ---------------------------------------------------------------------------------------------
note('bento.api_url: https, or http to loopback only');
{
	my @refused = (
		[ 'http://example.com/api/v1',         qr/loopback/ ],
		[ 'http://10.1.2.3:8080/api/v1',       qr/loopback/ ],
		[ 'http://127.0.0.1.evil.test/api/v1', qr/loopback/ ],
		[ 'http://localhost.evil.test/api/v1', qr/loopback/ ],
		[ 'http://127.0.0.1@evil.test/api/v1', qr/./ ],
		[ 'ftp://127.0.0.1/api/v1',            qr/https/ ],
		[ 'file:///etc/passwd',                qr/./ ],
		[ 'app.bentonow.com/api/v1',           qr/./ ],
		[ '',                                  qr/./ ]);
	foreach my $case (@refused)
	{
		my ($url, $detail) = @$case;
		my ($ret, $out, $err) = $node->psql('postgres',
			'ALTER SYSTEM SET bento.api_url = ' . sql_literal($url));
		isnt($ret, 0, "refused: '$url'");
		like($err, qr/invalid value for parameter "bento\.api_url"/, "'$url': names the setting");
		like($err, qr/DETAIL:.*$detail/s, "'$url': says why") or diag($err);
	}
	my ($ret, $out, $err) = $node->psql('postgres',
		q{ALTER SYSTEM SET bento.api_url = 'http://example.com/api/v1'});
	like($err, qr/DETAIL:.*http:\/\/ is allowed only for a loopback host/s,
		'the message for a non-loopback http:// URL is clear') or diag($err);

	foreach my $url (
		'https://app.bentonow.com/api/v1', 'https://bento.example.org:8443/x/api/v1',
		'http://127.0.0.1:8080/api/v1',    'http://localhost:8080/api/v1',
		'http://[::1]:8080/api/v1')
	{
		my ($ret, $out, $err) = $node->psql('postgres',
			'ALTER SYSTEM SET bento.api_url = ' . sql_literal($url));
		is($ret, 0, "accepted: '$url'") or diag($err);
	}
	$node->safe_psql('postgres', 'ALTER SYSTEM RESET bento.api_url');

	note('a refused URL in postgresql.conf is ignored at reload; the old one stays in use');
	my $offset = -s $node->logfile;
	set_conf($node, 'bento.api_url' => 'http://bento.example.com/api/v1');
	$node->wait_for_log(qr/invalid value for parameter "bento\.api_url"/, $offset);
	ok(1, 'the reload logged the invalid value');
	$mock->reset;
	track($node, { email => 'badurl-1@example.com' });
	wait_settled($node, 'still delivered');
	is_deeply([ map { $_->{email} } @{ $mock->events } ], ['badurl-1@example.com'],
		'to the URL in use before the bad reload');
	is($node->safe_psql('postgres', 'SHOW bento.api_url'), $mock->api_url,
		'SHOW still gives the old URL');
	set_conf($node, 'bento.api_url' => $mock->api_url);
}

# ---------------------------------------------------------------------------------------------
note('the secret key is hidden from ordinary users');
{
	$node->safe_psql('postgres', 'CREATE ROLE alice LOGIN');
	my $alice = $node->connstr('postgres') . ' user=alice';
	my $as_alice = sub {
		my ($sql) = @_;
		return $node->psql('postgres', $sql, connstr => $alice);
	};

	is($node->safe_psql('postgres', 'SHOW bento.secret_key'), $SECRET_KEY,
		'a superuser can read it (so the checks below are about a set value)');

	my ($ret, $out, $err) = $as_alice->('SHOW bento.secret_key');
	isnt($ret, 0, 'alice: SHOW bento.secret_key fails');
	like($err, qr/must be superuser|pg_read_all_settings|permission denied/,
		'alice: with a permission error');
	unlike($out, qr/\Q$SECRET_KEY\E/, 'alice: SHOW printed nothing secret');

	($ret, $out, $err) = $as_alice->(q{SELECT current_setting('bento.secret_key')});
	isnt($ret, 0, 'alice: current_setting() fails');
	unlike($out, qr/\Q$SECRET_KEY\E/, 'alice: current_setting() printed nothing secret');

	($ret, $out, $err) = $as_alice->(q{SELECT current_setting('bento.secret_key', true)});
	unlike($out, qr/\Q$SECRET_KEY\E/, 'alice: current_setting(missing_ok) gives nothing secret');

	($ret, $out, $err) = $as_alice->(
		q{SELECT count(*) FROM pg_settings WHERE name = 'bento.secret_key'});
	is($out, '0', 'alice: bento.secret_key is not in pg_settings');

	($ret, $out, $err) = $as_alice->(
		q{SELECT string_agg(coalesce(setting, '') || ' ' || coalesce(reset_val, '') || ' '
		                    || coalesce(boot_val, ''), ' ') FROM pg_settings});
	is($ret, 0, 'alice: can read pg_settings');
	unlike($out, qr/\Q$SECRET_KEY\E/, 'alice: no pg_settings value holds the secret');

	($ret, $out, $err) = $as_alice->('SHOW ALL');
	unlike($out, qr/\Q$SECRET_KEY\E/, 'alice: SHOW ALL does not show it');

	($ret, $out, $err) = $as_alice->('SELECT * FROM pg_file_settings');
	unlike($out, qr/\Q$SECRET_KEY\E/, 'alice: pg_file_settings does not show it');
}

# ---------------------------------------------------------------------------------------------
note('the secret key never reaches the server log or the delivery tables');
{
	$mock->reset;
	# Failures too: a 500, a 401 (the mock now wants another secret), a dropped connection.
	$mock->script({ status => 500, body => { error => 'internal' } }, { drop => 1 }, { drop => 1 });
	track($node, { email => 'leak-1@example.com' });
	wait_settled($node);
	$mock->post('/_mock/config', { secret_key => 'sk_the_mock_wants_another' });
	track($node, { email => 'leak-401@example.com' });
	wait_settled($node);
	is(rows_like('leak-401')->[0]{status}, 'dead', 'the 401 made the event dead');
	$mock->post('/_mock/config', { secret_key => $SECRET_KEY });
	track($node, { email => 'leak-2@example.com' });
	wait_settled($node);
	is(scalar @{ $mock->events }, 2, 'the other events were delivered');

	my $b64 = encode_base64("$PUBLISHABLE_KEY:$SECRET_KEY", '');
	my $log = slurp_file($node->logfile);
	my @leaks = grep { /\Q$SECRET_KEY\E|\Q$b64\E/ } split /\n/, $log;
	my @core_reload = grep { /parameter "bento\.secret_key" changed to/ } @leaks;
	my @other = grep { !/parameter "bento\.secret_key" changed to/ } @leaks;
	is(scalar @other, 0, 'no log line made by bento or libcurl holds the secret (or the Basic auth header)')
	  or diag(join("\n", @other));
	# PostgreSQL itself logs 'parameter "bento.secret_key" changed to "..."' when a reload
	# changes the setting; the README says so and recommends bento.secret_key_file.
	ok(scalar @core_reload > 0,
		'a reload that changes bento.secret_key is logged by PostgreSQL (documented limitation)');
	my $b64_secret = encode_base64($SECRET_KEY, '');
	unlike($log, qr/\Q$b64_secret\E/, 'nor the secret in base64');

	foreach my $table ('bento.deliveries', 'bento.outbox', 'bento.status')
	{
		my $text = JSON::PP->new->canonical->encode(json_query($node, "SELECT * FROM $table"));
		unlike($text, qr/\Q$SECRET_KEY\E/, "$table does not hold the secret");
		unlike($text, qr/\Q$b64\E/, "$table does not hold the Basic auth header");
	}
}

# ---------------------------------------------------------------------------------------------
note('bento.secret_key_file: the secret is read from a file, rotated by reload, never logged');
{
	my $file = $node->data_dir . '/bento_secret';
	my $write_secret = sub {
		my ($secret, $mode) = @_;
		open(my $fh, '>', $file) or die "could not write $file: $!";
		print $fh "$secret\n";
		close($fh);
		chmod($mode // 0600, $file) or die "chmod $file: $!";
	};
	my $log_offset = -s $node->logfile;
	my @file_secrets = ('sk_file_first_7d1e', 'sk_file_rotated_3b9a');

	$mock->reset;
	$write_secret->($file_secrets[0]);
	$mock->post('/_mock/config', { secret_key => $file_secrets[0] });
	# bento.secret_key still holds the old value: the file must win over it.
	set_conf($node, 'bento.secret_key_file' => 'bento_secret');
	track($node, { email => 'file-1@example.com' });
	wait_settled($node);
	is(rows_like('file-1')->[0]{status}, 'sent', 'delivered with the secret from the file');
	is($mock->requests->[-1]{headers}{authorization}, basic_auth($PUBLISHABLE_KEY, $file_secrets[0]),
		'the request used the file\'s secret, not bento.secret_key');

	# Rotation: new file contents, reload.
	$write_secret->($file_secrets[1]);
	$mock->post('/_mock/config', { secret_key => $file_secrets[1] });
	$node->reload;
	$node->safe_psql('postgres', 'SELECT 1');
	track($node, { email => 'file-2@example.com' });
	wait_settled($node);
	is(rows_like('file-2')->[0]{status}, 'sent', 'a reload picks up the rotated secret');

	# A file others may read is refused: the worker idles instead of using it.
	$write_secret->($file_secrets[1], 0644);
	$node->reload;
	$node->wait_for_log(qr/bento\.secret_key_file ".*" is readable by group or others; it is not used/,
		$log_offset);
	my $before = scalar @{ $mock->requests('bodies=0') };
	track($node, { email => 'file-3@example.com' });
	$node->wait_for_log($IDLE_RE, $log_offset);
	is(scalar @{ $mock->requests('bodies=0') }, $before, 'nothing is posted with a group-readable secret file');
	chmod(0600, $file);
	$node->reload;
	wait_settled($node);
	is(rows_like('file-3')->[0]{status}, 'sent', 'fixing the mode resumes delivery');

	my $log = slurp_file($node->logfile, $log_offset);
	foreach my $secret (@file_secrets)
	{
		unlike($log, qr/\Q$secret\E/, "the file's secret ($secret) is nowhere in the server log");
		unlike($log, qr/\Q@{[encode_base64("$PUBLISHABLE_KEY:$secret", '')]}\E/,
			'nor its Basic auth header');
	}

	set_conf($node, 'bento.secret_key_file' => '');
	$mock->post('/_mock/config', { secret_key => $SECRET_KEY });
}

# ---------------------------------------------------------------------------------------------
note('bento.database: the worker moves to another database');
{
	$node->safe_psql('postgres', 'CREATE DATABASE otherdb');
	$node->safe_psql('otherdb', 'CREATE EXTENSION bento');
	$mock->reset;
	my $old_pid = worker_pid($node);
	set_conf($node, 'bento.database' => 'otherdb');
	wait_sql($node,
		"SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'bento' AND datname = 'otherdb')",
		'the worker runs in otherdb');
	isnt(worker_pid($node), $old_pid, 'a new worker process');
	track($node, { email => 'otherdb-1@example.com' }, { dbname => 'otherdb' });
	track($node, { email => 'postgresdb-1@example.com' });
	wait_settled($node, 'otherdb is delivered', 'otherdb');
	is_deeply([ map { $_->{email} } @{ $mock->events } ], ['otherdb-1@example.com'],
		'only the event of otherdb went out');
	is(rows_like('postgresdb-1')->[0]{status}, 'pending', 'the event in postgres waits');

	set_conf($node, 'bento.database' => 'postgres');
	wait_settled($node, 'back in postgres, its event is delivered');
	is_deeply([ sort map { $_->{email} } @{ $mock->events } ],
		[ 'otherdb-1@example.com', 'postgresdb-1@example.com' ], 'both delivered');
}

# ---------------------------------------------------------------------------------------------
note('defaults, bounds and context of the settings');
{
	my %boot = map { $_->{name} => $_ } @{ json_query($node,
		"SELECT name, boot_val, unit, context, min_val, max_val FROM pg_settings WHERE name LIKE 'bento.%'") };
	my %want = (
		'bento.api_url'                 => [ 'https://app.bentonow.com/api/v1', undef ],
		'bento.site_uuid'               => [ '', undef ],
		'bento.publishable_key'         => [ '', undef ],
		'bento.database'                => [ 'postgres', undef ],
		'bento.batch_size'              => [ '1000', undef ],
		'bento.max_requests_per_minute' => [ '60', undef ],
		'bento.request_timeout'         => [ '30000', 'ms' ],
		'bento.poll_interval'           => [ '1000', 'ms' ],
		'bento.retry_base_delay'        => [ '5000', 'ms' ],
		'bento.retry_max_delay'         => [ '3600000', 'ms' ]);
	foreach my $name (sort keys %want)
	{
		is_deeply([ $boot{$name}{boot_val}, $boot{$name}{unit} ], $want{$name},
			"$name defaults to $want{$name}[0]" . ($want{$name}[1] // ''));
	}
	is_deeply([ sort grep { $boot{$_}{context} ne 'sighup' } keys %boot ], [],
		'every bento setting is reloadable (context sighup)');
	is_deeply([ $boot{'bento.batch_size'}{min_val}, $boot{'bento.batch_size'}{max_val} ],
		[ 1, 1000 ], 'bento.batch_size is 1..1000');
	is($boot{'bento.max_requests_per_minute'}{min_val}, 0, 'max_requests_per_minute may be 0');

	foreach my $bad ('bento.batch_size = 0', 'bento.batch_size = 1001',
		'bento.max_requests_per_minute = -1')
	{
		my ($ret, $out, $err) = $node->psql('postgres', "ALTER SYSTEM SET $bad");
		isnt($ret, 0, "refused: $bad");
	}
	my ($ret) = $node->psql('postgres', 'SET bento.batch_size = 5');
	isnt($ret, 0, 'a session cannot change a bento setting');
}

$node->stop;
done_testing();
