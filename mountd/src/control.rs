//! The control socket: how `kith status`, `snapshot`, `verify` and `unmount` talk to a
//! running daemon.
//!
//! Goals: tiny, obviously bounded, usable with `socat` by hand. Non-goals: remote
//! access (the socket is a Unix socket in a 0700 directory), concurrency beyond a few
//! clients, versioning beyond "unknown request → error".
//!
//! Wire format, one exchange per connection:
//!
//! ```text
//! client → server   one line, UTF-8, at most REQUEST_BYTES_MAX bytes incl. '\n':
//!                     ping | status | mountpoint | verify | unmount | snapshot NAME
//!                     | device-add | status-json | witness-add | device-list
//!                     | progress
//! server → client   "ok\n" or "error MESSAGE\n", then a free-form UTF-8 body,
//!                   at most RESPONSE_BYTES_MAX bytes; the server closes the connection.
//! ```
//!
//! A request that is too long, not UTF-8 or unknown gets `error …`; a client that sends
//! nothing within READ_TIMEOUT is dropped. At most CONNECTIONS_MAX exchanges run at once.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};

pub const REQUEST_BYTES_MAX: usize = 4096;
pub const RESPONSE_BYTES_MAX: usize = 1 << 20;
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTIONS_MAX: usize = 16;
/// Unread request bytes discarded before closing, at most.
const DRAIN_BYTES_MAX: u64 = 64 * 1024;
/// `verify`, `unmount` and `gc` may take long; the client waits this long for their answer.
const CLIENT_TIMEOUT_LONG: Duration = Duration::from_secs(3600);
/// Every other request is answered at once by a daemon that is alive; one that does
/// not answer in this time is treated as gone (it may be wedged while dying).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `is_alive` waits for a ping's answer.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Ping,
    Status,
    Mountpoint,
    Verify,
    Unmount,
    Snapshot(String),
    /// A one-time pairing code for a new device (`kith device add`); body line 1 = the code.
    DeviceAdd,
    /// `kith status --json`: one JSON object (see `crate::status`).
    StatusJson,
    /// `kith device remove WHO`: revoke a device of the user (name or fingerprint).
    DeviceRemove(String),
    /// A one-time pairing code for a witness (`kith witness add`); body line 1 = the code.
    WitnessAdd,
    /// `kith gc`: a garbage-collection round now.
    Gc,
    /// `kith device list` with a daemon running: every device with its role and
    /// whether it is reachable (see `crate::status::device_list`).
    DeviceList,
    /// What a starting daemon is doing, for `kith mount` while it waits: one JSON
    /// object (`crate::status::StartupProgress`).
    Progress,
}

impl Request {
    pub fn parse(line: &str) -> std::result::Result<Request, String> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let (word, rest) = match line.split_once(' ') {
            Some((word, rest)) => (word, Some(rest)),
            None => (line, None),
        };
        match (word, rest) {
            ("ping", None) => Ok(Request::Ping),
            ("status", None) => Ok(Request::Status),
            ("mountpoint", None) => Ok(Request::Mountpoint),
            ("verify", None) => Ok(Request::Verify),
            ("unmount", None) => Ok(Request::Unmount),
            ("device-add", None) => Ok(Request::DeviceAdd),
            ("status-json", None) => Ok(Request::StatusJson),
            ("witness-add", None) => Ok(Request::WitnessAdd),
            ("gc", None) => Ok(Request::Gc),
            ("device-list", None) => Ok(Request::DeviceList),
            ("progress", None) => Ok(Request::Progress),
            ("snapshot", Some(name)) if !name.is_empty() => Ok(Request::Snapshot(name.into())),
            ("device-remove", Some(who)) if !who.is_empty() => {
                Ok(Request::DeviceRemove(who.into()))
            }
            _ => Err(format!("unknown request {:?}", truncate(line, 64))),
        }
    }

    pub fn to_line(&self) -> String {
        match self {
            Request::Ping => "ping\n".into(),
            Request::Status => "status\n".into(),
            Request::Mountpoint => "mountpoint\n".into(),
            Request::Verify => "verify\n".into(),
            Request::Unmount => "unmount\n".into(),
            Request::Snapshot(name) => format!("snapshot {name}\n"),
            Request::DeviceAdd => "device-add\n".into(),
            Request::StatusJson => "status-json\n".into(),
            Request::DeviceRemove(who) => format!("device-remove {who}\n"),
            Request::WitnessAdd => "witness-add\n".into(),
            Request::Gc => "gc\n".into(),
            Request::DeviceList => "device-list\n".into(),
            Request::Progress => "progress\n".into(),
        }
    }
}

/// What the daemon does with a request: the body on success, a message on failure.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> std::result::Result<String, String>;
}

/// Send one request and return the body of an `ok` answer.
pub fn call(socket: &Path, request: &Request) -> Result<String> {
    let timeout = match request {
        Request::Verify | Request::Unmount | Request::Gc => CLIENT_TIMEOUT_LONG,
        _ => CLIENT_TIMEOUT,
    };
    call_within(socket, request, timeout)
}

/// [`call`], waiting at most `timeout` for the answer.
pub fn call_within(socket: &Path, request: &Request, timeout: Duration) -> Result<String> {
    let control_error = |detail: String| Error::Control {
        socket: socket.to_owned(),
        detail,
    };
    let mut stream = UnixStream::connect(socket).map_err(|e| control_error(e.to_string()))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
        .and_then(|()| stream.write_all(request.to_line().as_bytes()))
        .map_err(|e| control_error(e.to_string()))?;
    let mut answer = Vec::new();
    stream
        .take(RESPONSE_BYTES_MAX as u64)
        .read_to_end(&mut answer)
        .map_err(|e| control_error(e.to_string()))?;
    let answer = String::from_utf8_lossy(&answer);
    let (status, body) = answer.split_once('\n').unwrap_or((&answer, ""));
    if status == "ok" {
        Ok(body.to_owned())
    } else if let Some(message) = status.strip_prefix("error ") {
        Err(Error::Remote(message.to_owned()))
    } else {
        Err(control_error(format!(
            "unexpected answer {:?}",
            truncate(status, 64)
        )))
    }
}

/// Whether a daemon answers on `socket`. A socket that accepts but never answers
/// belongs to a daemon that is dying or wedged: not alive.
pub fn is_alive(socket: &Path) -> bool {
    call_within(socket, &Request::Ping, PING_TIMEOUT).is_ok()
}

/// A bound control socket; serving starts with [`Server::spawn`].
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
}

impl Server {
    /// Bind `path`, replacing a stale socket file nobody listens on.
    pub fn bind(path: &Path) -> Result<Server> {
        let bind_error = |source| Error::Path {
            what: "create the control socket",
            path: path.to_owned(),
            source,
        };
        if path.exists() {
            if is_alive(path) {
                return Err(Error::Control {
                    socket: path.to_owned(),
                    detail: "another daemon is listening on it".into(),
                });
            }
            std::fs::remove_file(path).map_err(bind_error)?;
        }
        let listener = UnixListener::bind(path).map_err(bind_error)?;
        Ok(Server {
            listener,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serve forever on a background thread (the daemon exits the process to stop it).
    pub fn spawn(self, handler: Arc<dyn Handler>) -> Result<ServerHandle> {
        let active = Arc::new(AtomicUsize::new(0));
        let handle = ServerHandle {
            active: active.clone(),
        };
        std::thread::Builder::new()
            .name("kith-control".into())
            .spawn(move || {
                for stream in self.listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    if active.fetch_add(1, Ordering::SeqCst) >= CONNECTIONS_MAX {
                        active.fetch_sub(1, Ordering::SeqCst);
                        let _ = answer(&stream, Err("too many clients; retry".into()));
                        continue;
                    }
                    let handler = handler.clone();
                    let active = active.clone();
                    let spawned = std::thread::Builder::new()
                        .name("kith-control-client".into())
                        .spawn(move || {
                            serve_one(&stream, handler.as_ref());
                            active.fetch_sub(1, Ordering::SeqCst);
                        });
                    if let Err(error) = spawned {
                        tracing::error!(%error, "cannot start a control thread");
                    }
                }
            })
            .map_err(|source| Error::Path {
                what: "start the control thread for",
                path: PathBuf::from("control socket"),
                source,
            })?;
        Ok(handle)
    }
}

/// Observes a serving [`Server`].
#[derive(Clone, Debug)]
pub struct ServerHandle {
    active: Arc<AtomicUsize>,
}

impl ServerHandle {
    /// Wait until no exchange is in progress (answers written), at most `timeout`.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while self.active.load(Ordering::SeqCst) > 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

fn serve_one(stream: &UnixStream, handler: &dyn Handler) {
    if stream.set_read_timeout(Some(READ_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
        return;
    }
    let mut line = Vec::new();
    let mut reader = BufReader::new(stream.take(REQUEST_BYTES_MAX as u64));
    let result = match reader.read_until(b'\n', &mut line) {
        Ok(_) if !line.ends_with(b"\n") => Err(format!(
            "request not terminated by a newline within {REQUEST_BYTES_MAX} bytes"
        )),
        Ok(_) => match std::str::from_utf8(&line) {
            Ok(text) => Request::parse(text).and_then(|request| {
                tracing::info!(?request, "control request");
                handler.handle(request)
            }),
            Err(_) => Err("request is not UTF-8".into()),
        },
        Err(error) => Err(format!("reading the request: {error}")),
    };
    if let Err(error) = answer(stream, result) {
        tracing::debug!(%error, "control client went away");
    }
    // Drain what an over-long request left unread: closing a Unix socket with unread
    // input resets the connection, and the client would lose the answer.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = std::io::copy(&mut reader.into_inner(), &mut std::io::sink());
    let _ = std::io::copy(&mut stream.take(DRAIN_BYTES_MAX), &mut std::io::sink());
}

fn answer(
    mut stream: &UnixStream,
    result: std::result::Result<String, String>,
) -> std::io::Result<()> {
    let text = match result {
        Ok(body) => format!("ok\n{}", truncate(&body, RESPONSE_BYTES_MAX - 3)),
        Err(message) => format!("error {}\n", message.replace('\n', " ")),
    };
    stream.write_all(text.as_bytes())?;
    stream.flush()
}

fn truncate(text: &str, bytes_max: usize) -> &str {
    if text.len() <= bytes_max {
        return text;
    }
    let mut end = bytes_max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Handler for Echo {
        fn handle(&self, request: Request) -> std::result::Result<String, String> {
            match request {
                Request::Snapshot(name) if name == "bad" => Err("no\nway".into()),
                other => Ok(format!("{other:?}\n")),
            }
        }
    }

    #[test]
    fn requests_round_trip_through_their_line_form() {
        for request in [
            Request::Ping,
            Request::Status,
            Request::Mountpoint,
            Request::Verify,
            Request::Unmount,
            Request::Snapshot("before upgrade".into()),
            Request::DeviceAdd,
            Request::StatusJson,
            Request::DeviceRemove("old phone".into()),
            Request::WitnessAdd,
            Request::Gc,
            Request::DeviceList,
            Request::Progress,
        ] {
            assert_eq!(Request::parse(&request.to_line()), Ok(request));
        }
        assert!(Request::parse("snapshot\n").is_err());
        assert!(Request::parse("status now\n").is_err());
        assert!(Request::parse("\n").is_err());
    }

    #[test]
    fn server_answers_ok_and_error_and_bounds_input() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("t.sock");
        let server = Server::bind(&socket)?;
        server.spawn(Arc::new(Echo))?;

        assert_eq!(call(&socket, &Request::Status)?, "Status\n");
        let refused = call(&socket, &Request::Snapshot("bad".into()));
        assert!(
            matches!(&refused, Err(Error::Remote(m)) if m == "no way"),
            "{refused:?}"
        );

        // Oversized request: an error answer, not a hang or a crash.
        let mut raw = UnixStream::connect(&socket)?;
        raw.write_all(&vec![b'x'; REQUEST_BYTES_MAX + 10])?;
        let mut answer = String::new();
        raw.read_to_string(&mut answer)?;
        assert!(
            answer.starts_with("error request not terminated"),
            "{answer}"
        );

        // Garbage bytes.
        let mut raw = UnixStream::connect(&socket)?;
        raw.write_all(b"\xff\xfe\n")?;
        let mut answer = String::new();
        raw.read_to_string(&mut answer)?;
        assert!(answer.starts_with("error request is not UTF-8"), "{answer}");

        // A second server on a live socket is refused; a stale file is replaced.
        assert!(Server::bind(&socket).is_err());
        assert!(is_alive(&socket));
        // A socket that accepts but never answers (a wedged daemon) is not alive.
        let wedged = dir.path().join("wedged.sock");
        let _listening = UnixListener::bind(&wedged)?;
        assert!(!is_alive(&wedged));
        let stale = dir.path().join("stale.sock");
        drop(UnixListener::bind(&stale)?);
        assert!(Server::bind(&stale).is_ok());
        Ok(())
    }
}
