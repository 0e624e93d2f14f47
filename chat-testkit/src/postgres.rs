//! PostgreSQL for tests: a throwaway database on a shared server ([`PgDatabase`]), and a private
//! server a test can kill and restart ([`PgServer`]), for stores that must survive a database
//! that dies.
//!
//! Both drive the PostgreSQL command-line tools (`psql`, `pg_isready`, `initdb`, `postgres`), so
//! this crate needs no database client of its own and can clean up from a synchronous `Drop`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{find_executable, free_port};

/// The server [`PgDatabase`] uses when `CHAT_TEST_POSTGRES` is not set.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

const HOW_TO_GET_ONE: &str = "these tests need a PostgreSQL server (15 or later) that trusts the \
     `postgres` user on 127.0.0.1:5432: `apt-get install postgresql && pg_ctlcluster 15 main start` \
     (Debian), or point CHAT_TEST_POSTGRES at one (a postgres:// URL of a role that may CREATE DATABASE)";

/// A uniquely named database on the server at `$CHAT_TEST_POSTGRES` (default
/// [`DEFAULT_POSTGRES_URL`]), dropped (`WITH (FORCE)`, so open connections do not keep it) when
/// this is dropped. Each test gets its own, so tests run in parallel without seeing each other.
pub struct PgDatabase {
    server: String,
    name: String,
}

impl PgDatabase {
    /// Creates the database. Panics, saying how to get a server, when none answers.
    pub fn create() -> PgDatabase {
        let server = std::env::var("CHAT_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        Self::create_on(&server)
    }

    /// Creates a database on the server at `server_url` (any database URL of that server).
    pub fn create_on(server_url: &str) -> PgDatabase {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let name = format!("chat_test_{}_{}_{nanos}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        psql(server_url, &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("cannot create a test database on {server_url}: {e}\n{HOW_TO_GET_ONE}"));
        PgDatabase { server: server_url.to_owned(), name }
    }

    /// The database's URL (the server's URL with this database's name).
    pub fn url(&self) -> String {
        with_database(&self.server, &self.name)
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Err(e) = psql(&self.server, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)) {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// Runs one SQL command with `psql` against `url`; the error is psql's own message.
fn psql(url: &str, sql: &str) -> Result<(), String> {
    let bin = find_executable(&["psql"])
        .unwrap_or_else(|| panic!("psql not found: install it with `apt-get install postgresql-client`"));
    let out = Command::new(bin)
        .args(["--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-q", "-d", url, "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// `url` with its database (the path) replaced by `database`, query string kept.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[authority_start..].find('/').map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A private PostgreSQL server: `initdb` into a fresh temporary directory, listening on its own
/// free loopback port, with `fsync` on (a commit it acknowledged survives a SIGKILL). A test can
/// [`kill`](Self::kill) it, [`restart`](Self::restart) it on the same port and data, or
/// [`pause`](Self::pause) it (SIGSTOP: connections stay open and nothing answers). Stopped and
/// removed on drop.
///
/// When the test runs as root, the server runs as the `postgres` user (PostgreSQL refuses root).
pub struct PgServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// The uid and gid to run as, when this process is root.
    user: Option<(u32, u32)>,
    child: Option<Child>,
}

impl PgServer {
    /// Creates the cluster and starts the server; returns once it accepts connections. Panics,
    /// saying what to install, when the PostgreSQL server binaries are missing.
    pub fn start() -> PgServer {
        let bin = server_bin_dir();
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("chat-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a data directory for postgres");
        let user = run_as_user();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("give the data directory to postgres");
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.args(["-D", &dir.display().to_string(), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"]);
        let out = as_user(&mut initdb, user).stdin(Stdio::null()).output().expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut server = PgServer { bin, dir, port, user, child: None };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.args(["-D", &self.dir.display().to_string(), "-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "fsync=on"])
            .args(["-c", "max_connections=40", "-c", "shared_buffers=16MB"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("server.log")).map_or(Stdio::null(), Stdio::from));
        self.child = Some(as_user(&mut cmd, self.user).spawn().expect("start postgres"));
        let deadline = Instant::now() + Duration::from_secs(60); // crash recovery replays the WAL first
        while !self.answers() {
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "postgres exited at once ({exited:?}):\n{}", self.log());
            assert!(Instant::now() < deadline, "postgres did not start on port {}:\n{}", self.port, self.log());
            std::thread::sleep(Duration::from_millis(20)); // the retry interval of a loop with a deadline
        }
    }

    /// The end of the server's log, for a failure message.
    fn log(&self) -> String {
        crate::log_tail(&self.dir.join("server.log"), 20)
    }

    fn answers(&self) -> bool {
        let isready = find_executable(&["pg_isready"]).unwrap_or_else(|| self.bin.join("pg_isready"));
        Command::new(isready)
            .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-t", "1"])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Kills the server and all its backends (SIGKILL): what a crash of the database host's
    /// processes looks like. Committed data is on disk; the rest is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let backends = signal(&["-KILL"], child.id());
            let _ = child.wait();
            // The backends are not our children: wait until they are gone too, or a restarted
            // server finds its shared memory still in use and refuses to start.
            let deadline = Instant::now() + Duration::from_secs(30);
            while backends.iter().any(|&pid| alive(pid)) {
                assert!(Instant::now() < deadline, "postgres backends {backends:?} outlived a SIGKILL");
                std::thread::sleep(Duration::from_millis(10)); // the retry interval of a loop with a deadline
            }
        }
    }

    /// Freezes the server and its backends (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        let pid = self.child.as_ref().expect("postgres is running").id();
        signal(&["-STOP"], pid);
    }

    /// Lets a [`pause`](Self::pause)d server go on (SIGCONT).
    pub fn resume(&self) {
        let pid = self.child.as_ref().expect("postgres is running").id();
        signal(&["-CONT"], pid);
    }

    /// Kills it (SIGKILL) and starts it again on the same port and data directory; returns once
    /// it has recovered and accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `args` (`-STOP`, `-KILL`, `-CONT`) to the postmaster `pid` and to its backends, and
/// returns the backends. Each backend is a process group of its own (PostgreSQL calls `setsid`
/// in every child), so the postmaster's group would not reach them: they are found by their
/// parent in `/proc`. The postmaster is stopped first, so that no backend starts meanwhile, and
/// continued last.
fn signal(args: &[&str], pid: u32) -> Vec<u32> {
    let send = |pids: &[u32]| {
        let _ = Command::new("kill").args(args).arg("--").args(pids.iter().map(u32::to_string)).status();
    };
    if args != ["-CONT"] {
        let _ = Command::new("kill").args(["-STOP", "--", &pid.to_string()]).status();
    }
    let backends = children(pid);
    send(&backends);
    send(&[pid]);
    backends
}

/// Whether process `pid` still runs (a zombie does not: it holds nothing any more).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat.rsplit_once(')')?.1.split_whitespace().next()? != "Z"))
        .unwrap_or(false)
}

/// The processes whose parent is `parent`, from `/proc/<pid>/stat`.
fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold anything, so read after its last ')'.
            let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// The directory of `initdb` and `postgres`: `$CHAT_TEST_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian), else `PATH`.
fn server_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CHAT_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let debian = std::fs::read_dir("/usr/lib/postgresql").into_iter().flatten().flatten().filter_map(|e| {
        let version: u32 = e.file_name().to_str()?.parse().ok()?;
        Some((version, e.path().join("bin")))
    });
    if let Some((_, dir)) = debian.filter(|(_, dir)| dir.join("initdb").exists()).max() {
        return dir;
    }
    find_executable(&["initdb"]).and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_else(|| {
        panic!(
            "the PostgreSQL server binaries (initdb, postgres) were not found: install them with \
             `apt-get install postgresql`, or set CHAT_TEST_PG_BIN to their directory"
        )
    })
}

/// When this process is root: the uid and gid of the `postgres` user to run the server as.
fn run_as_user() -> Option<(u32, u32)> {
    let id = |flag: &str, who: Option<&str>| -> Option<u32> {
        let out = Command::new("id").arg(flag).args(who).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    if id("-u", None)? != 0 {
        return None;
    }
    let uid = id("-u", Some("postgres"))
        .unwrap_or_else(|| panic!("running as root, and PostgreSQL refuses root: a `postgres` user is needed (`apt-get install postgresql` makes one)"));
    Some((uid, id("-g", Some("postgres")).unwrap_or(uid)))
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = user {
        std::os::unix::process::CommandExt::gid(cmd, gid);
        std::os::unix::process::CommandExt::uid(cmd, uid);
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn a_url_gets_another_database() {
        assert_eq!(with_database("postgres://u@h:5432/postgres", "db1"), "postgres://u@h:5432/db1");
        assert_eq!(with_database("postgres://u@h:5432", "db1"), "postgres://u@h:5432/db1");
        assert_eq!(with_database("postgres://u@h/x?sslmode=disable", "db1"), "postgres://u@h/db1?sslmode=disable");
    }
}
