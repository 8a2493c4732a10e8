//! The node's own records in its data store: its id, its start count (the
//! SWIM generation) and the last ring log and directory it adopted.
//!
//! They live in the `node_meta` keyspace of the same store as the data, so
//! every byte on disk goes through `calm-storage`.

use calm_storage::{DiskEngine, Keyspace, ReadView, Storage, WriteBatch};
use calm_types::NodeId;
use calm_types::codec;
use rand::{RngExt, SeedableRng, rngs::StdRng};

use super::StartError;
use super::gossip::RingGossip;

/// The keyspace of the node's own records.
const META: Keyspace = Keyspace::new("node_meta");
const NODE_ID: &[u8] = b"node_id";
const GENERATION: &[u8] = b"generation";
const RING: &[u8] = b"ring";

/// The highest node id: the top bit is reserved for the transport's names
/// of seeds known only by address.
pub const NODE_ID_MAX: u64 = (1 << 63) - 1;

/// The node id this data directory belongs to. A configured id must match
/// the recorded one; with none configured, the recorded one is used, or a
/// random one is drawn and recorded on first start.
pub fn node_identity(storage: &DiskEngine, configured: Option<u64>) -> Result<NodeId, StartError> {
    let recorded = read_u64(storage, NODE_ID)?;
    let node = match (configured, recorded) {
        (Some(configured), Some(recorded)) if configured != recorded => {
            return Err(StartError::Meta(format!(
                "it belongs to node {recorded}, but node-id is set to {configured}"
            )));
        }
        (_, Some(recorded)) => return Ok(NodeId(recorded)),
        (Some(configured), None) => configured,
        (None, None) => StdRng::from_rng(&mut rand::rng()).random_range(1..=NODE_ID_MAX),
    };
    if node == 0 || node > NODE_ID_MAX {
        return Err(StartError::Meta(format!(
            "node id {node} is outside 1..={NODE_ID_MAX}"
        )));
    }
    write_u64(storage, NODE_ID, node)?;
    Ok(NodeId(node))
}

/// One more than the previous start's generation, recorded before use, so
/// every start of the node has a higher SWIM generation than the last.
pub(super) fn next_generation(storage: &DiskEngine) -> Result<u64, StartError> {
    let generation = read_u64(storage, GENERATION)?.unwrap_or(0) + 1;
    write_u64(storage, GENERATION, generation)?;
    Ok(generation)
}

/// The ring log and directory recorded at the last change, if any.
pub(super) fn load_ring(storage: &DiskEngine) -> Result<RingGossip, StartError> {
    match storage.get(META, RING)? {
        None => Ok(RingGossip::default()),
        Some(bytes) => RingGossip::decode(&bytes)
            .map_err(|error| StartError::Meta(format!("unreadable ring record: {error}"))),
    }
}

/// Records the ring log and directory, durably.
pub(super) fn save_ring(
    storage: &impl Storage,
    gossip: &RingGossip,
) -> Result<(), calm_storage::StorageError> {
    let mut batch = WriteBatch::new();
    batch.put(META, RING, gossip.encode());
    storage.write(&batch)?;
    storage.sync()
}

fn read_u64(storage: &DiskEngine, key: &[u8]) -> Result<Option<u64>, StartError> {
    let Some(bytes) = storage.get(META, key)? else {
        return Ok(None);
    };
    codec::decode(&bytes)
        .map(Some)
        .map_err(|error| StartError::Meta(format!("unreadable record: {error}")))
}

fn write_u64(storage: &DiskEngine, key: &[u8], value: u64) -> Result<(), StartError> {
    let mut batch = WriteBatch::new();
    batch.put(META, key, codec::encode(&value));
    storage.write(&batch)?;
    storage.sync()?;
    Ok(())
}
