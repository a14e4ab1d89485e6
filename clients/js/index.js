// ringcast-client: the JavaScript client of ringcast's `/ws` channel protocol
// (docs/protocol.md). One self-contained ES2020 module, no dependencies: the
// server serves this very file at GET /ringcast.js.

const DEFAULTS = {
  token: null,
  minReconnectDelay: 500,
  maxReconnectDelay: 20000,
  requestTimeout: 5000,
  connectTimeout: 10000,
  queueLimit: 1000,
  queueMaxAge: 10000,
  pingMargin: null,
};

const noop = () => {};
const now = () => Date.now();

/** An Error with a `code` (and whatever else is given). */
function fail(code, message, extra) {
  const e = new Error(message || code);
  e.code = code;
  if (extra) Object.assign(e, extra);
  return e;
}

/**
 * Full-jitter exponential backoff: a uniformly random delay in
 * [0, min(max, min * 2^attempt)) ms. `attempt` counts the failures since the
 * last connection that got its welcome, from 0.
 */
export function reconnectDelay(attempt, min, max) {
  const cap = Math.min(max, min * Math.pow(2, Math.min(Math.max(attempt, 0), 30)));
  return Math.floor(Math.random() * Math.max(cap, 0));
}

/** Resolves a relative URL against the page and maps http(s) to ws(s). */
function resolveUrl(url) {
  const base = globalThis.location && globalThis.location.href;
  const u = base ? new URL(String(url), base) : new URL(String(url));
  if (u.protocol === 'http:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'wss:';
  return u;
}

class Emitter {
  constructor() {
    this._listeners = new Map();
  }

  /** Adds a listener; returns a function that removes it. */
  on(type, fn) {
    let set = this._listeners.get(type);
    if (!set) this._listeners.set(type, (set = new Set()));
    set.add(fn);
    return () => this.off(type, fn);
  }

  /** Adds a listener called at most once; returns a function that removes it. */
  once(type, fn) {
    const wrapped = (arg) => {
      this.off(type, wrapped);
      fn(arg);
    };
    return this.on(type, wrapped);
  }

  off(type, fn) {
    const set = this._listeners.get(type);
    if (set) set.delete(fn);
    return this;
  }

  _emit(type, arg) {
    const set = this._listeners.get(type);
    if (!set || set.size === 0) return;
    for (const fn of [...set]) {
      try {
        fn(arg);
      } catch (err) {
        // A throwing handler must not break the client's state: report it
        // the way an uncaught error is reported, outside this call.
        setTimeout(() => {
          throw err;
        });
      }
    }
  }
}

/** One channel the client wants to receive; made by `Ringcast#subscribe`. */
export class Subscription extends Emitter {
  constructor(client, channel, options) {
    super();
    this.channel = channel;
    this.options = { recover: true, presence: false, joinLeave: false, ...options };
    /** 'subscribing' | 'subscribed' | 'unsubscribed' */
    this.state = 'subscribing';
    /** Offset of the last publication handed to the app (or the subscription point). */
    this.offset = null;
    /** Epoch the offset belongs to. */
    this.epoch = null;
    this._client = client;
    this._acked = false; // acked on the current connection
    this._settled = false;
    this.ready = new Promise((resolve, reject) => {
      this._resolveReady = resolve;
      this._rejectReady = reject;
    });
    this.ready.catch(noop);
  }

  /** Stops receiving the channel. Never rejects. */
  unsubscribe() {
    return this._client._unsubscribe(this);
  }

  _live() {
    return this._client._subs.get(this.channel) === this;
  }

  _settle(ok, value) {
    if (this._settled) return;
    this._settled = true;
    if (ok) this._resolveReady(value);
    else this._rejectReady(value);
  }

  _onAck(ack, wasRecovering) {
    if (!this._live()) return;
    const recovered = wasRecovering && ack.recovered === true;
    // Recovered: the missed publications follow the ack, so the position
    // stays where the app is. Otherwise the stream continues after the ack's
    // offset (a new epoch restarts at 1).
    if (!recovered) this.offset = typeof ack.offset === 'number' ? ack.offset : 0;
    this.epoch = ack.epoch == null ? null : ack.epoch;
    this._acked = true;
    this.state = 'subscribed';
    const info = {
      channel: this.channel,
      recovered,
      wasRecovering,
      offset: ack.offset,
      epoch: ack.epoch,
    };
    if (ack.presence) info.presence = ack.presence;
    this._settle(true, info);
    this._emit('subscribed', info);
  }

  // The server lost publications this subscription cannot get back (the
  // cluster's broker restarted without them): like a resubscribe answered
  // `recovered: false`, the app reloads; the stream goes on after
  // `msg.offset` in `msg.epoch`.
  _onReset(msg) {
    if (!this._acked) return;
    this.offset = typeof msg.offset === 'number' ? msg.offset : 0;
    this.epoch = msg.epoch == null ? null : msg.epoch;
    const info = {
      channel: this.channel,
      recovered: false,
      wasRecovering: true,
      reset: true,
      offset: msg.offset,
      epoch: msg.epoch,
    };
    this._emit('subscribed', info);
  }

  _onMessage(msg) {
    // Before the ack on this connection nothing belongs to the subscription:
    // what it covers is replayed after the ack, if recovered.
    if (!this._acked) return;
    if (typeof msg.offset === 'number') {
      if (this.offset != null && msg.offset <= this.offset) return; // seen already
      this.offset = msg.offset;
    }
    this._emit('message', msg);
  }

  _onFail(err) {
    if (!this._live()) return;
    this._client._subs.delete(this.channel);
    this.state = 'unsubscribed';
    this._acked = false;
    this._settle(false, err);
    this._emit('error', err);
    this._emit('unsubscribed', { channel: this.channel, error: err });
  }
}

/** A connection to ringcast's `/ws` that reconnects and resubscribes by itself. */
export class Ringcast extends Emitter {
  constructor(url, options = {}) {
    super();
    this.options = { ...DEFAULTS };
    for (const [k, v] of Object.entries(options)) if (v !== undefined) this.options[k] = v;
    this.url = resolveUrl(url).toString();
    this._WebSocket = this.options.WebSocket || globalThis.WebSocket;
    if (typeof this._WebSocket !== 'function') {
      throw new TypeError('ringcast: no WebSocket implementation: pass options.WebSocket');
    }
    /** 'connecting' | 'connected' | 'disconnected' | 'closed' */
    this.state = 'disconnected';
    /** From the last welcome: the client id, its core, the server's ping interval. */
    this.client = null;
    this.core = null;
    this.pingMs = null;
    this._ws = null;
    this._gen = 0; // connection attempt generation
    this._want = false; // the app wants a connection
    this._attempt = 0;
    this._nextId = 1;
    this._pending = new Map(); // id -> request in flight
    this._queue = []; // requests waiting for a connection
    this._subs = new Map(); // channel -> Subscription
    this._waiters = []; // connect() promises
    this._reconnectTimer = null;
    this._connectTimer = null;
    this._heartbeat = null;
    this._lastRx = 0;
    this._lastPing = 0;
    this._status = 0; // HTTP status of a refused upgrade, when the implementation reports it
    this._statusText = '';
  }

  /** Connects (and keeps reconnecting); resolves with the welcome once connected. */
  connect() {
    if (this.state === 'connected') return Promise.resolve(this._welcome);
    const p = new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
    p.catch(noop);
    if (!this._want) {
      this._want = true;
      this._attempt = 0;
      this._open();
    }
    return p;
  }

  /** Closes with 1000 and stops reconnecting; requests waiting are rejected with 'closed'. */
  close() {
    if (!this._want && this.state === 'closed') return;
    this._stop(1000, 'client closed');
  }

  /** Starts receiving `channel`. One Subscription per channel at a time. */
  subscribe(channel, options = {}) {
    if (this._subs.has(channel)) {
      throw fail('already_subscribed', `ringcast: already subscribed to "${channel}"`);
    }
    const sub = new Subscription(this, channel, options);
    this._subs.set(channel, sub);
    if (this.state === 'connected') this._sendSubscribe(sub);
    return sub;
  }

  /** The live Subscription of `channel`, if any. */
  getSubscription(channel) {
    return this._subs.get(channel) || null;
  }

  /** Every live Subscription. */
  subscriptions() {
    return [...this._subs.values()];
  }

  /** Publishes `payload` (any JSON value); resolves with its offset and epoch. */
  publish(channel, payload, options = {}) {
    return this._request({ type: 'publish', channel, payload }, options).then((a) => ({
      offset: a.offset,
      epoch: a.epoch,
    }));
  }

  /** Reads history: the newest `limit`, or with `since` the first `limit` after it; oldest first. */
  history(channel, options = {}) {
    const frame = { type: 'history', channel };
    if (options.limit != null) frame.limit = options.limit;
    if (options.since != null) frame.since = options.since;
    return this._request(frame, options).then((a) => ({
      epoch: a.epoch,
      offset: a.offset,
      publications: a.publications || [],
    }));
  }

  /** Who is subscribed to `channel` (a channel with the presence option). */
  presence(channel, options = {}) {
    return this._request({ type: 'presence', channel }, options).then((a) => ({
      count: a.count,
      clients: a.clients || [],
    }));
  }

  /** Application-level ping; resolves with the round trip in ms. */
  ping(options = {}) {
    const t0 = now();
    return this._request({ type: 'ping' }, options).then(() => now() - t0);
  }

  // ---- requests ----

  _request(frame, options) {
    return new Promise((resolve, reject) => {
      const timeout = options.timeout != null ? options.timeout : this.options.requestTimeout;
      const entry = { id: this._nextId++, frame, timeout, resolve, reject, timer: null };
      if (this.state === 'connected') return this._send(entry);
      if (this.state === 'closed') return reject(fail('closed', 'ringcast: client is closed'));
      if (this._queue.length >= this.options.queueLimit) {
        return reject(fail('queue_full', `ringcast: ${this._queue.length} requests already wait for a connection`));
      }
      entry.timer = setTimeout(() => {
        const i = this._queue.indexOf(entry);
        if (i >= 0) this._queue.splice(i, 1);
        reject(fail('queue_expired', `ringcast: no connection within ${this.options.queueMaxAge} ms`));
      }, this.options.queueMaxAge);
      this._queue.push(entry);
    });
  }

  _send(entry) {
    entry.frame.id = entry.id;
    this._pending.set(entry.id, entry);
    entry.timer = setTimeout(() => {
      if (this._pending.get(entry.id) !== entry) return;
      this._pending.delete(entry.id);
      entry.reject(fail('timeout', `ringcast: no answer to ${entry.frame.type} within ${entry.timeout} ms`));
    }, entry.timeout);
    this._sendRaw(entry.frame);
  }

  _sendRaw(obj) {
    const ws = this._ws;
    if (!ws) return;
    try {
      ws.send(JSON.stringify(obj));
    } catch {
      /* the close event follows */
    }
  }

  _sendSubscribe(sub) {
    const frame = { type: 'subscribe', channel: sub.channel };
    const wasRecovering = !!(sub.options.recover && sub.epoch != null && sub.offset != null);
    if (wasRecovering) frame.since = { offset: sub.offset, epoch: sub.epoch };
    if (sub.options.presence) frame.presence = true;
    if (sub.options.joinLeave) frame.join_leave = true;
    sub._acked = false;
    sub.state = 'subscribing';
    this._send({
      id: this._nextId++,
      frame,
      sub,
      timeout: this.options.requestTimeout,
      resolve: (ack) => sub._onAck(ack, wasRecovering),
      reject: (err) => {
        if (err.code === 'timeout') {
          // The server always answers a subscribe: the link is not working.
          if (!sub._live()) return;
          sub._emit('error', err);
          this._abandon(4000, 'subscribe timeout');
        } else if (err.code !== 'disconnected' && err.code !== 'closed') {
          sub._onFail(err);
        }
      },
    });
  }

  _unsubscribe(sub) {
    if (!sub._live()) return Promise.resolve();
    this._subs.delete(sub.channel);
    sub.state = 'unsubscribed';
    sub._acked = false;
    sub._settle(false, fail('unsubscribed', `ringcast: unsubscribed from "${sub.channel}"`));
    sub._emit('unsubscribed', { channel: sub.channel });
    if (this.state !== 'connected') return Promise.resolve();
    return this._request({ type: 'unsubscribe', channel: sub.channel }, {}).then(noop, noop);
  }

  // ---- connection ----

  _setState(state, info = {}) {
    if (this.state === state) return;
    this.state = state;
    this._emit('state', { state, ...info });
  }

  async _open() {
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    const gen = ++this._gen;
    this._setState('connecting');
    const url = new URL(this.url);
    const token = this.options.token;
    if (token != null) {
      let t;
      try {
        t = typeof token === 'function' ? await token() : token;
      } catch (err) {
        if (gen === this._gen && this._want) this._retry(4000, `token: ${(err && err.message) || err}`);
        return;
      }
      if (gen !== this._gen || !this._want) return;
      if (t != null && t !== '') url.searchParams.set('token', String(t));
    }
    let ws;
    try {
      ws = new this._WebSocket(url.toString());
    } catch (err) {
      this._retry(4000, `${(err && err.message) || err}`);
      return;
    }
    this._ws = ws;
    this._status = 0;
    this._statusText = '';
    ws.onopen = () => {
      if (this._ws === ws) this._lastRx = now();
    };
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      this._lastRx = now();
      this._onFrame(ev.data);
    };
    ws.onerror = (ev) => {
      if (this._ws !== ws) return;
      // The `ws` package names a refused upgrade's status in its error.
      const m = /Unexpected server response: (\d+)/.exec((ev && (ev.message || (ev.error && ev.error.message))) || '');
      if (m && !this._status) this._status = Number(m[1]);
    };
    ws.onclose = (ev) => {
      if (this._ws === ws) this._lost(ev.code, ev.reason);
    };
    if (typeof ws.on === 'function') {
      // Node's `ws`: WebSocket pings are traffic too, and a refused upgrade
      // shows its HTTP status (a browser sees only a failed connection).
      const touch = () => {
        if (this._ws === ws) this._lastRx = now();
      };
      ws.on('ping', touch);
      ws.on('pong', touch);
      ws.on('unexpected-response', (req, res) => {
        let body = '';
        let done = false;
        const finish = () => {
          if (done) return;
          done = true;
          clearTimeout(t);
          if (this._ws === ws) {
            this._status = res.statusCode;
            this._statusText = body.trim().slice(0, 100);
          }
          try {
            ws.terminate(); // emits error + close
          } catch {
            /* gone */
          }
        };
        const t = setTimeout(finish, 1000);
        try {
          res.setEncoding('utf8');
          res.on('data', (chunk) => {
            body += chunk;
            if (body.length > 1024) finish();
          });
          res.on('end', finish);
          res.on('error', finish);
        } catch {
          finish();
        }
      });
    }
    this._connectTimer = setTimeout(() => {
      if (this._ws === ws) this._abandon(4000, `no welcome within ${this.options.connectTimeout} ms`);
    }, this.options.connectTimeout);
  }

  _onFrame(data) {
    if (typeof data !== 'string') return;
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (!msg || typeof msg !== 'object' || typeof msg.type !== 'string') return;
    const type = msg.type;
    this._emit(type, msg);
    if (type === 'welcome') {
      this._onWelcome(msg);
    } else if (type === 'ack' || type === 'error' || type === 'pong') {
      if (msg.id == null) return;
      const entry = this._pending.get(msg.id);
      if (!entry) return;
      this._pending.delete(msg.id);
      clearTimeout(entry.timer);
      if (type === 'error') {
        entry.reject(fail(msg.code || 'error', msg.message || msg.code, { request: entry.frame.type }));
      } else {
        entry.resolve(msg);
      }
    } else if (type === 'message' || type === 'join' || type === 'leave' || type === 'reset') {
      const sub = this._subs.get(msg.channel);
      if (!sub) return;
      if (type === 'message') sub._onMessage(msg);
      else if (type === 'reset') sub._onReset(msg);
      else sub._emit(type, msg);
    }
  }

  _onWelcome(msg) {
    clearTimeout(this._connectTimer);
    this._connectTimer = null;
    this._welcome = msg;
    this.client = msg.client;
    this.core = msg.core;
    this.pingMs = msg.ping_ms;
    this._attempt = 0;
    this.state = 'connected'; // announced below, after the resends
    this._startHeartbeat();
    for (const sub of this._subs.values()) this._sendSubscribe(sub);
    const queued = this._queue;
    this._queue = [];
    for (const entry of queued) {
      clearTimeout(entry.timer);
      this._send(entry);
    }
    this._emit('state', { state: 'connected', client: msg.client, core: msg.core });
    const waiters = this._waiters;
    this._waiters = [];
    for (const w of waiters) w.resolve(msg);
  }

  _startHeartbeat() {
    clearInterval(this._heartbeat);
    const ping = this.pingMs > 0 ? this.pingMs : 15000;
    const margin = this.options.pingMargin != null ? this.options.pingMargin : Math.max(ping / 2, 5000);
    const window = ping + margin;
    this._lastRx = now();
    this._lastPing = 0;
    this._heartbeat = setInterval(() => {
      const t = now();
      const idle = t - this._lastRx;
      if (idle >= window) {
        this._abandon(4000, `no traffic for ${idle} ms`);
      } else if (idle >= window / 2 && t - this._lastPing >= window / 2) {
        this._lastPing = t;
        this._sendRaw({ type: 'ping' });
      }
    }, Math.max(50, Math.min(1000, window / 4)));
  }

  _detach(ws) {
    ws.onopen = null;
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = noop; // Node's `ws` throws an error event nobody listens to
  }

  /** Gives up on the current socket at once (dead link, timeouts) and reconnects. */
  _abandon(code, reason) {
    const ws = this._ws;
    if (!ws) return;
    this._lost(code, reason);
    try {
      if (typeof ws.terminate === 'function') ws.terminate();
      else ws.close(4000, reason);
    } catch {
      /* gone */
    }
  }

  /** The current socket is gone: clean up, then stop or retry. */
  _lost(code, reason) {
    const ws = this._ws;
    if (!ws) return;
    this._ws = null;
    this._detach(ws);
    clearTimeout(this._connectTimer);
    this._connectTimer = null;
    clearInterval(this._heartbeat);
    this._heartbeat = null;
    this._failPending('disconnected', `ringcast: connection lost (${code}${reason ? ' ' + reason : ''})`);
    for (const sub of this._subs.values()) {
      sub._acked = false;
      sub.state = 'subscribing';
    }
    const info = {};
    if (this._status) info.status = this._status;
    if (this._status === 401) {
      code = 4001;
      reason = `unauthorized${this._statusText ? ': ' + this._statusText : ''}`;
    } else if (this._status === 403) {
      code = 4003;
      reason = `forbidden${this._statusText ? ': ' + this._statusText : ''}`;
    }
    if (code === 4001 || code === 4003) {
      this._stop(code, reason, info);
      return;
    }
    if (this._want) this._retry(code, reason, info);
  }

  _retry(code, reason, info = {}) {
    const delay = reconnectDelay(this._attempt++, this.options.minReconnectDelay, this.options.maxReconnectDelay);
    this._setState('disconnected', { code, reason, delay, ...info });
    clearTimeout(this._reconnectTimer);
    const gen = this._gen;
    this._reconnectTimer = setTimeout(() => {
      if (gen === this._gen && this._want) this._open();
    }, delay);
  }

  _failPending(code, message) {
    for (const entry of this._pending.values()) {
      clearTimeout(entry.timer);
      entry.reject(fail(code, message));
    }
    this._pending.clear();
  }

  /** Stops for good (until `connect()`): the app's close, or a 4001/4003. */
  _stop(code, reason, info = {}) {
    this._want = false;
    this._gen++;
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    clearTimeout(this._connectTimer);
    this._connectTimer = null;
    clearInterval(this._heartbeat);
    this._heartbeat = null;
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      this._detach(ws);
      try {
        ws.close(1000, 'client closed');
      } catch {
        /* gone */
      }
    }
    for (const sub of this._subs.values()) {
      sub._acked = false;
      sub.state = 'subscribing';
    }
    const message = `ringcast: closed (${code}${reason ? ' ' + reason : ''})`;
    this._failPending('closed', message);
    const queued = this._queue;
    this._queue = [];
    for (const entry of queued) {
      clearTimeout(entry.timer);
      entry.reject(fail('closed', message));
    }
    const waiters = this._waiters;
    this._waiters = [];
    for (const w of waiters) w.reject(fail('closed', message, { closeCode: code, reason }));
    this._setState('closed', { code, reason, ...info });
  }
}

export default Ringcast;
