//! What `kith status` shows about a replicated volume, as text and as JSON.
//!
//! [`SyncReport`] gathers the replica's view (configuration, leader, commit end,
//! who was heard from), fossil's (applied end, ops not committed yet) and venti's
//! (blocks being fetched) into one value; rendering is a pure function of it, so the
//! format is tested without a daemon. The JSON shape is the one in
//! `/work/briefs/sync-cli-contract.md`; fields are only ever added. The daemon adds a
//! [`ReplicaView`]: where the log kept here starts (the last checkpoint, and its age
//! as the daemon watched it), how far a catch-up has come, when each member was last
//! heard from, whether the daemon is still starting (status answers while the
//! volume opens, which is when a device added later catches up) and the key epochs
//! this device holds. [`device_list`] is `kith device list` from a running daemon.
//! [`StartupProgress`] is what `kith mount` shows (and watches for movement) while it
//! waits for a starting daemon: the catch-up lines of the status, and the figures
//! that move while the catch-up does.
//!
//! A witness daemon (`kith witness run`) reports a [`WitnessReport`]: the same
//! configuration, leader and device lines, and what it cannot have — no applied end,
//! no content, no queue (it proposes nothing).

use std::collections::BTreeMap;
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

/// Per member node: milliseconds since a Paxos frame last arrived from it (`None`,
/// or absent: not since this daemon started; this device is never in it). The
/// replica's `heard_ms_ago`.
pub type Heard = BTreeMap<NodeId, Option<u64>>;

/// What the daemon adds to a [`SyncReport`] from the replica and its own watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaView {
    pub progress: LogProgress,
    pub heard: Heard,
    /// The daemon is starting: its volume is opening (not mounted yet), and a device
    /// that catches up installs a checkpoint and replays the log first.
    pub starting: bool,
    /// The volume key epochs held here (`None`: `volume.key` could not be read).
    pub key_epochs: Option<KeyEpochs>,
}

/// The volume key epochs this device holds (its `volume.key`): new content is sealed
/// under the newest; a device that has not learned a rotation yet lags behind the
/// others here (and cannot open what they sealed since).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyEpochs {
    pub newest: u32,
    /// How many epochs are held (the older ones open older content).
    pub held: usize,
}

/// What `kith mount` is told while it waits for a starting daemon (the control
/// socket's `progress`): the lines to show, and where the catch-up is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StartupProgress {
    /// The daemon is still starting (its volume is opening).
    pub starting: bool,
    /// The catch-up lines `kith status` shows.
    pub lines: Vec<String>,
    /// Figures that change while the catch-up moves (commit end, applied end, log
    /// start, bytes fetched, …); the waiting side compares them, nothing more.
    pub position: Vec<u64>,
}

impl StartupProgress {
    /// One line of JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "state": if self.starting { "starting" } else { "serving" },
            "lines": self.lines,
            "position": self.position,
        })
    }

    /// Parses [`StartupProgress::to_json`]'s text; `None` if it is not that.
    pub fn parse(text: &str) -> Option<StartupProgress> {
        let value: Value = serde_json::from_str(text).ok()?;
        let starting = match value.get("state")?.as_str()? {
            "starting" => true,
            "serving" => false,
            _ => return None,
        };
        let lines = value
            .get("lines")?
            .as_array()?
            .iter()
            .map(|line| line.as_str().map(str::to_owned))
            .collect::<Option<Vec<String>>>()?;
        let position = value
            .get("position")?
            .as_array()?
            .iter()
            .map(Value::as_u64)
            .collect::<Option<Vec<u64>>>()?;
        Some(StartupProgress {
            starting,
            lines,
            position,
        })
    }
}

/// Where this device's copy of the log starts and how far a catch-up has come: what
/// the daemon's progress watcher (`daemon::ProgressWatch`) adds to the replica's and
/// fossil's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogProgress {
    /// Slots below it were truncated behind a checkpoint (0: none yet).
    pub log_start: u64,
    /// Seconds since the log start last moved (a checkpoint taken or installed
    /// here); `None`: it has not moved since this daemon started.
    pub checkpoint_age_s: Option<u64>,
    /// Seconds this daemon has run (bounds the age of an older checkpoint).
    pub uptime_s: u64,
    /// The applied end when the current catch-up began (`None`: not behind).
    pub catch_up_from: Option<u64>,
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

/// How long ago, for people: `850 ms`, `12 s`, `5 min`, `3 h`, `2 d`.
pub fn ago(ms: u64) -> String {
    const S: u64 = 1000;
    match ms {
        0..S => format!("{ms} ms"),
        S..120_000 => format!("{} s", ms / S),
        120_000..7_200_000 => format!("{} min", ms / 60_000),
        7_200_000..172_800_000 => format!("{} h", ms / 3_600_000),
        _ => format!("{} d", ms / 86_400_000),
    }
}

/// Whether a device is reachable, and when it was last heard from.
fn device_state(d: &DeviceReport, heard: &Heard) -> String {
    let heard = match heard.get(&d.node).copied().flatten() {
        Some(ms) => format!("heard {} ago", ago(ms)),
        None => "not heard since this daemon started".to_owned(),
    };
    if d.this {
        "this device".to_owned()
    } else if d.online {
        format!("online, {heard}")
    } else {
        format!("offline, {heard}")
    }
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
fn devices_json(config: &Config, devices: &[DeviceReport], heard: &Heard) -> Vec<Value> {
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
                "heard_ms_ago": heard.get(&d.node).copied().flatten(),
            })
        })
        .collect()
}

/// One line per device: fingerprint, name, role, state.
fn device_lines(config: &Config, devices: &[DeviceReport], heard: &Heard) -> String {
    let mut text = String::new();
    for d in devices {
        text.push_str(&format!(
            "  {} {:<16} {:<8} {}\n",
            d.fingerprint,
            d.name,
            role_in(config, d.node),
            device_state(d, heard)
        ));
    }
    text
}

/// `kith device list` from a running daemon: one line per live device of the user,
/// its kind (a device, or a witness: votes, holds sealed log entries only), its role
/// in the configuration in force (voter, learner; joining: paired, not added yet) and
/// whether it is reachable now and when it was last heard from.
pub fn device_list(config: &Config, devices: &[DeviceReport], heard: &Heard) -> String {
    let mut text = String::new();
    for d in devices {
        let (kind, role) = match role_in(config, d.node) {
            "witness" => ("witness", "voter"),
            role => ("device", role),
        };
        text.push_str(&format!(
            "{} {:<16} {kind:<8} {role:<8} {}\n",
            d.fingerprint,
            d.name,
            device_state(d, heard)
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

    /// The last slot of the checkpoint the log kept here starts after, if any.
    fn checkpoint_through(&self, progress: &LogProgress) -> Option<u64> {
        progress.log_start.checked_sub(1)
    }

    /// Slots committed after the last checkpoint (the log a catching-up device
    /// replays on top of it).
    fn slots_since_checkpoint(&self, progress: &LogProgress) -> u64 {
        self.commit_end.saturating_sub(progress.log_start)
    }

    /// The replica holds a checkpoint fossil has not installed yet (a device that
    /// starts from a peer's checkpoint: its image's blocks are being fetched).
    fn installing_checkpoint(&self, progress: &LogProgress) -> bool {
        self.applied_end < progress.log_start
    }

    /// Slots of the current catch-up: (applied so far, to apply in all).
    fn catch_up(&self, progress: &LogProgress) -> Option<(u64, u64)> {
        if self.behind() == 0 {
            return None;
        }
        let from = progress
            .catch_up_from
            .unwrap_or(self.applied_end)
            .min(self.applied_end);
        Some((
            self.applied_end - from,
            self.commit_end.saturating_sub(from),
        ))
    }

    /// The last checkpoint: where the log kept here starts, how old, how much since.
    fn checkpoint_line(&self, progress: &LogProgress) -> String {
        let Some(through) = self.checkpoint_through(progress) else {
            return "checkpoint: none yet (the whole log is kept)\n".to_owned();
        };
        let age = match progress.checkpoint_age_s {
            Some(0) => "just now".to_owned(),
            Some(s) => format!("{} ago", ago(s.saturating_mul(1000))),
            None => format!(
                "before this daemon started ({} ago or more)",
                ago(progress.uptime_s.saturating_mul(1000))
            ),
        };
        format!(
            "checkpoint: through slot {through}, {age}; {} slot(s) committed since\n",
            self.slots_since_checkpoint(progress)
        )
    }

    /// While this device is behind: what it is doing and how far it has come.
    fn catch_up_line(&self, view: &ReplicaView) -> String {
        let progress = &view.progress;
        if self.installing_checkpoint(progress) {
            return format!(
                "catching up: installing the checkpoint through slot {} (its blocks come \
                 from the other devices; {} bytes fetched so far), then {} slot(s) of log\n",
                progress.log_start.saturating_sub(1),
                self.fetched_bytes,
                self.slots_since_checkpoint(progress)
            );
        }
        match self.catch_up(progress) {
            Some((done, total)) => format!(
                "catching up: {done} of {total} slot(s) applied, {} to go\n",
                self.behind()
            ),
            // Opening: the volume waits to hear from the others how far the log is.
            None if view.starting => {
                "catching up: asking the other devices how far the log is\n".to_owned()
            }
            None => String::new(),
        }
    }

    /// What `kith mount` shows and watches while this daemon starts: the catch-up
    /// lines, and the figures that move with a catch-up — the log reaching this device
    /// (commit end), applying it (applied end, which moves during a replay), a
    /// checkpoint arriving (log start) and its blocks (bytes fetched).
    pub fn startup_progress(&self, view: &ReplicaView) -> StartupProgress {
        StartupProgress {
            starting: view.starting,
            lines: self
                .catch_up_line(view)
                .lines()
                .map(str::to_owned)
                .collect(),
            position: vec![
                self.commit_end,
                self.applied_end,
                view.progress.log_start,
                self.fetched_bytes,
            ],
        }
    }

    /// The volume key epochs held here, for people.
    fn key_line(&self, view: &ReplicaView) -> String {
        match view.key_epochs {
            Some(keys) => format!(
                "volume key: epoch {} (the newest held here; {} epoch(s) held)\n",
                keys.newest, keys.held
            ),
            None => "volume key: unknown (volume.key could not be read)\n".to_owned(),
        }
    }

    /// Votes needed to commit, of the voters.
    fn quorum(&self) -> (usize, usize) {
        (
            usize::from(self.config.phase2_quorum),
            self.config.voters.len(),
        )
    }

    /// The contract's JSON object.
    pub fn to_json(&self, view: &ReplicaView) -> Value {
        let progress = &view.progress;
        let devices = devices_json(&self.config, &self.devices, &view.heard);
        let (quorum, voters) = self.quorum();
        json!({
            "state": if view.starting { "starting" } else { "serving" },
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
                "log_start": progress.log_start,
                "checkpoint_through": self.checkpoint_through(progress),
                "checkpoint_age_s": progress.checkpoint_age_s,
                "slots_since_checkpoint": self.slots_since_checkpoint(progress),
                "installing_checkpoint": self.installing_checkpoint(progress),
                "catch_up": self.catch_up(progress).map(|(applied, to_apply)| json!({
                    "applied": applied,
                    "to_apply": to_apply,
                })),
                // The newest volume key epoch held here, and how many are held.
                "key_epoch": view.key_epochs.map(|keys| keys.newest),
                "key_epochs_held": view.key_epochs.map(|keys| keys.held),
            },
            "devices": devices,
        })
    }

    /// Lines for the human status (appended to the daemon's other lines).
    pub fn to_text(&self, view: &ReplicaView) -> String {
        let progress = &view.progress;
        let (quorum, voters) = self.quorum();
        let mut text = format!(
            "listen: {}\nkeyring: {}\n{}log: committed to {}, applied to {} ({} behind{}), {} op(s) queued\n\
             quorum: {quorum} of {voters} voter(s), leader {}\nfetching: {} block(s) now, {} bytes fetched\n\
             {}{}{}{}devices:\n",
            self.listen,
            if self.keyring_encrypted {
                "encrypted"
            } else {
                "UNENCRYPTED (keys readable by anyone who can read the store)"
            },
            self.key_line(view),
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
            self.checkpoint_line(progress),
            self.catch_up_line(view),
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
        text.push_str(&device_lines(&self.config, &self.devices, &view.heard));
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
    /// Slots below it were truncated behind a device's checkpoint (0: none yet).
    pub log_start: u64,
    pub devices: Vec<DeviceReport>,
    pub heard: Heard,
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
                "log_start": self.log_start,
                "checkpoint_through": self.log_start.checked_sub(1),
            },
            "devices": devices_json(&self.config, &self.devices, &self.heard),
        })
    }

    pub fn to_text(&self) -> String {
        let mut text = format!(
            "witness: holds sealed log entries and votes; no volume key, no content, no mount\n\
             store: {}\ndevice: {}\npid: {}\nuptime: {} s\nlisten: {}\nkeyring: {}\n\
             log: committed to {} (sealed), {}\nquorum: {} of {} voter(s), leader {}\ndevices:\n",
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
            match self.log_start.checked_sub(1) {
                Some(through) => format!(
                    "kept from slot {} (truncated behind a device's checkpoint through {through})",
                    self.log_start
                ),
                None => "all of it kept (no device's checkpoint seen yet)".to_owned(),
            },
            self.config.phase2_quorum,
            self.config.voters.len(),
            leader_fingerprint(self.leader, &self.devices).unwrap_or("unknown"),
        );
        text.push_str(&device_lines(&self.config, &self.devices, &self.heard));
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

    /// Desktop heard 250 ms ago, the server 95 s ago, the phone never.
    fn view() -> ReplicaView {
        ReplicaView {
            progress: LogProgress {
                log_start: 30,
                checkpoint_age_s: Some(12),
                uptime_s: 600,
                catch_up_from: Some(33),
            },
            heard: [(NodeId(2), Some(250)), (NodeId(3), Some(95_000))].into(),
            starting: false,
            key_epochs: Some(KeyEpochs { newest: 2, held: 3 }),
        }
    }

    #[test]
    fn the_text_and_json_show_the_newest_key_epoch_held() {
        let report = report();
        let mut view = view();
        let text = report.to_text(&view);
        assert!(
            text.contains("\nvolume key: epoch 2 (the newest held here; 3 epoch(s) held)\n"),
            "{text}"
        );
        let volume = &report.to_json(&view)["volume"];
        assert_eq!(volume["key_epoch"], 2);
        assert_eq!(volume["key_epochs_held"], 3);
        view.key_epochs = None;
        assert!(
            report
                .to_text(&view)
                .contains("volume key: unknown (volume.key could not be read)")
        );
        assert_eq!(report.to_json(&view)["volume"]["key_epoch"], Value::Null);
    }

    #[test]
    fn startup_progress_has_the_catch_up_lines_and_moves_with_the_catch_up() {
        let mut report = report();
        let mut view = view();
        view.starting = true;
        let progress = report.startup_progress(&view);
        assert!(progress.starting);
        assert_eq!(
            progress.lines,
            ["catching up: 4 of 7 slot(s) applied, 3 to go"]
        );
        assert_eq!(
            StartupProgress::parse(&progress.to_json().to_string()),
            Some(progress.clone())
        );
        // Each figure a catch-up moves changes the position; the age of things and
        // who was heard from do not.
        let position = progress.position.clone();
        let moved = |report: &SyncReport, view: &ReplicaView| {
            report.startup_progress(view).position != position
        };
        view.heard.insert(NodeId(2), Some(10));
        view.progress.checkpoint_age_s = Some(13);
        assert!(!moved(&report, &view));
        report.applied_end += 1;
        assert!(moved(&report, &view));
        report.applied_end -= 1;
        report.commit_end += 1;
        assert!(moved(&report, &view));
        report.commit_end -= 1;
        report.fetched_bytes += 1;
        assert!(moved(&report, &view));
        report.fetched_bytes -= 1;
        view.progress.log_start += 1;
        assert!(moved(&report, &view));
        // Not JSON of this shape: nothing.
        assert_eq!(StartupProgress::parse("{\"state\":\"starting\"}"), None);
        assert_eq!(StartupProgress::parse("not json"), None);
    }

    #[test]
    fn json_has_the_contract_fields_and_values() {
        let value = report().to_json(&view());
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
        let view = view();
        let text = report.to_text(&view);
        assert!(
            text.contains("content: on demand, 7500 of 10000 bytes held here, 2500 bytes to fetch"),
            "{text}"
        );
        assert!(!text.contains("pushing:"), "{text}");
        report.unpushed_blocks = 3;
        report.content.keep = Keep::Full;
        report.content.fetching = true;
        let text = report.to_text(&view);
        assert!(
            text.contains("full copy, 7500 of 10000 bytes held here, fetching"),
            "{text}"
        );
        assert!(text.contains("pushing: 3 block(s)"), "{text}");
        report.content.missing_bytes = 0;
        report.content.fetching = false;
        assert!(
            report
                .to_text(&view)
                .contains("10000 of 10000 bytes held here, complete")
        );
        report.content.walked = false;
        assert!(
            report
                .to_text(&view)
                .contains("content: full copy, not counted yet")
        );
        assert_eq!(report.to_json(&view)["volume"]["full_copy_fetching"], false);
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
            log_start: 0,
            devices: report.devices.clone(),
            heard: view().heard,
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
        assert_eq!(value["volume"]["checkpoint_through"], Value::Null);
        let text = witness.to_text();
        assert!(text.starts_with("witness: "), "{text}");
        assert!(text.contains("all of it kept"), "{text}");
        let compacted = WitnessReport {
            log_start: 21,
            ..witness.clone()
        };
        assert!(
            compacted
                .to_text()
                .contains("kept from slot 21 (truncated behind a device's checkpoint through 20)"),
            "{}",
            compacted.to_text()
        );
        assert_eq!(compacted.to_json()["volume"]["checkpoint_through"], 20);
        assert!(
            text.contains("quorum: 2 of 3 voter(s), leader fpr-1"),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l.contains("fpr-2")
                && l.contains("voter")
                && l.ends_with("online, heard 250 ms ago")),
            "{text}"
        );
    }

    #[test]
    fn an_unknown_leader_is_null_and_the_text_says_unknown() {
        let mut report = report();
        let view = view();
        report.leader = None;
        assert_eq!(report.to_json(&view)["volume"]["leader"], Value::Null);
        let text = report.to_text(&view);
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
                .any(|l| l.contains("fpr-3") && l.ends_with("offline, heard 95 s ago"))
        );
        assert!(
            text.lines().any(|l| l.contains("fpr-4")
                && l.ends_with("offline, not heard since this daemon started"))
        );
    }

    #[test]
    fn the_text_and_json_show_the_last_checkpoint_and_the_catch_up() {
        let mut report = report();
        let mut view = view();
        let text = report.to_text(&view);
        assert!(
            text.contains("checkpoint: through slot 29, 12 s ago; 10 slot(s) committed since"),
            "{text}"
        );
        // Behind by 3, from 33: 4 of 7 applied.
        assert!(
            text.contains("catching up: 4 of 7 slot(s) applied, 3 to go"),
            "{text}"
        );
        let volume = &report.to_json(&view)["volume"];
        assert_eq!(volume["checkpoint_through"], 29);
        assert_eq!(volume["checkpoint_age_s"], 12);
        assert_eq!(volume["slots_since_checkpoint"], 10);
        assert_eq!(volume["installing_checkpoint"], false);
        assert_eq!(volume["catch_up"]["applied"], 4);
        assert_eq!(volume["catch_up"]["to_apply"], 7);

        // A checkpoint fossil has not installed yet: the device starts from it.
        report.applied_end = 0;
        view.progress.catch_up_from = Some(0);
        view.progress.checkpoint_age_s = None;
        let text = report.to_text(&view);
        assert!(
            text.contains("catching up: installing the checkpoint through slot 29"),
            "{text}"
        );
        assert!(text.contains("4096 bytes fetched so far"), "{text}");
        assert!(
            text.contains("before this daemon started (10 min ago or more)"),
            "{text}"
        );
        assert_eq!(
            report.to_json(&view)["volume"]["installing_checkpoint"],
            true
        );

        // Caught up, no checkpoint yet.
        report.applied_end = 40;
        view.progress = LogProgress::default();
        let text = report.to_text(&view);
        assert!(!text.contains("catching up"), "{text}");
        assert!(text.contains("checkpoint: none yet"), "{text}");
        assert_eq!(report.to_json(&view)["state"], "serving");
        // A daemon still opening its volume, nothing behind as far as it knows yet.
        view.starting = true;
        let text = report.to_text(&view);
        assert!(
            text.contains("catching up: asking the other devices how far the log is"),
            "{text}"
        );
        assert_eq!(report.to_json(&view)["state"], "starting");
        view.progress.log_start = 41;
        view.progress.checkpoint_age_s = Some(0);
        assert!(
            report
                .to_text(&view)
                .contains("checkpoint: through slot 40, just now;")
        );
        let volume = &report.to_json(&view)["volume"];
        assert_eq!(volume["catch_up"], Value::Null);
        assert_eq!(volume["checkpoint_through"], 40);
        view.progress = LogProgress::default();
        let volume = &report.to_json(&view)["volume"];
        assert_eq!(volume["checkpoint_through"], Value::Null);
    }

    #[test]
    fn the_device_list_says_device_or_witness_and_who_is_online() {
        let report = report();
        let text = device_list(&report.config, &report.devices, &view().heard);
        let line = |fpr: &str| {
            text.lines()
                .find(|l| l.starts_with(fpr))
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(line("fpr-1"), "fpr-1 laptop device voter this device");
        assert_eq!(
            line("fpr-2"),
            "fpr-2 desktop device voter online, heard 250 ms ago"
        );
        assert_eq!(
            line("fpr-3"),
            "fpr-3 server witness voter offline, heard 95 s ago"
        );
        assert_eq!(
            line("fpr-4"),
            "fpr-4 phone device joining offline, not heard since this daemon started"
        );
    }

    #[test]
    fn ages_read_in_a_sensible_unit() {
        assert_eq!(ago(0), "0 ms");
        assert_eq!(ago(999), "999 ms");
        assert_eq!(ago(1_000), "1 s");
        assert_eq!(ago(119_999), "119 s");
        assert_eq!(ago(120_000), "2 min");
        assert_eq!(ago(7_200_000), "2 h");
        assert_eq!(ago(200_000_000), "2 d");
    }
}
