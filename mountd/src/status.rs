//! What `kith status` shows about a replicated volume, as text and as JSON.
//!
//! [`SyncReport`] gathers the replica's view (configuration, leader, commit end,
//! who was heard from), fossil's (applied end, ops not committed yet) and venti's
//! (blocks being fetched) into one value; rendering is a pure function of it, so the
//! format is tested without a daemon. The JSON shape is the one in
//! `/work/briefs/sync-cli-contract.md`; fields are only ever added.
//!
//! A witness daemon (`kith witness run`) reports a [`WitnessReport`]: the same
//! configuration, leader and device lines, and what it cannot have — no applied end,
//! no content, no queue (it proposes nothing).

use std::net::SocketAddr;

use paxos::{Config, NodeId};

use crate::config::Keep;
use crate::sync::ContentProgress;
use serde_json::{Value, json};

/// One device of the volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceReport {
    pub node: NodeId,
    pub fingerprint: String,
    pub name: String,
    pub online: bool,
    pub this: bool,
}

/// Everything `kith status` says about the volume's sync.
#[derive(Clone, Debug)]
pub struct SyncReport {
    pub listen: SocketAddr,
    pub keyring_encrypted: bool,
    /// The configuration in force.
    pub config: Config,
    pub leader: Option<NodeId>,
    pub commit_end: u64,
    pub applied_end: u64,
    /// This device's ops not committed yet (queued offline, or in flight).
    pub queued: usize,
    pub fetches_in_flight: u64,
    pub fetched_bytes: u64,
    /// Blocks written here that no other voter holds yet (pushes not placed).
    pub unpushed_blocks: u64,
    /// What the background content walk last found.
    pub content: ContentProgress,
    pub devices: Vec<DeviceReport>,
}

/// A node's role in `config`, as status shows it.
fn role_in(config: &Config, node: NodeId) -> &'static str {
    if config.witnesses.contains(&node) {
        "witness"
    } else if config.voters.contains(&node) {
        "voter"
    } else if config.learners.contains(&node) {
        "learner"
    } else {
        // Paired, but the configuration that adds it is not committed yet.
        "joining"
    }
}

/// The devices as JSON objects.
fn devices_json(config: &Config, devices: &[DeviceReport]) -> Vec<Value> {
    devices
        .iter()
        .map(|d| {
            json!({
                "fingerprint": d.fingerprint,
                "name": d.name,
                "node": d.node.0,
                "role": role_in(config, d.node),
                "online": d.online,
                "this": d.this,
            })
        })
        .collect()
}

/// One line per device: fingerprint, name, role, state.
fn device_lines(config: &Config, devices: &[DeviceReport]) -> String {
    let mut text = String::new();
    for d in devices {
        let state = if d.this {
            "this device"
        } else if d.online {
            "online"
        } else {
            "offline"
        };
        text.push_str(&format!(
            "  {} {:<16} {:<8} {}\n",
            d.fingerprint,
            d.name,
            role_in(config, d.node),
            state
        ));
    }
    text
}

fn leader_fingerprint(leader: Option<NodeId>, devices: &[DeviceReport]) -> Option<&str> {
    let leader = leader?;
    devices
        .iter()
        .find(|d| d.node == leader)
        .map(|d| d.fingerprint.as_str())
}

impl SyncReport {
    fn behind(&self) -> u64 {
        self.commit_end.saturating_sub(self.applied_end)
    }

    fn leader_fingerprint(&self) -> Option<&str> {
        leader_fingerprint(self.leader, &self.devices)
    }

    /// What this device holds of the volume's content, and what a full copy is doing.
    fn content_line(&self) -> String {
        let content = &self.content;
        let keep = match content.keep {
            Keep::Full => "full copy",
            Keep::OnDemand => "on demand",
        };
        if !content.walked {
            return format!("content: {keep}, not counted yet\n");
        }
        let held = content
            .referenced_bytes
            .saturating_sub(content.missing_bytes);
        let state = match (content.keep, content.missing_bytes, content.fetching) {
            (Keep::Full, 0, _) => ", complete".to_owned(),
            (Keep::Full, _, true) => ", fetching".to_owned(),
            (_, missing, _) => format!(", {missing} bytes to fetch"),
        };
        format!(
            "content: {keep}, {held} of {} bytes held here{state}\n",
            content.referenced_bytes
        )
    }

    /// Votes needed to commit, of the voters.
    fn quorum(&self) -> (usize, usize) {
        (
            usize::from(self.config.phase2_quorum),
            self.config.voters.len(),
        )
    }

    /// The contract's JSON object.
    pub fn to_json(&self) -> Value {
        let devices = devices_json(&self.config, &self.devices);
        let (quorum, voters) = self.quorum();
        json!({
            "listen": self.listen.to_string(),
            "keyring": if self.keyring_encrypted { "encrypted" } else { "unencrypted" },
            "volume": {
                "commit_end": self.commit_end,
                "applied_end": self.applied_end,
                "behind": self.behind(),
                "queued": self.queued,
                // Content bytes the namespace refers to that this device does not
                // hold, as of the last background walk (0 before the first).
                "bytes_to_fetch": self.content.missing_bytes,
                "content_bytes": self.content.referenced_bytes,
                "content_walked": self.content.walked,
                "keep": self.content.keep.as_str(),
                "full_copy_fetching": self.content.fetching,
                "fetches_in_flight": self.fetches_in_flight,
                "fetched_bytes": self.fetched_bytes,
                "unpushed_blocks": self.unpushed_blocks,
                "leader": self.leader_fingerprint(),
                "quorum": quorum,
                "voters": voters,
            },
            "devices": devices,
        })
    }

    /// Lines for the human status (appended to the daemon's other lines).
    pub fn to_text(&self) -> String {
        let (quorum, voters) = self.quorum();
        let mut text = format!(
            "listen: {}\nkeyring: {}\nlog: committed to {}, applied to {} ({} behind{}), {} op(s) queued\n\
             quorum: {quorum} of {voters} voter(s), leader {}\nfetching: {} block(s) now, {} bytes fetched\n\
             {}{}devices:\n",
            self.listen,
            if self.keyring_encrypted {
                "encrypted"
            } else {
                "UNENCRYPTED (keys readable by anyone who can read the store)"
            },
            self.commit_end,
            self.applied_end,
            self.behind(),
            if self.behind() > 0 {
                ", catching up"
            } else {
                ""
            },
            self.queued,
            self.leader_fingerprint().unwrap_or("unknown"),
            self.fetches_in_flight,
            self.fetched_bytes,
            self.content_line(),
            if self.unpushed_blocks > 0 {
                format!(
                    "pushing: {} block(s) written here not yet held by another voter\n",
                    self.unpushed_blocks
                )
            } else {
                String::new()
            },
        );
        text.push_str(&device_lines(&self.config, &self.devices));
        text
    }
}

/// What `kith status` says about a witness daemon.
#[derive(Clone, Debug)]
pub struct WitnessReport {
    pub store: std::path::PathBuf,
    pub device: String,
    pub uptime_s: u64,
    pub listen: SocketAddr,
    pub keyring_encrypted: bool,
    /// The configuration in force as this witness knows it.
    pub config: Config,
    pub leader: Option<NodeId>,
    /// Slots committed here (sealed: a witness cannot read them).
    pub commit_end: u64,
    pub devices: Vec<DeviceReport>,
}

impl WitnessReport {
    /// The same object as a device's, with `role` = `witness` and the volume fields
    /// a witness has (it applies, queues and holds no content: those are 0).
    pub fn to_json(&self) -> Value {
        json!({
            "role": "witness",
            "listen": self.listen.to_string(),
            "keyring": if self.keyring_encrypted { "encrypted" } else { "unencrypted" },
            "volume": {
                "commit_end": self.commit_end,
                "applied_end": 0,
                "behind": 0,
                "queued": 0,
                "bytes_to_fetch": 0,
                "content_bytes": 0,
                "unpushed_blocks": 0,
                "leader": leader_fingerprint(self.leader, &self.devices),
                "quorum": self.config.phase2_quorum,
                "voters": self.config.voters.len(),
            },
            "devices": devices_json(&self.config, &self.devices),
        })
    }

    pub fn to_text(&self) -> String {
        let mut text = format!(
            "witness: holds sealed log entries and votes; no volume key, no content, no mount\n\
             store: {}\ndevice: {}\npid: {}\nuptime: {} s\nlisten: {}\nkeyring: {}\n\
             log: committed to {} (sealed)\nquorum: {} of {} voter(s), leader {}\ndevices:\n",
            self.store.display(),
            self.device,
            std::process::id(),
            self.uptime_s,
            self.listen,
            if self.keyring_encrypted {
                "encrypted"
            } else {
                "UNENCRYPTED (keys readable by anyone who can read the store)"
            },
            self.commit_end,
            self.config.phase2_quorum,
            self.config.voters.len(),
            leader_fingerprint(self.leader, &self.devices).unwrap_or("unknown"),
        );
        text.push_str(&device_lines(&self.config, &self.devices));
        text
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use paxos::ConfigId;

    use super::*;

    fn report() -> SyncReport {
        let config = Config::majority(
            ConfigId(3),
            [NodeId(1), NodeId(2), NodeId(3)],
            [NodeId(3)],
            [],
        )
        .unwrap();
        let device = |node: u64, name: &str, online: bool, this: bool| DeviceReport {
            node: NodeId(node),
            fingerprint: format!("fpr-{node}"),
            name: name.into(),
            online,
            this,
        };
        SyncReport {
            listen: "127.0.0.1:7420".parse().unwrap(),
            keyring_encrypted: false,
            config,
            leader: Some(NodeId(2)),
            commit_end: 40,
            applied_end: 37,
            queued: 2,
            fetches_in_flight: 1,
            fetched_bytes: 4096,
            unpushed_blocks: 0,
            content: ContentProgress {
                keep: Keep::OnDemand,
                walked: true,
                referenced_bytes: 10_000,
                missing_bytes: 2_500,
                fetching: false,
            },
            devices: vec![
                device(1, "laptop", true, true),
                device(2, "desktop", true, false),
                device(3, "server", false, false),
                device(4, "phone", false, false),
            ],
        }
    }

    #[test]
    fn json_has_the_contract_fields_and_values() {
        let value = report().to_json();
        assert_eq!(value["listen"], "127.0.0.1:7420");
        assert_eq!(value["keyring"], "unencrypted");
        let volume = &value["volume"];
        assert_eq!(volume["commit_end"], 40);
        assert_eq!(volume["applied_end"], 37);
        assert_eq!(volume["behind"], 3);
        assert_eq!(volume["queued"], 2);
        assert_eq!(volume["bytes_to_fetch"], 2_500);
        assert_eq!(volume["content_bytes"], 10_000);
        assert_eq!(volume["keep"], "on-demand");
        assert_eq!(volume["unpushed_blocks"], 0);
        assert_eq!(volume["leader"], "fpr-2");
        assert_eq!(volume["quorum"], 2);
        let devices = value["devices"].as_array().unwrap();
        let roles: Vec<&str> = devices
            .iter()
            .map(|d| d["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["voter", "voter", "witness", "joining"]);
        assert_eq!(devices[0]["this"], true);
        assert_eq!(devices[1]["this"], false);
        assert_eq!(devices[2]["online"], false);
        assert_eq!(devices[1]["name"], "desktop");
        assert_eq!(devices[1]["fingerprint"], "fpr-2");
        // One line, parseable back.
        let line = value.to_string();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), value);
    }

    #[test]
    fn the_text_shows_what_is_held_what_is_left_to_fetch_and_unplaced_pushes() {
        let mut report = report();
        let text = report.to_text();
        assert!(
            text.contains("content: on demand, 7500 of 10000 bytes held here, 2500 bytes to fetch"),
            "{text}"
        );
        assert!(!text.contains("pushing:"), "{text}");
        report.unpushed_blocks = 3;
        report.content.keep = Keep::Full;
        report.content.fetching = true;
        let text = report.to_text();
        assert!(
            text.contains("full copy, 7500 of 10000 bytes held here, fetching"),
            "{text}"
        );
        assert!(text.contains("pushing: 3 block(s)"), "{text}");
        report.content.missing_bytes = 0;
        report.content.fetching = false;
        assert!(
            report
                .to_text()
                .contains("10000 of 10000 bytes held here, complete")
        );
        report.content.walked = false;
        assert!(
            report
                .to_text()
                .contains("content: full copy, not counted yet")
        );
        assert_eq!(report.to_json()["volume"]["full_copy_fetching"], false);
    }

    #[test]
    fn a_witness_reports_its_role_the_quorum_and_no_content() {
        let report = report();
        let witness = WitnessReport {
            store: "/srv/kith".into(),
            device: "fpr-3".into(),
            uptime_s: 5,
            listen: report.listen,
            keyring_encrypted: true,
            config: report.config.clone(),
            leader: Some(NodeId(1)),
            commit_end: 40,
            devices: report.devices.clone(),
        };
        let value = witness.to_json();
        assert_eq!(value["role"], "witness");
        assert_eq!(value["keyring"], "encrypted");
        assert_eq!(value["volume"]["commit_end"], 40);
        assert_eq!(value["volume"]["queued"], 0);
        assert_eq!(value["volume"]["quorum"], 2);
        assert_eq!(value["volume"]["voters"], 3);
        assert_eq!(value["volume"]["leader"], "fpr-1");
        assert_eq!(value["devices"][2]["role"], "witness");
        let text = witness.to_text();
        assert!(text.starts_with("witness: "), "{text}");
        assert!(
            text.contains("quorum: 2 of 3 voter(s), leader fpr-1"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.contains("fpr-2") && l.contains("voter") && l.ends_with("online")),
            "{text}"
        );
    }

    #[test]
    fn an_unknown_leader_is_null_and_the_text_says_unknown() {
        let mut report = report();
        report.leader = None;
        assert_eq!(report.to_json()["volume"]["leader"], Value::Null);
        let text = report.to_text();
        assert!(text.contains("leader unknown"), "{text}");
        assert!(text.contains("3 behind, catching up"), "{text}");
        assert!(text.contains("UNENCRYPTED"), "{text}");
        assert!(text.contains("fpr-3 server"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.contains("fpr-1") && l.ends_with("this device"))
        );
        assert!(
            text.lines()
                .any(|l| l.contains("fpr-3") && l.ends_with("offline"))
        );
    }
}
