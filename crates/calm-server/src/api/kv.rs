//! The `calm.v1.Kv` service: plain values replicated without a leader at
//! the `one`, `quorum` and `all` levels, with siblings and causal contexts.

use std::sync::Arc;

use calm_proto::calm::v1::kv_server::Kv;
use calm_proto::calm::v1::{
    KvDeleteRequest, KvDeleteResponse, KvGetRequest, KvGetResponse, KvPutRequest, KvPutResponse,
    KvQuorum, KvSibling, Level,
};
use calm_replica::coordinator::{Level as KvLevel, Overrides};
use calm_replica::kv::KvObject;
use tonic::{Request, Response, Status};

use super::call::{Api, KvHeader};
use crate::backend::{Backend, KvAnswer, KvCall, KvOp};

/// `calm.v1.Kv` over the shared API state.
pub(crate) struct KvService<B>(pub(crate) Arc<Api<B>>);

#[tonic::async_trait]
impl<B: Backend> Kv for KvService<B> {
    async fn put(&self, request: Request<KvPutRequest>) -> Result<Response<KvPutResponse>, Status> {
        let call = |r: &KvPutRequest| {
            let op = KvOp::Put {
                value: r.value.clone(),
                context: r.context.clone(),
            };
            kv_call(&r.key, r.level, op, r.quorum.as_ref())
        };
        let reply = |answer, header: KvHeader| {
            let (object, acks, hinted) = written(answer)?;
            let (siblings, context) = siblings(&object, &header.key);
            Ok(KvPutResponse {
                header: Some(header.header),
                siblings,
                context,
                acks,
                hinted_acks: hinted,
            })
        };
        self.0.kv(request, call, reply).await
    }

    async fn get(&self, request: Request<KvGetRequest>) -> Result<Response<KvGetResponse>, Status> {
        let call = |r: &KvGetRequest| kv_call(&r.key, r.level, KvOp::Get, r.quorum.as_ref());
        let reply = |answer, header: KvHeader| {
            let KvAnswer::Read { object, replies } = answer else {
                return Err(Status::internal("a read was answered as a write"));
            };
            let (siblings, context) = siblings(&object, &header.key);
            Ok(KvGetResponse {
                header: Some(header.header),
                siblings,
                context,
                replies: u32::try_from(replies).unwrap_or(u32::MAX),
            })
        };
        self.0.kv(request, call, reply).await
    }

    async fn delete(
        &self,
        request: Request<KvDeleteRequest>,
    ) -> Result<Response<KvDeleteResponse>, Status> {
        let call = |r: &KvDeleteRequest| {
            let op = KvOp::Delete {
                context: r.context.clone(),
            };
            kv_call(&r.key, r.level, op, r.quorum.as_ref())
        };
        let reply = |answer, header: KvHeader| {
            let (object, acks, hinted) = written(answer)?;
            let (_, context) = siblings(&object, &header.key);
            Ok(KvDeleteResponse {
                header: Some(header.header),
                context,
                acks,
                hinted_acks: hinted,
            })
        };
        self.0.kv(request, call, reply).await
    }
}

/// The node's request for the API's fields, or INVALID_ARGUMENT /
/// UNIMPLEMENTED before anything is sent.
fn kv_call(key: &[u8], level: i32, op: KvOp, quorum: Option<&KvQuorum>) -> Result<KvCall, Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument("the key is empty"));
    }
    let level = match Level::try_from(level) {
        Ok(Level::Unspecified | Level::Quorum) => KvLevel::Quorum,
        Ok(Level::One) => KvLevel::One,
        Ok(Level::All) => KvLevel::All,
        Ok(other) => {
            return Err(Status::unimplemented(format!(
                "{} is not offered by the Kv service; LEVEL_ONE, LEVEL_QUORUM and LEVEL_ALL are",
                other.as_str_name()
            )));
        }
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown level {level}; expected LEVEL_ONE, LEVEL_QUORUM or LEVEL_ALL"
            )));
        }
    };
    let given = |value: u32| (value > 0).then_some(value as usize);
    let overrides = quorum.map_or_else(Overrides::default, |q| Overrides {
        n: given(q.n),
        r: given(q.r),
        w: given(q.w),
    });
    Ok(KvCall {
        key: key.to_vec(),
        op,
        level,
        overrides,
    })
}

fn written(answer: KvAnswer) -> Result<(KvObject, u32, u32), Status> {
    match answer {
        KvAnswer::Written {
            object,
            acks,
            hinted,
        } => Ok((
            object,
            u32::try_from(acks).unwrap_or(u32::MAX),
            u32::try_from(hinted).unwrap_or(u32::MAX),
        )),
        KvAnswer::Read { .. } => Err(Status::internal("a write was answered as a read")),
    }
}

/// The API's siblings and context of `object` for `key`.
fn siblings(object: &KvObject, key: &[u8]) -> (Vec<KvSibling>, Vec<u8>) {
    let read = object.get(key);
    let siblings = read
        .siblings
        .into_iter()
        .map(|sibling| KvSibling {
            tombstone: sibling.is_none(),
            value: sibling.unwrap_or_default(),
        })
        .collect();
    (siblings, read.context)
}
