//! The `calm.v1.Cluster` service: the member table and the node's status,
//! answered locally from the backend's view.

use std::sync::Arc;

use calm_membership::MemberState;
use calm_proto::calm::v1::cluster_server::Cluster;
use calm_proto::calm::v1::{
    self as pb, Member, MembersRequest, MembersResponse, ResponseHeader, StatusRequest,
    StatusResponse,
};
use tonic::{Request, Response, Status};

use super::call::Api;
use crate::backend::{Backend, MemberInfo, NodeStatus};

/// The gRPC name of the service, as the metrics label it.
const SERVICE: &str = "calm.v1.Cluster";

/// `calm.v1.Cluster` over the shared API state.
pub(crate) struct ClusterService<B>(pub(crate) Arc<Api<B>>);

#[tonic::async_trait]
impl<B: Backend> Cluster for ClusterService<B> {
    async fn members(
        &self,
        _request: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let api = &self.0;
        let answer = async {
            let mut members = api.backend.members();
            members.sort_by_key(|member| member.node);
            Ok(Response::new(MembersResponse {
                header: Some(header(api.backend.node().0)),
                members: members.iter().map(member).collect(),
            }))
        };
        api.measured(SERVICE, "Members", "none", answer).await
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let api = &self.0;
        let answer = async { Ok(Response::new(status(api.backend.status()))) };
        api.measured(SERVICE, "Status", "none", answer).await
    }
}

/// A cluster response's header: no token and no level.
fn header(node_id: u64) -> ResponseHeader {
    ResponseHeader {
        causal_token: Vec::new(),
        node_id,
        level: pb::Level::Unspecified as i32,
    }
}

/// A member as the API lists it: its client address once learned, else its
/// peer address.
fn member(info: &MemberInfo) -> Member {
    let address = info.client_addr.unwrap_or(info.peer_addr);
    Member {
        node_id: info.node.0,
        address: address.to_string(),
        state: member_state(info.state) as i32,
        incarnation: u64::from(info.incarnation),
        ownership_fraction: info.ownership,
    }
}

fn member_state(state: MemberState) -> pb::MemberState {
    match state {
        MemberState::Alive => pb::MemberState::Alive,
        MemberState::Suspect => pb::MemberState::Suspect,
        MemberState::Down => pb::MemberState::Dead,
        MemberState::Left => pb::MemberState::Left,
    }
}

fn status(status: NodeStatus) -> StatusResponse {
    let alive = status
        .members
        .iter()
        .filter(|member| member.state == MemberState::Alive)
        .count();
    StatusResponse {
        header: Some(header(status.node.0)),
        server_version: status.version.to_owned(),
        cluster_name: status.cluster,
        members_total: saturating_u32(status.members.len()),
        members_alive: saturating_u32(alive),
        keys: status.keys,
        key_bytes_max: status.key_bytes_max,
        payload_bytes_max: status.payload_bytes_max,
        tax: status
            .tax
            .into_iter()
            .map(|tax| pb::LevelTax {
                level: tax.level.to_owned(),
                requests: tax.requests,
                round_trips: tax.round_trips,
                latency_p50_ms: tax.latency_p50_ms,
                latency_p99_ms: tax.latency_p99_ms,
            })
            .collect(),
        fsyncs: status.fsyncs,
        messages_sent: status
            .messages_sent
            .into_iter()
            .map(|(channel, count)| pb::ChannelCount { channel, count })
            .collect(),
    }
}

fn saturating_u32(count: usize) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}
