#!/usr/bin/env python3
"""Echo backend for the demo and the end-to-end tests.

Answers every request with JSON describing what it received: method, path, headers, body, and,
over TLS, the subject of the client certificate the gateway presented. Plain HTTP by default;
with --cert/--key it serves HTTPS, and with --client-ca it requires a client certificate
signed by that CA.

    backend.py --port 0            # prints "listening on <port>" once ready
    backend.py --port 8443 --cert server.pem --key server.key --client-ca ca.pem --name tls-a
"""
import argparse
import json
import socket
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tollgate-echo"
    # Headers and body go out as two writes: without this, Nagle holds the body until the
    # client's delayed ACK (40 ms), which every latency figure would then measure.
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):  # quiet: tests read stdout
        if self.server.verbose:
            sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    def _client_subject(self):
        sock = self.connection
        if not isinstance(sock, ssl.SSLSocket):
            return None
        cert = sock.getpeercert()
        if not cert:
            return None
        parts = []
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                short = {"commonName": "CN", "organizationName": "O",
                         "organizationalUnitName": "OU", "countryName": "C"}.get(key, key)
                parts.append("%s=%s" % (short, value))
        return ",".join(parts)

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status = 200
        # Lets tests ask for a specific status: /status/503
        if self.path.split("?")[0].rstrip("/").split("/")[-2:-1] == ["status"]:
            try:
                status = int(self.path.split("?")[0].rstrip("/").split("/")[-1])
            except ValueError:
                pass
        payload = {
            "backend": self.server.name,
            "method": self.command,
            "path": self.path,
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
            "body": body.decode("utf-8", "replace"),
            "tls": isinstance(self.connection, ssl.SSLSocket),
            "client_subject": self._client_subject(),
        }
        out = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.send_header("X-Backend", self.server.name)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _answer


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--name", default="echo")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--client-ca", help="require a client certificate signed by this CA")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args()

    server = ThreadingHTTPServer((a.host, a.port), Handler)
    server.daemon_threads = True
    server.name = a.name
    server.verbose = a.verbose
    if a.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(a.cert, a.key)
        if a.client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(a.client_ca)
        # Handshake in the handler thread, so one stalled client cannot block accept().
        server.socket = ctx.wrap_socket(server.socket, server_side=True,
                                        do_handshake_on_connect=False)
    print("listening on %d" % server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
