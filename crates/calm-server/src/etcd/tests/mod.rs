//! The etcd services driven through a real tonic server on loopback with
//! etcd's generated clients, over the in-memory [`fake::Fake`] backend.

mod election;
mod fake;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod watch;

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Response, Status};

use self::fake::Fake;
use crate::etcd::{EtcdError, Limits, routes};

/// How long a test waits for something that should happen at once.
const PROMPTLY: Duration = Duration::from_secs(5);
/// How long a test waits to be confident something is not happening.
const A_WHILE: Duration = Duration::from_millis(200);

/// A served fake node and a channel to it.
struct Node {
    fake: Arc<Fake>,
    channel: Channel,
}

/// Serves the etcd routes over `fake` on 127.0.0.1 and connects to them.
async fn start_with(fake: Fake, limits: Limits) -> Node {
    let fake = Arc::new(fake);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("local address");
    let server = Server::builder()
        .add_routes(routes(Arc::clone(&fake), limits))
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(server);
    let channel = Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    Node { fake, channel }
}

/// [`start_with`] an empty fake and etcd's default limits.
async fn start() -> Node {
    start_with(Fake::with_snapshot(Vec::new()), Limits::default()).await
}

/// Asserts that `result` is etcd's `expected` error: code and message.
#[track_caller]
fn refused<T: Debug>(result: Result<Response<T>, Status>, expected: EtcdError) {
    let status = result.expect_err("the request is refused");
    assert_eq!(
        (status.code(), status.message()),
        (expected.code(), expected.to_string().as_str()),
    );
}

/// `future`'s output, failing the test if it takes longer than
/// [`PROMPTLY`].
async fn promptly<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PROMPTLY, future)
        .await
        .expect("completes promptly")
}

/// Waits (at most [`PROMPTLY`]) until `condition` holds.
async fn eventually(mut condition: impl FnMut() -> bool) {
    promptly(async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}
