// Type declarations of ringcast-client (hand-written; index.js is the source).

/** The connection's state. `closed`: stopped for good (until `connect()` is called again). */
export type ConnectionState = 'connecting' | 'connected' | 'disconnected' | 'closed';

/** Emitted as `state` on every change of `Ringcast#state`. */
export interface StateEvent {
  state: ConnectionState;
  /**
   * Why the connection ended (`disconnected`, `closed`): the WebSocket close
   * code (1006 for a connection that failed or dropped), 4000 for the
   * client's own give-ups (heartbeat, connect or subscribe timeout, token
   * error), 4001/4003 for unauthorized/forbidden (also an HTTP 401/403 to
   * the upgrade when the WebSocket implementation reports it), 1000 for
   * `close()`.
   */
  code?: number;
  reason?: string;
  /** `disconnected`: ms until the next attempt. */
  delay?: number;
  /** HTTP status of a refused upgrade, when the WebSocket implementation reports it (Node's `ws`). */
  status?: number;
  /** `connected`: the client id and core from the welcome. */
  client?: string;
  core?: number;
}

/** The constructor of a WHATWG-style WebSocket (the browser's, or Node's `ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructorLike = new (url: string) => WebSocketLike;

export interface RingcastOptions {
  /**
   * JWT sent as `?token=`: a string, or a function called before every
   * (re)connect (so it can refresh an expiring token). `null`/empty: none.
   */
  token?: string | null | (() => string | null | undefined | Promise<string | null | undefined>);
  /** Backoff base, ms (default 500). */
  minReconnectDelay?: number;
  /** Backoff cap, ms (default 20000). */
  maxReconnectDelay?: number;
  /** Default wait for a request's reply once sent, ms (default 5000). */
  requestTimeout?: number;
  /** Wait for the socket to open and the welcome to arrive, ms (default 10000). */
  connectTimeout?: number;
  /** Most requests waiting for a connection (default 1000); more reject with `queue_full`. */
  queueLimit?: number;
  /** Longest a request waits for a connection, ms (default 10000); then `queue_expired`. */
  queueMaxAge?: number;
  /**
   * Dead-link margin, ms: with no frame received for `ping_ms` (from the
   * welcome) + this, the client closes and reconnects. Default
   * `max(ping_ms / 2, 5000)`.
   */
  pingMargin?: number | null;
  /** WebSocket implementation (default `globalThis.WebSocket`); in Node 20 pass `ws`. */
  WebSocket?: WebSocketConstructorLike | (new (url: string) => any);
}

export interface RequestOptions {
  /** This request's reply timeout, ms (default `requestTimeout`). */
  timeout?: number;
}

export interface StreamPosition {
  offset: number;
  epoch: string;
}

export interface HistoryOptions extends RequestOptions {
  /** Publications to read (server default and cap: `--history-max-limit`). */
  limit?: number;
  /** Read the publications after this position instead of the newest. */
  since?: StreamPosition;
}

export interface SubscribeOptions {
  /** Resubscribe with `since` after a reconnect, to get what was missed (default true). */
  recover?: boolean;
  /** Put the presence list in the ack (`subscribed.presence`); channel needs `presence`. */
  presence?: boolean;
  /** Receive `join`/`leave` events; channel needs `join_leave`. */
  joinLeave?: boolean;
}

/** Error codes of the client itself; server error replies carry the server's codes. */
export type ClientErrorCode =
  | 'timeout'
  | 'queue_full'
  | 'queue_expired'
  | 'closed'
  | 'disconnected'
  | 'unsubscribed'
  | 'already_subscribed';

export type ServerErrorCode =
  | 'bad_json'
  | 'unknown_type'
  | 'missing_field'
  | 'bad_channel'
  | 'forbidden'
  | 'too_many_subscriptions'
  | 'not_subscribed'
  | 'binary_unsupported'
  | 'publish_disabled'
  | 'history_disabled'
  | 'bad_limit'
  | 'epoch_mismatch'
  | 'presence_disabled'
  | 'join_leave_disabled';

/** Every rejection of the client is an Error with a `code`. */
export interface RingcastError extends Error {
  code: ClientErrorCode | ServerErrorCode | (string & {});
  /** Server errors: the request's type (`publish`, `history`, …). */
  request?: string;
  /** `connect()` rejected by a stop: the close code and reason. */
  closeCode?: number;
  reason?: string;
}

export interface PresenceClient {
  client: string;
  /** The token's `sub`, or null without auth. */
  user: string | null;
}

export interface PresenceInfo {
  /** Exact. */
  count: number;
  /** At most `--presence-max-clients`. */
  clients: PresenceClient[];
}

export interface Publication<T = unknown> {
  offset: number;
  payload: T;
}

// ---- server messages (typed routing: `rc.on(type, …)`) ----

export interface WelcomeMessage {
  type: 'welcome';
  client: string;
  core: number;
  ping_ms: number;
}
export interface AckMessage {
  type: 'ack';
  id?: number;
  epoch?: string;
  offset?: number;
  recovered?: boolean;
  presence?: PresenceInfo;
  publications?: Publication[];
  count?: number;
  clients?: PresenceClient[];
}
export interface ErrorMessage {
  type: 'error';
  id?: number;
  code: ServerErrorCode | (string & {});
  message: string;
}
export interface PublicationMessage<T = unknown> {
  type: 'message';
  channel: string;
  offset: number;
  payload: T;
}
export interface JoinLeaveMessage {
  type: 'join' | 'leave';
  channel: string;
  client: string;
  user: string | null;
}
export interface PongMessage {
  type: 'pong';
  id?: number;
}

/** `Ringcast` events: `state`, and every server message by its type (raw, as received). */
export interface RingcastEvents {
  state: StateEvent;
  welcome: WelcomeMessage;
  ack: AckMessage;
  error: ErrorMessage;
  message: PublicationMessage;
  join: JoinLeaveMessage;
  leave: JoinLeaveMessage;
  pong: PongMessage;
}

export interface SubscribedEvent {
  channel: string;
  /** True when the publications missed since the last offset follow (no gap). */
  recovered: boolean;
  /** Whether the subscribe asked to recover (`since`). recovered false here: reload your state. */
  wasRecovering: boolean;
  /** The stream's latest offset at the ack. */
  offset: number;
  epoch: string;
  /** With `presence: true`. */
  presence?: PresenceInfo;
  /**
   * Sent without a resubscribe: the server lost publications this
   * subscription cannot recover (a clustered broker restarted without
   * them). `recovered` is false; the stream goes on after `offset`.
   */
  reset?: boolean;
}

export interface SubscriptionEvents<T = unknown> {
  /** A publication, once, in offset order (duplicates dropped). */
  message: PublicationMessage<T>;
  /** Every ack: the first subscribe and each resubscribe after a reconnect. */
  subscribed: SubscribedEvent;
  join: JoinLeaveMessage;
  leave: JoinLeaveMessage;
  /** A server error to the subscribe (the subscription ends), or a subscribe timeout (it reconnects). */
  error: RingcastError;
  unsubscribed: { channel: string; error?: RingcastError };
}

export type Unlisten = () => void;

declare class Emitter<E> {
  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof E>(type: K, fn: (ev: E[K]) => void): Unlisten;
  on(type: string, fn: (ev: any) => void): Unlisten;
  once<K extends keyof E>(type: K, fn: (ev: E[K]) => void): Unlisten;
  once(type: string, fn: (ev: any) => void): Unlisten;
  off<K extends keyof E>(type: K, fn: (ev: E[K]) => void): this;
  off(type: string, fn: (ev: any) => void): this;
}

export declare class Subscription<T = unknown> extends Emitter<SubscriptionEvents<T>> {
  readonly channel: string;
  readonly options: Required<SubscribeOptions>;
  readonly state: 'subscribing' | 'subscribed' | 'unsubscribed';
  /** Offset of the last publication delivered (or the subscription point). */
  readonly offset: number | null;
  readonly epoch: string | null;
  /** Resolves on the first ack; rejects on a server error or unsubscribe before it. */
  readonly ready: Promise<SubscribedEvent>;
  /** Stops receiving the channel; resolves once acked (never rejects). */
  unsubscribe(): Promise<void>;
}

export declare class Ringcast extends Emitter<RingcastEvents> {
  constructor(url: string | URL, options?: RingcastOptions);
  readonly url: string;
  readonly state: ConnectionState;
  /** From the last welcome. */
  readonly client: string | null;
  readonly core: number | null;
  readonly pingMs: number | null;
  /** Connects and keeps reconnecting; resolves with the welcome, rejects (`closed`) only on `close()` or 4001/4003. */
  connect(): Promise<WelcomeMessage>;
  /** Closes with 1000 and stops; waiting requests reject with `closed`. Subscriptions are kept for a later `connect()`. */
  close(): void;
  /** Throws `already_subscribed` if the channel has a live Subscription. */
  subscribe<T = unknown>(channel: string, options?: SubscribeOptions): Subscription<T>;
  getSubscription<T = unknown>(channel: string): Subscription<T> | null;
  subscriptions(): Subscription[];
  publish(channel: string, payload: unknown, options?: RequestOptions): Promise<StreamPosition>;
  history<T = unknown>(
    channel: string,
    options?: HistoryOptions,
  ): Promise<{ epoch: string; offset: number; publications: Publication<T>[] }>;
  presence(channel: string, options?: RequestOptions): Promise<PresenceInfo>;
  /** Application-level ping; resolves with the round trip, ms. */
  ping(options?: RequestOptions): Promise<number>;
}

/** Full-jitter backoff: random in [0, min(max, min * 2^attempt)), ms. */
export declare function reconnectDelay(attempt: number, min: number, max: number): number;

export default Ringcast;
