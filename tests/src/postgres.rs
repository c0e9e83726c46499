//! A throwaway PostgreSQL server for a test: its own cluster in a temporary folder, on a
//! free loopback port, stopped and deleted when dropped. It needs PostgreSQL's server
//! programs (Debian's `postgresql`; `scripts/test.sh` installs it). As root, they run as the
//! `postgres` user, since PostgreSQL refuses to run as root.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Output};

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Postgres {
    /// Makes and starts a cluster whose `postgres` user needs no password.
    pub fn start() -> Self {
        let bin = server_programs();
        let dir = tempfile::Builder::new().prefix("workbench-pg").tempdir().expect("temporary folder");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let postgres = Self { dir, bin, port };
        if running_as_root() {
            checked(Command::new("chown").args(["-R", "postgres:postgres"]).arg(postgres.dir.path()).output(), "chown");
        }
        let data = postgres.data().display().to_string();
        postgres.run("initdb", &["-D", &data, "--auth=trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
        postgres.start_server();
        postgres
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn start_server(&self) {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", self.port, self.dir.path().display());
        let log = self.dir.path().join("server.log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data().display().to_string(), "-o", &options, "-l", &log, "-w", "start"]);
    }

    /// Stops the server at once, as a crash would (`-m immediate`), and starts it again.
    pub fn restart(&self) {
        self.stop();
        self.start_server();
    }

    /// Stops the server at once, as a crash would.
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data().display().to_string(), "-m", "immediate", "-w", "stop"]);
    }

    /// The URL of a new, empty database `name`.
    pub fn database(&self, name: &str) -> String {
        let mut admin = ::postgres::Client::connect(&self.url("postgres"), ::postgres::NoTls).expect("connect to the test server");
        admin.batch_execute(&format!("CREATE DATABASE \"{name}\"")).expect("create the database");
        self.url(name)
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        checked(self.run_unchecked(program, args), program)
    }

    /// Runs one of the server programs, as the `postgres` user when this is root.
    fn run_unchecked(&self, program: &str, args: &[&str]) -> std::io::Result<Output> {
        let path = self.bin.join(program);
        match running_as_root() {
            true => Command::new("runuser").args(["-u", "postgres", "--"]).arg(path).args(args).output(),
            false => Command::new(path).args(args).output(),
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data().display().to_string();
        if self.data().join("postmaster.pid").exists() {
            let _ = self.run_unchecked("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        }
    }
}

fn checked(output: std::io::Result<Output>, what: &str) -> Output {
    let output = output.unwrap_or_else(|e| panic!("{what} did not start: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// The folder of `initdb` and `pg_ctl`: `WORKBENCH_PG_BIN`, else the newest under
/// `/usr/lib/postgresql` (Debian's layout), else the `PATH`'s.
fn server_programs() -> PathBuf {
    if let Some(dir) = std::env::var_os("WORKBENCH_PG_BIN") {
        return PathBuf::from(dir);
    }
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .max_by_key(|(version, _)| *version);
    if let Some((_, bin)) = debian {
        return bin;
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).find(|dir| dir.join("initdb").exists()))
        .unwrap_or_else(|| panic!("PostgreSQL's server programs (initdb, pg_ctl) are not installed; install Debian's `postgresql` (scripts/test.sh does)"))
}
