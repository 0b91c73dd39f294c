# Opens N idle TCP connections to HOST:PORT, prints how many it holds, keeps them open until
# its stdin closes, then closes them all at once. A test runs several of these to flood a server
# with more connections than one process may hold. Connects are started in batches without
# waiting for each, so a flood takes seconds, not minutes.
import select, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = []
left = n
while left > 0:
    batch = []
    for _ in range(min(left, 500)):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((host, port))
        batch.append(s)
    left -= len(batch)
    poller = select.poll()
    pending = {s.fileno(): s for s in batch}
    for fd in pending:
        poller.register(fd, select.POLLOUT)
    deadline = time.monotonic() + 0.3
    while pending and time.monotonic() < deadline:
        for fd, _ in poller.poll(100):
            s = pending.pop(fd)
            poller.unregister(fd)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                held.append(s)
            else:
                s.close()
    for s in pending.values():
        s.close()
print(len(held), flush=True)
sys.stdin.read()
