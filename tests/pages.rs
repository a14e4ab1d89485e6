//! The files the binary embeds (`/ringcast.js`, `/demo`, `/dashboard`)
//! and the dashboard's data (`/api/stats`), over real sockets.

mod common;

use std::path::Path;

/// The server serves the SDK it was built with: `/ringcast.js` revalidated
/// through its `ETag`, `/ringcast-VERSION.js` cached for good.
#[test]
fn the_server_serves_the_sdk_it_embeds() {
    let server = common::Server::start(&["--cores", "1"]);
    let file =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js/index.js"))
            .expect("clients/js/index.js");
    let versioned = format!("/ringcast-{}.js", env!("CARGO_PKG_VERSION"));
    let mut etags = Vec::new();
    for (path, cache) in [
        ("/ringcast.js", "Cache-Control: no-cache\r\n"),
        (
            versioned.as_str(),
            "Cache-Control: public, max-age=31536000, immutable\r\n",
        ),
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let (status, resp) = common::http_exchange(server.addr, req.as_bytes());
        assert_eq!(status, 200, "{path}");
        assert!(
            resp.contains("Content-Type: text/javascript; charset=utf-8\r\n"),
            "{resp:.300}"
        );
        assert!(resp.contains(cache), "{path}: {resp:.300}");
        assert_eq!(common::http_body(&resp), file, "{path}: the embedded file");
        let etag = resp
            .lines()
            .find_map(|l| l.strip_prefix("ETag: "))
            .expect("an ETag")
            .to_owned();
        etags.push(etag);
    }
    assert_eq!(etags[0], etags[1]);
    assert!(etags[0].starts_with('"') && etags[0].ends_with('"'));
}

/// `/demo` is the chat page the binary embeds; its rooms (`demo:*`) have
/// presence and join/leave through the built-in rule.
#[test]
fn the_server_serves_the_demo_and_its_rooms_have_presence() {
    let server = common::Server::start(&["--cores", "1"]);
    let page = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/demo/index.html"),
    )
    .expect("clients/demo/index.html");
    let (status, resp) =
        common::http_exchange(server.addr, b"GET /demo HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    assert!(
        resp.contains("Content-Type: text/html; charset=utf-8\r\n"),
        "{resp:.300}"
    );
    assert_eq!(common::http_body(&resp), page);
    let (mut ws, _) = common::ws_client(&server.url("/ws"));
    common::send_json(
        &mut ws,
        serde_json::json!({"type":"subscribe","channel":"demo:lobby","id":1,"presence":true,"join_leave":true}),
    );
    let ack = common::recv_json(&mut ws);
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["presence"]["count"], 1, "{ack}");
}

fn get(addr: std::net::SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
    common::http_exchange(addr, req.as_bytes())
}

fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    let head = resp.split("\r\n\r\n").next().unwrap_or("");
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(": ")?;
        n.eq_ignore_ascii_case(name).then_some(v)
    })
}

/// Every embedded file carries an `ETag`; a browser that has that version
/// gets a 304 with no body, one with a stale tag gets the file again.
#[test]
fn embedded_files_revalidate_with_304() {
    let server = common::Server::start(&["--cores", "1"]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (path, file, kind) in [
        ("/ringcast.js", "clients/js/index.js", "text/javascript"),
        ("/demo", "clients/demo/index.html", "text/html"),
        ("/dashboard", "clients/dashboard/index.html", "text/html"),
    ] {
        let body = std::fs::read_to_string(root.join(file)).expect(file);
        let (status, resp) = get(server.addr, path, "");
        assert_eq!(status, 200, "{path}");
        assert!(header(&resp, "Content-Type").is_some_and(|t| t.starts_with(kind)));
        assert_eq!(header(&resp, "X-Content-Type-Options"), Some("nosniff"));
        assert_eq!(common::http_body(&resp), body, "{path}: the embedded file");
        let etag = header(&resp, "ETag").expect("an ETag").to_owned();

        let (status, resp) = get(server.addr, path, &format!("If-None-Match: {etag}\r\n"));
        assert_eq!(status, 304, "{path}: {resp}");
        assert_eq!(header(&resp, "ETag"), Some(etag.as_str()));
        assert_eq!(header(&resp, "Content-Length"), None, "a 304 has no body");
        assert_eq!(common::http_body(&resp), "", "{path}");
        // Weak comparison and lists, as browsers and proxies send them.
        let (status, _) = get(
            server.addr,
            path,
            &format!("If-None-Match: \"old\", W/{etag}\r\n"),
        );
        assert_eq!(status, 304, "{path}");

        let (status, resp) = get(server.addr, path, "If-None-Match: \"0123456789abcdef\"\r\n");
        assert_eq!(status, 200, "{path}: a stale tag gets the file");
        assert_eq!(common::http_body(&resp), body);
    }
    let (_, resp) = get(server.addr, "/dashboard", "");
    assert_eq!(header(&resp, "X-Frame-Options"), Some("DENY"));
}

fn stats(addr: std::net::SocketAddr, headers: &str) -> serde_json::Value {
    let (status, resp) = get(addr, "/api/stats", headers);
    assert_eq!(status, 200, "{resp}");
    assert!(
        resp.contains("Content-Type: application/json\r\n"),
        "{resp:.300}"
    );
    assert_eq!(header(&resp, "Cache-Control"), Some("no-store"));
    serde_json::from_str(common::http_body(&resp)).expect("JSON")
}

/// A counter summed over the cores of an `/api/stats` answer.
fn json_sum(v: &serde_json::Value, name: &str, label: Option<(&str, &str)>) -> f64 {
    v["metrics"][name]["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no {name} in {v}"))
        .iter()
        .filter(|s| label.is_none_or(|(k, want)| s["labels"][k] == want))
        .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
        .map(|x| x.as_f64().expect("a number"))
        .sum()
}

/// `/api/stats` is `/metrics` as JSON: the same families, one value per
/// core, the same counts.
#[test]
fn stats_json_counts_what_metrics_counts() {
    let server = common::Server::start(&["--cores", "2"]);
    let mut clients: Vec<_> = (0..2)
        .map(|core| common::ws_on_core(&server, "/echo", core))
        .collect();
    for ws in &mut clients {
        for i in 0..5 {
            ws.send(tungstenite::Message::text(format!("m{i}")))
                .unwrap();
            assert_eq!(
                common::read_message(ws).into_text().unwrap(),
                format!("m{i}")
            );
        }
    }
    let first = stats(server.addr, "");
    assert_eq!(first["cores"], 2);
    assert_eq!(first["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        first["metrics"]["ringcast_connections"]["samples"][0]["values"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "one value per core"
    );
    let scrape = common::scrape(&server);
    for name in [
        "ringcast_messages_in_total",
        "ringcast_bytes_in_total",
        "ringcast_deliveries_total",
    ] {
        assert_eq!(
            json_sum(&first, name, None),
            common::metric_sum(&scrape, name, None),
            "{name}"
        );
    }
    assert_eq!(json_sum(&first, "ringcast_messages_in_total", None), 10.0);
    // ws_on_core may open (and close) extra connections until one lands on
    // the core it wants, so the upgrades are counted against /metrics.
    let upgraded = json_sum(
        &first,
        "ringcast_handshakes_total",
        Some(("outcome", "upgraded")),
    );
    assert!(upgraded >= 2.0, "{upgraded}");
    assert_eq!(upgraded, common::handshakes(&scrape, "upgraded"));
    assert_eq!(
        first["metrics"]["ringcast_ping_rtt_seconds"]["type"],
        "histogram"
    );
    let second = stats(server.addr, "");
    assert!(second["uptime_ms"].as_u64() >= first["uptime_ms"].as_u64());
    assert!(
        json_sum(
            &second,
            "ringcast_handshakes_total",
            Some(("outcome", "http"))
        ) > json_sum(
            &first,
            "ringcast_handshakes_total",
            Some(("outcome", "http"))
        ),
        "each answer counts the request before it"
    );
}

/// With `--api-key`, the dashboard's data needs it (Bearer or X-Api-Key);
/// without one it is open, unlike the rest of the API (which is off).
#[test]
fn stats_need_the_api_key_only_when_one_is_set() {
    let open = common::Server::start(&["--cores", "1"]);
    stats(open.addr, "");
    let (status, _) = get(open.addr, "/api/channels", "");
    assert_eq!(status, 403, "the rest of the API stays off without a key");

    let guarded = common::Server::start(&["--cores", "1", "--api-key", "s3cret"]);
    for headers in [
        "",
        "Authorization: Bearer wrong\r\n",
        "X-Api-Key: s3cre\r\n",
    ] {
        let (status, resp) = get(guarded.addr, "/api/stats", headers);
        assert_eq!(status, 401, "{headers:?}: {resp}");
        assert!(resp.contains("\"unauthorized\""), "{resp}");
        assert!(!resp.contains("ringcast_"), "no data without the key");
    }
    stats(guarded.addr, "Authorization: Bearer s3cret\r\n");
    stats(guarded.addr, "X-Api-Key: s3cret\r\n");
    // The page itself holds no data: it loads, then asks for the key.
    let (status, _) = get(guarded.addr, "/dashboard", "");
    assert_eq!(status, 200);
    let (status, resp) = common::http_exchange(
        guarded.addr,
        b"POST /api/stats HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(status, 405, "{resp}");
}
