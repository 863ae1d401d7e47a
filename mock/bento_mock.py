#!/usr/bin/python3
"""A mock of Bento's batch events API, for the bento extension's tests and benchmarks.

Standard library only.  Run it with

    python3 mock/bento_mock.py [--host 127.0.0.1] [--port 0] [--port-file FILE]
                               [--publishable-key K --secret-key S] [--site-uuid U] [--quiet]

--port 0 (the default) binds an ephemeral port.  --port-file FILE writes the bound port number
(followed by a newline) to FILE once the server listens; the file is written to a temporary name
and renamed, so a reader never sees it half-written.  --quiet turns off the per-request log lines
(errors are still logged to stderr).  The server is threaded (one daemon thread per connection),
speaks HTTP/1.1 with keep-alive, and stops on SIGTERM or SIGINT.

The batch endpoint: POST /api/v1/batch/events
----------------------------------------------
By default it answers like Bento's events API, checking in this order:

1. User-Agent missing, or starting with "curl/" or "python-requests/": 403 with an HTML body
   (what Cloudflare does in front of Bento).
2. If --publishable-key/--secret-key were given: HTTP Basic auth must be exactly publishable:secret,
   else 401 {"error": "..."}.  If --site-uuid was given, the site_uuid query parameter must match,
   else 401 {"error": "..."}.
3. Body not JSON, not an object, "events" missing / not an array / empty / more than 1000 items,
   an event that is not an object or has no "email", or an event whose email ends with
   "@poison.test" (a stand-in for any row that makes Bento refuse the whole batch):
   400 {"error": "..."}.
4. Each event is then accepted or rejected.  It is rejected when its email ends with "@reject.test",
   or it breaks one of Bento's documented rules: "type" a non-empty string; "fields", if present, a
   flat object (no nested object or array); "details", if present, an object whose "value", if
   present, holds a numeric "amount" and a string "currency"; "date", if present, a string.
   The answer is 200 {"results": accepted, "failed": rejected} plus, when something was rejected,
   "errors": [{"index": i, "error": "..."}] listing at most 20 of them (index = position in the
   posted array).  When every event was rejected the same body comes with status 422.
   Accepted events are appended, exactly as posted, to the received-events list.

Any other path (outside /_mock/) answers 404 {"error": "not found"}; such requests are logged in
the request list too, so a client posting to the wrong place shows up there.

Scripted responses
------------------
POST /_mock/script with a JSON list of steps (or a single step object) appends them to a FIFO
queue.  Each request to the batch endpoint takes the next step, if any; the step overrides the
default behaviour above for that one request.  Keys of a step (all optional):

    status    int     answer with this status instead of the default answer
    body      str/any the body to send with "status" (a non-string is sent as JSON).  Without
                      "body": a 2xx gets the default answer's body for these events, anything
                      else gets {"error": "scripted <status>"}
    headers   object  extra response headers, e.g. {"Retry-After": "2"}; a Content-Type here
                      replaces the default application/json
    delay_ms  int     sleep this long before answering
    hang      bool    hold the request open without answering until POST /_mock/release (or
                      POST /_mock/reset), until the client goes away, or for 120 s at most;
                      then answer as the rest of the step says (if the client is still there)
    drop      bool    close the connection without sending anything
    truncate  bool    send a "200" status line (or "status") and headers with a Content-Length
                      larger than the body, send part of the body, then close the connection
    record    bool    whether this request's events join the received-events list

A step without "status", "drop" or "truncate" (e.g. {"delay_ms": 500} or {"hang": true}) only
delays or hangs, then answers as the default would.  Events are recorded ("record" unset) when the
answer was 2xx: the default answer records the events it accepted; a scripted 2xx (or truncate)
records every event of the request except those listed in the body's "errors" indexes.  A
scripted non-2xx, a drop, or a client that went away while hung records nothing.  "record": true
on a drop or a hang says "Bento got the events but the client never heard back" (the events are
recorded even if the client goes away); "record": false on a 2xx / truncate says "the answer was
a lie".

Control and inspection (never scripted, never logged in the request list)
-------------------------------------------------------------------------
GET  /_mock/requests   JSON list of every request to the batch endpoint (or a stray path), in
                       arrival order: {"method", "path", "query": {name: value}, "headers":
                       {lower-case name: value}, "body": parsed JSON or null, "raw_body_len",
                       "status": the status sent, or null if none was (drop, client gone, still
                       in flight), "action": "default" | "scripted" | "drop" | "truncate" |
                       "abandoned" (client left while hung) | "in_flight", "received_at",
                       "finished_at": Unix times (float seconds) of arrival and of the answer
                       (null while in flight)}.  ?bodies=0 leaves out "body"; ?since=N skips
                       the first N requests.
GET  /_mock/events     JSON list of received (accepted) events, each the event object as posted.
                       ?since=N skips the first N.
GET  /_mock/stats      {"requests": n, "events": m, "in_flight": k, "script_pending": s};
                       in_flight = batch requests being processed right now (hung ones included).
GET  /_mock/script     the steps still queued.
POST /_mock/script     queue steps, see above.  Answers {"script_pending": s}.
POST /_mock/release    let every request hung right now go on.  Answers {"released": k}.
POST /_mock/reset      forget requests, events and queued steps, and release hung requests
                       (they answer as their step says, but record no events).
POST /_mock/config     change the checks at run time: {"publishable_key", "secret_key",
                       "site_uuid"}; a null value turns that check off.
"""

import argparse
import base64
import collections
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

BATCH_PATH = "/api/v1/batch/events"
MAX_EVENTS = 1000
MAX_LISTED_ERRORS = 20
HANG_LIMIT_S = 120.0
REJECT_SUFFIX = "@reject.test"
POISON_SUFFIX = "@poison.test"
BLOCKED_AGENTS = ("curl/", "python-requests/")
CLOUDFLARE_403 = (
    "<!DOCTYPE html>\n<html><head><title>Attention Required! | Cloudflare</title></head>\n"
    "<body><h1>Sorry, you have been blocked</h1>"
    "<p>You are unable to access bentonow.com</p></body></html>\n"
)
STEP_KEYS = {"status", "body", "headers", "delay_ms", "hang", "drop", "truncate", "record"}


class MockState:
    """Everything the mock remembers, behind one lock."""

    def __init__(self, publishable_key=None, secret_key=None, site_uuid=None):
        self.lock = threading.Condition()
        self.publishable_key = publishable_key
        self.secret_key = secret_key
        self.site_uuid = site_uuid
        self.requests = []
        self.events = []
        self.script = collections.deque()
        self.in_flight = 0
        self.release_generation = 0
        self.epoch = 0          # bumped by reset: requests from before it record nothing

    def reset(self):
        with self.lock:
            self.requests = []
            self.events = []
            self.script.clear()
            self.epoch += 1
            self.release_generation += 1
            self.lock.notify_all()

    def release(self):
        with self.lock:
            self.release_generation += 1
            self.lock.notify_all()
            return self.in_flight

    def next_step(self):
        with self.lock:
            return self.script.popleft() if self.script else None

    def add_steps(self, steps):
        with self.lock:
            self.script.extend(steps)
            return len(self.script)

    def log_request(self, entry):
        """Log a request as it arrives; return the epoch to give back to finish_request."""
        with self.lock:
            self.requests.append(entry)
            self.in_flight += 1
            return self.epoch

    def finish_request(self, entry, epoch, status, action, events):
        with self.lock:
            entry["status"] = status
            entry["action"] = action
            entry["finished_at"] = time.time()
            self.in_flight -= 1
            if events and epoch == self.epoch:
                self.events.extend(events)

    def stats(self):
        with self.lock:
            return {"requests": len(self.requests), "events": len(self.events),
                    "in_flight": self.in_flight, "script_pending": len(self.script)}


# ---------------------------------------------------------------------------------------------
# Bento's rules
# ---------------------------------------------------------------------------------------------

def check_auth(state, headers, query):
    """Return an error message when the credentials or the site do not match, else None."""
    if state.publishable_key is not None or state.secret_key is not None:
        auth = headers.get("authorization", "")
        if not auth.startswith("Basic "):
            return "Authentication required"
        try:
            user, _, password = base64.b64decode(auth[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return "Malformed Authorization header"
        if user != (state.publishable_key or "") or password != (state.secret_key or ""):
            return "Invalid credentials"
    if state.site_uuid is not None and query.get("site_uuid") != state.site_uuid:
        return "Unknown site_uuid"
    return None


def validate_batch(body):
    """Return (events, None) for a well-formed batch, or (None, error message) for a 400."""
    if not isinstance(body, dict):
        return None, "Request body must be a JSON object"
    events = body.get("events")
    if events is None:
        return None, "events is required"
    if not isinstance(events, list):
        return None, "events must be an array"
    if not events:
        return None, "events must not be empty"
    if len(events) > MAX_EVENTS:
        return None, "Too many events: at most %d per request" % MAX_EVENTS
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            return None, "events[%d] must be an object" % i
        if "email" not in event or event["email"] in (None, ""):
            return None, "events[%d]: email is required" % i
        if isinstance(event["email"], str) and event["email"].endswith(POISON_SUFFIX):
            return None, "events[%d]: email domain is not allowed" % i
    return events, None


def event_error(event):
    """Return why Bento would reject this (well-formed) event, or None if it accepts it."""
    email = event.get("email")
    if not isinstance(email, str):
        return "email must be a string"
    if email.lower().endswith(REJECT_SUFFIX):
        return "Email %s was rejected" % email
    etype = event.get("type")
    if not isinstance(etype, str) or not etype:
        return "type is required"
    if "fields" in event:
        fields = event["fields"]
        if not isinstance(fields, dict):
            return "fields must be an object"
        if any(isinstance(v, (dict, list)) for v in fields.values()):
            return "fields must be flat"
    if "details" in event:
        details = event["details"]
        if not isinstance(details, dict):
            return "details must be an object"
        value = details.get("value")
        if value is not None and not (
                isinstance(value, dict)
                and isinstance(value.get("amount"), (int, float))
                and not isinstance(value.get("amount"), bool)
                and isinstance(value.get("currency"), str)):
            return "details.value must hold a numeric amount and a string currency"
    if "date" in event and not isinstance(event["date"], str):
        return "date must be an ISO 8601 string"
    return None


def default_answer(events):
    """Bento's answer to a well-formed batch: (status, body dict, accepted events)."""
    accepted, errors = [], []
    for i, event in enumerate(events):
        error = event_error(event)
        if error is None:
            accepted.append(event)
        else:
            errors.append({"index": i, "error": error})
    body = {"results": len(accepted), "failed": len(errors)}
    if errors:
        body["errors"] = errors[:MAX_LISTED_ERRORS]
    return (422 if not accepted else 200), body, accepted


def events_of(body):
    """The events list of a parsed request body, or [] when it has none."""
    if isinstance(body, dict) and isinstance(body.get("events"), list):
        return body["events"]
    return []


def default_body(body):
    """The body Bento would send to this (parsed) request if it were well formed."""
    events, _ = validate_batch(body)
    if not events:
        return {"results": 0, "failed": 0}
    return default_answer(events)[1]


def events_not_in_errors(events, text):
    """The events a scripted 2xx answer claims were accepted: all but its errors[] indexes."""
    try:
        body = json.loads(text)
        failed = {e["index"] for e in body.get("errors", []) if isinstance(e, dict)}
    except (ValueError, TypeError, AttributeError, KeyError):
        failed = set()
    return [e for i, e in enumerate(events) if i not in failed]


# ---------------------------------------------------------------------------------------------
# Script steps
# ---------------------------------------------------------------------------------------------

def parse_steps(payload):
    """Validate the body of POST /_mock/script; return a list of step dicts or raise ValueError."""
    steps = payload if isinstance(payload, list) else [payload]
    for step in steps:
        if not isinstance(step, dict):
            raise ValueError("each step must be an object")
        unknown = set(step) - STEP_KEYS
        if unknown:
            raise ValueError("unknown step keys: %s" % ", ".join(sorted(unknown)))
        if "status" in step and not (isinstance(step["status"], int) and 100 <= step["status"] <= 599):
            raise ValueError("status must be an integer 100..599")
        if not isinstance(step.get("headers", {}), dict):
            raise ValueError("headers must be an object")
        if not isinstance(step.get("delay_ms", 0), (int, float)) or step.get("delay_ms", 0) < 0:
            raise ValueError("delay_ms must be a non-negative number")
    return steps


def body_text(body):
    return body if isinstance(body, str) else json.dumps(body)


# ---------------------------------------------------------------------------------------------
# The HTTP handler
# ---------------------------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "BentoMock/1.0"
    quiet = False

    def version_string(self):
        return self.server_version

    @property
    def state(self):
        return self.server.state

    # -- plumbing ---------------------------------------------------------------------------

    def setup(self):
        super().setup()
        # Small answers must not wait for the client's delayed ACK (Nagle): 40 ms per request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_request(self, code="-", size="-"):
        if not self.quiet:
            super().log_request(code, size)

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send(self, status, body, content_type="application/json", headers=None):
        data = body.encode() if isinstance(body, str) else body
        headers = headers or {}
        self.send_response(status)
        if not any(name.lower() == "content-type" for name in headers):
            self.send_header("Content-Type", content_type)
        for name, value in headers.items():
            self.send_header(name, str(value))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_json(self, status, obj, headers=None):
        self.send(status, json.dumps(obj), headers=headers)

    def close_abruptly(self):
        """Close the connection now, without finishing whatever was being sent."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def client_gone(self):
        """True when the client closed its end (checked without consuming anything)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def hang(self):
        """Wait until released, reset, the client leaves or HANG_LIMIT_S; True if still there."""
        deadline = time.monotonic() + HANG_LIMIT_S
        with self.state.lock:
            generation = self.state.release_generation
        while time.monotonic() < deadline:
            with self.state.lock:
                if self.state.release_generation != generation:
                    return True
                self.state.lock.wait(0.05)
            if self.client_gone():
                return False
        return True

    # -- dispatch ---------------------------------------------------------------------------

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def dispatch(self, method):
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        raw = self.read_body()
        if url.path.startswith("/_mock/"):
            self.control(method, url.path, query, raw)
        else:
            self.api(method, url.path, query, raw)

    # -- control endpoints ------------------------------------------------------------------

    def control(self, method, path, query, raw):
        state = self.state
        since = int(query.get("since", "0") or 0)
        route = (method, path)
        if route == ("GET", "/_mock/requests"):
            with state.lock:
                entries = [dict(e) for e in state.requests[since:]]
            if query.get("bodies") == "0":
                for e in entries:
                    e.pop("body", None)
            self.send_json(200, entries)
        elif route == ("GET", "/_mock/events"):
            with state.lock:
                events = state.events[since:]
            self.send_json(200, events)
        elif route == ("GET", "/_mock/stats"):
            self.send_json(200, state.stats())
        elif route == ("GET", "/_mock/script"):
            with state.lock:
                self.send_json(200, list(state.script))
        elif route == ("POST", "/_mock/script"):
            try:
                steps = parse_steps(json.loads(raw or b"null"))
            except ValueError as e:
                self.send_json(400, {"error": str(e)})
                return
            self.send_json(200, {"script_pending": state.add_steps(steps)})
        elif route == ("POST", "/_mock/release"):
            self.send_json(200, {"released": state.release()})
        elif route == ("POST", "/_mock/reset"):
            state.reset()
            self.send_json(200, {"reset": True})
        elif route == ("POST", "/_mock/config"):
            self.configure(raw)
        else:
            self.send_json(404, {"error": "unknown control endpoint %s %s" % route})

    def configure(self, raw):
        try:
            conf = json.loads(raw or b"{}")
            if not isinstance(conf, dict):
                raise ValueError("expected an object")
        except ValueError as e:
            self.send_json(400, {"error": str(e)})
            return
        with self.state.lock:
            for key in ("publishable_key", "secret_key", "site_uuid"):
                if key in conf:
                    setattr(self.state, key, conf[key])
        self.send_json(200, {"ok": True})

    # -- the API ----------------------------------------------------------------------------

    def api(self, method, path, query, raw):
        try:
            body, body_ok = (json.loads(raw), True) if raw else (None, False)
        except (ValueError, UnicodeDecodeError):
            body, body_ok = None, False
        entry = {
            "method": method, "path": path, "query": query,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body, "raw_body_len": len(raw), "status": None, "action": "in_flight",
            "received_at": time.time(), "finished_at": None,
        }
        epoch = self.state.log_request(entry)
        status, action, recorded = None, "abandoned", []
        try:
            status, action, recorded = self.answer(entry, body_ok)
        finally:
            self.state.finish_request(entry, epoch, status, action, recorded)

    def answer(self, req, body_ok):
        """Answer one API request; return (status sent or None, action, events to record)."""
        step = self.next_step(req)
        if step.get("delay_ms"):
            time.sleep(step["delay_ms"] / 1000.0)
        events = events_of(req["body"])
        if step.get("hang") and not self.hang():
            self.close_abruptly()
            return None, "abandoned", (events if step.get("record") else [])
        if step.get("drop"):
            self.close_abruptly()
            return None, "drop", (events if step.get("record") else [])
        if step.get("truncate"):
            return self.truncate(step, req, events)
        if "status" in step:
            return self.scripted(step, req, events)
        status, recorded = self.default(req, body_ok, step.get("headers"))
        if step.get("record") is False:
            recorded = []
        return status, "default", recorded

    def next_step(self, req):
        if req["method"] == "POST" and req["path"] == BATCH_PATH:
            return self.state.next_step() or {}
        return {}

    def scripted(self, step, req, events):
        status = step["status"]
        if "body" in step:
            text = body_text(step["body"])
        elif 200 <= status < 300:
            text = json.dumps(default_body(req["body"]))
        else:
            text = json.dumps({"error": "scripted %d" % status})
        self.send(status, text, headers=step.get("headers"))
        record = step.get("record", 200 <= status < 300)
        return status, "scripted", (events_not_in_errors(events, text) if record else [])

    def truncate(self, step, req, events):
        status = step.get("status", 200)
        text = body_text(step["body"]) if "body" in step else json.dumps(default_body(req["body"]))
        data = text.encode()
        headers = step.get("headers") or {}
        self.send_response(status)
        if not any(name.lower() == "content-type" for name in headers):
            self.send_header("Content-Type", "application/json")
        for name, value in headers.items():
            self.send_header(name, str(value))
        self.send_header("Content-Length", str(len(data) + 100))
        self.end_headers()
        try:
            self.wfile.write(data[: max(1, len(data) // 2)])
        except OSError:
            pass
        self.close_abruptly()
        record = step.get("record", 200 <= status < 300)
        return status, "truncate", (events_not_in_errors(events, text) if record else [])

    def default(self, req, body_ok, extra_headers=None):
        """Bento's own behaviour; return (status, accepted events)."""
        if req["method"] != "POST" or req["path"] != BATCH_PATH:
            self.send_json(404, {"error": "not found"}, extra_headers)
            return 404, []
        agent = req["headers"].get("user-agent", "")
        if not agent or agent.startswith(BLOCKED_AGENTS):
            self.send(403, CLOUDFLARE_403, "text/html; charset=UTF-8", extra_headers)
            return 403, []
        with self.state.lock:
            auth_error = check_auth(self.state, req["headers"], req["query"])
        if auth_error:
            self.send_json(401, {"error": auth_error}, extra_headers)
            return 401, []
        if body_ok:
            events, error = validate_batch(req["body"])
        else:
            events, error = None, "Request body is not valid JSON"
        if error:
            self.send_json(400, {"error": error}, extra_headers)
            return 400, []
        status, body, accepted = default_answer(events)
        self.send_json(status, body, extra_headers)
        return status, accepted


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

class MockServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, state):
        self.state = state
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, Handler)


def write_port_file(path, port):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write("%d\n" % port)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def parse_args(argv):
    p = argparse.ArgumentParser(description="Mock of Bento's batch events API (see the module docstring).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = pick an ephemeral port")
    p.add_argument("--port-file", help="write the bound port to this file (atomically)")
    p.add_argument("--publishable-key", help="require this Basic auth user name")
    p.add_argument("--secret-key", help="require this Basic auth password")
    p.add_argument("--site-uuid", help="require this site_uuid query parameter")
    p.add_argument("--quiet", action="store_true", help="no per-request log lines")
    args = p.parse_args(argv)
    if (args.publishable_key is None) != (args.secret_key is None):
        p.error("--publishable-key and --secret-key go together")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    Handler.quiet = args.quiet
    state = MockState(args.publishable_key, args.secret_key, args.site_uuid)
    server = MockServer((args.host, args.port), state)
    port = server.server_address[1]

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.port_file:
        write_port_file(args.port_file, port)
    if not args.quiet:
        print("bento mock listening on %s:%d" % (args.host, port), file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
