// A line protocol between api/socketio_test.go and the real socket.io-client.
// stdin, one JSON command per line:
//   {"op":"connect","id":"a","url":"http://…","extraHeaders":{…},"auth":{…},"transports":[…]}
//   {"op":"emit","id":"a","event":"subscribe","args":["<projectId>"]}
//   {"op":"close","id":"a"}
// stdout, one JSON line per thing a socket saw:
//   {"id":"a","ev":"connect"}, {"id":"a","ev":"upgrade","transport":"websocket"},
//   {"id":"a","ev":"connect_error","message":…,"data":…},
//   {"id":"a","ev":"disconnect","reason":…}, {"id":"a","ev":"<event>","args":[…]}
const { io } = require('socket.io-client');
const readline = require('readline');

const sockets = new Map();
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

function connect(cmd) {
  const opts = { reconnection: false, forceNew: true };
  if (cmd.extraHeaders) opts.extraHeaders = cmd.extraHeaders;
  if (cmd.auth) opts.auth = cmd.auth;
  if (cmd.transports) opts.transports = cmd.transports;
  const s = io(cmd.url, opts);
  sockets.set(cmd.id, s);
  s.on('connect', () => out({ id: cmd.id, ev: 'connect', transport: s.io.engine.transport.name }));
  s.io.engine.on('upgrade', (t) => out({ id: cmd.id, ev: 'upgrade', transport: t.name }));
  s.on('connect_error', (err) => out({ id: cmd.id, ev: 'connect_error', message: err.message, data: err.data === undefined ? null : err.data }));
  s.on('disconnect', (reason) => out({ id: cmd.id, ev: 'disconnect', reason }));
  s.onAny((ev, ...args) => out({ id: cmd.id, ev, args }));
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const cmd = JSON.parse(line);
  switch (cmd.op) {
    case 'connect':
      connect(cmd);
      break;
    case 'emit': {
      const s = sockets.get(cmd.id);
      if (cmd.ack) {
        s.emit(cmd.event, ...cmd.args, (res) => out({ id: cmd.id, ev: 'ack:' + cmd.event, args: [res] }));
      } else {
        s.emit(cmd.event, ...cmd.args);
      }
      break;
    }
    case 'close':
      sockets.get(cmd.id).disconnect();
      break;
  }
});
rl.on('close', () => {
  for (const s of sockets.values()) s.disconnect();
  process.exit(0);
});
