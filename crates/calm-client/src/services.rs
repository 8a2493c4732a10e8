//! The typed methods of [`Client`], one per RPC of `calm.v1`: each builds
//! the generated request (with the session's token for the key), sends it
//! through the client's failover, and converts the reply to plain types.

use calm_proto::calm::v1 as pb;
use pb::bounded_counter_client::BoundedCounterClient;
use pb::cluster_client::ClusterClient;
use pb::counter_client::CounterClient;
use pb::kv_client::KvClient;
use pb::map_client::MapClient;
use pb::register_client::RegisterClient;
use pb::set_client::SetClient;

use crate::client::{Client, Idempotence, request};
use crate::error::ClientError;
use crate::types::{
    BoundedCounterValue, KvOptions, KvValue, KvWritten, Level, MapUpdate, MapValue, Member,
    NodeStatus, RegisterKind, RegisterValue, Reply, siblings,
};

/// Counter: a PN-counter per key.
impl Client {
    /// Adds `by` (negative: subtracts) to the counter at `key`, creating
    /// it if absent. Not idempotent: it fails over only on `UNAVAILABLE`.
    pub async fn counter_increment(
        &self,
        key: impl AsRef<[u8]>,
        by: i64,
    ) -> Result<Reply<()>, ClientError> {
        let key = key.as_ref();
        let message = pb::CounterIncrementRequest {
            key: key.to_vec(),
            level: self.level(),
            causal_token: self.token_bytes(key),
            by,
        };
        let (reply, at) = self
            .call(Idempotence::NotIdempotent, |channel, remaining| {
                let request = request(message.clone(), remaining);
                async move { CounterClient::new(channel).increment(request).await }
            })
            .await?;
        self.accept(key, at, reply.header, ())
    }

    /// Reads the counter at `key`; an absent key reads 0.
    pub async fn counter_get(&self, key: impl AsRef<[u8]>) -> Result<Reply<i64>, ClientError> {
        let key = key.as_ref();
        let message = pb::CounterGetRequest {
            key: key.to_vec(),
            level: self.level(),
            causal_token: self.token_bytes(key),
        };
        let (reply, at) = self
            .call(Idempotence::Idempotent, |channel, remaining| {
                let request = request(message.clone(), remaining);
                async move { CounterClient::new(channel).get(request).await }
            })
            .await?;
        self.accept(key, at, reply.header, reply.value)
    }
}

/// Set: an add-wins observed-remove set of byte strings per key.
impl Client {
    /// Adds `element` to the set at `key`, creating it if absent.
    pub async fn set_add(
        &self,
        key: impl AsRef<[u8]>,
        element: impl AsRef<[u8]>,
    ) -> Result<Reply<()>, ClientError> {
        let key = key.as_ref();
        let message = pb::SetAddRequest {
            key: key.to_vec(),
            level: self.level(),
            causal_token: self.token_bytes(key),
            element: element.as_ref().to_vec(),
        };
        let (reply, at) = self
            .call(Idempotence::Idempotent, |channel, remaining| {
                let request = request(message.clone(), remaining);
                async move { SetClient::new(channel).add(request).await }
            })
            .await?;
        self.accept(key, at, reply.header, ())
    }

    /// Removes `element` from the set at `key`, as far as the receiving
    /// node has observed it; removing an absent element changes nothing.
    pub async fn set_remove(
        &self,
        key: impl AsRef<[u8]>,
        element: impl AsRef<[u8]>,
    ) -> Result<Reply<()>, ClientError> {
        let key = key.as_ref();
        let message = pb::SetRemoveRequest {
            key: key.to_vec(),
            level: self.level(),
            causal_token: self.token_bytes(key),
            element: element.as_ref().to_vec(),
        };
        let (reply, at) = self
            .call(Idempotence::Idempotent, |channel, remaining| {
                let request = request(message.clone(), remaining);
                async move { SetClient::new(channel).remove(request).await }
            })
            .await?;
        self.accept(key, at, reply.header, ())
    }

    /// Lists the set at `key`, each element once, ascending bytewise.
    pub async fn set_members(
        &self,
        key: impl AsRef<[u8]>,
    ) -> Result<Reply<Vec<Vec<u8>>>, ClientError> {
        let key = key.as_ref();
        let message = pb::SetMembersRequest {
            key: key.to_vec(),
            level: self.level(),
            causal_token: self.token_bytes(key),
        };
        let (reply, at) = self
            .call(Idempotence::Idempotent, |channel, remaining| {
                let request = request(message.clone(), remaining);
                async move { SetClient::new(channel).members(request).await }
            })
            .await?;
        self.accept(key, at, reply.header, reply.members)
    }
}

/// Register: one byte-string value per key, LWW or multi-value.
impl Client {
    /// Writes `value` to the register at `key`, creating a register of
    /// `kind` if absent (`FAILED_PRECONDITION` if the key holds the other
    /// kind).
    pub async fn register_set(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        kind: RegisterKind,
    ) -> Result<Reply<()>, ClientError> {
        let key = key.as_ref();
        let message = pb::RegisterSetRequest {
            key: key.to_vec(),
            level: self.level(),
            causal_token: self.token_bytes(key),
            value: value.as_ref().to_vec(),
            kind: kind.to_proto().into(),
        };
        let (reply, at) = self
            .call(Idempotence::Idempotent, |channel, remaining| {
                let request = request(message.clone(), remaining);
                async move { RegisterClient::new(channel).set(request).await }
            })
            .await?;
        self.accept(key, at, reply.header, ())
    }

    /// Reads the register at `key`: its kind and value(s).
    pub async fn register_get(
        &self,
        key: impl AsRef<[u8]>,
    ) -> Result<Reply<RegisterValue>, ClientError> {
        let key = key.as_ref();
        let message = pb::RegisterGetRequest {
            key: key.to_vec(),
            level: self.level(),
            causal_token: self.token_bytes(key),
        };
        let (mut reply, at) = self
            .call(Idempotence::Idempotent, |channel, remaining| {
                let request = request(message.clone(), remaining);
                async move { RegisterClient::new(channel).get(request).await }
            })
            .await?;
        let header = reply.header.take();
        self.accept(key, at, header, RegisterValue::from_proto(reply))
    }
}

/// Map: an observed-remove map of register, counter and set fields.
impl Client {
    /// Applies `update` to `field` of the map at `key`, creating the map
    /// and the field if absent. A counter increment is not idempotent and
    /// fails over only on `UNAVAILABLE`.
    pub async fn map_update(
        &self,
        key: impl AsRef<[u8]>,
        field: impl AsRef<[u8]>,
        update: MapUpdate,
    ) -> Result<Reply<()>, ClientError> {
        let key = key.as_ref();
        let idempotence = match update {
            MapUpdate::CounterIncrement(_) => Idempotence::NotIdempotent,
            _ => Idempotence::Idempotent,
        };
        let message = pb::MapUpdateRequest {
            key: key.to_vec(),
            level: self.level(),
            causal_token: self.token_bytes(key),
            field: field.as_ref().to_vec(),
            update: Some(update.to_proto()),
        };
        let (reply, at) = self
            .call(idempotence, |channel, remaining| {
                let request = request(message.clone(), remaining);
                async move { MapClient::new(channel).update(request).await }
            })
            .await?;
        self.accept(key, at, reply.header, ())
    }

    /// Removes `field` from every namespace of the map at `key`, as far as
    /// the receiving node has observed it.
    pub async fn map_remove_field(
        &self,
        key: impl AsRef<[u8]>,
        field: impl AsRef<[u8]>,
    ) -> Result<Reply<()>, ClientError> {
        let key = key.as_ref();
        let message = pb::MapRemoveFieldRequest {
            key: key.to_vec(),
            level: self.level(),
            causal_token: self.token_bytes(key),
            field: field.as_ref().to_vec(),
        };
        let (reply, at) = self
            .call(Idempotence::Idempotent, |channel, remaining| {
                let request = request(message.clone(), remaining);
                async move { MapClient::new(channel).remove_field(request).await }
            })
            .await?;
        self.accept(key, at, reply.header, ())
    }

    /// Reads every field of the map at `key`.
    pub async fn map_get(&self, key: impl AsRef<[u8]>) -> Result<Reply<MapValue>, ClientError> {
        let key = key.as_ref();
        let message = pb::MapGetRequest {
            key: key.to_vec(),
            level: self.level(),
            causal_token: self.token_bytes(key),
        };
        let (mut reply, at) = self
            .call(Idempotence::Idempotent, |channel, remaining| {
                let request = request(message.clone(), remaining);
                async move { MapClient::new(channel).get(request).await }
            })
            .await?;
        let header = reply.header.take();
        self.accept(key, at, header, MapValue::from_proto(reply))
    }
}

/// BoundedCounter: an escrow counter that never drops below zero. Every
/// call acts on the rights of the node that receives it, named by
/// [`Reply::node_id`].
impl Client {
    /// Adds `amount`, creating as many rights at the receiving node.
    pub async fn bounded_counter_increment(
        &self,
        key: impl AsRef<[u8]>,
        amount: u64,
    ) -> Result<Reply<()>, ClientError> {
        let key = key.as_ref();
        let message = pb::BoundedCounterIncrementRequest {
            key: key.to_vec(),
            level: self.level(),
            causal_token: self.token_bytes(key),
            amount,
        };
        let (reply, at) = self
            .call(Idempotence::NotIdempotent, |channel, remaining| {
                let request = request(message.clone(), remaining);
                async move { BoundedCounterClient::new(channel).increment(request).await }
            })
            .await?;
        self.accept(key, at, reply.header, ())
    }

    /// Subtracts `amount`, spending the receiving node's rights; refused
    /// with [`crate::ErrorDetail::InsufficientRights`] if it holds fewer.
    pub async fn bounded_counter_decrement(
        &self,
        key: impl AsRef<[u8]>,
        amount: u64,
    ) -> Result<Reply<()>, ClientError> {
        let key = key.as_ref();
        let message = pb::BoundedCounterDecrementRequest {
            key: key.to_vec(),
            level: self.level(),
            causal_token: self.token_bytes(key),
            amount,
        };
        let (reply, at) = self
            .call(Idempotence::NotIdempotent, |channel, remaining| {
                let request = request(message.clone(), remaining);
                async move { BoundedCounterClient::new(channel).decrement(request).await }
            })
            .await?;
        self.accept(key, at, reply.header, ())
    }

    /// Moves `amount` of the receiving node's rights to node `to_node_id`.
    pub async fn bounded_counter_transfer(
        &self,
        key: impl AsRef<[u8]>,
        to_node_id: u64,
        amount: u64,
    ) -> Result<Reply<()>, ClientError> {
        let key = key.as_ref();
        let message = pb::BoundedCounterTransferRequest {
            key: key.to_vec(),
            level: self.level(),
            causal_token: self.token_bytes(key),
            to_node_id,
            amount,
        };
        let (reply, at) = self
            .call(Idempotence::NotIdempotent, |channel, remaining| {
                let request = request(message.clone(), remaining);
                async move { BoundedCounterClient::new(channel).transfer(request).await }
            })
            .await?;
        self.accept(key, at, reply.header, ())
    }

    /// Reads the value and every node's rights.
    pub async fn bounded_counter_get(
        &self,
        key: impl AsRef<[u8]>,
    ) -> Result<Reply<BoundedCounterValue>, ClientError> {
        let key = key.as_ref();
        let message = pb::BoundedCounterGetRequest {
            key: key.to_vec(),
            level: self.level(),
            causal_token: self.token_bytes(key),
        };
        let (mut reply, at) = self
            .call(Idempotence::Idempotent, |channel, remaining| {
                let request = request(message.clone(), remaining);
                async move { BoundedCounterClient::new(channel).get(request).await }
            })
            .await?;
        let header = reply.header.take();
        self.accept(key, at, header, BoundedCounterValue::from_proto(reply))
    }
}

/// Cluster: the cluster as the answering node sees it. These calls carry
/// no key and no token.
impl Client {
    /// Every member the answering node knows of, ascending by node id.
    pub async fn members(&self) -> Result<Vec<Member>, ClientError> {
        let (reply, _) = self
            .call(Idempotence::Idempotent, |channel, remaining| {
                let request = request(pb::MembersRequest {}, remaining);
                async move { ClusterClient::new(channel).members(request).await }
            })
            .await?;
        Ok(reply.members.into_iter().map(Member::from_proto).collect())
    }

    /// The state of whichever node answers (with failover).
    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        let (reply, at) = self
            .call(Idempotence::Idempotent, |channel, remaining| {
                let request = request(pb::StatusRequest {}, remaining);
                async move { ClusterClient::new(channel).status(request).await }
            })
            .await?;
        self.node_status(at, reply)
    }

    /// The state of the node at endpoint `index` (in the order of
    /// [`Client::endpoints`]), without failover: `calm status` asks each.
    pub async fn status_of(&self, index: usize) -> Result<NodeStatus, ClientError> {
        if !self.has_endpoint(index) {
            return Err(ClientError::InvalidConfig("no endpoint at that index"));
        }
        let reply = self
            .call_at(index, |channel, remaining| {
                let request = request(pb::StatusRequest {}, remaining);
                async move { ClusterClient::new(channel).status(request).await }
            })
            .await?;
        self.node_status(index, reply)
    }

    fn node_status(
        &self,
        endpoint: usize,
        mut reply: pb::StatusResponse,
    ) -> Result<NodeStatus, ClientError> {
        let header = self.header(endpoint, reply.header.take())?;
        Ok(NodeStatus::from_proto(header.node_id, reply))
    }
}

/// Kv: plain values replicated without a leader at `one`/`quorum`/`all`,
/// with siblings and causal contexts. These replies carry no causal token:
/// the context is their causality, so the session's tokens are untouched.
impl Client {
    /// Reads every sibling of `key` from R replicas. Idempotent: it fails
    /// over freely.
    pub async fn kv_get(
        &self,
        key: impl AsRef<[u8]>,
        options: &KvOptions,
    ) -> Result<KvValue, ClientError> {
        let message = pb::KvGetRequest {
            key: key.as_ref().to_vec(),
            level: self.kv_level(options),
            causal_token: Vec::new(),
            quorum: options.quorum(),
        };
        let (reply, at) = self
            .call(Idempotence::Idempotent, |channel, remaining| {
                let request = request(message.clone(), remaining);
                async move { KvClient::new(channel).get(request).await }
            })
            .await?;
        let header = self.header(at, reply.header)?;
        Ok(KvValue {
            siblings: siblings(reply.siblings),
            context: reply.context,
            replies: reply.replies,
            node_id: header.node_id,
        })
    }

    /// Writes `value` to `key`, superseding what `options.context` saw (a
    /// blind write without one). Not idempotent (a replay adds a sibling):
    /// it fails over only on `UNAVAILABLE`, when nothing changed. A
    /// `DEADLINE_EXCEEDED` ([`ErrorDetail::WriteInDoubt`], or the call's
    /// own timeout) leaves the write in doubt: some replicas may hold it,
    /// so read the key before writing it again.
    ///
    /// [`ErrorDetail::WriteInDoubt`]: crate::ErrorDetail::WriteInDoubt
    pub async fn kv_put(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        options: &KvOptions,
    ) -> Result<KvWritten, ClientError> {
        let message = pb::KvPutRequest {
            key: key.as_ref().to_vec(),
            level: self.kv_level(options),
            causal_token: Vec::new(),
            value: value.as_ref().to_vec(),
            context: options.context.clone(),
            quorum: options.quorum(),
        };
        let (reply, at) = self
            .call(Idempotence::NotIdempotent, |channel, remaining| {
                let request = request(message.clone(), remaining);
                async move { KvClient::new(channel).put(request).await }
            })
            .await?;
        let header = self.header(at, reply.header)?;
        Ok(KvWritten {
            siblings: siblings(reply.siblings),
            context: reply.context,
            acks: reply.acks,
            hinted_acks: reply.hinted_acks,
            node_id: header.node_id,
        })
    }

    /// Deletes `key`: a tombstone superseding what `options.context` saw.
    /// Not idempotent, like [`kv_put`](Self::kv_put).
    pub async fn kv_delete(
        &self,
        key: impl AsRef<[u8]>,
        options: &KvOptions,
    ) -> Result<KvWritten, ClientError> {
        let message = pb::KvDeleteRequest {
            key: key.as_ref().to_vec(),
            level: self.kv_level(options),
            causal_token: Vec::new(),
            context: options.context.clone(),
            quorum: options.quorum(),
        };
        let (reply, at) = self
            .call(Idempotence::NotIdempotent, |channel, remaining| {
                let request = request(message.clone(), remaining);
                async move { KvClient::new(channel).delete(request).await }
            })
            .await?;
        let header = self.header(at, reply.header)?;
        Ok(KvWritten {
            siblings: Vec::new(),
            context: reply.context,
            acks: reply.acks,
            hinted_acks: reply.hinted_acks,
            node_id: header.node_id,
        })
    }

    /// The level a `Kv` request carries: the options', else the client's.
    /// The client's default, `local`, is no `Kv` level: it leaves the
    /// level unspecified, which the server serves as `quorum`. Any other
    /// level is sent as it is, so a `linearizable` client is refused
    /// (`UNIMPLEMENTED`) rather than silently served at another level.
    fn kv_level(&self, options: &KvOptions) -> i32 {
        match (options.level, self.config().level) {
            (Some(level), _) => Level::from(level).to_proto().into(),
            (None, Level::Local) => pb::Level::Unspecified.into(),
            (None, configured) => configured.to_proto().into(),
        }
    }
}
