//! `--broker` URLs: which Redis to use and how to log in.

use std::fmt;

/// Where the broker is.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct BrokerUrl {
    /// Standalone Redis or the seed nodes of a Redis Cluster.
    pub(crate) kind: Kind,
    /// `HOST:PORT` of each node given (one for standalone).
    pub(crate) nodes: Vec<String>,
    /// Database number (standalone only; a cluster has only 0).
    pub(crate) db: u32,
    /// ACL user, if the URL names one.
    pub(crate) user: Option<String>,
    /// Password from the URL or `RINGCAST_BROKER_PASSWORD`.
    pub(crate) password: Option<String>,
}

/// The engine behind the URL's scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `redis://`
    Redis,
    /// `redis-cluster://`
    Cluster,
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Prints the URL without its password.
impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.kind {
            Kind::Redis => "redis",
            Kind::Cluster => "redis-cluster",
        };
        write!(f, "{scheme}://")?;
        if self.user.is_some() || self.password.is_some() {
            write!(f, "{}:***@", self.user.as_deref().unwrap_or(""))?;
        }
        write!(f, "{}", self.nodes.join(","))?;
        if self.db != 0 {
            write!(f, "/{}", self.db)?;
        }
        Ok(())
    }
}

const DEFAULT_PORT: u16 = 6379;

/// Parses `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]` or
/// `redis-cluster://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]`.
/// `password` (from the environment) is used when the URL has none.
pub(crate) fn parse(url: &str, password: Option<String>) -> Result<BrokerUrl, String> {
    let bad = |why: &str| format!("--broker {url:?}: {why}");
    let (kind, rest) = if let Some(r) = url.strip_prefix("redis://") {
        (Kind::Redis, r)
    } else if let Some(r) = url.strip_prefix("redis-cluster://") {
        (Kind::Cluster, r)
    } else {
        return Err(bad("the scheme must be redis:// or redis-cluster://"));
    };
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((a, r)) => (Some(a), r),
        None => (None, rest),
    };
    let (user, url_password) = match auth {
        None => (None, None),
        Some(a) => match a.split_once(':') {
            Some((u, p)) => ((!u.is_empty()).then(|| u.to_owned()), Some(p.to_owned())),
            None => (None, Some(a.to_owned())),
        },
    };
    let (hosts, db) = match rest.split_once('/') {
        None => (rest, 0),
        Some((h, "")) => (h, 0),
        Some((h, d)) => (
            h,
            d.parse()
                .map_err(|_| bad("the database must be a number, as in redis://host:6379/2"))?,
        ),
    };
    if kind == Kind::Cluster && db != 0 {
        return Err(bad("a Redis Cluster has only database 0"));
    }
    let mut nodes = Vec::new();
    for h in hosts.split(',') {
        if h.is_empty() {
            return Err(bad("a host is missing"));
        }
        let node = match h.rsplit_once(':') {
            Some((host, port)) if !host.contains(']') || host.ends_with(']') => {
                port.parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| bad(&format!("bad port in {h:?}")))?;
                if host.is_empty() {
                    return Err(bad("a host is missing"));
                }
                h.to_owned()
            }
            _ => format!("{h}:{DEFAULT_PORT}"),
        };
        nodes.push(node);
    }
    if kind == Kind::Redis && nodes.len() != 1 {
        return Err(bad(
            "redis:// takes one host; several seed nodes are for redis-cluster://",
        ));
    }
    Ok(BrokerUrl {
        kind,
        nodes,
        db,
        user,
        password: url_password.or(password),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse("redis://127.0.0.1:7000/3", None).unwrap();
        assert_eq!(
            (u.kind, &u.nodes[..], u.db),
            (Kind::Redis, &["127.0.0.1:7000".to_owned()][..], 3)
        );
        let u = parse("redis://:pw@h", Some("env".into())).unwrap();
        assert_eq!(
            (u.nodes[0].as_str(), u.password.as_deref()),
            ("h:6379", Some("pw"))
        );
        assert_eq!(u.to_string(), "redis://:***@h:6379");
        let u = parse("redis://h:1", Some("env".into())).unwrap();
        assert_eq!(u.password.as_deref(), Some("env"));
        let u = parse("redis-cluster://a:1,b:2,c", None).unwrap();
        assert_eq!(u.nodes, vec!["a:1", "b:2", "c:6379"]);
        for bad in [
            "http://h",
            "redis://",
            "redis://h:0",
            "redis://h:x",
            "redis://h/x",
            "redis://a,b",
            "redis-cluster://a/1",
            "redis-cluster://a,,b",
        ] {
            assert!(parse(bad, None).is_err(), "{bad}");
        }
    }
}
