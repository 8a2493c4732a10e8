//! The CLI and `calm dev`, run as a user runs them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{CALM, Cluster, signal};

/// Runs `calm --endpoints ENDPOINTS ARGS...`; returns (success, stdout, stderr).
pub(crate) fn calm(endpoints: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(CALM)
        .args(["--endpoints", endpoints])
        .args(args)
        .env_remove("CALM_ENDPOINTS")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
        String::from_utf8_lossy(&output.stderr).trim().to_string(),
    )
}

/// Runs a command that must succeed; returns its stdout.
pub(crate) fn ok(endpoints: &str, args: &[&str]) -> String {
    let (success, stdout, stderr) = calm(endpoints, args);
    assert!(success, "calm {args:?} failed: {stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_crdt_command_works_against_a_cluster() {
    let cluster = Cluster::start(3).await;
    let e = &cluster.endpoints();
    assert_eq!(ok(e, &["counter", "incr", "visits", "--by", "5"]), "OK");
    assert_eq!(ok(e, &["counter", "incr", "visits", "--by", "-2"]), "OK");
    assert_eq!(ok(e, &["counter", "get", "visits"]), "3");
    let json: serde_json::Value =
        serde_json::from_str(&ok(e, &["-w", "json", "counter", "get", "visits"])).unwrap();
    assert_eq!(json["value"], 3);
    assert!(json["token"].as_str().is_some_and(|t| !t.is_empty()));

    ok(e, &["set", "add", "fruit", "apple"]);
    ok(e, &["set", "add", "fruit", "pear"]);
    ok(e, &["set", "rm", "fruit", "apple"]);
    assert_eq!(ok(e, &["set", "members", "fruit"]), "pear");

    ok(e, &["register", "set", "colour", "blue"]);
    assert_eq!(ok(e, &["register", "get", "colour"]), "blue");

    // Bounded counter: a decrement beyond the rights is refused whole.
    ok(e, &["bcounter", "incr", "seats", "10"]);
    let (success, _, stderr) = calm(e, &["bcounter", "decr", "seats", "11"]);
    assert!(!success);
    assert!(stderr.starts_with("Error:"), "{stderr}");

    // Bad input is a clear error and changes nothing.
    let (success, _, stderr) = calm(e, &["counter", "incr", "visits", "--by", "0"]);
    assert!(!success && !stderr.is_empty());
    assert_eq!(ok(e, &["counter", "get", "visits"]), "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_lists_every_node_with_its_state_and_ownership() {
    let cluster = Cluster::start(3).await;
    let table = ok(&cluster.endpoints(), &["members"]);
    for header in ["NODE ID", "ADDRESS", "STATE", "INCARNATION", "OWNERSHIP"] {
        assert!(table.contains(header), "{table}");
    }
    assert_eq!(table.matches("alive").count(), 3, "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&cluster.endpoints(), &["-w", "json", "members"])).unwrap();
    let members = json.as_array().expect("a JSON array");
    assert_eq!(members.len(), 3);
}

#[test]
fn calm_dev_prints_its_endpoints_serves_them_and_stops_on_sigterm() {
    let mut dev = Command::new(CALM)
        .args(["dev", "--nodes", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = dev.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().expect("a first line").unwrap();
    let endpoints = first
        .strip_prefix("endpoints: ")
        .unwrap_or_else(|| panic!("first line is the endpoints: {first}"))
        .to_string();
    assert_eq!(endpoints.split(',').count(), 3);
    let example = lines.next().expect("an example command").unwrap();
    assert!(example.contains("calm --endpoints"), "{example}");

    assert_eq!(ok(&endpoints, &["counter", "incr", "dev-hits"]), "OK");
    assert_eq!(ok(&endpoints, &["counter", "get", "dev-hits"]), "1");

    signal(&dev, "-TERM");
    let began = Instant::now();
    let status = dev.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(began.elapsed() < Duration::from_secs(15));
    // Every node is gone with it: nothing answers any more.
    let (success, _, _) = calm(
        &endpoints,
        &["--command-timeout", "1s", "counter", "get", "x"],
    );
    assert!(!success);
}
