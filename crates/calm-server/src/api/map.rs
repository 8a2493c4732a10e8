//! The `calm.v1.Map` service: an observed-remove map of register, counter
//! and set fields under each key, one namespace per field kind.

use std::sync::Arc;

use calm_proto::calm::v1::map_server::Map;
use calm_proto::calm::v1::map_update_request::Update;
use calm_proto::calm::v1::{
    MapCounterField, MapGetRequest, MapGetResponse, MapRegisterField, MapRemoveFieldRequest,
    MapRemoveFieldResponse, MapSetField, MapUpdateRequest, MapUpdateResponse, ResponseHeader,
};
use calm_replica::{MapValue, ObjectKind, Operation, Value};
use tonic::{Request, Response, Status};

use super::call::{Api, counter_value, nonzero};
use super::error::wrong_value;
use crate::backend::Backend;

/// `calm.v1.Map` over the shared API state.
pub(crate) struct MapService<B>(pub(crate) Arc<Api<B>>);

#[tonic::async_trait]
impl<B: Backend> Map for MapService<B> {
    async fn update(
        &self,
        request: Request<MapUpdateRequest>,
    ) -> Result<Response<MapUpdateResponse>, Status> {
        let reply = |_, header| {
            Ok(MapUpdateResponse {
                header: Some(header),
            })
        };
        self.0.call(request, update, reply).await
    }

    async fn remove_field(
        &self,
        request: Request<MapRemoveFieldRequest>,
    ) -> Result<Response<MapRemoveFieldResponse>, Status> {
        let op = |r: &MapRemoveFieldRequest| Ok(Operation::MapRemoveField(r.field.clone()));
        let reply = |_, header| {
            Ok(MapRemoveFieldResponse {
                header: Some(header),
            })
        };
        self.0.call(request, op, reply).await
    }

    async fn get(
        &self,
        request: Request<MapGetRequest>,
    ) -> Result<Response<MapGetResponse>, Status> {
        let reply = |value, header| match value {
            Value::Absent => map_response(MapValue::default(), header),
            Value::Map(map) => map_response(map, header),
            other => Err(wrong_value(&other, ObjectKind::Map)),
        };
        self.0.call(request, |_| Ok(Operation::Read), reply).await
    }
}

/// The operation of a `Map.Update`.
fn update(request: &MapUpdateRequest) -> Result<Operation, Status> {
    let field = request.field.clone();
    let update = request.update.clone();
    Ok(match update {
        None => return Err(Status::invalid_argument("`update` is not set")),
        Some(Update::RegisterWrite(value)) => Operation::MapRegisterWrite { field, value },
        Some(Update::CounterIncrement(by)) => {
            let amount = nonzero(by.unsigned_abs(), "counter_increment")?;
            if by > 0 {
                Operation::MapCounterIncrement { field, amount }
            } else {
                Operation::MapCounterDecrement { field, amount }
            }
        }
        Some(Update::SetAdd(element)) => Operation::MapSetAdd { field, element },
        Some(Update::SetRemove(element)) => Operation::MapSetRemove { field, element },
    })
}

/// A map's fields as the response lists them, each ascending by field name
/// (the order of the value's BTreeMaps).
fn map_response(map: MapValue, header: ResponseHeader) -> Result<MapGetResponse, Status> {
    let registers = map
        .registers
        .into_iter()
        .map(|(field, values)| MapRegisterField {
            field,
            values: values.into_iter().collect(),
        })
        .collect();
    let counters = map
        .counters
        .into_iter()
        .map(|(field, value)| {
            Ok(MapCounterField {
                field,
                value: counter_value(value)?,
            })
        })
        .collect::<Result<_, Status>>()?;
    let sets = map
        .sets
        .into_iter()
        .map(|(field, members)| MapSetField {
            field,
            members: members.into_iter().collect(),
        })
        .collect();
    Ok(MapGetResponse {
        header: Some(header),
        registers,
        counters,
        sets,
    })
}
