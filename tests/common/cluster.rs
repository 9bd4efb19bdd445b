//! Cluster harness: a real `redis-server` and real `confab` processes (so a node can be
//! killed with SIGKILL), all on loopback, sharing the test's scripted upstream.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `redis-server` from PATH (the README's test command installs it: apt when root).
fn redis_binary() -> PathBuf {
    for dir in std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
    {
        let bin = dir.join("redis-server");
        if bin.is_file() {
            return bin;
        }
    }
    panic!(
        "redis-server is not installed: the cluster tests need it \
         (`apt-get install redis-server`, or run `bash scripts/test.sh`, which installs it)"
    );
}

/// A Redis server on its own port, killed when dropped. Without persistence, or with an
/// append-only file synced on every write (`appendfsync always`).
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    aof: bool,
}

impl Redis {
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// With `aof`, every write is on disk before Redis answers it.
    pub async fn start_with(aof: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Self {
            port: free_port(),
            child: None,
            dir,
            aof,
        };
        // Another test may take the port between `free_port` and the bind: try another.
        for _ in 0..5 {
            if r.launch().await {
                return r;
            }
            r.kill();
            r.port = free_port();
        }
        panic!("redis-server did not start");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port: empty, or with what its append-only file holds.
    pub async fn restart(&mut self) {
        assert!(self.launch().await, "redis-server did not restart");
    }

    /// Spawns redis-server on `self.port`; true once it answers and is this one (its data
    /// folder is ours), not another test's server on a reused port.
    async fn launch(&mut self) -> bool {
        let persistence: &[&str] = if self.aof {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let child = Command::new(redis_binary())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(persistence)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let ours = self.dir.path().canonicalize().unwrap_or_default();
        while Instant::now() < deadline {
            if let Ok(mut c) = self.connection().await
                && let Ok((_, dir)) = redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("dir")
                    .query_async::<(String, String)>(&mut c)
                    .await
            {
                return Path::new(&dir) == ours;
            }
            let exited = self.child.as_mut().map(|c| c.try_wait());
            if matches!(exited, Some(Ok(Some(_)))) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// SIGSTOP / SIGCONT: a Redis that hangs (a partition, a long pause) without closing
    /// its connections.
    pub fn freeze(&self, frozen: bool) {
        use rustix::process::{Pid, Signal, kill_process};
        let sig = if frozen { Signal::STOP } else { Signal::CONT };
        if let Some(c) = &self.child {
            kill_process(Pid::from_child(c), sig).expect("signal redis");
        }
    }

    /// SIGKILL: everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    /// The node holding a room's turn lease right now, if any.
    pub async fn lease_holder(&self) -> Option<String> {
        let mut c = self.connection().await.ok()?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("confab:room:*:lease")
            .query_async(&mut c)
            .await
            .ok()?;
        let key = keys.first()?;
        redis::cmd("GET").arg(key).query_async(&mut c).await.ok()
    }
}

impl Redis {
    /// The nodes (consumers) holding the ingestion jobs that are running now.
    pub async fn job_holders(&self) -> Vec<String> {
        let Ok(mut c) = self.connection().await else {
            return Vec::new();
        };
        let pending: redis::RedisResult<Vec<(String, String, u64, u64)>> = redis::cmd("XPENDING")
            .arg(JOBS)
            .arg("workers")
            .arg("-")
            .arg("+")
            .arg(100)
            .query_async(&mut c)
            .await;
        pending
            .unwrap_or_default()
            .into_iter()
            .map(|(_, node, _, _)| node)
            .collect()
    }

    /// Ingestion jobs queued or running.
    pub async fn jobs_left(&self) -> u64 {
        let mut c = self.connection().await.expect("redis");
        redis::cmd("XLEN")
            .arg(JOBS)
            .query_async(&mut c)
            .await
            .expect("XLEN")
    }
}

/// The ingestion job stream under the default key prefix.
const JOBS: &str = "confab:docs:{docs}:jobs";

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The config every node gets: the test's upstream, dev mode, no retrieval, cluster mode on
/// Redis with a short lease (so the tests that kill a node are quick).
pub fn node_config(dir: &Path, upstream: &str, redis_url: &str, lease_ms: u64) -> PathBuf {
    NodeConfig::new(upstream, redis_url, lease_ms).write(dir)
}

/// [`node_config`] with retrieval (the embedding model from the default assets folder, one
/// worker; each node's embedded store in its own folder) and the answer cache on.
pub fn node_config_with_retrieval(dir: &Path, upstream: &str, redis_url: &str) -> PathBuf {
    NodeConfig {
        retrieval: true,
        ..NodeConfig::new(upstream, redis_url, 2_000)
    }
    .write(dir)
}

/// What varies between the cluster tests' node configs.
pub struct NodeConfig {
    pub upstream: String,
    pub redis_url: String,
    pub lease_ms: u64,
    /// Retrieval and the answer cache on.
    pub retrieval: bool,
    /// Extra lines of the mock provider's section (prices, `max_tokens`).
    pub provider: String,
    /// The `[auth]` section and its tenants; empty: dev mode.
    pub auth: String,
}

impl NodeConfig {
    pub fn new(upstream: &str, redis_url: &str, lease_ms: u64) -> Self {
        Self {
            upstream: upstream.into(),
            redis_url: redis_url.into(),
            lease_ms,
            retrieval: false,
            provider: String::new(),
            auth: String::new(),
        }
    }

    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("node.toml");
        let (retrieval, cache) = if self.retrieval {
            ("enabled = true\n[embedding]\nworkers = 1", "true")
        } else {
            ("enabled = false", "false")
        };
        let auth = if self.auth.is_empty() {
            "[auth]\ndev_mode = true"
        } else {
            &self.auth
        };
        let toml = format!(
            r#"
[providers.mock]
kind = "openai"
base_url = "{upstream}"
model = "mock-model"
max_retries = 0
first_token_timeout_ms = 5000
idle_timeout_ms = 5000
total_timeout_ms = 60000
{provider}
[chains.default]
links = ["mock"]
[retrieval]
{retrieval}
[cache]
enabled = {cache}
[server]
shutdown_grace_ms = 1000
[rooms]
# The suites count deltas per upstream token.
coalesce_ms = 0
[cluster]
backend = "redis"
redis_url = "{redis_url}"
lease_ms = {lease_ms}
op_timeout_ms = 500
{auth}
"#,
            upstream = self.upstream,
            provider = self.provider,
            redis_url = self.redis_url,
            lease_ms = self.lease_ms,
        );
        std::fs::write(&path, toml).expect("write node config");
        path
    }
}

/// One confab process.
pub struct Node {
    pub id: String,
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    /// Starts `confab serve` with `config`, named `id`, and waits until it is ready.
    pub async fn start(id: &str, config: &Path) -> Self {
        Self::start_with(id, config, &[]).await
    }

    /// [`Node::start`] with extra `CONFAB__…` variables.
    pub async fn start_with(id: &str, config: &Path, env: &[(&str, &str)]) -> Self {
        let log_path = config.with_file_name(format!("{id}.log"));
        let log = std::fs::File::create(&log_path).expect("node log");
        let child = Command::new(env!("CARGO_BIN_EXE_confab"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            // Port 0: the node picks a free port and logs it (no race with other tests).
            .env("CONFAB__SERVER__BIND", "127.0.0.1:0")
            .env("CONFAB__CLUSTER__NODE_ID", id)
            .env(
                "CONFAB__VECTOR__DATA_DIR",
                config.with_file_name(format!("{id}-data")),
            )
            .env("CONFAB__LOG__LEVEL", "confab=debug,info")
            .envs(env.iter().copied())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("confab starts");
        let mut node = Self {
            id: id.into(),
            port: 0,
            child: Some(child),
            log: log_path,
        };
        node.port = node.bound_port().await;
        node.wait_ready(true).await;
        node
    }

    /// The port the node logged it listens on (`confab listening addr=127.0.0.1:PORT`).
    async fn bound_port(&self) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let log = strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default());
            let port = log
                .lines()
                .filter(|l| l.contains("confab listening"))
                .find_map(|l| {
                    let addr = l.split("addr=").nth(1)?;
                    let port = addr.split(':').nth(1)?;
                    let digits: String = port.chars().take_while(char::is_ascii_digit).collect();
                    digits.parse().ok()
                });
            if let Some(p) = port {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("node {} did not say where it listens", self.id);
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/ws", self.port)
    }

    /// What the node logged so far.
    pub fn log_text(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits until `/readyz` says `ready` (or, with false, says not ready).
    pub async fn wait_ready(&self, ready: bool) {
        // This process talks HTTP without starting a server (which would install it).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = reqwest::get(self.http("/readyz")).await.map(|r| r.status());
            match status {
                Ok(s) if s.is_success() == ready => return,
                Err(_) if !ready => return,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "node {} never became ready={ready}",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGSTOP: the process stops where it is (a partition, a long pause), keeping its
    /// sockets open; [`Node::thaw`] lets it go on as if nothing happened.
    pub fn freeze(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// SIGTERM: the node drains (running turns finish, sessions get 1012) and exits.
    pub fn terminate(&self) {
        self.signal(rustix::process::Signal::TERM);
    }

    pub fn thaw(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    fn signal(&self, sig: rustix::process::Signal) {
        if let Some(c) = &self.child {
            rustix::process::kill_process(rustix::process::Pid::from_child(c), sig)
                .expect("signal the node");
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL: no drain, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The text of a log without its colour codes (`ESC [ … m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        // A failing test shows what its nodes logged last.
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- {} (last lines of its log)", self.id);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
