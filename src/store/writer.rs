//! Group commit for SQLite: one writer task runs every write that is waiting in one transaction,
//! so a burst of calls pays for one WAL fsync instead of one each.
//!
//! SQLite allows one writer at a time and `synchronous=FULL` fsyncs every commit (about 0.4 ms on
//! the benchmark machine), so one commit per write caps the whole appliance at a few thousand
//! writes a second, and several pooled connections competing for the write lock only add
//! busy-handler sleeps. Here the writer takes everything queued, runs it in one transaction and
//! answers each caller only after the COMMIT returned: every write is as durable as before when its
//! future resolves. There is no added delay: a lone write commits at once; writes that arrive while
//! a commit is in flight form the next group.
//!
//! Should any statement of a group fail, or the COMMIT itself, the group is rolled back and every
//! write is run again on its own (autocommit), so each caller gets its own result and one bad write
//! never fails its neighbours.
use sqlx::sqlite::SqlitePool;
use sqlx::SqliteConnection;
use tokio::sync::{mpsc, oneshot};

/// Most writes in one transaction; bounds the time one commit holds the write lock.
const MAX_GROUP: usize = 256;

/// One write with its bound values. `sql` is one of the store's statement constants.
pub(super) struct Write {
    pub sql: &'static str,
    pub args: Vec<Arg>,
    /// `RETURNING id` statements answer the id; others the number of rows changed.
    pub returns_id: bool,
    reply: Option<oneshot::Sender<Result<i64, sqlx::Error>>>,
}

/// A bound value.
pub(super) enum Arg {
    Int(i64),
    OptInt(Option<i64>),
    Text(String),
    OptText(Option<String>),
}

impl Write {
    pub fn new(sql: &'static str, args: Vec<Arg>, returns_id: bool) -> Self {
        Self {
            sql,
            args,
            returns_id,
            reply: None,
        }
    }

    async fn run(&self, conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
        let mut q = sqlx::query(self.sql);
        for a in &self.args {
            q = match a {
                Arg::Int(v) => q.bind(*v),
                Arg::OptInt(v) => q.bind(*v),
                Arg::Text(v) => q.bind(v.as_str()),
                Arg::OptText(v) => q.bind(v.as_deref()),
            };
        }
        if self.returns_id {
            use sqlx::Row;
            let row = q.fetch_one(&mut *conn).await?;
            row.try_get::<i64, _>(0)
        } else {
            let done = q.execute(&mut *conn).await?;
            Ok(i64::try_from(done.rows_affected()).unwrap_or(i64::MAX))
        }
    }

    fn answer(mut self, result: Result<i64, sqlx::Error>) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(result);
        }
    }
}

/// Handle to the writer task. Cheap to clone.
#[derive(Clone)]
pub(super) struct GroupWriter {
    tx: mpsc::UnboundedSender<Write>,
}

impl GroupWriter {
    /// Starts the writer task on the current tokio runtime. It stops when every handle is gone.
    pub fn spawn(pool: SqlitePool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer_task(pool, rx));
        Self { tx }
    }

    /// Runs `w` in the next group; resolves once it is committed (or failed).
    pub async fn write(&self, mut w: Write) -> Result<i64, sqlx::Error> {
        let (tx, rx) = oneshot::channel();
        w.reply = Some(tx);
        self.tx.send(w).map_err(|_| sqlx::Error::PoolClosed)?;
        rx.await.unwrap_or(Err(sqlx::Error::PoolClosed))
    }
}

async fn writer_task(pool: SqlitePool, mut rx: mpsc::UnboundedReceiver<Write>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.recv().await {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(w) => group.push(w),
                Err(_) => break,
            }
        }
        commit_group(&pool, &mut group).await;
    }
}

/// Runs `group` in one transaction and answers every write; falls back to one transaction per
/// write when anything in the group fails.
async fn commit_group(pool: &SqlitePool, group: &mut Vec<Write>) {
    if group.len() > 1 {
        if let Ok(results) = try_group(pool, group).await {
            for (w, r) in group.drain(..).zip(results) {
                w.answer(Ok(r));
            }
            return;
        }
    }
    for w in group.drain(..) {
        let result = match pool.acquire().await {
            Ok(mut conn) => w.run(&mut conn).await,
            Err(e) => Err(e),
        };
        w.answer(result);
    }
}

async fn try_group(pool: &SqlitePool, group: &[Write]) -> Result<Vec<i64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut results = Vec::with_capacity(group.len());
    for w in group {
        // Dropping `tx` on error rolls the whole group back.
        results.push(w.run(&mut tx).await?);
    }
    tx.commit().await?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::sqlite::SqlitePoolOptions;

    const INSERT: &str = "INSERT INTO t (v) VALUES ($1) RETURNING id";
    const UPDATE: &str = "UPDATE t SET v = $2 WHERE id = $1";

    async fn pool() -> SqlitePool {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect("sqlite::memory:")
            .await
            .expect("memory db");
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            .execute(&pool)
            .await
            .expect("create");
        pool
    }

    fn insert(v: Option<&str>) -> (Write, oneshot::Receiver<Result<i64, sqlx::Error>>) {
        let (tx, rx) = oneshot::channel();
        let mut w = Write::new(INSERT, vec![Arg::OptText(v.map(str::to_owned))], true);
        w.reply = Some(tx);
        (w, rx)
    }

    async fn count(pool: &SqlitePool) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(pool)
            .await
            .expect("count")
    }

    #[tokio::test]
    async fn a_group_commits_together_and_answers_each_write() {
        let pool = pool().await;
        let (a, ra) = insert(Some("a"));
        let (b, rb) = insert(Some("b"));
        let (tx, rc) = oneshot::channel();
        let mut c = Write::new(UPDATE, vec![Arg::Int(999), Arg::Text("x".into())], false);
        c.reply = Some(tx);
        commit_group(&pool, &mut vec![a, b, c]).await;
        let ida = ra.await.expect("reply").expect("insert a");
        let idb = rb.await.expect("reply").expect("insert b");
        assert_ne!(ida, idb);
        assert_eq!(rc.await.expect("reply").expect("update"), 0, "no such row");
        assert_eq!(count(&pool).await, 2);
    }

    #[tokio::test]
    async fn one_failing_write_does_not_fail_its_group() {
        let pool = pool().await;
        let (a, ra) = insert(Some("a"));
        // NOT NULL violation: this write alone must fail.
        let (bad, rbad) = insert(None);
        let (c, rc) = insert(Some("c"));
        commit_group(&pool, &mut vec![a, bad, c]).await;
        assert!(ra.await.expect("reply").is_ok());
        assert!(rbad.await.expect("reply").is_err());
        assert!(rc.await.expect("reply").is_ok());
        assert_eq!(
            count(&pool).await,
            2,
            "the good writes are committed once each"
        );
    }

    #[tokio::test]
    async fn writer_task_serves_concurrent_writes() {
        let pool = pool().await;
        let writer = GroupWriter::spawn(pool.clone());
        let mut tasks = Vec::new();
        for i in 0..40 {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                writer
                    .write(Write::new(INSERT, vec![Arg::Text(format!("v{i}"))], true))
                    .await
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.expect("join").expect("insert"));
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 40);
        assert_eq!(count(&pool).await, 40);
    }
}
