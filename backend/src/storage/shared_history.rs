//! Run history and queue in PostgreSQL, shared by any number of API servers and workers.
//!
//! A worker claims the oldest queued run with `FOR UPDATE SKIP LOCKED`, so concurrent
//! claims never take the same run, and holds it by a lease that its heartbeats extend. A run
//! whose lease ran out (its worker died or lost the database) goes back to the queue, or fails
//! after a given number of claims. Every write a worker makes to a run names the
//! worker and is void once the lease has passed to another, so a run's end is recorded once.
//! Times of leases are the database's clock, never a worker's.

use std::sync::Mutex;
use std::time::Duration;

use ::postgres::{Client, NoTls, Row, Transaction};
use unlearn_shared::api::{ProgressEvent, Run, RunId, RunRequest, RunStatus};

use super::history::{connection_lost, headline_json, readable, Admission, HistoryError, Outcome, RunWeights, StoredRun, CANCELLED_QUEUED, COLUMNS};

/// Each schema version's statements, applied in order; a version, once released, never
/// changes. The version in effect is the table `workbench_schema`'s.
const MIGRATIONS: &[&str] = &[
    // 1: runs, the queue's claims and leases, and the workers seen.
    "CREATE TABLE runs (
         id BIGSERIAL PRIMARY KEY,
         request TEXT NOT NULL,
         request_key TEXT NOT NULL,
         client TEXT NOT NULL,
         status TEXT NOT NULL,
         created_ms BIGINT NOT NULL,
         started_ms BIGINT,
         finished_ms BIGINT,
         result TEXT,
         error TEXT,
         weights_etag TEXT,
         weights_removed_ms BIGINT,
         headline TEXT,
         progress TEXT,
         worker TEXT,
         lease_until TIMESTAMPTZ,
         attempts INTEGER NOT NULL DEFAULT 0,
         cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
         counts_to_quota BOOLEAN NOT NULL DEFAULT FALSE,
         claim_token TEXT
     );
     CREATE UNIQUE INDEX one_live_run_per_request ON runs (request_key) WHERE status IN ('queued', 'running');
     CREATE INDEX runs_queued ON runs (id) WHERE status = 'queued';
     CREATE INDEX runs_leased ON runs (lease_until) WHERE status = 'running';
     CREATE TABLE workers (name TEXT PRIMARY KEY, device TEXT NOT NULL, seen TIMESTAMPTZ NOT NULL);",
];

/// Why a running run that was asked to stop ended without its worker's word.
const CANCELLED_RUNNING: &str = "cancelled by a request while running; its worker stopped before recording it";

/// Advisory lock keys: one migration at a time, and one admission at a time (so that the
/// queue's capacity and a client's quota hold across servers).
const MIGRATION_LOCK: i64 = 0x756e_6c65_6172_6e01;
const ADMISSION_LOCK: i64 = 0x756e_6c65_6172_6e02;

/// Milliseconds since the epoch, by the database's clock.
const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::BIGINT";

/// Connections kept open between calls.
const IDLE_CONNECTIONS: usize = 8;

/// Why an admission found no place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Crowded {
    /// `queued` runs wait already.
    Queue { queued: usize },
    /// The client has `live` runs queued or running.
    Client { live: usize, limit: usize },
}

/// A run a worker took off the queue.
#[derive(Debug)]
pub(crate) struct Claim {
    pub(crate) held: Held,
    pub(crate) request: RunRequest,
}

/// One claim of a run: every write its worker makes names its token, so that it is void
/// once the run was claimed again, even by a worker of the same name.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Held {
    pub(crate) id: RunId,
    /// 1 for the first claim of the run.
    pub(crate) attempt: i32,
    /// Random, made for this claim alone.
    token: String,
}

/// What a heartbeat learnt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Lease {
    Held {
        cancel_requested: bool,
    },
    /// The lease ran out and the run is no longer this worker's.
    Lost,
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum CancelAsked {
    /// The run was queued and is now cancelled.
    Ended,
    /// The run is running; its worker stops it at its next heartbeat.
    Signalled,
    /// The run had ended already.
    Finished,
}

/// What ended a run whose lease ran out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Reaped {
    pub(crate) id: RunId,
    pub(crate) status: RunStatus,
}

pub(crate) struct SharedHistory {
    config: postgres::Config,
    /// The URL without its password, for messages.
    shown: String,
    idle: Mutex<Vec<Client>>,
}

impl SharedHistory {
    /// Connects and brings the schema up to date (one process at a time).
    pub(crate) fn open(url: &str) -> Result<Self, HistoryError> {
        let shown = without_password(url);
        let mut config: postgres::Config = url.parse().map_err(|error| HistoryError::Connect { place: shown.clone(), error })?;
        // A database that is gone is noticed in seconds, and no statement waits forever.
        // A database that is gone is noticed in seconds, even mid-statement across a network
        // partition, and no statement waits forever.
        config
            .connect_timeout(Duration::from_secs(5))
            .tcp_user_timeout(Duration::from_secs(10))
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3);
        // The server's side too: a session whose client vanished mid-transaction (holding the
        // admission lock, say) is ended in seconds, not after the system's 2-hour keepalive.
        let ours = "-c statement_timeout=30000 -c idle_in_transaction_session_timeout=10000 \
                    -c tcp_keepalives_idle=10 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3";
        let options = config.get_options().map_or_else(|| ours.to_owned(), |given| format!("{given} {ours}"));
        config.options(&options);
        let history = Self { config, shown, idle: Mutex::default() };
        history.with(migrate)?.map_err(|found| HistoryError::Newer { place: history.shown.clone(), found, known: MIGRATIONS.len() as i64 })?;
        Ok(history)
    }

    /// Runs `work` on a pooled connection; one whose server went away (a restart) is
    /// replaced and `work` tried once more on a fresh one. (A statement whose connection
    /// broke was not committed, unless the break came between the commit and its answer.)
    fn with<T>(&self, mut work: impl FnMut(&mut Client) -> Result<T, postgres::Error>) -> Result<T, HistoryError> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop().filter(|client| !client.is_closed());
        let was_pooled = pooled.is_some();
        let mut client = match pooled {
            Some(client) => client,
            None => self.connect()?,
        };
        let mut result = work(&mut client);
        if was_pooled && matches!(&result, Err(error) if connection_lost(error)) {
            client = self.connect()?;
            result = work(&mut client);
        }
        if !client.is_closed() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < IDLE_CONNECTIONS {
                idle.push(client);
            }
        }
        Ok(result?)
    }

    fn connect(&self) -> Result<Client, HistoryError> {
        self.config.connect(NoTls).map_err(|error| HistoryError::Connect { place: self.shown.clone(), error })
    }

    /// The run that answers this request: the newest with its key that is under way or
    /// succeeded (and still has what it made), or else a new queued one if the queue and
    /// the client's quota have room. Admissions take turns, across every server.
    pub(crate) fn admit(
        &self,
        request: &RunRequest,
        request_key: &str,
        client: &str,
        capacity: usize,
        client_limit: Option<usize>,
    ) -> Result<Result<Admission, Crowded>, HistoryError> {
        let json = serde_json::to_string(request).expect("requests serialise");
        let admitted = self.with(|connection| {
            let mut transaction = connection.transaction()?;
            transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&ADMISSION_LOCK])?;
            if let Some((id, status)) = reusable(&mut transaction, request_key)? {
                return Ok(Ok(Admitted::Reused(id, status)));
            }
            let counts = transaction.query_one(
                "SELECT count(*) FILTER (WHERE status = 'queued'), count(*) FILTER (WHERE client = $1 AND counts_to_quota)
                 FROM runs WHERE status IN ('queued', 'running')",
                &[&client],
            )?;
            let (queued, live) = (counts.get::<_, i64>(0) as usize, counts.get::<_, i64>(1) as usize);
            if let Some(limit) = client_limit.filter(|&limit| live >= limit) {
                return Ok(Err(Crowded::Client { live, limit }));
            }
            if queued >= capacity {
                return Ok(Err(Crowded::Queue { queued }));
            }
            let row = transaction.query_one(
                &format!(
                    "INSERT INTO runs (request, request_key, client, status, created_ms, counts_to_quota)
                     VALUES ($1, $2, $3, 'queued', {NOW_MS}, $4) RETURNING id"
                ),
                &[&json, &request_key, &client, &client_limit.is_some()],
            )?;
            transaction.commit()?;
            Ok(Ok(Admitted::Inserted(row.get(0))))
        })?;
        Ok(match admitted {
            Ok(Admitted::Reused(id, status)) => Ok(Admission::Reused(id, parse_status(&status)?)),
            Ok(Admitted::Inserted(id)) => Ok(Admission::Inserted(id)),
            Err(crowded) => Err(crowded),
        })
    }

    /// Takes the oldest queued run for `worker`, leased for `lease`. If the connection breaks
    /// after the claim was committed, the retry finds it by its token and gives it again,
    /// rather than a second run.
    pub(crate) fn claim(&self, worker: &str, lease: Duration) -> Result<Option<Claim>, HistoryError> {
        let token = format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
        let row = self.with(|client| {
            let held = client.query_opt("SELECT id, request, attempts FROM runs WHERE claim_token = $1 AND status = 'running'", &[&token])?;
            if held.is_some() {
                return Ok(held);
            }
            client.query_opt(
                &format!(
                    "UPDATE runs SET status = 'running', worker = $1, claim_token = $3, attempts = attempts + 1, progress = NULL,
                         started_ms = {NOW_MS}, lease_until = clock_timestamp() + $2 * interval '1 millisecond'
                     WHERE id = (SELECT id FROM runs WHERE status = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
                     RETURNING id, request, attempts"
                ),
                &[&worker, &(lease.as_millis() as f64), &token],
            )
        })?;
        let Some(row) = row else { return Ok(None) };
        let id: RunId = row.get(0);
        let request: String = row.get(1);
        let request = serde_json::from_str(&request).map_err(|e| HistoryError::Record(format!("run {id}: request: {e}")))?;
        Ok(Some(Claim { held: Held { id, attempt: row.get(2), token }, request }))
    }

    /// Extends the lease of a claim, storing its run's latest progress if there is news.
    pub(crate) fn heartbeat(&self, held: &Held, lease: Duration, progress: Option<&ProgressEvent>) -> Result<Lease, HistoryError> {
        let progress = progress.map(|p| serde_json::to_string(p).expect("progress serialises"));
        let row = self.with(|client| {
            client.query_opt(
                "UPDATE runs SET lease_until = clock_timestamp() + $3 * interval '1 millisecond', progress = COALESCE($4, progress)
                 WHERE id = $1 AND claim_token = $2 AND status = 'running' RETURNING cancel_requested",
                &[&held.id, &held.token, &(lease.as_millis() as f64), &progress],
            )
        })?;
        Ok(row.map_or(Lease::Lost, |row| Lease::Held { cancel_requested: row.get(0) }))
    }

    /// Records how a claim's run ended, as [`History::finish`](super::history::History::finish)
    /// does; `None` if the claim is void (its lease ran out), and nothing is recorded then.
    pub(crate) fn finish(&self, held: &Held, outcome: Outcome) -> Result<Option<RunStatus>, HistoryError> {
        let outcome = readable(outcome);
        let result = outcome.result.as_ref().map(|r| serde_json::to_string(r).expect("results serialise"));
        let headline = outcome.result.as_ref().map(headline_json);
        let status = outcome.status.as_str();
        let changed = self.with(|client| {
            client.execute(
                &format!(
                    "UPDATE runs SET status = $3, finished_ms = {NOW_MS}, result = $4, error = $5, weights_etag = $6, headline = $7,
                         progress = NULL, lease_until = NULL
                     WHERE id = $1 AND claim_token = $2 AND status = 'running'"
                ),
                &[&held.id, &held.token, &status, &result, &outcome.error, &outcome.weights_etag, &headline],
            )
        })?;
        Ok((changed == 1).then_some(outcome.status))
    }

    /// Hands a claim's run back to the queue, as if never claimed (its worker is stopping),
    /// or ends it cancelled if a cancel was asked for meanwhile.
    pub(crate) fn release(&self, held: &Held) -> Result<(), HistoryError> {
        self.with(|client| {
            client.execute(
                &format!(
                    "UPDATE runs SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,
                         finished_ms = CASE WHEN cancel_requested THEN {NOW_MS} END,
                         error = CASE WHEN cancel_requested THEN $3 ELSE error END,
                         attempts = attempts - 1, started_ms = NULL, progress = NULL, lease_until = NULL
                     WHERE id = $1 AND claim_token = $2 AND status = 'running'"
                ),
                &[&held.id, &held.token, &CANCELLED_RUNNING],
            )
        })?;
        Ok(())
    }

    /// Ends the leases that ran out: their runs go back to the queue, or fail once they were
    /// claimed `max_attempts` times, or end cancelled if a cancel was asked for.
    pub(crate) fn reap(&self, max_attempts: u32) -> Result<Vec<Reaped>, HistoryError> {
        let max_attempts = max_attempts as i32;
        let rows = self.with(|client| {
            client.query(
                &format!(
                    "UPDATE runs SET
                         status = CASE WHEN cancel_requested THEN 'cancelled' WHEN attempts >= $1 THEN 'failed' ELSE 'queued' END,
                         finished_ms = CASE WHEN cancel_requested OR attempts >= $1 THEN {NOW_MS} END,
                         error = CASE WHEN cancel_requested THEN $2
                                      WHEN attempts >= $1 THEN 'its worker stopped answering on each of ' || attempts || ' tries'
                                      ELSE error END,
                         lease_until = NULL, progress = NULL
                     WHERE id IN (SELECT id FROM runs WHERE status = 'running' AND lease_until < clock_timestamp() FOR UPDATE SKIP LOCKED)
                     RETURNING id, status"
                ),
                &[&max_attempts, &CANCELLED_RUNNING],
            )
        })?;
        rows.iter().map(|row| Ok(Reaped { id: row.get(0), status: parse_status(row.get(1))? })).collect()
    }

    /// Cancels a queued run at once, or asks the worker of a running one to stop: one
    /// statement, so a run that a reaper moves meanwhile is cancelled all the same.
    pub(crate) fn cancel(&self, id: RunId) -> Result<CancelAsked, HistoryError> {
        let row = self.with(|client| {
            client.query_opt(
                &format!(
                    "UPDATE runs SET
                         status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,
                         finished_ms = CASE WHEN status = 'queued' THEN {NOW_MS} ELSE finished_ms END,
                         error = CASE WHEN status = 'queued' THEN $2 ELSE error END,
                         cancel_requested = cancel_requested OR status = 'running'
                     WHERE id = $1 AND status IN ('queued', 'running')
                     RETURNING status"
                ),
                &[&id, &CANCELLED_QUEUED],
            )
        })?;
        Ok(match row.map(|row| row.get::<_, String>(0)) {
            Some(status) if status == "cancelled" => CancelAsked::Ended,
            Some(_) => CancelAsked::Signalled,
            None => CancelAsked::Finished,
        })
    }

    /// Says that `worker`, on `device`, is alive.
    pub(crate) fn announce_worker(&self, worker: &str, device: &str) -> Result<(), HistoryError> {
        self.with(|client| {
            client.execute(
                "INSERT INTO workers (name, device, seen) VALUES ($1, $2, clock_timestamp())
                 ON CONFLICT (name) DO UPDATE SET device = EXCLUDED.device, seen = EXCLUDED.seen",
                &[&worker, &device],
            )
        })?;
        Ok(())
    }

    /// The devices of the workers heard from within `recently` or holding a lease, with how
    /// many of each.
    pub(crate) fn workers(&self, recently: Duration) -> Result<Vec<(String, usize)>, HistoryError> {
        let rows = self.with(|client| {
            client.query(
                "SELECT device, count(*) FROM workers
                 WHERE seen > clock_timestamp() - $1 * interval '1 millisecond'
                    OR EXISTS (SELECT 1 FROM runs WHERE runs.worker = workers.name AND status = 'running' AND lease_until > clock_timestamp())
                 GROUP BY device ORDER BY device",
                &[&(recently.as_millis() as f64)],
            )
        })?;
        Ok(rows.iter().map(|row| (row.get(0), row.get::<_, i64>(1) as usize)).collect())
    }

    /// Runs waiting for a worker.
    pub(crate) fn queued(&self) -> Result<usize, HistoryError> {
        Ok(self.with(|client| client.query_one("SELECT count(*) FROM runs WHERE status = 'queued'", &[]))?.get::<_, i64>(0) as usize)
    }

    /// Mean seconds of the last runs that finished, if any did.
    pub(crate) fn mean_run_seconds(&self) -> Result<Option<f64>, HistoryError> {
        let row = self.with(|client| {
            client.query_one(
                "SELECT avg(finished_ms - started_ms)::FLOAT8 / 1000 FROM
                 (SELECT finished_ms, started_ms FROM runs WHERE status = 'succeeded' ORDER BY id DESC LIMIT 20) AS recent",
                &[],
            )
        })?;
        Ok(row.get(0))
    }

    pub(crate) fn reusable(&self, request_key: &str) -> Result<Option<(RunId, RunStatus)>, HistoryError> {
        let found = self.with(|client| {
            let mut transaction = client.transaction()?;
            reusable(&mut transaction, request_key)
        })?;
        found.map(|(id, status)| Ok((id, parse_status(&status)?))).transpose()
    }

    /// The model run `id` made, as [`History::remove_weights`](super::history::History::remove_weights).
    pub(crate) fn remove_weights(&self, id: RunId) -> Result<(), HistoryError> {
        self.with(|client| {
            client.execute(&format!("UPDATE runs SET weights_etag = NULL, weights_removed_ms = {NOW_MS} WHERE id = $1 AND weights_etag IS NOT NULL"), &[&id])
        })?;
        Ok(())
    }

    /// The run with its progress while it is under way.
    pub(crate) fn get(&self, id: RunId) -> Result<Option<Run>, HistoryError> {
        let row = self.with(|client| client.query_opt(&format!("SELECT {COLUMNS}, result, progress FROM runs WHERE id = $1"), &[&id]))?;
        row.map(|row| read_run(&row, Columns::WithResult)).transpose()
    }

    pub(crate) fn client(&self, id: RunId) -> Result<Option<String>, HistoryError> {
        Ok(self.with(|client| client.query_opt("SELECT client FROM runs WHERE id = $1", &[&id]))?.map(|row| row.get(0)))
    }

    pub(crate) fn weights(&self, id: RunId) -> Result<RunWeights, HistoryError> {
        let row = self.with(|client| client.query_opt("SELECT weights_etag, weights_removed_ms FROM runs WHERE id = $1", &[&id]))?;
        Ok(RunWeights::from_columns(row.map(|row| (row.get(0), row.get(1)))))
    }

    /// Newest first, results left out, at most `limit` runs older than `before`.
    pub(crate) fn page(&self, before: Option<RunId>, limit: usize) -> Result<Vec<Run>, HistoryError> {
        let rows = self.with(|client| {
            client.query(
                &format!("SELECT {COLUMNS}, NULL::TEXT, progress FROM runs WHERE id < $1 ORDER BY id DESC LIMIT $2"),
                &[&before.unwrap_or(RunId::MAX), &(limit as i64)],
            )
        })?;
        rows.iter().map(|row| read_run(row, Columns::WithoutResult)).collect()
    }
}

/// Applies the migrations this database lacks; `Err(version)` if it is newer than this build.
fn migrate(client: &mut Client) -> Result<Result<(), i64>, postgres::Error> {
    let mut transaction = client.transaction()?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    transaction.batch_execute("CREATE TABLE IF NOT EXISTS workbench_schema (version INTEGER NOT NULL)")?;
    let found: i64 = transaction.query_one("SELECT COALESCE(max(version), 0)::BIGINT FROM workbench_schema", &[])?.get(0);
    if found > MIGRATIONS.len() as i64 {
        return Ok(Err(found));
    }
    for (version, statements) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        transaction.batch_execute(statements)?;
        transaction.execute("INSERT INTO workbench_schema (version) VALUES ($1)", &[&(version as i32 + 1)])?;
    }
    transaction.commit()?;
    Ok(Ok(()))
}

/// What an admission's transaction did, the status as stored.
enum Admitted {
    Reused(RunId, String),
    Inserted(RunId),
}

/// The newest run with this key that answers the request, with its status as stored.
fn reusable(transaction: &mut Transaction<'_>, request_key: &str) -> Result<Option<(RunId, String)>, postgres::Error> {
    let row = transaction.query_opt(
        "SELECT id, status FROM runs WHERE request_key = $1
         AND (status IN ('queued', 'running') OR (status = 'succeeded' AND weights_removed_ms IS NULL))
         ORDER BY id DESC LIMIT 1",
        &[&request_key],
    )?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}

fn parse_status(text: &str) -> Result<RunStatus, HistoryError> {
    RunStatus::parse(text).ok_or_else(|| HistoryError::Record(format!("status '{text}'")))
}

#[derive(Clone, Copy, PartialEq)]
enum Columns {
    WithResult,
    WithoutResult,
}

/// A row of `COLUMNS, result, progress`.
fn read_run(row: &Row, columns: Columns) -> Result<Run, HistoryError> {
    let stored = StoredRun {
        id: row.get(0),
        request: row.get(1),
        status: row.get(2),
        created_ms: row.get(3),
        started_ms: row.get(4),
        finished_ms: row.get(5),
        error: row.get(6),
        weights_etag: row.get(7),
        headline: row.get(8),
        result: if columns == Columns::WithResult { row.get(9) } else { None },
    };
    let progress: Option<String> = row.get(10);
    let mut run = stored.into_run()?;
    if !run.status.is_finished() {
        run.progress = progress.map(|p| serde_json::from_str(&p)).transpose().map_err(|e| HistoryError::Record(format!("run {}: progress: {e}", run.id)))?;
    }
    Ok(run)
}

/// `url` with its password, if any, replaced (in the user part or as a `password=` parameter).
fn without_password(url: &str) -> String {
    let url = match url.split_once('?') {
        Some((base, query)) => {
            let query: Vec<String> =
                query.split('&').map(|pair| if pair.starts_with("password=") { "password=***".to_owned() } else { pair.to_owned() }).collect();
            return format!("{}?{}", without_password(base), query.join("&"));
        }
        None => url,
    };
    let Some((scheme, rest)) = url.split_once("://") else { return "the database".to_owned() };
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}/{path}"),
            None => format!("{scheme}://{user}@{host}/{path}"),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Instant;

    use unlearn_tests::postgres::Postgres;

    use super::*;

    fn request(test_limit: usize) -> RunRequest {
        serde_json::from_value(serde_json::json!({ "kind": "eval", "test_limit": test_limit })).unwrap()
    }

    fn inserted(admitted: Result<Admission, Crowded>) -> RunId {
        let Ok(Admission::Inserted(id)) = admitted else { panic!("not inserted: {admitted:?}") };
        id
    }

    fn succeeded() -> Outcome {
        Outcome { status: RunStatus::Succeeded, result: None, error: None, weights_etag: None }
    }

    const LEASE: Duration = Duration::from_secs(30);

    #[test]
    fn runs_claimed_by_racing_workers_are_each_carried_out_exactly_once() {
        let server = Postgres::start();
        let url = server.database("claims");
        let history = SharedHistory::open(&url).unwrap();
        let ids: Vec<RunId> = (0..30).map(|n| inserted(history.admit(&request(n + 1), &format!("k{n}"), "me", 100, None).unwrap())).collect();
        // Three workers, each with its own connections, as separate processes would have.
        let claimed: Vec<(String, RunId)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..3)
                .map(|w| {
                    let url = url.clone();
                    scope.spawn(move || {
                        let history = SharedHistory::open(&url).unwrap();
                        let name = format!("worker-{w}");
                        let mut mine = Vec::new();
                        while let Some(claim) = history.claim(&name, LEASE).unwrap() {
                            assert_eq!(claim.held.attempt, 1);
                            assert_eq!(history.finish(&claim.held, succeeded()).unwrap(), Some(RunStatus::Succeeded));
                            mine.push((name.clone(), claim.held.id));
                        }
                        mine
                    })
                })
                .collect();
            workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
        });
        let mut times: HashMap<RunId, usize> = HashMap::new();
        for (_, id) in &claimed {
            *times.entry(*id).or_default() += 1;
        }
        assert!(ids.iter().all(|id| times.get(id) == Some(&1)), "each run once: {times:?}");
        assert_eq!(claimed.len(), 30);
        assert!(history.page(None, 100).unwrap().iter().all(|run| run.status == RunStatus::Succeeded));
        assert_eq!(history.queued().unwrap(), 0);
    }

    /// Ends every lease now, as time passing without heartbeats would.
    fn expire_leases(url: &str) {
        let mut client = Client::connect(url, NoTls).unwrap();
        client.execute("UPDATE runs SET lease_until = clock_timestamp() - interval '1 second' WHERE status = 'running'", &[]).unwrap();
    }

    #[test]
    fn a_run_whose_worker_stops_answering_goes_back_to_the_queue_then_fails_after_its_tries() {
        let server = Postgres::start();
        let url = server.database("leases");
        let history = SharedHistory::open(&url).unwrap();
        let id = inserted(history.admit(&request(1), "k", "me", 10, None).unwrap());
        let first = history.claim("dead", LEASE).unwrap().expect("a run");
        assert_eq!((first.held.id, first.held.attempt), (id, 1));
        assert_eq!(history.reap(2).unwrap(), [], "a lease in force is left alone");
        expire_leases(&url);
        assert_eq!(history.reap(2).unwrap(), [Reaped { id, status: RunStatus::Queued }]);
        assert_eq!(history.heartbeat(&first.held, LEASE, None).unwrap(), Lease::Lost, "the old claim's lease is gone");

        // Claimed again by a worker of the same name (a restarted container, say): the old
        // claim still writes nothing.
        let second = history.claim("dead", LEASE).unwrap().expect("the run again");
        assert_eq!((second.held.id, second.held.attempt), (id, 2));
        assert_eq!(history.heartbeat(&first.held, LEASE, None).unwrap(), Lease::Lost);
        assert_eq!(history.finish(&first.held, succeeded()).unwrap(), None, "the old claim cannot record an end");
        expire_leases(&url);
        assert_eq!(history.reap(2).unwrap(), [Reaped { id, status: RunStatus::Failed }]);
        let run = history.get(id).unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Failed);
        assert!(run.error.as_deref().unwrap().contains("stopped answering on each of 2 tries"), "{:?}", run.error);
        assert_eq!(history.finish(&second.held, succeeded()).unwrap(), None, "nor can the late one");
        assert_eq!(history.claim("dead", LEASE).unwrap().map(|c| c.held.id), None);
    }

    #[test]
    fn a_stopping_worker_hands_its_run_back_unless_it_was_cancelled() {
        let server = Postgres::start();
        let history = SharedHistory::open(&server.database("release")).unwrap();
        let id = inserted(history.admit(&request(1), "k", "me", 10, None).unwrap());
        let claim = history.claim("w", LEASE).unwrap().expect("a run");
        history.release(&claim.held).unwrap();
        assert_eq!(history.get(id).unwrap().unwrap().status, RunStatus::Queued);
        let again = history.claim("v", LEASE).unwrap().expect("the run again");
        assert_eq!(again.held.attempt, 1, "a handed-back claim does not count as a try");
        assert_eq!(history.cancel(id).unwrap(), CancelAsked::Signalled);
        history.release(&again.held).unwrap();
        let run = history.get(id).unwrap().unwrap();
        assert_eq!((run.status, run.error.as_deref()), (RunStatus::Cancelled, Some(CANCELLED_RUNNING)), "a cancelled run is not queued again");
    }

    #[test]
    fn heartbeats_carry_progress_and_cancels_reach_the_worker() {
        let server = Postgres::start();
        let history = SharedHistory::open(&server.database("cancels")).unwrap();
        let queued = inserted(history.admit(&request(1), "k1", "me", 10, None).unwrap());
        let running = inserted(history.admit(&request(2), "k2", "me", 10, None).unwrap());
        assert_eq!(history.cancel(queued).unwrap(), CancelAsked::Ended);
        let run = history.get(queued).unwrap().unwrap();
        assert_eq!((run.status, run.error.as_deref()), (RunStatus::Cancelled, Some(CANCELLED_QUEUED)));

        let claim = history.claim("w", LEASE).unwrap().expect("the queued one");
        assert_eq!(claim.held.id, running, "a cancelled run is never claimed");
        let event = ProgressEvent { phase: "evaluate: test set".into(), done: 3, total: 10, images_per_s: 50.0, eta_s: None, loss: None, overall: None };
        assert_eq!(history.heartbeat(&claim.held, LEASE, Some(&event)).unwrap(), Lease::Held { cancel_requested: false });
        assert_eq!(history.get(running).unwrap().unwrap().progress, Some(event.clone()), "any server reads the progress");
        assert_eq!(history.page(None, 10).unwrap()[0].progress, Some(event));
        assert_eq!(history.cancel(running).unwrap(), CancelAsked::Signalled);
        assert_eq!(history.heartbeat(&claim.held, LEASE, None).unwrap(), Lease::Held { cancel_requested: true });
        let cancelled = Outcome { status: RunStatus::Cancelled, result: None, error: Some("cancelled".into()), weights_etag: None };
        assert_eq!(history.finish(&claim.held, cancelled).unwrap(), Some(RunStatus::Cancelled));
        let run = history.get(running).unwrap().unwrap();
        assert_eq!((run.status, run.progress), (RunStatus::Cancelled, None));
        assert_eq!(history.cancel(running).unwrap(), CancelAsked::Finished);
    }

    #[test]
    fn admissions_across_servers_share_one_live_run_and_keep_the_queue_and_quota_limits() {
        let server = Postgres::start();
        let url = server.database("admissions");
        let servers = [SharedHistory::open(&url).unwrap(), SharedHistory::open(&url).unwrap()];
        let admissions: Vec<Admission> = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..8)
                .map(|n| {
                    let server = &servers[n % 2];
                    scope.spawn(move || server.admit(&request(1), "same", "me", 10, None).unwrap().unwrap())
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let made: Vec<RunId> = admissions.iter().filter_map(|a| if let Admission::Inserted(id) = a { Some(*id) } else { None }).collect();
        assert_eq!(made.len(), 1, "{admissions:?}");
        assert!(admissions.iter().all(|a| matches!(a, Admission::Inserted(_)) || *a == Admission::Reused(made[0], RunStatus::Queued)));

        assert_eq!(servers[1].admit(&request(2), "other", "you", 2, Some(1)).unwrap(), Ok(Admission::Inserted(made[0] + 1)));
        assert_eq!(servers[0].admit(&request(3), "third", "you", 10, Some(1)).unwrap(), Err(Crowded::Client { live: 1, limit: 1 }));
        assert_eq!(
            servers[0].admit(&request(4), "fourth", "me", 10, Some(1)).unwrap(),
            Ok(Admission::Inserted(made[0] + 2)),
            "runs with the token count to no quota"
        );
        assert_eq!(servers[0].admit(&request(3), "third", "them", 3, Some(1)).unwrap(), Err(Crowded::Queue { queued: 3 }));
        assert_eq!(
            servers[0].admit(&request(1), "same", "them", 3, Some(1)).unwrap(),
            Ok(Admission::Reused(made[0], RunStatus::Queued)),
            "a full queue still answers an identical request"
        );
    }

    #[test]
    fn the_schema_is_made_once_and_a_newer_one_is_refused_untouched() {
        let server = Postgres::start();
        let url = server.database("schema");
        std::thread::scope(|scope| {
            let openers: Vec<_> = (0..4).map(|_| scope.spawn(|| SharedHistory::open(&url).map(|_| ()))).collect();
            assert!(openers.into_iter().all(|o| o.join().unwrap().is_ok()), "concurrent first starts all succeed");
        });
        let mut client = Client::connect(&url, NoTls).unwrap();
        let versions: i64 = client.query_one("SELECT count(*) FROM workbench_schema", &[]).unwrap().get(0);
        assert_eq!(versions, MIGRATIONS.len() as i64);
        client.execute("INSERT INTO workbench_schema (version) VALUES (99)", &[]).unwrap();
        let error = SharedHistory::open(&url).err().expect("a newer schema is refused").to_string();
        assert!(error.contains("newer workbench (schema 99"), "{error}");
        let refused = SharedHistory::open("postgres://me:secret@127.0.0.1:1/none").err().expect("nothing listens there").to_string();
        assert!(refused.contains("me:***@127.0.0.1:1/none") && !refused.contains("secret"), "{refused}");
        let refused = SharedHistory::open("postgres://me@127.0.0.1:1/none?password=secret&sslmode=disable").err().expect("nothing listens there").to_string();
        assert!(refused.contains("password=***&sslmode=disable") && !refused.contains("secret"), "{refused}");
    }

    #[test]
    fn the_history_carries_on_after_the_database_restarts() {
        let server = Postgres::start();
        let history = SharedHistory::open(&server.database("restart")).unwrap();
        let id = inserted(history.admit(&request(1), "k", "me", 10, None).unwrap());
        let claim = history.claim("w", LEASE).unwrap().expect("claimed");
        server.restart();
        let started = Instant::now();
        let lease = loop {
            match history.heartbeat(&claim.held, LEASE, None) {
                Ok(lease) => break lease,
                Err(error) => assert!(started.elapsed() < Duration::from_secs(10), "no reconnection: {error}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(lease, Lease::Held { cancel_requested: false }, "the lease outlives the restart");
        assert_eq!(history.finish(&claim.held, succeeded()).unwrap(), Some(RunStatus::Succeeded));
        assert_eq!(history.get(id).unwrap().unwrap().status, RunStatus::Succeeded);
    }
}
