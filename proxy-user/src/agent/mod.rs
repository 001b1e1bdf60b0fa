//! `sockgate run`: the listeners, the shared config snapshot, and the lifecycle.
//!
//! SIGHUP reloads the config (an invalid one is refused and the old one stays), and so do
//! a change under `--watch` (or `watch = true`) and a new body at `[source] url`; SIGUSR1
//! writes a `stats` line, SIGTERM stops accepting and drains relayed connections for
//! `shutdown_grace`, SIGINT stops at once. Every connection runs as a [`session`]. With
//! `[admin]`, the admin endpoint serves from before the datapath loads, ready once every
//! listener is bound, and not ready again from SIGTERM or SIGINT.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::{Notify, watch},
    task::JoinHandle,
};

use crate::{
    admin::{self, Admin, Readiness, metrics::MapEntries},
    config::{self, AdminConfig, ListenerConfig},
    datapath::{DEFAULT_SEND_BUFFER, Datapath, Mode},
    events, notify,
    pulse::{self, Phase, Pulse},
    snapshot::Snapshot,
    source::{self, Fetched, Source},
    watch::Watch,
};

mod listeners;

use listeners::start_listener;

/// State shared by every listener and session.
struct Agent {
    datapath: Arc<Datapath>,
    /// The config snapshot new connections take; replaced whole on reload.
    live: RwLock<Arc<Snapshot>>,
    /// The phase and idle tick every session watches.
    pulse: watch::Sender<Pulse>,
    /// Wakes the ticker when a reload may have changed `idle_timeout`.
    reloaded: Notify,
    next_conn: AtomicU64,
    /// Connections open now (for `max_connections`).
    active: AtomicUsize,
    /// Running listeners by name, with the config they were started from.
    listeners: Mutex<HashMap<String, (ListenerConfig, JoinHandle<()>)>>,
    /// The admin endpoint's state, with the `[admin]` it was started from.
    admin: Option<(AdminConfig, Arc<Admin>)>,
}

/// The datapath mode the config names.
fn datapath_mode(datapath: config::Datapath) -> Mode {
    match datapath {
        config::Datapath::Auto => Mode::Auto,
        config::Datapath::Sockmap => Mode::Sockmap,
        config::Datapath::Splice => Mode::Splice,
        config::Datapath::Copy => Mode::Copy,
    }
}

/// What started a reload; its log line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// SIGHUP.
    Sighup,
    /// A change in a watched directory.
    Watch,
    /// A new body at `[source] url`.
    Url,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Sighup => "sighup",
            Origin::Watch => "watch",
            Origin::Url => "url",
        }
    }
}

/// Runs until SIGTERM or SIGINT; with `watch` (or `watch = true`), a change to the config
/// or an included file reloads as SIGHUP does.
pub async fn run(path: PathBuf, watch: bool) -> anyhow::Result<()> {
    // Handlers first: until they exist, SIGHUP and SIGTERM kill the process outright, and
    // a supervisor may signal as soon as the listeners accept (or while the BPF loads).
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let (live, config, text) = Snapshot::load_with_text(&path)?;
    let (mut source, (live, config, text)) = match &config.source {
        None => (None, (live, config, text)),
        Some(settings) => {
            let mut source = Source::new(settings)?;
            let loaded = first_fetch(&mut source).await?;
            (Some(source), loaded)
        }
    };
    let shown = match &source {
        Some(s) => PathBuf::from(s.url()),
        None => path.clone(),
    };
    if source.is_some() && (watch || config.watch) {
        log::warn!("--watch: the config comes from [source] url, which is polled instead");
    }
    // Started before anything else reads the files, so no change goes unseen.
    let mut watch = if source.is_none() && (watch || config.watch) {
        Some(Watch::start(&path, &config.include)?)
    } else {
        None
    };
    let admin = match config.admin {
        Some(settings) => Some((settings, start_admin(&settings, &shown, &text).await?)),
        None => None,
    };
    let mode = datapath_mode(config.datapath);
    let datapath = Datapath::load(mode, DEFAULT_SEND_BUFFER)
        .context("datapath = \"sockmap\" needs the eBPF program")?;
    if let Some((_, admin)) = &admin {
        admin.datapath_loaded(datapath.effective(), map_entries(&datapath));
    }
    let agent = Arc::new(Agent {
        datapath: Arc::new(datapath),
        live: RwLock::new(Arc::new(live)),
        pulse: watch::Sender::new(Pulse::default()),
        reloaded: Notify::new(),
        next_conn: AtomicU64::new(0),
        active: AtomicUsize::new(0),
        listeners: Mutex::new(HashMap::new()),
        admin,
    });
    for listener in &config.listeners {
        start_listener(&agent, listener).await?;
    }
    set_readiness(&agent, Readiness::Ready);
    let ticker = {
        let agent = Arc::clone(&agent);
        tokio::spawn(async move {
            pulse::tick(&agent.pulse, &agent.reloaded, || {
                snapshot(&agent).limits.idle_timeout
            })
            .await;
        })
    };
    log::info!(
        "sockgate running: {} listeners, {} rules, datapath {} ({mode:?})",
        config.listeners.len(),
        config.policy.rules.len(),
        agent.datapath.effective(),
    );
    notify::ready();
    let grace = loop {
        tokio::select! {
            _ = hup.recv() => match &mut source {
                // The file holds only [source]: SIGHUP polls the URL now.
                Some(source) => poll(&agent, source).await,
                None => {
                    let config = notify::reloading(reload(&agent, &path, Origin::Sighup)).await;
                    follow(&mut watch, &path, config);
                }
            },
            () = source::due(&mut source) => {
                if let Some(source) = &mut source {
                    poll(&agent, source).await;
                }
            }
            () = crate::watch::changed(&mut watch) => {
                let config = notify::reloading(reload(&agent, &path, Origin::Watch)).await;
                follow(&mut watch, &path, config);
            }
            _ = usr1.recv() => stats(&agent),
            _ = term.recv() => break snapshot(&agent).limits.shutdown_grace,
            _ = int.recv() => break Duration::ZERO,
        }
    };
    notify::stopping();
    set_readiness(&agent, Readiness::Draining);
    shutdown(&agent, grace).await;
    ticker.abort();
    Ok(())
}

/// The config at start from `[source] url`: fetched, else the cache (the last good text).
async fn first_fetch(source: &mut Source) -> anyhow::Result<(Snapshot, config::Config, String)> {
    let url = source.url().to_owned();
    match source.fetch().await {
        Ok(Fetched::New(text)) => match source.load(&text) {
            Ok((live, config)) => {
                source.save(&text);
                return Ok((live, config, text));
            }
            Err(err) => log::error!("[source] {url}: {err:#}; trying the cache"),
        },
        Ok(Fetched::Unchanged) => unreachable!("the first fetch is unconditional"),
        Err(err) => log::error!("[source] {url}: {err}; trying the cache"),
    }
    let (cache, text) = source
        .cached()
        .with_context(|| format!("[source] {url} failed and there is no cache to start from"))?;
    let (live, config) = source
        .load(&text)
        .with_context(|| format!("[source] cache {}", cache.display()))?;
    log::warn!("[source] starting from the cache {}", cache.display());
    source.running(&text);
    Ok((live, config, text))
}

/// A poll of `[source] url`: a new body reloads as SIGHUP does (and is cached once it
/// applied); 304 or the same body does nothing; a failed fetch keeps the running config
/// with one line.
async fn poll(agent: &Arc<Agent>, source: &mut Source) {
    let url = PathBuf::from(source.url());
    match source.fetch().await {
        Ok(Fetched::Unchanged) => {}
        Ok(Fetched::New(text)) => {
            let loaded = source
                .load(&text)
                .map(|(live, config)| (live, config, text.clone()))
                .map_err(anyhow::Error::from);
            if notify::reloading(apply(agent, loaded, &url, Origin::Url))
                .await
                .is_some()
            {
                source.save(&text);
            }
        }
        Err(err) => {
            let err = anyhow::Error::from(err).context(format!("fetching {}", url.display()));
            refused(agent, &err, Origin::Url);
        }
    }
}

/// After a reload that applied, watches the directories its includes read from too.
fn follow(watch: &mut Option<Watch>, path: &Path, config: Option<config::Config>) {
    if let (Some(watch), Some(config)) = (watch, config) {
        watch.follow(path, &config.include);
    }
}

/// Binds `[admin]` and serves it from now on, not ready yet.
async fn start_admin(
    settings: &AdminConfig,
    path: &Path,
    text: &str,
) -> anyhow::Result<Arc<Admin>> {
    let listener = TcpListener::bind(settings.address)
        .await
        .with_context(|| format!("[admin] binding {}", settings.address))?;
    let admin = Arc::new(Admin::default());
    admin.config_loaded(path, text, false);
    tokio::spawn(admin::server::serve(listener, Arc::clone(&admin)));
    log::info!("admin endpoint on http://{}", settings.address);
    Ok(admin)
}

/// Reads the kernel maps' entry counts for `sockgate_kernel_map_entries`.
fn map_entries(datapath: &Datapath) -> Option<MapEntries> {
    let kernel = Arc::clone(datapath.kernel()?);
    Some(Box::new(move || {
        let counts = kernel.map_counts();
        vec![
            ("socks", counts.socks as u64),
            ("handoff", counts.handoff as u64),
            ("counters", counts.counters as u64),
        ]
    }))
}

fn set_readiness(agent: &Agent, readiness: Readiness) {
    if let Some((_, admin)) = &agent.admin {
        admin.set_readiness(readiness);
    }
}

/// SIGUSR1: one `stats` line on the decision log.
fn stats(agent: &Agent) {
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0);
    events::stats(&events::Stats {
        accepted: agent.next_conn.load(Relaxed),
        open: agent.active.load(Relaxed),
        fds,
        rss_kib,
        maps: agent.datapath.kernel().map(|k| k.map_counts()),
    });
}

fn snapshot(agent: &Agent) -> Arc<Snapshot> {
    Arc::clone(&agent.live.read().unwrap_or_else(|p| p.into_inner()))
}

/// SIGTERM/SIGINT: stop accepting, end handshakes, give relayed connections `grace`.
async fn shutdown(agent: &Agent, grace: Duration) {
    log::info!(
        "shutting down: {} open connections, grace {grace:?}",
        agent.active.load(Relaxed)
    );
    for (_, (_, task)) in agent
        .listeners
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
    {
        task.abort();
    }
    agent.pulse.send_modify(|p| p.phase = Phase::Draining);
    // Relayed connections go on for the grace period, then close themselves; wait for
    // their close lines.
    wait_idle(agent, grace).await;
    agent.pulse.send_modify(|p| p.phase = Phase::Closed);
    wait_idle(agent, Duration::from_secs(2)).await;
}

/// Returns when no connection is open, or after `limit`.
async fn wait_idle(agent: &Agent, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while agent.active.load(Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGHUP or a watched change: a valid new config replaces the policy and limits for new
/// connections and adds, restarts or removes listeners; an invalid one changes nothing.
/// Logs one line naming `origin` and the outcome; returns the config if it applied.
async fn reload(agent: &Arc<Agent>, path: &Path, origin: Origin) -> Option<config::Config> {
    // Through anyhow, whose `{:#}` also prints the error's causes.
    let loaded = Snapshot::load_with_text(path).map_err(anyhow::Error::from);
    apply(agent, loaded, path, origin).await
}

/// A refused reload: its one line, and the admin endpoint's reload result.
fn refused(agent: &Agent, err: &anyhow::Error, origin: Origin) {
    let origin = origin.as_str();
    log::error!("reload refused ({origin}), keeping the running config: {err:#}");
    if let Some((_, admin)) = &agent.admin {
        admin.reload_failed(&format!("{err:#}"));
    }
}

/// Swaps in a loaded config (from `path`, a file or a URL), or refuses a failed load.
async fn apply(
    agent: &Arc<Agent>,
    loaded: anyhow::Result<(Snapshot, config::Config, String)>,
    path: &Path,
    origin: Origin,
) -> Option<config::Config> {
    let (live, config, text) = match loaded {
        Ok(loaded) => loaded,
        Err(err) => {
            refused(agent, &err, origin);
            return None;
        }
    };
    let origin = origin.as_str();
    if datapath_mode(config.datapath) != agent.datapath.mode() {
        log::warn!("reload: a datapath change takes effect only after a restart");
    }
    if config.admin != agent.admin.as_ref().map(|(settings, _)| *settings) {
        log::warn!("reload: an [admin] change takes effect only after a restart");
    }
    if let Some((_, admin)) = &agent.admin {
        admin.config_loaded(path, &text, true);
    }
    *agent.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
    agent.reloaded.notify_one();
    let wanted: HashMap<&str, &ListenerConfig> = config
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l))
        .collect();
    let stale: Vec<String> = {
        lock(&agent.listeners)
            .iter()
            .filter(|(name, (cfg, _))| wanted.get(name.as_str()) != Some(&cfg))
            .map(|(name, _)| name.clone())
            .collect()
    };
    for name in &stale {
        let removed = lock(&agent.listeners).remove(name);
        if let Some((_, task)) = removed {
            task.abort();
            // The aborted task drops its socket; wait for it so the same address can be
            // bound again.
            let _ = task.await;
        }
    }
    for listener in &config.listeners {
        let running = lock(&agent.listeners).contains_key(&listener.name);
        if !running && let Err(err) = start_listener(agent, listener).await {
            log::error!("reload: listener {}: {err:#}", listener.name);
        }
    }
    log::info!(
        "reloaded {} ({origin}): {} listeners, {} rules",
        path.display(),
        config.listeners.len(),
        config.policy.rules.len()
    );
    Some(config)
}

/// The listener table holds no invariant a panic could break.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
