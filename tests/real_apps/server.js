// The Node app tests/real_apps.rs runs under handover: the README's Node recipe.
//
// Sockets: listen({fd: 3}). Readiness: `systemd-notify --ready` from a child (handover takes
// a message from any process of the worker's process group). SIGTERM: stop accepting, answer
// every request that still arrives on an open connection with `Connection: close`, close
// connections that stay idle 5 s, exit when none is left. Request outcomes: counted on each
// response's 'finish' and reported through systemd-notify, at most once a second.
// Environment as in wsgi_app.py: APP_IMPORT_SECONDS, APP_BROKEN, APP_MARK_DIR. GET /error
// answers 500.
'use strict';
const http = require('node:http');
const net = require('node:net');
const fs = require('node:fs');
const path = require('node:path');
const { execFile } = require('node:child_process');

const DRAIN_IDLE_GRACE_MS = 5000;
const GEN = process.env.HANDOVER_GENERATION || '-';
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

function handler(req, res) {
  res.on('finish', () => countOutcome(res));
  if (draining) res.setHeader('Connection', 'close');
  const url = new URL(req.url, 'http://x');
  if (url.pathname === '/sleep') {
    const ms = Number(url.searchParams.get('ms') || 0);
    if (process.env.APP_MARK_DIR) fs.writeFileSync(path.join(process.env.APP_MARK_DIR, 'sleep-started'), '');
    setTimeout(() => {
      if (draining) res.setHeader('Connection', 'close');
      res.end(`slept ${ms} ms\n`);
    }, ms);
    return;
  }
  res.setHeader('Content-Type', 'text/plain');
  if (url.pathname === '/error') {
    res.statusCode = 500;
    res.end('failed on purpose\n');
    return;
  }
  res.end(`hello from node: gen=${GEN} pid=${process.pid}\n`);
}

function main() {
  if (process.env.APP_BROKEN === '1') {
    throw new Error('APP_BROKEN=1: this version fails at startup, as a bad deploy would');
  }
  const server = http.createServer(handler);
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

// The app's "import": a real app loads its code and connects to what it needs.
setTimeout(main, Number(process.env.APP_IMPORT_SECONDS || 1) * 1000);
