"""The echo service: answers GET /<text> with <text>."""
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        body = (self.path.lstrip("/") or "echo").encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print("%s %s" % (self.address_string(), fmt % args), flush=True)


port = int(os.environ.get("PORT", "3000"))
print("echo listening on port %d" % port, flush=True)
ThreadingHTTPServer(("0.0.0.0", port), Echo).serve_forever()
