//! The `calm.v1.Counter` service: a PN-counter under each key.

use std::sync::Arc;

use calm_proto::calm::v1::counter_server::Counter;
use calm_proto::calm::v1::{
    CounterGetRequest, CounterGetResponse, CounterIncrementRequest, CounterIncrementResponse,
};
use calm_replica::{ObjectKind, Operation, Value};
use tonic::{Request, Response, Status};

use super::call::{Api, counter_value, signed};
use super::error::wrong_value;
use crate::backend::Backend;

/// `calm.v1.Counter` over the shared API state.
pub(crate) struct CounterService<B>(pub(crate) Arc<Api<B>>);

#[tonic::async_trait]
impl<B: Backend> Counter for CounterService<B> {
    async fn increment(
        &self,
        request: Request<CounterIncrementRequest>,
    ) -> Result<Response<CounterIncrementResponse>, Status> {
        let op = |r: &CounterIncrementRequest| {
            signed(r.by, "by", Operation::Increment, Operation::Decrement)
        };
        let reply = |_, header| {
            Ok(CounterIncrementResponse {
                header: Some(header),
            })
        };
        self.0.call(request, op, reply).await
    }

    async fn get(
        &self,
        request: Request<CounterGetRequest>,
    ) -> Result<Response<CounterGetResponse>, Status> {
        let reply = |value, header| {
            let value = match value {
                Value::Absent => 0,
                Value::Counter(value) => counter_value(value)?,
                other => return Err(wrong_value(&other, ObjectKind::Counter)),
            };
            Ok(CounterGetResponse {
                header: Some(header),
                value,
            })
        };
        self.0.call(request, |_| Ok(Operation::Read), reply).await
    }
}
