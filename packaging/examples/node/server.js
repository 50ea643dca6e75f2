// A Node (>= 18) HTTP server under handover, no npm package needed: the skeleton to build
// your app on (app.toml next to this file runs it). tests/real_apps/server.js is the same
// code around a test app, run under handover in CI.
//
// Sockets: listen({ fd: 3 }), the socket handover passes. Readiness: `systemd-notify
// --ready` from a child (Node cannot send a unix datagram; handover takes a message from
// any process of the worker's process group). SIGTERM: stop accepting, answer every request
// that still arrives on an open connection with `Connection: close`, close connections that
// stay idle 5 s, exit when none is left: no request is lost, keep-alive clients included.
'use strict';
const http = require('node:http');
const net = require('node:net');
const { execFile } = require('node:child_process');

// Above any client's reuse interval under load, below handover's graceful_timeout.
const DRAIN_IDLE_GRACE_MS = 5000;
let draining = false;

function handler(req, res) {
  if (draining) res.setHeader('Connection', 'close');
  // Your app here. A response written later (after a callback) sets the header again.
  res.setHeader('Content-Type', 'text/plain');
  res.end(`hello from generation ${process.env.HANDOVER_GENERATION || '-'}\n`);
}

function main() {
  const server = http.createServer(handler);
  server.listen({ fd: 3 }, () => {
    if (process.env.NOTIFY_SOCKET) execFile('systemd-notify', ['--ready']);
  });
  process.on('SIGTERM', () => {
    draining = true;
    // net.Server's close stops accepting and calls back once every connection is gone;
    // http.Server's close would also close idle keep-alive connections at once, racing
    // with a client that is sending its next request on one.
    net.Server.prototype.close.call(server, () => process.exit(0));
    setTimeout(() => server.closeIdleConnections(), DRAIN_IDLE_GRACE_MS).unref();
  });
}

main();
