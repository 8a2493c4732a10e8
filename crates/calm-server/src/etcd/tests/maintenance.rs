//! `Maintenance` and `Cluster`: the snapshot stream and its checksum,
//! what is not offered, the member URL check, and the pass-through, plus
//! the key helpers the lock and election share.

use calm_proto::etcd::etcdserverpb::cluster_client::ClusterClient;
use calm_proto::etcd::etcdserverpb::maintenance_client::MaintenanceClient;
use calm_proto::etcd::etcdserverpb::{
    DowngradeRequest, HashRequest, MemberAddRequest, MemberListRequest, SnapshotRequest,
    StatusRequest,
};
use tonic::Code;

use super::fake::Fake;
use super::{refused, start, start_with};
use crate::etcd::concurrency::{prefix_end, waiter_key};
use crate::etcd::maintenance::snapshot_responses;
use crate::etcd::{EtcdError, Limits};

/// A seeded, patternless blob (xorshift), so a misplaced chunk shows.
fn blob(bytes: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[tokio::test]
async fn the_snapshot_stream_reassembles_to_the_blob_then_its_checksum() {
    let expected = blob(100_000);
    let node = start_with(Fake::with_snapshot(expected.clone()), Limits::default()).await;
    let mut maintenance = MaintenanceClient::new(node.channel.clone());
    let mut stream = maintenance
        .snapshot(SnapshotRequest {})
        .await
        .expect("snapshot")
        .into_inner();
    let mut responses = Vec::new();
    while let Some(response) = stream.message().await.expect("no error") {
        responses.push(response);
    }
    let (checksum, chunks) = responses.split_last().expect("responses");
    // etcd's 32 KiB chunks, each saying what remains after it.
    let sizes: Vec<usize> = chunks.iter().map(|chunk| chunk.blob.len()).collect();
    assert_eq!(sizes, [32768, 32768, 32768, 1696]);
    let mut received = Vec::new();
    for chunk in chunks {
        received.extend_from_slice(&chunk.blob);
        assert_eq!(
            chunk.remaining_bytes,
            (expected.len() - received.len()) as u64
        );
    }
    assert_eq!(received, expected);
    assert_eq!((checksum.remaining_bytes, checksum.blob.len()), (0, 32));
}

#[test]
fn the_snapshot_ends_with_the_sha256_of_the_blob() {
    // FIPS 180-2's test vector for "abc".
    let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let responses: Vec<_> = snapshot_responses(b"abc".to_vec(), 2).collect();
    let hex: String = responses[2]
        .blob
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, abc);
    assert_eq!(responses[0].blob, b"ab");
    assert_eq!(responses[1].blob, b"c");
    // etcdctl's `snapshot save` accepts a download of 512·n + 32 bytes.
    let download: usize = snapshot_responses(blob(1024), 300)
        .map(|response| response.blob.len())
        .sum();
    assert_eq!(download % 512, 32);
}

#[tokio::test]
async fn hash_and_downgrade_are_not_offered_and_status_passes_through() {
    let node = start().await;
    let mut maintenance = MaintenanceClient::new(node.channel.clone());
    let hash = maintenance
        .hash(HashRequest {})
        .await
        .expect_err("not offered");
    assert_eq!(hash.code(), Code::Unimplemented);
    let downgrade = maintenance
        .downgrade(DowngradeRequest::default())
        .await
        .expect_err("not offered");
    assert_eq!(downgrade.code(), Code::Unimplemented);
    assert_eq!(node.fake.calls(), 0);
    let status = maintenance.status(StatusRequest {}).await.expect("status");
    assert_eq!(status.into_inner().version, "3.5.0");
}

#[tokio::test]
async fn member_add_needs_urls_etcd_would_parse() {
    let node = start().await;
    let mut cluster = ClusterClient::new(node.channel.clone());
    let add = |urls: &[&str]| MemberAddRequest {
        peer_ur_ls: urls.iter().map(|url| url.to_string()).collect(),
        is_learner: false,
    };
    let invalid: [&[&str]; 6] = [
        &[],
        &["127.0.0.1:2380"],
        &["ftp://host:2380"],
        &["http://host"],
        &["http://host:2380/path"],
        &["http://host:2380", "http://a:b:2380"],
    ];
    for urls in invalid {
        refused(
            cluster.member_add(add(urls)).await,
            EtcdError::MemberBadUrls,
        );
    }
    assert_eq!(node.fake.calls(), 0);
    // Valid URLs reach the backend (which refuses adds in this fake).
    for urls in [
        &["http://10.0.0.1:2380"][..],
        &["https://[::1]:2380", "unix://sock"],
    ] {
        let status = cluster.member_add(add(urls)).await.expect_err("fake");
        assert_eq!(status.message(), "fake");
    }
    let listed = cluster.member_list(MemberListRequest::default()).await;
    assert_eq!(listed.expect("list").into_inner().members.len(), 1);
}

#[test]
fn prefix_end_bounds_exactly_the_keys_with_the_prefix() {
    // Every key and prefix of up to two bytes from an alphabet with the
    // edge bytes: in the range iff it starts with the prefix.
    let alphabet = [0x00, 0x01, 0x7f, 0xfe, 0xff];
    let mut strings = vec![Vec::new()];
    for &a in &alphabet {
        strings.push(vec![a]);
        for &b in &alphabet {
            strings.push(vec![a, b]);
        }
    }
    for prefix in strings.iter().filter(|prefix| !prefix.is_empty()) {
        let end = prefix_end(prefix);
        for key in &strings {
            let in_range = key >= prefix && (end == [0] || key < &end);
            assert_eq!(in_range, key.starts_with(prefix), "{prefix:?} {key:?}");
        }
    }
}

#[test]
fn waiter_keys_print_the_lease_as_go_does() {
    assert_eq!(waiter_key(b"n/", 0x7e57_0001), b"n/7e570001");
    // Go's %x prints a negative int64 with a sign.
    assert_eq!(waiter_key(b"n/", -26), b"n/-1a");
}
