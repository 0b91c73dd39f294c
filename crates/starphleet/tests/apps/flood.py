# Opens N idle TCP connections to HOST:PORT, prints how many it holds, keeps them open until
# its stdin closes, then closes them all at once. A test runs several of these to flood a server
# with more connections than one process may hold.
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = []
for _ in range(n):
    s = socket.socket()
    s.settimeout(0.2)
    try:
        s.connect((host, port))
        held.append(s)
    except OSError:
        s.close()
print(len(held), flush=True)
sys.stdin.read()
