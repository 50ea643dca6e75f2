// A Node (>= 18) HTTP server under handover, no npm package needed: the skeleton to build
// your app on (app.toml next to this file runs it). Write your app in `app` below, or keep
// this file as it is and call it from yours: `require('./server.js').serve(yourApp)`, as
// tests/real_apps/server.js does (the test app CI runs under handover).
//
// Sockets: listen({ fd: 3 }), the socket handover passes. Readiness: `systemd-notify
// --ready` from a child (Node cannot send a unix datagram; handover takes a message from
// any process of the worker's process group). SIGTERM: stop accepting, answer every request
// that still arrives on an open connection with `Connection: close`, close connections that
// stay idle 5 s, exit when none is left: no request is lost, keep-alive clients included.
// Request outcomes, for handover's canaries: requests and 5xx answers, reported through
// systemd-notify too, at most once a second.
'use strict';
const http = require('node:http');
const net = require('node:net');
const { execFile } = require('node:child_process');

// Above any client's reuse interval under load, below handover's graceful_timeout.
const DRAIN_IDLE_GRACE_MS = 5000;
let draining = false;

// Request outcomes (README "Request outcomes"): answered requests and 5xx answers since
// start, sent as X_HANDOVER_REQUESTS= and X_HANDOVER_ERRORS=. Each report is a process
// (systemd-notify), so: at most one a second, never two at once (their order is the
// counts' order), none while idle, and the last counts before exit.
const OUTCOMES_INTERVAL_MS = 1000;
const outcomes = { requests: 0, errors: 0, sent: '', sentAt: -Infinity, inFlight: null, timer: null, closing: false };

function countOutcome(res) {
  outcomes.requests++;
  if (res.statusCode >= 500) outcomes.errors++;
  reportOutcomes();
}

function outcomesText() {
  return `X_HANDOVER_REQUESTS=${outcomes.requests}\nX_HANDOVER_ERRORS=${outcomes.errors}`;
}

function sendOutcomes(text) {
  outcomes.sent = text;
  outcomes.sentAt = performance.now();
  outcomes.inFlight = new Promise((resolve) => execFile('systemd-notify', text.split('\n'), () => resolve()))
    .finally(() => { outcomes.inFlight = null; });
  return outcomes.inFlight;
}

function reportOutcomes() {
  if (!process.env.NOTIFY_SOCKET || outcomes.closing || outcomes.inFlight || outcomes.timer) return;
  if (outcomesText() === outcomes.sent) return;
  const wait = outcomes.sentAt + OUTCOMES_INTERVAL_MS - performance.now();
  if (wait > 0) {
    outcomes.timer = setTimeout(() => { outcomes.timer = null; reportOutcomes(); }, wait);
  } else {
    // A failed report is dropped (it never fails a request): the next one says it all.
    sendOutcomes(outcomesText()).then(reportOutcomes);
  }
}

async function flushOutcomes() {
  outcomes.closing = true;
  clearTimeout(outcomes.timer);
  while (outcomes.inFlight) await outcomes.inFlight;
  if (process.env.NOTIFY_SOCKET && outcomesText() !== outcomes.sent) await sendOutcomes(outcomesText());
}

// Your app here. A response written later (after a callback) sets `Connection: close`
// itself if `draining` by then (from another file: `draining()`).
function app(req, res) {
  res.setHeader('Content-Type', 'text/plain');
  res.end(`hello from generation ${process.env.HANDOVER_GENERATION || '-'}\n`);
}

// Serves `handle` (an app like the one above) on the socket handover passes, says ready,
// drains on SIGTERM.
function serve(handle) {
  const server = http.createServer((req, res) => {
    res.on('finish', () => countOutcome(res));
    if (draining) res.setHeader('Connection', 'close');
    handle(req, res);
  });
  server.listen({ fd: 3 }, () => {
    if (process.env.NOTIFY_SOCKET) execFile('systemd-notify', ['--ready']);
  });
  process.on('SIGTERM', () => {
    draining = true;
    // net.Server's close stops accepting and calls back once every connection is gone;
    // http.Server's close would also close idle keep-alive connections at once, racing
    // with a client that is sending its next request on one.
    net.Server.prototype.close.call(server, () => flushOutcomes().then(() => process.exit(0)));
    setTimeout(() => server.closeIdleConnections(), DRAIN_IDLE_GRACE_MS).unref();
  });
}

module.exports = { serve, draining: () => draining };
if (require.main === module) serve(app);
