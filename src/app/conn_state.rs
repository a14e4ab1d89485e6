//! What the app keeps per open connection beyond the protocol session:
//! heartbeat, rate buckets, and the endpoint's own state.

use super::auth;
use super::heartbeat::Beat;
use super::route::Route;

/// A connection's endpoint and that endpoint's state, in one enum so a
/// `/broadcast` slot or `/ws` subscriptions cannot exist on the wrong kind
/// of connection.
#[derive(Default)]
pub enum Endpoint {
    /// Not upgraded (yet): a handshake or a plain HTTP request.
    #[default]
    None,
    /// `/echo`: no state.
    Echo,
    /// `/broadcast`: its position in the hub's subscriber list, until it
    /// leaves it (the close handshake, shutdown).
    Broadcast {
        /// Index in the hub's subscriber list (`None`: unsubscribed).
        slot: Option<u32>,
    },
    /// `/ws`: subscriptions and token claims; boxed so the other endpoints'
    /// idle connections do not pay for them.
    Channels(Box<WsConn>),
}

impl Endpoint {
    /// The state a connection upgraded on `route` starts with.
    pub fn new(route: Route, claims: Option<auth::Claims>) -> Endpoint {
        match route {
            Route::Echo => Endpoint::Echo,
            Route::Broadcast => Endpoint::Broadcast { slot: None },
            Route::Channels => Endpoint::Channels(Box::new(WsConn {
                claims,
                ..WsConn::default()
            })),
        }
    }

    /// The route, if upgraded.
    #[inline]
    pub fn route(&self) -> Option<Route> {
        match self {
            Endpoint::None => None,
            Endpoint::Echo => Some(Route::Echo),
            Endpoint::Broadcast { .. } => Some(Route::Broadcast),
            Endpoint::Channels(_) => Some(Route::Channels),
        }
    }
}

/// Per-connection state of an open WebSocket beyond the protocol session.
/// Times are microseconds on the core's clock.
#[derive(Default)]
pub struct ConnCtl {
    /// Heartbeat state.
    pub beat: Beat,
    /// When the client last sent a data message (idle timeout).
    pub last_msg_us: u64,
    /// The message-rate schedule ([`super::policy::Rate`]; 0: a whole
    /// burst available).
    pub msg_tat: u64,
    /// The publish-rate schedule (`--max-publishes-per-sec`).
    pub publish_tat: u64,
    /// The endpoint and its state.
    pub endpoint: Endpoint,
}

impl ConnCtl {
    /// An upgraded connection's state at `now_us`: full buckets, first ping
    /// scheduled.
    pub fn open(
        route: Route,
        claims: Option<auth::Claims>,
        policy: &super::Policy,
        now_us: u64,
    ) -> ConnCtl {
        ConnCtl {
            beat: Beat::start(now_us, &policy.heartbeat),
            last_msg_us: now_us,
            msg_tat: 0,
            publish_tat: 0,
            endpoint: Endpoint::new(route, claims),
        }
    }
}

/// `/ws` state of one connection.
#[derive(Default)]
pub struct WsConn {
    /// Channel indices in the core's registry: subscribed, or waiting for
    /// the owner's answer.
    pub subs: Vec<u32>,
    /// Subscribes waiting for their channel owner's answer (one per
    /// request, repeats included); bounded by `--max-subscriptions`, so a
    /// client repeating subscribes it does not read answers to cannot grow
    /// the channels' waiting lists.
    pub held_acks: u32,
    /// The token's claims when auth is on (channel patterns).
    pub claims: Option<auth::Claims>,
    /// This connection's number on its core: its client id (`welcome`,
    /// presence) is made from it.
    pub client: u64,
}
