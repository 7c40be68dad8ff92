//! Helpers shared by the replica integration tests (each test file includes this module).

use std::collections::BTreeMap;
use std::time::Duration;

use net::replica::Replica;
use paxos::{NodeId, Role};

/// How long a test waits for the group to do something before it fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// Waits until one of `replicas` leads and returns it.
pub async fn leader(replicas: &BTreeMap<NodeId, Replica>) -> NodeId {
    tokio::time::timeout(WAIT, async {
        loop {
            for (id, replica) in replicas {
                if replica.status().await.unwrap().role == Role::Leader {
                    return *id;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("no leader elected")
}
