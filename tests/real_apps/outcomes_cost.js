// What the Node recipe's request outcome reports cost: tests/real_apps.rs runs this in
// tests/real_apps/ with $NOTIFY_SOCKET set to a socket it reads (and whose BARRIER=1
// descriptors it closes, which systemd-notify waits for).
//
// Prints one JSON object: per report, the wall time of one `systemd-notify` run and the CPU
// time (ms) it costs, the child's and Node's own spawning; per request, the 'finish'
// listener and count (µs).
'use strict';
const fs = require('node:fs');
const { EventEmitter } = require('node:events');
const { execFile } = require('node:child_process');

const REPORTS = 50;
const REQUESTS = 1000000;

// CPU seconds (user + system) of this process and of its children it has reaped.
function cpu() {
  const fields = fs.readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ');
  const tick = 100; // USER_HZ
  return {
    self: (Number(fields[11]) + Number(fields[12])) / tick,
    children: (Number(fields[13]) + Number(fields[14])) / tick,
  };
}

function report(i) {
  return new Promise((resolve) =>
    execFile('systemd-notify', [`X_HANDOVER_REQUESTS=${i}`, `X_HANDOVER_ERRORS=0`], (err) => resolve(err)));
}

async function reports() {
  const before = cpu();
  const started = performance.now();
  for (let i = 1; i <= REPORTS; i++) {
    const err = await report(i);
    if (err) throw err;
  }
  const wall = (performance.now() - started) / REPORTS;
  const after = cpu();
  return {
    wall_ms: wall,
    cpu_ms: ((after.self - before.self) + (after.children - before.children)) * 1000 / REPORTS,
  };
}

// One response's 'finish' listener and count, on an event emitter (what http.ServerResponse
// is) created and finished N times, with or without them: µs per response.
function finishUs(counting) {
  let requests = 0;
  let errors = 0;
  const started = performance.now();
  for (let i = 0; i < REQUESTS; i++) {
    const res = new EventEmitter();
    res.statusCode = i % 10 === 0 ? 500 : 200;
    if (counting) {
      res.on('finish', () => {
        requests++;
        if (res.statusCode >= 500) errors++;
      });
    }
    res.emit('finish');
  }
  const took = performance.now() - started;
  if (counting && (requests !== REQUESTS || errors !== REQUESTS / 10)) throw new Error(`counted ${requests}, ${errors}`);
  return took * 1000 / REQUESTS;
}

(async () => {
  const r = await reports();
  // Alternated, the best of 5 each: the difference is small against the noise.
  const plain = [];
  const counted = [];
  for (let round = 0; round < 5; round++) {
    plain.push(finishUs(false));
    counted.push(finishUs(true));
  }
  console.log(JSON.stringify({
    reports: REPORTS, report_wall_ms: r.wall_ms, report_cpu_ms: r.cpu_ms,
    requests: REQUESTS, counting_us: Math.min(...counted) - Math.min(...plain),
  }));
})().catch((e) => { console.error(e); process.exit(1); });
