import base64, hashlib, os, struct, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
V = os.environ.get("VERSION", "v0") + os.environ.get("SUFFIX", "")
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *a):
        pass
    def reply(self, body):
        b = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(float(self.path.split("=")[1]))
            return self.reply(V)
        if self.path == "/ws":
            key = self.headers["Sec-WebSocket-Key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
            accept = base64.b64encode(hashlib.sha1(key.encode()).digest()).decode()
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", accept)
            self.end_headers()
            self.wfile.flush()
            self.close_connection = True
            while True:
                head = self.rfile.read(2)
                if len(head) < 2:
                    return
                op, n = head[0] & 15, head[1] & 127
                if n == 126:
                    n = struct.unpack(">H", self.rfile.read(2))[0]
                mask = self.rfile.read(4) if head[1] & 128 else b"\0\0\0\0"
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
                if op == 8:
                    self.wfile.write(b"\x88\x00")
                    self.wfile.flush()
                    return
                if op == 1:
                    out = (V + ":" + data.decode()).encode()
                    self.wfile.write(bytes([129, len(out)]) + out)
                    self.wfile.flush()
        self.reply(V + ":" + self.path.lstrip("/"))
if os.environ.get("CRASH_AFTER"):
    threading.Timer(float(os.environ["CRASH_AFTER"]), lambda: os._exit(3)).start()
port = int(os.environ["PORT"]) + (1 if os.environ.get("WRONG_PORT") else 0)
print("app", V, "listening on", port, flush=True)
ThreadingHTTPServer(("0.0.0.0", port), H).serve_forever()
