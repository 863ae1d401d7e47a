#!/usr/bin/python3
"""Self-test of mock/bento_mock.py (standard library only): python3 mock/test_bento_mock.py -v"""

import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
MOCK = os.path.join(HERE, "bento_mock.py")
AGENT = "bento-postgres/1.0"
AUTH = "Basic " + base64.b64encode(b"pk:sk").decode()
PATH = "/api/v1/batch/events?site_uuid=site-1"


def event(email, **extra):
    return dict({"type": "$test", "email": email}, **extra)


class MockTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        port_file = os.path.join(cls.tmp.name, "port")
        cls.proc = subprocess.Popen([sys.executable, MOCK, "--port-file", port_file, "--quiet",
                                     "--publishable-key", "pk", "--secret-key", "sk"])
        deadline = time.monotonic() + 10
        while not os.path.exists(port_file):
            if time.monotonic() > deadline or cls.proc.poll() is not None:
                raise RuntimeError("mock did not start")
            time.sleep(0.02)
        with open(port_file) as f:
            cls.port = int(f.read())

    @classmethod
    def tearDownClass(cls):
        cls.proc.terminate()
        cls.proc.wait(10)
        cls.tmp.cleanup()

    def setUp(self):
        self.control("POST", "/_mock/reset")

    # -- helpers ----------------------------------------------------------------------------

    def call(self, method, path, body=None, headers=None, timeout=10):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        try:
            conn.request(method, path, body=data, headers=headers or {})
            resp = conn.getresponse()
            text = resp.read().decode()
            return resp.status, resp.getheaders(), text
        finally:
            conn.close()

    def control(self, method, path, body=None):
        status, _, text = self.call(method, path, body)
        self.assertEqual(status, 200, text)
        return json.loads(text)

    def post(self, events_or_body, agent=AGENT, auth=AUTH, **kw):
        headers = {"Content-Type": "application/json"}
        if agent:
            headers["User-Agent"] = agent
        if auth:
            headers["Authorization"] = auth
        body = events_or_body if isinstance(events_or_body, (str, bytes, dict)) \
            else {"events": events_or_body}
        status, headers, text = self.call("POST", PATH, body, headers, **kw)
        return status, dict(headers), text

    # -- default behaviour ------------------------------------------------------------------

    def test_accepts_and_records(self):
        status, _, text = self.post([event("a@x.test", fields={"n": 1}), event("b@x.test")])
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(text), {"results": 2, "failed": 0})
        self.assertEqual([e["email"] for e in self.control("GET", "/_mock/events")],
                         ["a@x.test", "b@x.test"])
        reqs = self.control("GET", "/_mock/requests")
        self.assertEqual(len(reqs), 1)
        self.assertEqual(reqs[0]["query"], {"site_uuid": "site-1"})
        self.assertEqual(reqs[0]["headers"]["user-agent"], AGENT)
        self.assertEqual(reqs[0]["status"], 200)
        self.assertEqual(len(reqs[0]["body"]["events"]), 2)

    def test_user_agent_and_auth(self):
        for agent in (None, "curl/8.0", "python-requests/2.31"):
            status, headers, text = self.post([event("a@x.test")], agent=agent)
            self.assertEqual(status, 403)
            self.assertIn("text/html", headers["Content-Type"])
        status, _, text = self.post([event("a@x.test")], auth="Basic " + base64.b64encode(b"pk:no").decode())
        self.assertEqual(status, 401)
        self.assertIn("error", json.loads(text))
        status, _, _ = self.post([event("a@x.test")], auth=None)
        self.assertEqual(status, 401)
        self.assertEqual(self.control("GET", "/_mock/stats")["events"], 0)

    def test_bad_requests(self):
        for body in ("not json", {"x": 1}, {"events": {}}, {"events": []},
                     {"events": [event("a@x.test")] * 1001}, {"events": [{"type": "t"}]}):
            status, _, text = self.post(body)
            self.assertEqual(status, 400, body if len(str(body)) < 100 else "1001")
            self.assertIn("error", json.loads(text))
        self.post([event("a@x.test")] * 1000)
        self.assertEqual(self.control("GET", "/_mock/stats")["events"], 1000)

    def test_partial_and_422(self):
        events = [event("ok@x.test")] + [event("no%d@reject.test" % i) for i in range(25)]
        status, _, text = self.post(events)
        body = json.loads(text)
        self.assertEqual(status, 200)
        self.assertEqual((body["results"], body["failed"]), (1, 25))
        self.assertEqual(len(body["errors"]), 20)
        self.assertEqual(body["errors"][0]["index"], 1)
        status, _, text = self.post([event("no@reject.test"), event("x@x.test", fields={"a": {}})])
        self.assertEqual(status, 422)
        self.assertEqual(json.loads(text)["failed"], 2)
        self.assertEqual(self.control("GET", "/_mock/stats")["events"], 1)

    # -- scripts ----------------------------------------------------------------------------

    def test_script_fifo(self):
        self.control("POST", "/_mock/script", [
            {"status": 500}, {"status": 429, "headers": {"Retry-After": "2"}},
            {"status": 200, "body": {"results": 1, "failed": 1, "errors": [{"index": 0, "error": "x"}]}},
            {"status": 200, "record": False}, {"delay_ms": 200}])
        status, _, _ = self.post([event("a@x.test")])
        self.assertEqual(status, 500)
        status, headers, _ = self.post([event("b@x.test")])
        self.assertEqual((status, headers["Retry-After"]), (429, "2"))
        status, _, text = self.post([event("c@x.test"), event("d@x.test")])
        self.assertEqual(json.loads(text)["errors"][0]["error"], "x")
        self.post([event("e@x.test")])
        start = time.monotonic()
        status, _, _ = self.post([event("f@x.test")])
        self.assertGreaterEqual(time.monotonic() - start, 0.19)
        self.assertEqual(status, 200)
        self.assertEqual([e["email"] for e in self.control("GET", "/_mock/events")],
                         ["d@x.test", "f@x.test"])
        self.assertEqual([r["status"] for r in self.control("GET", "/_mock/requests?bodies=0")],
                         [500, 429, 200, 200, 200])

    def test_drop_and_truncate(self):
        self.control("POST", "/_mock/script", [{"drop": True}, {"truncate": True}])
        with self.assertRaises((http.client.HTTPException, ConnectionError)):
            self.post([event("a@x.test")])
        with self.assertRaises(http.client.IncompleteRead):
            self.post([event("b@x.test")])
        self.assertEqual([e["email"] for e in self.control("GET", "/_mock/events")], ["b@x.test"])
        reqs = self.control("GET", "/_mock/requests")
        self.assertEqual([(r["status"], r["action"]) for r in reqs], [(None, "drop"), (200, "truncate")])

    def test_hang_release_and_client_gone(self):
        self.control("POST", "/_mock/script", [{"hang": True}, {"hang": True, "status": 503}])
        with self.assertRaises(socket.timeout):
            self.post([event("a@x.test")], timeout=0.5)
        deadline = time.monotonic() + 5
        while self.control("GET", "/_mock/stats")["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.control("GET", "/_mock/stats")["in_flight"], 0)
        result = {}
        t = threading.Thread(target=lambda: result.update(r=self.post([event("b@x.test")])))
        t.start()
        while self.control("GET", "/_mock/stats")["in_flight"] == 0:
            time.sleep(0.02)
        self.assertEqual(self.control("POST", "/_mock/release")["released"], 1)
        t.join(5)
        self.assertEqual(result["r"][0], 503)
        self.assertEqual([(r["status"], r["action"]) for r in self.control("GET", "/_mock/requests")],
                         [(None, "abandoned"), (503, "scripted")])
        self.assertEqual(self.control("GET", "/_mock/stats")["events"], 0)

    def test_bad_script(self):
        status, _, _ = self.call("POST", "/_mock/script", json.dumps([{"stauts": 500}]))
        self.assertEqual(status, 400)

    def test_speed(self):
        body = json.dumps({"events": [event("u%d@x.test" % i, fields={"n": i}, date="2026-01-02T03:04:05Z")
                                      for i in range(1000)]})
        conn = http.client.HTTPConnection("127.0.0.1", self.port)
        start = time.monotonic()
        for _ in range(100):
            conn.request("POST", PATH, body=body, headers={"User-Agent": AGENT, "Authorization": AUTH})
            resp = conn.getresponse()
            resp.read()
            self.assertEqual(resp.status, 200)
        elapsed = time.monotonic() - start
        conn.close()
        self.assertEqual(self.control("GET", "/_mock/stats")["events"], 100000)
        print("\n100 requests x 1000 events: %.2f s" % elapsed, file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
