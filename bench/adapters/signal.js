'use strict';
// Bench adapter for imserver's signal dialect (document 004, WS /entry), for
// the team's load generator (../shared/bench/gen/loadgen.js --adapter=<this>).
//
//   prepare   registers one account per client over HTTP (003's
//             /auth/register + /auth/login on the same port: data.token,
//             data.user_id) and, for fan-out, creates one group of every
//             client with /creategrp
//   hello     login_<userid>_<token>; ready on the ack login_<userid>_ok
//   room      text_<groupid>_<body>_group_0
//   direct    text_<peer userid>_<body>_unicast_0
//   delivered text_<from>_<body>_<type>_<conversation>_<timet>_0 (the stamp is
//             found anywhere in the frame); heartbeat_ frames are not bench
//             frames and need no answer (pings are answered by the client)
//
// See bench/README.md for the command and the results.

const path = require('path');
// the stamp reader lives beside the generator that loads this adapter
const { readStamp } = require(path.join(path.dirname(require.main.filename), 'stamp'));

const PASSWORD = 'bench-pass-1';
const CONCURRENCY = 48;

function httpBase(opts) {
  return opts.base.replace(/^ws/, 'http');
}

async function call(base, path, params) {
  const body = new URLSearchParams(params).toString();
  for (let attempt = 0; ; attempt++) {
    try {
      const r = await fetch(base + path, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body,
      });
      return await r.json();
    } catch (e) {
      if (attempt >= 3) throw e;
      await new Promise((res) => setTimeout(res, 200 * (attempt + 1)));
    }
  }
}

async function pool(items, n, fn) {
  let next = 0;
  const workers = [];
  for (let w = 0; w < Math.min(n, items.length); w++) {
    workers.push((async () => {
      while (next < items.length) {
        const i = next++;
        await fn(items[i], i);
      }
    })());
  }
  await Promise.all(workers);
}

async function account(base, run, c) {
  // a phone number unique to this run and client (003 identifies users by phone)
  const tel = `1${run}${String(c.index).padStart(6, '0')}`;
  const name = `b${run}x${c.index}`;
  const reg = await call(base, '/auth/register', { user_tel: tel, user_name: name, user_password: PASSWORD });
  if (reg.res !== 'register successfully') throw new Error('register failed: ' + JSON.stringify(reg));
  const login = await call(base, '/auth/login', { user_tel: tel, user_password: PASSWORD });
  if (!login.data || !login.data.token) throw new Error('login failed: ' + JSON.stringify(login));
  return { uid: String(login.data.user_id), token: login.data.token };
}

module.exports = {
  name: 'signal',

  url: (c) => `${c.opts.base}/entry`,

  hello: (c) => [`login_${c.extra.uid}_${c.extra.token}`],

  ready: (c, buf) => buf.toString('latin1', 0, 6) === 'login_',

  room: (c, body) => `text_${c.extra.group}_${body}_group_0`,

  direct: (c, peer, body) => `text_${peer.extra.uid}_${body}_unicast_0`,

  decode: (c, buf, isBinary, out) => readStamp(buf, out),

  async prepare(opts, clients) {
    const base = httpBase(opts);
    const run = String(Date.now() % 1e6).padStart(6, '0');
    const extras = new Array(clients.length);
    await pool(clients, CONCURRENCY, async (c, i) => {
      extras[i] = await account(base, run, c);
    });
    if (clients.some((c) => c.role === 'sub' || c.role === 'send')) {
      const creator = extras[clients.findIndex((c) => c.role === 'send')] || extras[0];
      const members = extras.map((e) => e.uid).join(',');
      const r = await call(base, '/creategrp', { name: 'bench', members, access_token: creator.token });
      if (!r.data || !r.data.groupid) throw new Error('creategrp failed: ' + JSON.stringify(r));
      for (const e of extras) e.group = r.data.groupid;
    }
    return extras;
  },
};
