//! The `calm.v1.Set` service: an add-wins observed-remove set of byte
//! strings under each key.

use std::sync::Arc;

use calm_proto::calm::v1::set_server::Set;
use calm_proto::calm::v1::{
    SetAddRequest, SetAddResponse, SetMembersRequest, SetMembersResponse, SetRemoveRequest,
    SetRemoveResponse,
};
use calm_replica::{ObjectKind, Operation, Value};
use tonic::{Request, Response, Status};

use super::call::Api;
use super::error::wrong_value;
use crate::backend::Backend;

/// `calm.v1.Set` over the shared API state.
pub(crate) struct SetService<B>(pub(crate) Arc<Api<B>>);

#[tonic::async_trait]
impl<B: Backend> Set for SetService<B> {
    async fn add(
        &self,
        request: Request<SetAddRequest>,
    ) -> Result<Response<SetAddResponse>, Status> {
        let op = |r: &SetAddRequest| Ok(Operation::SetAdd(r.element.clone()));
        let reply = |_, header| {
            Ok(SetAddResponse {
                header: Some(header),
            })
        };
        self.0.call(request, op, reply).await
    }

    async fn remove(
        &self,
        request: Request<SetRemoveRequest>,
    ) -> Result<Response<SetRemoveResponse>, Status> {
        let op = |r: &SetRemoveRequest| Ok(Operation::SetRemove(r.element.clone()));
        let reply = |_, header| {
            Ok(SetRemoveResponse {
                header: Some(header),
            })
        };
        self.0.call(request, op, reply).await
    }

    async fn members(
        &self,
        request: Request<SetMembersRequest>,
    ) -> Result<Response<SetMembersResponse>, Status> {
        let reply = |value, header| {
            let members = match value {
                Value::Absent => Vec::new(),
                // A BTreeSet of byte strings iterates in ascending bytewise order.
                Value::Set(members) => members.into_iter().collect(),
                other => return Err(wrong_value(&other, ObjectKind::Set)),
            };
            Ok(SetMembersResponse {
                header: Some(header),
                members,
            })
        };
        self.0.call(request, |_| Ok(Operation::Read), reply).await
    }
}
