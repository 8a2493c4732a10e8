//! The `calm.v1.BoundedCounter` service: an escrow counter under each key
//! that never drops below zero; every RPC acts on the receiving node's
//! rights.

use std::collections::BTreeMap;
use std::sync::Arc;

use calm_proto::calm::v1::bounded_counter_server::BoundedCounter;
use calm_proto::calm::v1::{
    BoundedCounterDecrementRequest, BoundedCounterDecrementResponse, BoundedCounterGetRequest,
    BoundedCounterGetResponse, BoundedCounterIncrementRequest, BoundedCounterIncrementResponse,
    BoundedCounterTransferRequest, BoundedCounterTransferResponse, NodeRights, ResponseHeader,
};
use calm_replica::{ObjectKind, Operation, Value};
use calm_types::NodeId;
use tonic::{Request, Response, Status};

use super::call::{Api, nonzero};
use super::error::{out_of_range, wrong_value};
use crate::backend::Backend;

/// `calm.v1.BoundedCounter` over the shared API state.
pub(crate) struct BoundedService<B>(pub(crate) Arc<Api<B>>);

#[tonic::async_trait]
impl<B: Backend> BoundedCounter for BoundedService<B> {
    async fn increment(
        &self,
        request: Request<BoundedCounterIncrementRequest>,
    ) -> Result<Response<BoundedCounterIncrementResponse>, Status> {
        let op = |r: &BoundedCounterIncrementRequest| {
            Ok(Operation::BoundedIncrement(nonzero(r.amount, "amount")?))
        };
        let reply = |_, header| {
            Ok(BoundedCounterIncrementResponse {
                header: Some(header),
            })
        };
        self.0.call(request, op, reply).await
    }

    async fn decrement(
        &self,
        request: Request<BoundedCounterDecrementRequest>,
    ) -> Result<Response<BoundedCounterDecrementResponse>, Status> {
        let op = |r: &BoundedCounterDecrementRequest| {
            Ok(Operation::BoundedDecrement(nonzero(r.amount, "amount")?))
        };
        let reply = |_, header| {
            Ok(BoundedCounterDecrementResponse {
                header: Some(header),
            })
        };
        self.0.call(request, op, reply).await
    }

    async fn transfer(
        &self,
        request: Request<BoundedCounterTransferRequest>,
    ) -> Result<Response<BoundedCounterTransferResponse>, Status> {
        let op = |r: &BoundedCounterTransferRequest| {
            Ok(Operation::BoundedTransfer {
                to: NodeId(r.to_node_id),
                amount: nonzero(r.amount, "amount")?,
            })
        };
        let reply = |_, header| {
            Ok(BoundedCounterTransferResponse {
                header: Some(header),
            })
        };
        self.0.call(request, op, reply).await
    }

    async fn get(
        &self,
        request: Request<BoundedCounterGetRequest>,
    ) -> Result<Response<BoundedCounterGetResponse>, Status> {
        let reply = |value, header| match value {
            Value::Absent => get_response(header, 0, 0, BTreeMap::new()),
            Value::BoundedCounter {
                value,
                local_rights,
                rights,
            } => get_response(header, value, local_rights, rights),
            other => Err(wrong_value(&other, ObjectKind::BoundedCounter)),
        };
        self.0.call(request, |_| Ok(Operation::Read), reply).await
    }
}

/// A `BoundedCounter.Get` reply; the rights come ascending by node id, as
/// the BTreeMap iterates.
fn get_response(
    header: ResponseHeader,
    value: i128,
    local_rights: u64,
    rights: BTreeMap<NodeId, u64>,
) -> Result<BoundedCounterGetResponse, Status> {
    Ok(BoundedCounterGetResponse {
        header: Some(header),
        value: u64::try_from(value).map_err(|_| out_of_range(value))?,
        local_rights,
        rights: rights
            .into_iter()
            .map(|(node, rights)| NodeRights {
                node_id: node.0,
                rights,
            })
            .collect(),
    })
}
