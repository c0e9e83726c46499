//! Run history in one SQLite file under the data folder. Every state change is written
//! before it is announced, so a restart loses no finished result.

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Row};
use unlearn_shared::api::{Run, RunId, RunRequest, RunResult, RunStatus};

/// Bump with a migration (in `open`) when the table or the stored JSON changes.
const SCHEMA_VERSION: i64 = 4;

/// Why a run that was under way when the last process stopped has no result.
const INTERRUPTED: &str = "the server stopped while this run was queued or running; submit it again";
/// Why a run that never started has no result.
pub(crate) const CANCELLED_QUEUED: &str = "cancelled by a request while queued";

#[derive(Debug, thiserror::Error)]
pub(crate) enum HistoryError {
    #[error("run history {path}: {error}")]
    Open { path: String, error: rusqlite::Error },
    #[error("run history {place} was written by a newer workbench (schema {found}, this one knows {known})")]
    Newer { place: String, found: i64, known: i64 },
    #[error("run history: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("run history at {place}: {error}")]
    Connect { place: String, error: postgres::Error },
    #[error("run history: {0}")]
    Postgres(#[from] postgres::Error),
    #[error("run history holds an unreadable record: {0}")]
    Record(String),
}

impl HistoryError {
    /// Whether the database could not be reached or was going away (a restart, a network
    /// fault), so that asking again soon may succeed.
    pub(crate) fn is_unreachable(&self) -> bool {
        let error = match self {
            Self::Connect { .. } => return true,
            Self::Postgres(error) => error,
            _ => return false,
        };
        connection_lost(error) || error.code().is_some_and(|code| code.code().starts_with("57"))
    }
}

/// Whether a PostgreSQL call failed because its connection broke, closed, or was ended by
/// the server shutting down (a restart ends every connection with 57P01).
pub(crate) fn connection_lost(error: &postgres::Error) -> bool {
    let shutdown = error.code().is_some_and(|code| code.code().starts_with("08") || ["57P01", "57P02", "57P03"].contains(&code.code()));
    shutdown || error.is_closed() || std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>())
}

pub(crate) struct History {
    connection: Mutex<Connection>,
}

/// What a finished run leaves behind.
#[derive(Clone)]
pub(crate) struct Outcome {
    pub(crate) status: RunStatus,
    pub(crate) result: Option<RunResult>,
    pub(crate) error: Option<String>,
    /// ETag of the unlearned model's weights file, when the run made one.
    pub(crate) weights_etag: Option<String>,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl History {
    /// Opens (or creates) the history, and marks runs that were under way when the last
    /// process stopped as interrupted.
    pub(crate) fn open(path: &Path) -> Result<Self, HistoryError> {
        let name = path.display().to_string();
        let open_error = |error| HistoryError::Open { path: name.clone(), error };
        let connection = Connection::open(path).map_err(open_error)?;
        let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0)).map_err(open_error)?;
        if version > SCHEMA_VERSION {
            return Err(HistoryError::Newer { place: name, found: version, known: SCHEMA_VERSION });
        }
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE IF NOT EXISTS runs (
                     id INTEGER PRIMARY KEY AUTOINCREMENT,
                     request TEXT NOT NULL,
                     request_key TEXT NOT NULL,
                     client TEXT NOT NULL,
                     status TEXT NOT NULL,
                     created_ms INTEGER NOT NULL,
                     started_ms INTEGER,
                     finished_ms INTEGER,
                     result TEXT,
                     error TEXT,
                     weights_etag TEXT,
                     weights_removed_ms INTEGER,
                     headline TEXT
                 );
                 CREATE INDEX IF NOT EXISTS runs_by_key ON runs (request_key, status);",
            )
            .map_err(open_error)?;
        if version == 1 {
            migrate_requests_to_v2(&connection).map_err(open_error)?;
        }
        if !has_column(&connection, "weights_removed_ms").map_err(open_error)? {
            connection.execute_batch("ALTER TABLE runs ADD COLUMN weights_removed_ms INTEGER").map_err(open_error)?;
        }
        if !has_column(&connection, "headline").map_err(open_error)? {
            connection.execute_batch("ALTER TABLE runs ADD COLUMN headline TEXT").map_err(open_error)?;
            add_headlines_for_v4(&connection).map_err(open_error)?;
        }
        connection.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(open_error)?;
        connection
            .execute(
                "UPDATE runs SET status = 'interrupted', finished_ms = ?1, error = ?2 WHERE status IN ('queued', 'running')",
                params![now_ms(), INTERRUPTED],
            )
            .map_err(open_error)?;
        // At most one live run per request: identical concurrent requests share it, in this
        // process and in any other that opens the file.
        connection
            .execute_batch("CREATE UNIQUE INDEX IF NOT EXISTS one_live_run_per_request ON runs (request_key) WHERE status IN ('queued', 'running')")
            .map_err(open_error)?;
        Ok(Self { connection: Mutex::new(connection) })
    }

    fn connection(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Holds the history busy for `duration`, as a slow disk or a long write would.
    #[cfg(test)]
    pub(crate) fn hold_busy(&self, duration: std::time::Duration) {
        let _held = self.connection();
        std::thread::sleep(duration);
    }

    /// The run that answers this request: the newest with its key that is under way or
    /// succeeded (and still has what it made), or else a new queued one. One transaction, so
    /// identical concurrent requests get one run.
    pub(crate) fn admit(&self, request: &RunRequest, request_key: &str, client: &str) -> Result<Admission, HistoryError> {
        let json = serde_json::to_string(request).expect("requests serialise");
        let mut connection = self.connection();
        let transaction = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if let Some((id, status)) = reusable(&transaction, request_key)? {
            return Ok(Admission::Reused(id, status));
        }
        transaction.execute(
            "INSERT INTO runs (request, request_key, client, status, created_ms) VALUES (?1, ?2, ?3, 'queued', ?4)",
            params![json, request_key, client, now_ms()],
        )?;
        let id = transaction.last_insert_rowid();
        transaction.commit()?;
        Ok(Admission::Inserted(id))
    }

    /// What [`admit`](Self::admit) would reuse, without making a run.
    pub(crate) fn reusable(&self, request_key: &str) -> Result<Option<(RunId, RunStatus)>, HistoryError> {
        reusable(&self.connection(), request_key)
    }

    /// Marks a queued run as running; false if it is no longer queued (cancelled meanwhile).
    pub(crate) fn start(&self, id: RunId) -> Result<bool, HistoryError> {
        let changed =
            self.connection().execute("UPDATE runs SET status = 'running', started_ms = ?2 WHERE id = ?1 AND status = 'queued'", params![id, now_ms()])?;
        Ok(changed == 1)
    }

    /// Ends a run that is still queued as cancelled; false if the worker has started it.
    pub(crate) fn cancel_queued(&self, id: RunId) -> Result<bool, HistoryError> {
        let changed = self.connection().execute(
            "UPDATE runs SET status = 'cancelled', finished_ms = ?2, error = ?3 WHERE id = ?1 AND status = 'queued'",
            params![id, now_ms(), CANCELLED_QUEUED],
        )?;
        Ok(changed == 1)
    }

    /// Marks a run this process no longer carries out as interrupted.
    pub(crate) fn interrupt(&self, id: RunId) -> Result<(), HistoryError> {
        self.connection().execute(
            "UPDATE runs SET status = 'interrupted', finished_ms = ?2, error = ?3 WHERE id = ?1 AND status IN ('queued', 'running')",
            params![id, now_ms(), INTERRUPTED],
        )?;
        Ok(())
    }

    /// Records how a run ended, with its result's headline for listings, and returns the
    /// status recorded: a result that could not be read back (a NaN, say) is recorded as a
    /// failure, never as a success.
    pub(crate) fn finish(&self, id: RunId, outcome: Outcome) -> Result<RunStatus, HistoryError> {
        let outcome = readable(outcome);
        let result = outcome.result.as_ref().map(|r| serde_json::to_string(r).expect("results serialise"));
        let headline = outcome.result.as_ref().map(headline_json);
        self.connection().execute(
            "UPDATE runs SET status = ?2, finished_ms = ?3, result = ?4, error = ?5, weights_etag = ?6, headline = ?7 WHERE id = ?1",
            params![id, outcome.status.as_str(), now_ms(), result, outcome.error, outcome.weights_etag, headline],
        )?;
        Ok(outcome.status)
    }

    /// The run's model was deleted to keep disk use within budget; its record stays.
    pub(crate) fn remove_weights(&self, id: RunId) -> Result<(), HistoryError> {
        self.connection()
            .execute("UPDATE runs SET weights_etag = NULL, weights_removed_ms = ?2 WHERE id = ?1 AND weights_etag IS NOT NULL", params![id, now_ms()])?;
        Ok(())
    }

    pub(crate) fn get(&self, id: RunId) -> Result<Option<Run>, HistoryError> {
        let connection = self.connection();
        let mut statement = connection.prepare_cached(&format!("SELECT {COLUMNS}, result FROM runs WHERE id = ?1"))?;
        let row = statement.query_row([id], |row| Ok(read_run(row, true))).optional()?;
        row.transpose()
    }

    /// Client that submitted the run, for public-mode cancellation rights.
    pub(crate) fn client(&self, id: RunId) -> Result<Option<String>, HistoryError> {
        Ok(self.connection().query_row("SELECT client FROM runs WHERE id = ?1", [id], |row| row.get(0)).optional()?)
    }

    /// What became of the model run `id` made, if it made one.
    pub(crate) fn weights(&self, id: RunId) -> Result<RunWeights, HistoryError> {
        let found: Option<(Option<String>, Option<i64>)> = self
            .connection()
            .query_row("SELECT weights_etag, weights_removed_ms FROM runs WHERE id = ?1", [id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        Ok(RunWeights::from_columns(found))
    }

    /// Newest first, results left out, at most `limit` runs older than `before`.
    pub(crate) fn page(&self, before: Option<RunId>, limit: usize) -> Result<Vec<Run>, HistoryError> {
        let connection = self.connection();
        let mut statement = connection.prepare_cached(&format!("SELECT {COLUMNS} FROM runs WHERE id < ?1 ORDER BY id DESC LIMIT ?2"))?;
        let rows = statement.query_map(params![before.unwrap_or(RunId::MAX), limit as i64], |row| Ok(read_run(row, false)))?;
        rows.map(|row| row?).collect()
    }
}

/// Version 2 nests a request's SSD settings under `ssd` and its training recipe under
/// `recipe`; version 1 had their fields at the top.
fn migrate_requests_to_v2(connection: &Connection) -> rusqlite::Result<()> {
    const SSD: [&str; 5] = ["alpha", "lambda", "layers", "importance_batch", "full_order"];
    const RECIPE: [&str; 7] = ["epochs", "batch_size", "seed", "width", "train_limit", "exclude_class", "test_limit"];
    let rows: Vec<(RunId, String)> =
        connection.prepare("SELECT id, request FROM runs")?.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
    let transaction = connection.unchecked_transaction()?;
    for (id, text) in rows {
        let Ok(serde_json::Value::Object(mut request)) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        let (nested, fields) = match request.get("kind").and_then(|k| k.as_str()) {
            Some("unlearn" | "sweep") => ("ssd", &SSD[..]),
            Some("train") => ("recipe", &RECIPE[..]),
            _ => continue,
        };
        let moved: serde_json::Map<String, serde_json::Value> = fields.iter().filter_map(|&f| request.remove(f).map(|v| (f.to_owned(), v))).collect();
        request.insert(nested.to_owned(), serde_json::Value::Object(moved));
        let text = serde_json::to_string(&request).expect("JSON serialises");
        transaction.execute("UPDATE runs SET request = ?2 WHERE id = ?1", params![id, text])?;
    }
    transaction.commit()
}

/// Version 4 keeps each result's headline beside it, so that listings need not read results.
fn add_headlines_for_v4(connection: &Connection) -> rusqlite::Result<()> {
    let rows: Vec<(RunId, String)> = connection
        .prepare("SELECT id, result FROM runs WHERE result IS NOT NULL")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let transaction = connection.unchecked_transaction()?;
    for (id, text) in rows {
        // A result this version cannot read gets no headline; `get` says what is wrong with it.
        let Ok(result) = serde_json::from_str::<RunResult>(&text) else { continue };
        transaction.execute("UPDATE runs SET headline = ?2 WHERE id = ?1", params![id, headline_json(&result)])?;
    }
    transaction.commit()
}

fn has_column(connection: &Connection, name: &str) -> rusqlite::Result<bool> {
    connection.query_row("SELECT COUNT(*) > 0 FROM pragma_table_info('runs') WHERE name = ?1", [name], |row| row.get(0))
}

pub(crate) fn headline_json(result: &RunResult) -> String {
    serde_json::to_string(&result.headline()).expect("headlines serialise")
}

/// The answer to a request: an earlier run, or a new one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Admission {
    Reused(RunId, RunStatus),
    Inserted(RunId),
}

/// What became of a run's model.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RunWeights {
    /// Never made one (or the run has not finished).
    None,
    Kept {
        etag: String,
    },
    /// Deleted to keep the server's disk use within its budget.
    Removed,
}

impl RunWeights {
    /// From a run's `weights_etag` and `weights_removed_ms`, if the run exists.
    pub(crate) fn from_columns(found: Option<(Option<String>, Option<i64>)>) -> Self {
        match found {
            Some((Some(etag), _)) => RunWeights::Kept { etag },
            Some((None, Some(_))) => RunWeights::Removed,
            _ => RunWeights::None,
        }
    }
}

fn reusable(connection: &Connection, request_key: &str) -> Result<Option<(RunId, RunStatus)>, HistoryError> {
    let found: Option<(RunId, String)> = connection
        .query_row(
            "SELECT id, status FROM runs WHERE request_key = ?1
             AND (status IN ('queued', 'running') OR (status = 'succeeded' AND weights_removed_ms IS NULL))
             ORDER BY id DESC LIMIT 1",
            [request_key],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    found.map(|(id, status)| Ok((id, parse_status(&status)?))).transpose()
}

/// `outcome`, or a failure in its place if its result would not read back: JSON has no NaN
/// (serde writes it as null, which does not read back as a number). An infinite loss, such
/// as the logit mask's on its class, is written as "Infinity" and kept. A cancelled run stays
/// cancelled and loses only what it kept.
pub(crate) fn readable(outcome: Outcome) -> Outcome {
    let Some(result) = &outcome.result else { return outcome };
    let text = serde_json::to_string(result).expect("results serialise");
    let Err(error) = serde_json::from_str::<RunResult>(&text) else { return outcome };
    let why = format!(
        "the result holds an undefined number (NaN: {error}), such as the accuracy of a class that has no image in a small \
         subset, or the loss of a model whose outputs are not numbers; use larger subsets, or check the model"
    );
    match outcome.status {
        RunStatus::Cancelled => {
            let cancelled = outcome.error.unwrap_or_else(|| "cancelled".to_owned());
            Outcome { result: None, error: Some(format!("{cancelled}; what it finished was not kept: {why}")), ..outcome }
        }
        _ => Outcome { status: RunStatus::Failed, result: None, error: Some(why), weights_etag: None },
    }
}

pub(crate) const COLUMNS: &str = "id, request, status, created_ms, started_ms, finished_ms, error, weights_etag, headline";

fn parse_status(text: &str) -> Result<RunStatus, HistoryError> {
    RunStatus::parse(text).ok_or_else(|| HistoryError::Record(format!("status '{text}'")))
}

fn read_run(row: &Row<'_>, with_result: bool) -> Result<Run, HistoryError> {
    let stored = StoredRun {
        id: row.get(0)?,
        request: row.get(1)?,
        status: row.get(2)?,
        created_ms: row.get(3)?,
        started_ms: row.get(4)?,
        finished_ms: row.get(5)?,
        error: row.get(6)?,
        weights_etag: row.get(7)?,
        headline: row.get(8)?,
        result: if with_result { row.get(9)? } else { None },
    };
    stored.into_run()
}

/// A run's columns as either database stores them.
pub(crate) struct StoredRun {
    pub(crate) id: RunId,
    pub(crate) request: String,
    pub(crate) status: String,
    pub(crate) created_ms: i64,
    pub(crate) started_ms: Option<i64>,
    pub(crate) finished_ms: Option<i64>,
    pub(crate) error: Option<String>,
    pub(crate) weights_etag: Option<String>,
    pub(crate) headline: Option<String>,
    pub(crate) result: Option<String>,
}

impl StoredRun {
    pub(crate) fn into_run(self) -> Result<Run, HistoryError> {
        let id = self.id;
        let bad = |what: &str, e: serde_json::Error| HistoryError::Record(format!("run {id}: {what}: {e}"));
        Ok(Run {
            id,
            request: serde_json::from_str(&self.request).map_err(|e| bad("request", e))?,
            status: parse_status(&self.status)?,
            created_ms: self.created_ms,
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
            progress: None,
            result: self.result.map(|r| serde_json::from_str(&r)).transpose().map_err(|e| bad("result", e))?,
            error: self.error,
            has_weights: self.weights_etag.is_some(),
            headline: self.headline.map(|h| serde_json::from_str(&h)).transpose().map_err(|e| bad("headline", e))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use unlearn_shared::api::Headline;

    use super::*;

    fn request() -> RunRequest {
        serde_json::from_str(r#"{"kind":"eval"}"#).unwrap()
    }

    fn inserted(admission: Admission) -> RunId {
        let Admission::Inserted(id) = admission else { panic!("reused: {admission:?}") };
        id
    }

    #[test]
    fn identical_requests_share_one_live_run_even_when_they_race() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(History::open(&dir.path().join("runs.sqlite")).unwrap());
        let admissions: Vec<Admission> = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..16).map(|_| scope.spawn(|| store.admit(&request(), "same", "me").unwrap())).collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let made: Vec<RunId> = admissions.iter().filter_map(|a| if let Admission::Inserted(id) = a { Some(*id) } else { None }).collect();
        assert_eq!(made.len(), 1, "{admissions:?}");
        assert!(admissions.iter().all(|a| matches!(a, Admission::Inserted(_)) || *a == Admission::Reused(made[0], RunStatus::Queued)));
        // A second process (connection) is held to the same rule by the unique index.
        let other = Connection::open(dir.path().join("runs.sqlite")).unwrap();
        let duplicate = other.execute("INSERT INTO runs (request, request_key, client, status, created_ms) VALUES ('{}', 'same', 'x', 'queued', 0)", []);
        assert!(duplicate.is_err(), "the index refuses a second live run with the key");
    }

    #[test]
    fn a_cancel_and_a_start_of_a_queued_run_cannot_both_win() {
        let dir = tempfile::tempdir().unwrap();
        let store = History::open(&dir.path().join("runs.sqlite")).unwrap();
        let id = inserted(store.admit(&request(), "k", "me").unwrap());
        assert!(store.cancel_queued(id).unwrap());
        assert!(!store.start(id).unwrap(), "a cancelled run is not started");
        let cancelled = store.get(id).unwrap().unwrap();
        assert_eq!((cancelled.status, cancelled.error.as_deref()), (RunStatus::Cancelled, Some("cancelled by a request while queued")));
        let other = inserted(store.admit(&request(), "k2", "me").unwrap());
        assert!(store.start(other).unwrap());
        assert!(!store.cancel_queued(other).unwrap(), "a started run is left to the worker");
        assert_eq!(store.get(other).unwrap().unwrap().status, RunStatus::Running);
    }

    #[test]
    fn a_result_that_would_not_read_back_is_recorded_as_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let store = History::open(&dir.path().join("runs.sqlite")).unwrap();
        let id = inserted(store.admit(&request(), "k", "me").unwrap());
        store.start(id).unwrap();
        let nan = unlearn_shared::api::AccLoss { accuracy: f64::NAN, loss: f64::NAN, images: 0 };
        let summary = unlearn_shared::api::EvalSummary {
            model: "m".into(),
            device: "cpu".into(),
            overall: nan,
            per_class_accuracy: vec![f64::NAN; 10],
            confusion: vec![vec![0; 10]; 10],
        };
        let outcome = Outcome { status: RunStatus::Succeeded, result: Some(RunResult::Eval(summary)), error: None, weights_etag: None };
        assert_eq!(store.finish(id, outcome).unwrap(), RunStatus::Failed);
        let run = store.get(id).expect("the record reads back").unwrap();
        assert_eq!((run.status, run.result), (RunStatus::Failed, None));
        assert!(run.error.unwrap().contains("undefined number"));
        assert_eq!(store.reusable("k").unwrap(), None, "and the request is not answered with it again");
    }

    #[test]
    fn a_cancelled_sweep_keeps_its_finished_classes_and_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = History::open(&dir.path().join("runs.sqlite")).unwrap();
        let id = inserted(store.admit(&request(), "k", "me").unwrap());
        store.start(id).unwrap();
        let reports = vec![crate::testing::made_up_report(0), crate::testing::made_up_report(1)];
        let kept = RunResult::Sweep { reports: reports.clone() };
        let error = "cancelled by a request while running, after 2 of 10 classes";
        let outcome = Outcome { status: RunStatus::Cancelled, result: Some(kept.clone()), error: Some(error.into()), weights_etag: None };
        assert_eq!(store.finish(id, outcome).unwrap(), RunStatus::Cancelled);
        let run = store.get(id).unwrap().unwrap();
        assert_eq!((run.status, run.result, run.error.as_deref()), (RunStatus::Cancelled, Some(kept), Some(error)));
        assert_eq!(store.reusable("k").unwrap(), None, "a cancelled run never answers the request");

        // What it kept is checked as a success's result is: an undefined number is not kept.
        let other = inserted(store.admit(&request(), "k2", "me").unwrap());
        store.start(other).unwrap();
        let mut broken = reports;
        broken[1].after.test.split.forget.loss = f64::NAN;
        let outcome =
            Outcome { status: RunStatus::Cancelled, result: Some(RunResult::Sweep { reports: broken }), error: Some(error.into()), weights_etag: None };
        assert_eq!(store.finish(other, outcome).unwrap(), RunStatus::Cancelled);
        let run = store.get(other).unwrap().unwrap();
        assert_eq!((run.status, run.result), (RunStatus::Cancelled, None));
        let why = run.error.unwrap();
        assert!(why.starts_with(error) && why.contains("undefined number"), "{why}");
    }

    #[test]
    fn a_run_whose_model_was_removed_keeps_its_record_and_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = History::open(&dir.path().join("runs.sqlite")).unwrap();
        let id = inserted(store.admit(&request(), "k", "me").unwrap());
        store.start(id).unwrap();
        let outcome = Outcome { status: RunStatus::Succeeded, result: None, error: None, weights_etag: Some("abc".into()) };
        store.finish(id, outcome).unwrap();
        assert_eq!(store.weights(id).unwrap(), RunWeights::Kept { etag: "abc".into() });
        assert_eq!(store.reusable("k").unwrap(), Some((id, RunStatus::Succeeded)));
        store.remove_weights(id).unwrap();
        assert_eq!(store.weights(id).unwrap(), RunWeights::Removed);
        let run = store.get(id).unwrap().unwrap();
        assert_eq!((run.status, run.has_weights), (RunStatus::Succeeded, false));
        assert_eq!(store.reusable("k").unwrap(), None, "asking again makes the model again");
    }

    #[test]
    fn runs_survive_reopening_and_unfinished_ones_become_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.sqlite");
        let store = History::open(&path).unwrap();
        let done = inserted(store.admit(&request(), "k1", "me").unwrap());
        assert!(store.start(done).unwrap());
        let outcome = Outcome { status: RunStatus::Failed, result: None, error: Some("boom".into()), weights_etag: None };
        store.finish(done, outcome).unwrap();
        let running = inserted(store.admit(&request(), "k2", "me").unwrap());
        store.start(running).unwrap();
        drop(store);

        let store = History::open(&path).unwrap();
        let done = store.get(done).unwrap().unwrap();
        assert_eq!((done.status, done.error.as_deref()), (RunStatus::Failed, Some("boom")));
        let interrupted = store.get(running).unwrap().unwrap();
        assert_eq!(interrupted.status, RunStatus::Interrupted);
        assert!(interrupted.error.unwrap().contains("the server stopped"), "an interrupted run says why");
        assert_eq!(store.reusable("k2").unwrap(), None, "an interrupted run is not reused");
        assert_eq!(store.page(None, 10).unwrap().iter().map(|r| r.id).collect::<Vec<_>>(), vec![running, done.id]);
        assert_eq!(store.page(Some(running), 10).unwrap().len(), 1);
    }

    #[test]
    fn a_version_1_history_is_migrated_and_stays_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.sqlite");
        let store = History::open(&path).unwrap();
        let id = inserted(store.admit(&request(), "k", "me").unwrap());
        let train = inserted(store.admit(&request(), "t", "me").unwrap());
        drop(store);
        let connection = Connection::open(&path).unwrap();
        let old_unlearn = r#"{"kind":"unlearn","model":"base","class":3,"alpha":10.0,"lambda":1.0,"layers":"all","importance_batch":64,"full_order":{"kind":"class_ordered"}}"#;
        let old_train = r#"{"kind":"train","name":"mine","epochs":2,"batch_size":256,"seed":0,"width":4,"train_limit":null,"test_limit":null}"#;
        connection.execute("UPDATE runs SET request = ?2 WHERE id = ?1", params![id, old_unlearn]).unwrap();
        connection.execute("UPDATE runs SET request = ?2 WHERE id = ?1", params![train, old_train]).unwrap();
        connection.pragma_update(None, "user_version", 1).unwrap();
        drop(connection);

        let store = History::open(&path).unwrap();
        let RunRequest::Unlearn(unlearn) = store.get(id).unwrap().unwrap().request else { panic!("an unlearn request") };
        assert_eq!(unlearn.ssd, unlearn_shared::api::Preset::Seed.settings());
        let RunRequest::Train(trained) = store.get(train).unwrap().unwrap().request else { panic!("a train request") };
        assert_eq!((trained.name.as_str(), trained.recipe.epochs, trained.recipe.width), ("mine", 2, 4));
    }

    #[test]
    fn listings_carry_the_headline_stored_at_the_end_and_older_histories_get_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.sqlite");
        let store = History::open(&path).unwrap();
        let done = inserted(store.admit(&request(), "k1", "me").unwrap());
        store.start(done).unwrap();
        let result = RunResult::Unlearn(Box::new(crate::testing::made_up_report(3)));
        store.finish(done, Outcome { status: RunStatus::Succeeded, result: Some(result.clone()), error: None, weights_etag: None }).unwrap();
        let running = inserted(store.admit(&request(), "k2", "me").unwrap());
        store.start(running).unwrap();
        let expected = Headline { forget_accuracy: Some(0.0), accuracy: Some(100.0), retain_drop: Some(0.0), classes: 1 };
        assert_eq!(result.headline(), expected);
        let headlines = |store: &History| store.page(None, 10).unwrap().iter().map(|run| (run.id, run.headline, run.result.is_some())).collect::<Vec<_>>();
        assert_eq!(headlines(&store), [(running, None, false), (done, Some(expected), false)], "listings leave the result out, not its headline");
        assert_eq!(store.get(done).unwrap().unwrap().headline, Some(expected));
        drop(store);

        // A version 3 history had no headlines: opening it computes them.
        let connection = Connection::open(&path).unwrap();
        connection.execute_batch("ALTER TABLE runs DROP COLUMN headline").unwrap();
        connection.pragma_update(None, "user_version", 3).unwrap();
        drop(connection);
        let store = History::open(&path).unwrap();
        assert_eq!(headlines(&store), [(running, None, false), (done, Some(expected), false)]);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.sqlite");
        std::fs::write(&path, vec![7u8; 4096]).unwrap();
        let error = History::open(&path).err().expect("garbage is refused").to_string();
        assert!(error.contains("runs.sqlite"), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 4096], "and left as it was");
    }
}
