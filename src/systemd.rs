//! systemd integration: listening sockets passed by socket activation (`LISTEN_FDS`,
//! named through `LISTEN_FDNAMES`), and `sd_notify` readiness, watchdog and stopping
//! messages. Outside systemd every function here does nothing.

use std::io;
use std::net::TcpListener;
use std::time::Duration;

use listenfd::ListenFd;
use sd_notify::NotifyState;

/// The name (`FileDescriptorName=` in the .socket unit) that marks the admin socket.
pub const ADMIN_FD_NAME: &str = "admin";

/// Sockets systemd passed in.
pub struct Activated {
    pub api: TcpListener,
    pub admin: Option<TcpListener>,
}

/// Takes the sockets systemd passed, if any: the one named `admin` serves the admin
/// endpoints, the first other one the registry API. Call before any thread starts, since
/// this clears `LISTEN_FDS` from the environment.
pub fn take_listeners() -> io::Result<Option<Activated>> {
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|v| v.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let mut fds = ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    let mut api = None;
    let mut admin = None;
    for i in 0..fds.len() {
        let Some(listener) = fds.take_tcp_listener(i)? else {
            continue;
        };
        let is_admin = names.get(i).is_some_and(|n| n == ADMIN_FD_NAME);
        match (is_admin, &api, &admin) {
            (true, _, None) => admin = Some(listener),
            (false, None, _) => api = Some(listener),
            _ => tracing::warn!(fd = 3 + i, "ignoring an extra socket passed by systemd"),
        }
    }
    let api = api.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "systemd passed sockets but none for the registry API; check the .socket unit",
        )
    })?;
    Ok(Some(Activated { api, admin }))
}

/// Tells systemd the service is ready (listeners bound, store opened).
pub fn notify_ready() {
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// Tells systemd the service is stopping (draining connections).
pub fn notify_stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("draining connections"),
    ]);
}

/// Pings the watchdog at half its period while the runtime keeps running, if
/// `WatchdogSec=` is set; a wedged runtime misses pings and systemd restarts us.
pub fn spawn_watchdog() {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (period / 2).max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            notify(&[NotifyState::Watchdog]);
        }
    });
}

fn notify(state: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
