//! The `calm.v1.Register` service: a last-writer-wins or multi-value
//! register under each key, the kind fixed by the key's first write.

use std::sync::Arc;

use calm_proto::calm::v1::register_server::Register;
use calm_proto::calm::v1::{
    RegisterGetRequest, RegisterGetResponse, RegisterKind, RegisterSetRequest, RegisterSetResponse,
};
use calm_replica::{ObjectKind, Operation, Value};
use tonic::{Request, Response, Status};

use super::call::Api;
use super::error::wrong_value;
use crate::backend::Backend;

/// `calm.v1.Register` over the shared API state.
pub(crate) struct RegisterService<B>(pub(crate) Arc<Api<B>>);

#[tonic::async_trait]
impl<B: Backend> Register for RegisterService<B> {
    async fn set(
        &self,
        request: Request<RegisterSetRequest>,
    ) -> Result<Response<RegisterSetResponse>, Status> {
        let reply = |_, header| {
            Ok(RegisterSetResponse {
                header: Some(header),
            })
        };
        self.0.call(request, write, reply).await
    }

    async fn get(
        &self,
        request: Request<RegisterGetRequest>,
    ) -> Result<Response<RegisterGetResponse>, Status> {
        let reply = |value, header| {
            let (kind, values) = match value {
                Value::Absent => (RegisterKind::Unspecified, Vec::new()),
                Value::Register(value) => (RegisterKind::Lww, value.into_iter().collect()),
                // Ascending bytewise, as a BTreeSet of byte strings iterates.
                Value::MultiRegister(values) => {
                    (RegisterKind::MultiValue, values.into_iter().collect())
                }
                other => return Err(wrong_value(&other, ObjectKind::Register)),
            };
            Ok(RegisterGetResponse {
                header: Some(header),
                kind: kind as i32,
                values,
            })
        };
        self.0.call(request, |_| Ok(Operation::Read), reply).await
    }
}

/// The write for the requested register kind (unspecified means LWW).
fn write(request: &RegisterSetRequest) -> Result<Operation, Status> {
    let value = request.value.clone();
    match RegisterKind::try_from(request.kind) {
        Ok(RegisterKind::Unspecified | RegisterKind::Lww) => Ok(Operation::RegisterSet(value)),
        Ok(RegisterKind::MultiValue) => Ok(Operation::MultiRegisterWrite(value)),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown register kind {}",
            request.kind
        ))),
    }
}
