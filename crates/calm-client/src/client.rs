//! [`Client`]: endpoints and their lazy channels, failover between them,
//! the per-call deadline, and the session's causal tokens. The typed
//! methods, one per RPC, live in `services`.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use calm_proto::calm::v1 as pb;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::error::ClientError;
use crate::tokens::{CausalToken, TokenCache};
use crate::types::{Level, Reply};

/// The most endpoints one client takes: failover walks them all on every
/// failing call, so an unbounded list would make one call unbounded.
pub const ENDPOINTS_MAX: usize = 64;

/// How a [`Client`] behaves; [`ClientConfig::default`] suits most uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// The deadline of one call, failover included. Default 5 s.
    pub timeout: Duration,
    /// The bound on opening a connection to one endpoint, so a
    /// black-holed endpoint fails over instead of eating the whole call's
    /// deadline. Default 1 s.
    pub connect_timeout: Duration,
    /// How many keys' causal tokens the session keeps; when full, the key
    /// whose token arrived longest ago loses its token. Default 10,000.
    pub token_keys_max: usize,
    /// The level sent with every data request. Default [`Level::Local`].
    pub level: Level,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            token_keys_max: 10_000,
            level: Level::Local,
        }
    }
}

/// A client session against one calm cluster.
///
/// Requests go to the current endpoint. When it is unreachable or answers
/// `UNAVAILABLE`, the client tries the next endpoint (round robin, each
/// endpoint at most once per call) and stays on the first that serves;
/// when all fail, the call returns the last endpoint's error. A call that
/// outlives [`ClientConfig::timeout`] returns [`ClientError::Timeout`], and
/// the next call starts at the next endpoint.
///
/// The client is also a *session*: it keeps, per key, the latest causal
/// token it received and sends it with every request for that key, so the
/// session reads its own writes and never reads older state than it has
/// seen, even when it fails over to another node. Methods take `&self`;
/// share one client (in an `Arc`) to share its session.
#[derive(Debug)]
pub struct Client {
    endpoints: Vec<Endpoint>,
    /// The endpoint the next call starts at. Relaxed ordering suffices: a
    /// stale read only makes a call start at an endpoint that was current
    /// a moment ago, which failover handles.
    current: AtomicUsize,
    config: ClientConfig,
    // A std Mutex, not a tokio one: nothing awaits while it is held.
    tokens: Mutex<TokenCache>,
}

/// One endpoint: the address as the user wrote it, and its channel.
#[derive(Debug)]
struct Endpoint {
    address: String,
    channel: Channel,
}

/// Whether a request may be sent again after a failure that leaves it in
/// doubt (the connection broke after the request may have reached the
/// server). An `UNAVAILABLE` answer changed nothing, so every request fails
/// over on it; only idempotent requests also fail over on a broken call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Idempotence {
    /// Applying it twice equals applying it once: reads, set adds and
    /// removes, register writes, field removals.
    Idempotent,
    /// Applying it twice counts twice: increments, decrements, transfers.
    NotIdempotent,
}

impl Client {
    /// A client with the default configuration for `endpoints`, each
    /// `host:port` (an `http://` prefix is accepted). Connections open
    /// lazily, on the first call to each endpoint, so this fails only on
    /// malformed input; it must run inside a tokio runtime.
    pub fn connect(endpoints: &[impl AsRef<str>]) -> Result<Client, ClientError> {
        Client::connect_with(endpoints, ClientConfig::default())
    }

    /// A client with `config` for `endpoints`; see [`Client::connect`].
    pub fn connect_with(
        endpoints: &[impl AsRef<str>],
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        validate_config(&config)?;
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        if endpoints.len() > ENDPOINTS_MAX {
            return Err(ClientError::InvalidConfig("more than 64 endpoints"));
        }
        let addresses = endpoints
            .iter()
            .map(|endpoint| parse_endpoint(endpoint.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        // tonic spawns each channel's connection task at creation, and
        // would panic outside a runtime; say so instead.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ClientError::NoRuntime);
        }
        let endpoints = addresses
            .into_iter()
            .map(|address| {
                let channel = channel(&address, &config)?;
                Ok(Endpoint { address, channel })
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(Client {
            endpoints,
            current: AtomicUsize::new(0),
            tokens: Mutex::new(TokenCache::new(config.token_keys_max)),
            config,
        })
    }

    /// The endpoints, `host:port`, in failover order.
    pub fn endpoints(&self) -> Vec<&str> {
        self.endpoints.iter().map(|e| e.address.as_str()).collect()
    }

    /// The endpoint the next call starts at.
    pub fn current_endpoint(&self) -> &str {
        &self.endpoints[self.current_index()].address
    }

    /// The client's configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The latest causal token the session received for `key`, which its
    /// next request on `key` will carry.
    pub fn token(&self, key: impl AsRef<[u8]>) -> Option<CausalToken> {
        self.lock_tokens().get(key.as_ref()).cloned()
    }

    /// Makes `token` the one the next request on `key` carries, for
    /// example a token another process received, so this session observes
    /// everything that token covers. Replaces the session's own token for
    /// `key`, so pass the newer of the two.
    pub fn set_token(&self, key: impl AsRef<[u8]>, token: CausalToken) {
        self.lock_tokens().record(key.as_ref(), token);
    }

    /// Forgets every token: the session starts afresh, without guarantees
    /// about what it saw before.
    pub fn forget_tokens(&self) {
        self.lock_tokens().clear();
    }

    fn lock_tokens(&self) -> std::sync::MutexGuard<'_, TokenCache> {
        // The cache's methods cannot panic halfway through an update, so a
        // poisoned lock still guards a consistent cache.
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn current_index(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.endpoints.len()
    }

    /// The level field every data request carries.
    pub(crate) fn level(&self) -> i32 {
        self.config.level.to_proto().into()
    }

    /// The token bytes a request on `key` carries (empty if none).
    pub(crate) fn token_bytes(&self, key: &[u8]) -> Vec<u8> {
        self.lock_tokens()
            .get(key)
            .map(|token| token.as_bytes().to_vec())
            .unwrap_or_default()
    }

    /// Turns a data reply's header into a [`Reply`], recording its token as
    /// the latest for `key`.
    pub(crate) fn accept<T>(
        &self,
        key: &[u8],
        endpoint: usize,
        header: Option<pb::ResponseHeader>,
        value: T,
    ) -> Result<Reply<T>, ClientError> {
        let header = self.header(endpoint, header)?;
        let token = CausalToken::from_bytes(header.causal_token);
        self.lock_tokens().record(key, token.clone());
        Ok(Reply {
            value,
            token,
            node_id: header.node_id,
            level: Level::from_proto(header.level),
        })
    }

    /// A reply's header, which the API requires in every response.
    pub(crate) fn header(
        &self,
        endpoint: usize,
        header: Option<pb::ResponseHeader>,
    ) -> Result<pb::ResponseHeader, ClientError> {
        header.ok_or_else(|| ClientError::InvalidReply {
            endpoint: self.endpoints[endpoint].address.clone(),
            reason: "the reply has no response header",
        })
    }

    /// Runs one RPC with failover: `attempt(channel, remaining)` sends the
    /// request on `channel`; `remaining` is what is left of the call's
    /// deadline. Returns the reply and the index of the endpoint that
    /// answered.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        idempotence: Idempotence,
        mut attempt: F,
    ) -> Result<(T, usize), ClientError>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.config.timeout;
        let start = self.current_index();
        let count = self.endpoints.len();
        let mut last_error = None;
        for offset in 0..count {
            let index = (start + offset) % count;
            match self.attempt_at(index, deadline, &mut attempt).await {
                Ok(reply) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok((reply, index));
                }
                Err(Failure::TimedOut(error)) => {
                    // A black-holed endpoint would time out every call;
                    // the next call starts elsewhere.
                    self.current.store((index + 1) % count, Ordering::Relaxed);
                    return Err(error);
                }
                Err(Failure::Status(error, status)) => {
                    if !fails_over(&status, idempotence) {
                        return Err(error);
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.expect("a client has at least one endpoint, so the loop ran"))
    }

    /// Runs one RPC at endpoint `index` only, without failover.
    pub(crate) async fn call_at<T, F, Fut>(
        &self,
        index: usize,
        mut attempt: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.config.timeout;
        match self.attempt_at(index, deadline, &mut attempt).await {
            Ok(reply) => Ok(reply),
            Err(Failure::TimedOut(error) | Failure::Status(error, _)) => Err(error),
        }
    }

    /// Whether `index` names an endpoint.
    pub(crate) fn has_endpoint(&self, index: usize) -> bool {
        index < self.endpoints.len()
    }

    async fn attempt_at<T, F, Fut>(
        &self,
        index: usize,
        deadline: Instant,
        attempt: &mut F,
    ) -> Result<T, Failure>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let endpoint = &self.endpoints[index];
        let timed_out = || {
            Failure::TimedOut(ClientError::Timeout {
                endpoint: endpoint.address.clone(),
                timeout: self.config.timeout,
            })
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(timed_out());
        }
        let sent = attempt(endpoint.channel.clone(), remaining);
        match tokio::time::timeout_at(deadline, sent).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            // tonic enforces the request's `grpc-timeout` on the client side
            // too, racing the deadline here; either way it is a timeout.
            Ok(Err(status)) if is_deadline_expiry(&status) => Err(timed_out()),
            Ok(Err(status)) => Err(Failure::Status(
                ClientError::from_status(&endpoint.address, &status),
                status,
            )),
            Err(_elapsed) => Err(timed_out()),
        }
    }
}

/// How one attempt failed.
enum Failure {
    TimedOut(ClientError),
    Status(ClientError, tonic::Status),
}

/// Whether `status` is tonic's own report that the request's deadline
/// passed (a `TimeoutExpired` in its source chain).
fn is_deadline_expiry(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// Whether a failed attempt moves on to the next endpoint.
fn fails_over(status: &tonic::Status, idempotence: Idempotence) -> bool {
    if status.code() == tonic::Code::Unavailable {
        return true;
    }
    // A status with a source was raised locally by the transport (a broken
    // connection), not sent by a server, which sends only code and text.
    let broken_call = std::error::Error::source(status).is_some();
    broken_call && idempotence == Idempotence::Idempotent
}

/// Wraps `message` in a request that tells the server its deadline.
pub(crate) fn request<M>(message: M, remaining: Duration) -> tonic::Request<M> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(remaining);
    request
}

fn validate_config(config: &ClientConfig) -> Result<(), ClientError> {
    if config.timeout.is_zero() {
        return Err(ClientError::InvalidConfig("the call timeout is zero"));
    }
    if config.connect_timeout.is_zero() {
        return Err(ClientError::InvalidConfig("the connect timeout is zero"));
    }
    if config.token_keys_max == 0 {
        return Err(ClientError::InvalidConfig("token_keys_max is zero"));
    }
    Ok(())
}

/// Checks that `endpoint` is `host:port` (optionally `http://host:port`)
/// and returns `host:port`.
pub(crate) fn parse_endpoint(endpoint: &str) -> Result<String, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let address = match endpoint.split_once("://") {
        None => endpoint,
        Some(("http", rest)) => rest,
        Some(("https", _)) => return Err(invalid("TLS (https) is not supported yet")),
        Some(_) => return Err(invalid("the only scheme accepted is http://")),
    };
    let address = address.strip_suffix('/').unwrap_or(address);
    if address.is_empty() {
        return Err(invalid("expected host:port"));
    }
    if address.contains(|c: char| c.is_whitespace() || matches!(c, '/' | '@' | '?' | '#')) {
        return Err(invalid("expected host:port, without a path or spaces"));
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(invalid("expected host:port (the port is missing)"));
    };
    if host.is_empty() {
        return Err(invalid("the host is empty"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(invalid("an IPv6 host goes in brackets: [::1]:2379"));
    }
    match port.parse::<u16>() {
        Ok(0) => Err(invalid("the port is zero")),
        Ok(_) => Ok(address.to_owned()),
        Err(_) => Err(invalid("the port is not a number from 1 to 65535")),
    }
}

/// A lazy channel to `address`: nothing connects until the first call.
fn channel(address: &str, config: &ClientConfig) -> Result<Channel, ClientError> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|error| ClientError::InvalidEndpoint {
            endpoint: address.to_owned(),
            reason: error.to_string(),
        })?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true);
    Ok(endpoint.connect_lazy())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(endpoint: &str, expected: Result<&str, &str>) {
        let parsed = parse_endpoint(endpoint);
        match (parsed, expected) {
            (Ok(address), Ok(want)) => assert_eq!(address, want, "{endpoint}"),
            (Err(ClientError::InvalidEndpoint { reason, .. }), Err(want)) => {
                assert!(
                    reason.contains(want),
                    "{endpoint}: {reason:?} lacks {want:?}"
                )
            }
            (got, want) => panic!("{endpoint}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn endpoints_are_host_and_port() {
        check("127.0.0.1:2379", Ok("127.0.0.1:2379"));
        check("node-1.calm:2379", Ok("node-1.calm:2379"));
        check("http://localhost:2379/", Ok("localhost:2379"));
        check("[::1]:2379", Ok("[::1]:2379"));
        check("", Err("expected host:port"));
        check("localhost", Err("port is missing"));
        check(":2379", Err("host is empty"));
        check("localhost:http", Err("not a number"));
        check("localhost:70000", Err("not a number"));
        check("localhost:0", Err("port is zero"));
        check("::1:2379", Err("brackets"));
        check("https://localhost:2379", Err("TLS"));
        check("unix:///tmp/sock", Err("scheme"));
        check("localhost:2379/path", Err("without a path"));
        check("local host:2379", Err("spaces"));
    }

    #[test]
    fn only_unavailable_fails_over_a_non_idempotent_request() {
        let unavailable = tonic::Status::unavailable("node stopping");
        let refused = tonic::Status::failed_precondition("wrong type");
        // A status raised locally from an I/O error mid-call carries its
        // cause as a source; a server's status never does.
        let broken = tonic::Status::from_error(Box::new(std::io::Error::other("reset")));
        assert!(fails_over(&unavailable, Idempotence::NotIdempotent));
        assert!(fails_over(&unavailable, Idempotence::Idempotent));
        assert!(!fails_over(&refused, Idempotence::Idempotent));
        assert!(fails_over(&broken, Idempotence::Idempotent));
        assert!(!fails_over(&broken, Idempotence::NotIdempotent));
    }

    #[test]
    fn tonics_own_deadline_expiry_is_recognised() {
        let expired = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert!(is_deadline_expiry(&expired));
        assert!(!is_deadline_expiry(&tonic::Status::cancelled(
            "by the peer"
        )));
    }

    #[test]
    fn a_config_with_a_zero_bound_is_refused() {
        let zero_timeout = ClientConfig {
            timeout: Duration::ZERO,
            ..ClientConfig::default()
        };
        assert!(matches!(
            validate_config(&zero_timeout),
            Err(ClientError::InvalidConfig(_))
        ));
        let zero_keys = ClientConfig {
            token_keys_max: 0,
            ..ClientConfig::default()
        };
        assert!(matches!(
            validate_config(&zero_keys),
            Err(ClientError::InvalidConfig(_))
        ));
        assert_eq!(validate_config(&ClientConfig::default()), Ok(()));
    }
}
