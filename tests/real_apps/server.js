// The Node app tests/real_apps.rs (and e2e scenario 12) runs under handover: a test app on
// the shipped skeleton (node_skeleton.js, a link to packaging/examples/node/server.js), as
// the README's Node recipe says to build one. Environment as in wsgi_app.py:
// APP_IMPORT_SECONDS, APP_BROKEN, APP_MARK_DIR. GET /error answers 500, GET /sleep?ms=N
// after N ms.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { serve, draining } = require('./node_skeleton.js');

const GEN = process.env.HANDOVER_GENERATION || '-';

function app(req, res) {
  const url = new URL(req.url, 'http://x');
  if (url.pathname === '/sleep') {
    const ms = Number(url.searchParams.get('ms') || 0);
    if (process.env.APP_MARK_DIR) fs.writeFileSync(path.join(process.env.APP_MARK_DIR, 'sleep-started'), '');
    setTimeout(() => {
      if (draining()) res.setHeader('Connection', 'close');
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

// The app's "import": a real app loads its code and connects to what it needs.
setTimeout(() => {
  if (process.env.APP_BROKEN === '1') {
    throw new Error('APP_BROKEN=1: this version fails at startup, as a bad deploy would');
  }
  serve(app);
}, Number(process.env.APP_IMPORT_SECONDS || 1) * 1000);
