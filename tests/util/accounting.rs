//! One account of every row: for a sync mask, each row of `sensorParser`
//! is exactly one of sent, waiting, failing (to be retried) or
//! quarantined. [`assert_accounted`] (SQLite) and, with the `mysql`
//! feature, [`assert_accounted_mysql`] count the four straight from the
//! tables, check that they add up to the table's total, and that
//! `frameflush status --json` says the same numbers.

use std::path::Path;

use rusqlite::Connection;

use super::{Run, TestEnv};

/// The four numbers of one mask, and the table's total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Account {
    pub total: u64,
    pub sent: u64,
    pub waiting: u64,
    pub failing: u64,
    pub quarantined: u64,
}

impl Account {
    fn sum(&self) -> u64 {
        self.sent + self.waiting + self.failing + self.quarantined
    }

    /// The destination of `mask` in `status --json`, as an account.
    fn from_status(run: &Run, mask: i64) -> Account {
        run.expect_code(0);
        let j = run.json();
        let d = j["destinations"]
            .as_array()
            .and_then(|ds| ds.iter().find(|d| d["sync_mask"] == mask))
            .unwrap_or_else(|| panic!("no sync mask {mask} in status: {j}"));
        let n = |k: &str| {
            d[k].as_u64()
                .unwrap_or_else(|| panic!("status has no {k} for mask {mask}: {d}"))
        };
        assert_eq!(
            n("unsent"),
            n("waiting") + n("failing"),
            "unsent is waiting + failing: {d}"
        );
        assert_eq!(n("total"), j["total"].as_u64().unwrap(), "{j}");
        Account {
            total: n("total"),
            sent: n("sent"),
            waiting: n("waiting"),
            failing: n("failing"),
            quarantined: n("quarantined"),
        }
    }
}

/// The account of `mask` counted from the tables through `count` (one
/// `SELECT COUNT(*)` answered by either database): the bit, and, when the
/// failure ledger exists (`ledger`), its records of rows with the bit clear.
fn table_account(mask: i64, ledger: bool, mut count: impl FnMut(&str) -> u64) -> Account {
    let clear = format!("(COALESCE(s.sync, 0) & {mask}) = 0");
    let in_ledger = |quarantined: &str| {
        format!(
            "EXISTS (SELECT 1 FROM frameflush_failures f WHERE f.sync_mask = {mask} \
             AND f.row_id = s.id AND f.quarantined_at IS {quarantined})"
        )
    };
    Account {
        total: count("SELECT COUNT(*) FROM sensorParser"),
        sent: count(&format!(
            "SELECT COUNT(*) FROM sensorParser s WHERE (COALESCE(s.sync, 0) & {mask}) != 0"
        )),
        waiting: if ledger {
            count(&format!(
                "SELECT COUNT(*) FROM sensorParser s WHERE {clear} AND NOT EXISTS \
                 (SELECT 1 FROM frameflush_failures f WHERE f.sync_mask = {mask} AND f.row_id = s.id)"
            ))
        } else {
            count(&format!(
                "SELECT COUNT(*) FROM sensorParser s WHERE {clear}"
            ))
        },
        failing: if ledger {
            count(&format!(
                "SELECT COUNT(*) FROM sensorParser s WHERE {clear} AND {}",
                in_ledger("NULL")
            ))
        } else {
            0
        },
        quarantined: if ledger {
            count(&format!(
                "SELECT COUNT(*) FROM sensorParser s WHERE {clear} AND {}",
                in_ledger("NOT NULL")
            ))
        } else {
            0
        },
    }
}

/// Counts the account of `mask` in the SQLite database `db` from its tables
/// (the bit; the failure ledger of rows with the bit clear), asserts the
/// four add up to the total and that `frameflush status --json` gives the
/// same numbers. Returns them.
pub fn assert_accounted(env: &TestEnv, db: &Path, mask: i64) -> Account {
    let c = Connection::open(db).unwrap();
    let count = |sql: &str| -> u64 { c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as u64 };
    let ledger = count(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'frameflush_failures'",
    ) == 1;
    let mine = table_account(mask, ledger, count);
    drop(c);
    assert_eq!(mine.sum(), mine.total, "every row counted once: {mine:?}");
    let db_arg = db.display().to_string();
    let mask_arg = mask.to_string();
    let run = env.run(&[
        "status",
        "--db",
        &db_arg,
        "--sync-mask",
        &mask_arg,
        "--json",
    ]);
    let said = Account::from_status(&run, mask);
    assert_eq!(said, mine, "status --json against the table's own counts");
    mine
}

/// [`assert_accounted`] for a MySQL database of the tests' own server.
#[cfg(feature = "mysql")]
pub fn assert_accounted_mysql(env: &TestEnv, db: &super::mariadb::TestDb, mask: i64) -> Account {
    use mysql::prelude::Queryable;
    let mut c = db.conn();
    let mut count = |sql: &str| -> u64 {
        let n: Option<i64> = c.query_first(sql).unwrap();
        n.unwrap_or(0) as u64
    };
    let ledger = count(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() \
         AND TABLE_NAME = 'frameflush_failures'",
    ) == 1;
    let mine = table_account(mask, ledger, count);
    assert_eq!(mine.sum(), mine.total, "every row counted once: {mine:?}");
    let (url, mask_arg) = (db.url(), mask.to_string());
    let run = super::mariadb::run(
        env,
        &["status", "--db", &url, "--sync-mask", &mask_arg, "--json"],
    );
    let said = Account::from_status(&run, mask);
    assert_eq!(said, mine, "status --json against the table's own counts");
    mine
}
