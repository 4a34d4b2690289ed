#!/usr/bin/env python3
"""Tiny app-tier service: /health answers ok; settings come from /etc/app/app.env."""
import http.server
import os

PORT = int(os.environ.get("APP_PORT", "8080"))


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok\n" if self.path == "/health" else f"app env={os.environ.get('APP_ENV', 'unset')}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
