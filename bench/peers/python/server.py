#!/usr/bin/env python3
"""A plain Python standard-library HTTP server, written the way its users
already write one, plus the few lines that make it a good `lameduck run`
child: take the listening socket from descriptor 3 when `LISTEN_FDS` says
so (the systemd protocol), or from start_server's `SERVER_STARTER_PORT`;
say `READY=1` on `NOTIFY_SOCKET`; and on SIGTERM stop accepting, finish
the requests in flight and exit.

    python3 server.py [HOST:PORT]      # binds itself when not given a socket
    GET /            hello from python (pid N)
    GET /slow?ms=N   answers after N ms
"""

import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

stopping = threading.Event()
# PLAIN=1: without this peer's lame duck, the way http.server runs by
# default: no `Connection: close` while stopping, and daemon connection
# threads (the process exits without waiting for them).
PLAIN = os.environ.get("PLAIN") == "1"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # An idle keep-alive connection ends after this long, so that a stop
    # (which joins the connection threads) is not held by idle clients.
    timeout = 2

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/slow":
            ms = int(parse_qs(url.query).get("ms", ["1000"])[0])
            time.sleep(ms / 1000)
            body = f"slept {ms} ms\n".encode()
        else:
            body = f"hello from python (pid {os.getpid()})\n".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        if (stopping.is_set() and not PLAIN) or self.close_connection:
            # Stopping: tell the client to go elsewhere for its next request.
            # And when the request said `Connection: close`, say it back
            # (RFC 9112, 9.6): http.server closes without saying so, and a
            # client (wrk) then sends its next request on a closed socket.
            self.send_header("connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def listening_socket(argv):
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and int(os.environ.get("LISTEN_FDS", "0")) >= 1:
        return socket.socket(fileno=3)
    if os.environ.get("SERVER_STARTER_PORT"):  # start_server: "HOST:PORT=FD;..."
        first = os.environ["SERVER_STARTER_PORT"].split(";")[0]
        return socket.socket(fileno=int(first.rpartition("=")[2]))
    host, _, port = (argv[1] if len(argv) > 1 else "127.0.0.1:8080").rpartition(":")
    sock = socket.create_server((host, int(port)))
    return sock


def notify(message):
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), addr)


def main():
    sock = listening_socket(sys.argv)
    server = ThreadingHTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.daemon_threads = PLAIN  # False: server_close() waits for requests in flight

    def stop(signum, frame):
        stopping.set()
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    notify("READY=1")
    print(f"python peer: ready (pid {os.getpid()})", file=sys.stderr, flush=True)
    server.serve_forever(poll_interval=0.05)
    server.server_close()


if __name__ == "__main__":
    main()
