// A project's live stream: WebSocket first (the token in the "bearer" subprotocol, so it
// never sits in a URL), Server-Sent Events when WebSockets fail; reconnects with backoff,
// SSE resuming with Last-Event-ID. Messages: {"type":"connected"}, {"type":"resync",
// "missed":N} and the events themselves (type error|event|metric). Every "connected"
// after the first calls onReconnect: the WebSocket does not replay what was published
// while it was down, so the page fetches those events from the events API (main.js).
import { token, refresh } from './api.js';

export class LiveFeed {
  constructor(projectId, { onEvent, onState, onResync, onReconnect }) {
    this.projectId = projectId;
    this.onEvent = onEvent;
    this.onState = onState;
    this.onResync = onResync;
    this.onReconnect = onReconnect || (() => {});
    this.connectedOnce = false;
    this.stopped = false;
    this.wsFailures = 0;
    this.transport = null;
    this.lastEventId = '';
    this.attempt = 0;
    this.timer = 0;
  }

  start() { this.connect(); }

  stop(reason) {
    this.stopped = true;
    clearTimeout(this.timer);
    this.close();
    this.onState('ended', reason || 'stopped');
  }

  close() {
    if (this.ws) { this.ws.onclose = this.ws.onerror = this.ws.onmessage = null; this.ws.close(1000); this.ws = null; }
    if (this.es) { this.es.close(); this.es = null; }
  }

  connect() {
    if (this.stopped) return;
    const t = token();
    if (!t) { this.stop('signed out'); return; }
    this.onState('connecting', this.wsFailures >= 2 ? 'SSE' : 'WebSocket');
    if (this.wsFailures >= 2 || typeof WebSocket === 'undefined') this.openSSE(t);
    else this.openWS(t);
  }

  handle(text) {
    let m;
    try { m = JSON.parse(text); } catch { return; }
    if (!m || typeof m !== 'object') return;
    if (m.type === 'connected') {
      this.attempt = 0;
      this.onState('live', this.transport);
      if (this.connectedOnce) this.onReconnect(this.transport);
      this.connectedOnce = true;
    } else if (m.type === 'resync') {
      this.onResync(m.missed);
    } else if (typeof m.id === 'string') {
      this.onEvent(m);
    }
  }

  openWS(t) {
    const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host
      + '/realtime/' + encodeURIComponent(this.projectId);
    let opened = false;
    const ws = new WebSocket(url, ['bearer', t]);
    this.ws = ws;
    this.transport = 'WebSocket';
    // A WebSocket counts as working once the server's "connected" arrives (a proxy may
    // accept the upgrade and still pass nothing).
    ws.onmessage = (e) => {
      if (!opened) { opened = true; this.wsFailures = 0; }
      this.handle(e.data);
    };
    ws.onerror = () => {};
    ws.onclose = (e) => {
      this.ws = null;
      if (this.stopped) return;
      if (!opened) this.wsFailures++;
      // 4001: the token expired or the session was logged out; 4004: the project is gone.
      if (e.code === 4004) { this.stop('the project was deleted'); return; }
      this.retry(e.code === 4001, opened ? 'WebSocket closed (' + e.code + ')' : 'WebSocket refused');
    };
  }

  openSSE(t) {
    let url = '/realtime/' + encodeURIComponent(this.projectId) + '/sse?token=' + encodeURIComponent(t);
    if (this.lastEventId) url += '&lastEventId=' + encodeURIComponent(this.lastEventId);
    const es = new EventSource(url);
    this.es = es;
    this.transport = 'SSE';
    es.onmessage = (e) => {
      if (e.lastEventId) this.lastEventId = e.lastEventId;
      this.handle(e.data);
    };
    es.onerror = () => {
      // EventSource would reconnect by itself with the same (soon expired) token: take
      // over, with a fresh token and the last id.
      es.close();
      this.es = null;
      if (!this.stopped) this.retry(true, 'SSE stream interrupted');
    };
  }

  async retry(needToken, why) {
    this.onState('connecting', why);
    const delay = Math.min(10000, 250 * 2 ** this.attempt++) * (0.75 + Math.random() / 2);
    this.timer = setTimeout(async () => {
      if (this.stopped) return;
      if (needToken || this.attempt > 3) {
        const user = await refresh();
        if (!user) { this.stop('session ended'); return; }
      }
      this.connect();
    }, delay);
  }
}
