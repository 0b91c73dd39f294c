import os, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
def tick():
    n = 0
    while True:
        n += 1
        print("tick %d" % n, flush=True)
        time.sleep(0.005)
if os.environ.get("TICK"):
    threading.Thread(target=tick, daemon=True).start()
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
        if self.path.startswith("/say/"):
            print("said " + self.path[5:], flush=True)
            return self.reply("ok")
        if self.path.startswith("/burn/"):
            # CPU time, not wall time: on a busy machine the burn still uses what it asks for.
            end, x = time.process_time() + float(self.path[6:]), 0
            while time.process_time() < end:
                x += 1
            return self.reply("burnt")
        self.reply(self.path)
    def do_POST(self):
        left = int(self.headers["Content-Length"])
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)
        self.reply("ok")
print("ticker up", flush=True)
ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
