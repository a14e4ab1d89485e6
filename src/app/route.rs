//! Where a request goes: the WebSocket endpoints and the plain HTTP
//! resources, by path.

use crate::ws::handshake::Target;

/// An endpoint a client can upgrade on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Every message comes back to its sender with its opcode.
    Echo,
    /// Every message goes to every `/broadcast` client on every core.
    Broadcast,
    /// `/ws`: typed JSON messages, channels, publish/subscribe.
    Channels,
}

/// A plain HTTP resource for operators, load balancers and backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// `GET /healthz`: 200 while the process serves requests at all.
    Health,
    /// `GET /readyz`: 200 once every core listens, 503 once draining.
    Ready,
    /// `GET /metrics`: every core's counters, Prometheus text format.
    Metrics,
    /// `POST /api/publish`: publish to channels from a backend.
    Publish,
    /// `GET /api/channels`: channels and subscriber counts, all cores.
    ChannelList,
    /// `POST /api/history`: a channel's history.
    History,
    /// `POST /api/presence`: a channel's presence.
    Presence,
    /// `GET /ringcast.js`: the browser SDK (revalidated with its `ETag`).
    Sdk,
    /// `GET /demo`: the chat demo page, built on the SDK.
    Demo,
    /// `GET /ringcast-VERSION.js`: the same, cached for good (the name
    /// changes with the version).
    SdkVersioned,
    /// `GET /dashboard`: the operator's live view of every core (the page
    /// holds no data; it polls `/api/stats`).
    Dashboard,
    /// `GET /api/stats`: `/metrics` as JSON, for the dashboard and scripts.
    /// Needs the API key when one is set, and, unlike the rest of the API,
    /// works without one when none is.
    Stats,
    /// `GET /debug/pprof/profile?seconds=N[&format=svg]`: a CPU profile of
    /// the process. Needs the API key; refused when none is set.
    Profile,
}

/// What a resource asks of the API key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRule {
    /// Open to anyone (health checks, scrapes, the static pages).
    Open,
    /// Needs the key when one is set; open when none is.
    IfSet,
    /// Needs the key; refused (403) when the API is off.
    Required,
}

impl Resource {
    /// What the resource asks of the API key.
    pub fn key_rule(self) -> KeyRule {
        match self {
            Resource::Publish
            | Resource::ChannelList
            | Resource::History
            | Resource::Presence
            | Resource::Profile => KeyRule::Required,
            Resource::Stats => KeyRule::IfSet,
            _ => KeyRule::Open,
        }
    }

    /// Whether the resource takes a `POST` body.
    pub fn takes_body(self) -> bool {
        matches!(
            self,
            Resource::Publish | Resource::History | Resource::Presence
        )
    }
}

impl Route {
    /// Maps a request path to an endpoint.
    pub fn from_path(path: &str) -> Option<Route> {
        match path {
            "/echo" => Some(Route::Echo),
            "/broadcast" => Some(Route::Broadcast),
            "/ws" => Some(Route::Channels),
            _ => None,
        }
    }

    /// Maps a request path to a WebSocket endpoint or an HTTP resource.
    pub fn target(path: &str) -> Option<Target<Route, Resource>> {
        match path {
            "/healthz" => Some(Target::Http(Resource::Health)),
            "/readyz" => Some(Target::Http(Resource::Ready)),
            "/metrics" => Some(Target::Http(Resource::Metrics)),
            "/api/publish" => Some(Target::Http(Resource::Publish)),
            "/api/channels" => Some(Target::Http(Resource::ChannelList)),
            "/api/history" => Some(Target::Http(Resource::History)),
            "/api/presence" => Some(Target::Http(Resource::Presence)),
            "/ringcast.js" => Some(Target::Http(Resource::Sdk)),
            "/demo" => Some(Target::Http(Resource::Demo)),
            "/dashboard" => Some(Target::Http(Resource::Dashboard)),
            "/api/stats" => Some(Target::Http(Resource::Stats)),
            "/debug/pprof/profile" => Some(Target::Http(Resource::Profile)),
            super::assets::SDK_VERSIONED_PATH => Some(Target::Http(Resource::SdkVersioned)),
            _ => Route::from_path(path).map(Target::WebSocket),
        }
    }
}
