//! The HTTP admin endpoints over a fake backend, spoken to as raw HTTP/1.1
//! on a loopback socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use calm_membership::MemberState;
use calm_replica::{Ack, Operation};
use calm_server::admin;
use calm_server::backend::{Backend, BackendError, MemberInfo, NodeStatus};
use calm_server::metrics::Metrics;
use calm_types::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const NODE: NodeId = NodeId(42);

/// A node whose readiness the test sets; it takes no requests.
struct FakeBackend {
    ready: AtomicBool,
}

impl FakeBackend {
    fn member(node: u64, state: MemberState) -> MemberInfo {
        MemberInfo {
            node: NodeId(node),
            peer_addr: SocketAddr::from(([127, 0, 0, 1], 2380)),
            client_addr: Some(SocketAddr::from(([127, 0, 0, 1], 2379))),
            state,
            incarnation: 1,
            ownership: 0.5,
        }
    }
}

impl Backend for FakeBackend {
    async fn submit(
        &self,
        _key: Vec<u8>,
        _op: Operation,
        _token: Option<Vec<u8>>,
    ) -> Result<Ack, BackendError> {
        Err(BackendError::Unavailable("test"))
    }

    fn node(&self) -> NodeId {
        NODE
    }

    fn client_addr(&self, _node: NodeId) -> Option<SocketAddr> {
        None
    }

    fn members(&self) -> Vec<MemberInfo> {
        vec![
            FakeBackend::member(NODE.0, MemberState::Alive),
            FakeBackend::member(7, MemberState::Alive),
        ]
    }

    fn status(&self) -> NodeStatus {
        NodeStatus {
            node: NODE,
            cluster: "test".to_owned(),
            version: "0.0.0",
            client_addr: SocketAddr::from(([127, 0, 0, 1], 2379)),
            peer_addr: SocketAddr::from(([127, 0, 0, 1], 2380)),
            ready: self.ready.load(Ordering::SeqCst),
            uptime_seconds: 3,
            keys: 12,
            key_bytes_max: 1024,
            payload_bytes_max: 65536,
            members: self.members(),
            tax: Vec::new(),
            fsyncs: 0,
            messages_sent: Default::default(),
        }
    }
}

/// A running admin server and the means to stop it.
struct Server {
    addr: SocketAddr,
    backend: Arc<FakeBackend>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let backend = Arc::new(FakeBackend {
        ready: AtomicBool::new(true),
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(admin::serve(
        listener,
        Arc::clone(&backend),
        Arc::new(Metrics::new()),
        async {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        backend,
        stop,
        task,
    }
}

/// A parsed HTTP response.
struct Reply {
    code: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .expect("read the response");
    let raw = String::from_utf8(raw).expect("the admin port answers in UTF-8");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .expect("a blank line ends the head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let code = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a numeric status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let reply = Reply {
        code,
        headers,
        body: body.to_owned(),
    };
    // Every body here has a known length; chunked framing would need decoding.
    assert_eq!(
        reply.header("content-length").map(str::to_owned),
        Some(reply.body.len().to_string()),
        "{path} is sent with its length"
    );
    reply
}

#[tokio::test]
async fn metrics_are_served_as_openmetrics_text() {
    let server = start().await;
    let reply = get(server.addr, "/metrics").await;
    assert_eq!(reply.code, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(
        reply.body.contains("calm_build_info{version=\""),
        "{}",
        reply.body
    );
    // OpenMetrics text ends with an EOF marker.
    assert!(reply.body.trim_end().ends_with("# EOF"), "{}", reply.body);
}

#[tokio::test]
async fn livez_answers_ok_whether_or_not_the_node_is_ready() {
    let server = start().await;
    for ready in [true, false] {
        server.backend.ready.store(ready, Ordering::SeqCst);
        let reply = get(server.addr, "/livez").await;
        assert_eq!((reply.code, reply.body.as_str()), (200, "ok"));
    }
}

#[tokio::test]
async fn readyz_follows_the_node_readiness() {
    let server = start().await;
    let reply = get(server.addr, "/readyz").await;
    assert_eq!((reply.code, reply.body.as_str()), (200, "ok"));

    server.backend.ready.store(false, Ordering::SeqCst);
    let reply = get(server.addr, "/readyz").await;
    assert_eq!(reply.code, 503);
    assert!(!reply.body.is_empty() && !reply.body.contains('\n'));
    assert_ne!(reply.body, "ok");

    server.backend.ready.store(true, Ordering::SeqCst);
    assert_eq!(get(server.addr, "/readyz").await.code, 200);
}

#[tokio::test]
async fn health_answers_like_etcd() {
    // etcd's /health: {"health":"true"}, or "false" with a reason and a 503.
    let server = start().await;
    let reply = get(server.addr, "/health").await;
    assert_eq!(reply.code, 200);
    let body: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON");
    assert_eq!(body, serde_json::json!({ "health": "true" }));

    server.backend.ready.store(false, Ordering::SeqCst);
    let reply = get(server.addr, "/health").await;
    assert_eq!(reply.code, 503);
    let body: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON");
    assert_eq!(body["health"], "false");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|reason| !reason.is_empty())
    );
}

#[tokio::test]
async fn status_is_the_node_status_as_json() {
    let server = start().await;
    let reply = get(server.addr, "/status").await;
    assert_eq!(reply.code, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let status: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON");
    assert_eq!(status["node"], NODE.0);
    assert_eq!(status["cluster"], "test");
    assert_eq!(status["ready"], true);
    assert_eq!(status["keys"], 12);
    let members = status["members"].as_array().expect("a member list");
    let nodes: Vec<u64> = members
        .iter()
        .filter_map(|member| member["node"].as_u64())
        .collect();
    assert_eq!(nodes, vec![NODE.0, 7]);
    assert!(members.iter().all(|member| member["state"] == "alive"));
    assert_eq!(members[0]["peer_addr"], "127.0.0.1:2380");
}

#[tokio::test]
async fn an_unknown_path_is_not_found() {
    let server = start().await;
    for path in ["/", "/metricsx", "/status/extra", "/v3/kv/range"] {
        assert_eq!(get(server.addr, path).await.code, 404, "{path}");
    }
}

#[tokio::test]
async fn shutdown_ends_serve_and_closes_the_port() {
    let server = start().await;
    assert_eq!(get(server.addr, "/livez").await.code, 200);
    server.stop.send(()).expect("the server is running");
    // A guard against a hang, not a performance bound.
    let ended = tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("serve returns after shutdown")
        .expect("the serve task does not panic");
    assert!(ended.is_ok(), "{ended:?}");
    assert!(TcpStream::connect(server.addr).await.is_err());
}
