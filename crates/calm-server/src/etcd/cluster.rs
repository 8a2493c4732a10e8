//! The `Cluster` service (`v3rpc/member.go`): membership calls pass
//! through; a member add is refused first if a peer URL is not one etcd
//! would parse.

use std::sync::Arc;

use calm_proto::etcd::etcdserverpb::cluster_server::Cluster;
use calm_proto::etcd::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::backend::Coordinated;
use super::error::EtcdError;

/// The `Cluster` service over a backend.
pub(crate) struct ClusterService<B> {
    backend: Arc<B>,
}

impl<B> ClusterService<B> {
    pub(crate) fn new(backend: Arc<B>) -> Self {
        Self { backend }
    }
}

#[tonic::async_trait]
impl<B: Coordinated> Cluster for ClusterService<B> {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let request = request.into_inner();
        if request.peer_ur_ls.is_empty() || !request.peer_ur_ls.iter().all(|url| is_peer_url(url)) {
            return Err(EtcdError::MemberBadUrls.into());
        }
        self.backend.member_add(request).await.map(Response::new)
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let request = request.into_inner();
        self.backend.member_remove(request).await.map(Response::new)
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let request = request.into_inner();
        self.backend.member_update(request).await.map(Response::new)
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let request = request.into_inner();
        self.backend.member_list(request).await.map(Response::new)
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let request = request.into_inner();
        self.backend
            .member_promote(request)
            .await
            .map(Response::new)
    }
}

/// etcd's `types.NewURLs` rule for one URL, without Go's full URL parser:
/// `http` or `https` with a `host:port` and no path, or a `unix` or
/// `unixs` socket.
fn is_peer_url(url: &str) -> bool {
    let Some((scheme, rest)) = url.trim().split_once("://") else {
        return false;
    };
    match scheme {
        "http" | "https" => is_host_port(rest),
        "unix" | "unixs" => true,
        _ => false,
    }
}

/// Go's `net.SplitHostPort` succeeding on an authority with no path: a
/// host (bracketed when it holds colons) and a numeric port.
fn is_host_port(authority: &str) -> bool {
    // A query or fragment ends the authority; a path makes etcd refuse.
    let authority = authority.split(['?', '#']).next().unwrap_or_default();
    if authority.contains('/') {
        return false;
    }
    let Some((host, port)) = authority.rsplit_once(':') else {
        return false;
    };
    let host_ok = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.ends_with(']'),
        None => !host.contains(':'),
    };
    host_ok && port.bytes().all(|byte| byte.is_ascii_digit())
}
