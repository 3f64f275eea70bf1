#!/usr/bin/env node
// A plain Node `http` server, written the way its users already write one
// (server.close() on SIGTERM, exit when the last connection is done), plus
// what a supervisor needs: the listening socket from fd 3 when LISTEN_PID
// is this process (the systemd protocol, `lameduck run`) or from
// start_server's SERVER_STARTER_PORT, with server.listen({fd}).
//
// Readiness: Node's standard library has no unix datagram socket (dgram is
// UDP only), so it cannot write READY=1 to NOTIFY_SOCKET without a native
// module or a helper program. Instead it serves GET /ready on the private
// `admin` socket that `lameduck run --ready http://admin/ready` passes it
// (named in LISTEN_FDNAMES): a probe there reaches this process only, never
// the old one through the shared listener.
//
// CLOSE_DELAY=500 (ms, optional): on SIGTERM, first answer every request
// with `Connection: close` for that long, then server.close().
//
//   node server.js [HOST:PORT]        # binds itself when not given a socket
//   GET /            hello from node (pid N)
//   GET /slow?ms=N   answers after N ms
'use strict';
const http = require('http');

let stopping = false;

function handler(req, res) {
  const url = new URL(req.url, 'http://x');
  const reply = (body) => {
    if (stopping) res.setHeader('Connection', 'close');
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  };
  if (url.pathname === '/slow') {
    const ms = parseInt(url.searchParams.get('ms') || '1000', 10);
    setTimeout(() => reply(`slept ${ms} ms\n`), ms);
  } else {
    reply(`hello from node (pid ${process.pid})\n`);
  }
}

// Where to listen: { fd } from a supervisor, or { host, port }.
function listenOptions(addr) {
  const env = process.env;
  if (env.LISTEN_PID === String(process.pid) && parseInt(env.LISTEN_FDS || '0', 10) >= 1) {
    const names = (env.LISTEN_FDNAMES || '').split(':');
    const admin = names.indexOf('admin');
    return { main: { fd: admin === 0 ? 4 : 3 }, admin: admin >= 0 ? { fd: 3 + admin } : null };
  }
  if (env.SERVER_STARTER_PORT) {
    const first = env.SERVER_STARTER_PORT.split(';')[0];
    return { main: { fd: parseInt(first.slice(first.lastIndexOf('=') + 1), 10) }, admin: null };
  }
  const i = addr.lastIndexOf(':');
  return { main: { host: addr.slice(0, i), port: parseInt(addr.slice(i + 1), 10) }, admin: null };
}

const where = listenOptions(process.argv[2] || '127.0.0.1:8080');
const server = http.createServer(handler);
const admin = where.admin
  ? http.createServer((req, res) => {
      res.writeHead(stopping ? 503 : 200, { 'content-type': 'text/plain' });
      res.end(stopping ? 'stopping\n' : 'ready\n');
    })
  : null;

server.listen(where.main, () => {
  if (admin) admin.listen(where.admin);
  const a = server.address();
  const shown = a && typeof a === 'object' ? `http://${a.address}:${a.port}` : 'an inherited socket';
  console.error(`node peer: ready, listening on ${shown} (pid ${process.pid})`);
});

function stop() {
  if (stopping) return;
  stopping = true;
  const delay = parseInt(process.env.CLOSE_DELAY || '0', 10);
  setTimeout(() => {
    // Stops accepting; since Node 19 also closes idle keep-alive
    // connections; the process exits once the busy ones are done.
    server.close();
    if (admin) admin.close();
  }, delay);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
