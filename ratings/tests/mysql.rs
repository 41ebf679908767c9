//! ratings v2 on MySQL, against a real MariaDB (see `mariadb/mod.rs`; these skip without one
//! outside CI), and against no database or a hung one, which need none.

mod common;
mod mariadb;

use std::process::{Command, Stdio};
use std::time::Duration;

use axum::Router;
use http::{Method, StatusCode};
use mysql_async::prelude::Queryable;
use ratings::db::{DB_TIMEOUT, MysqlConfig};
use ratings::{Config, State};
use test_support::{Killed, free_port};
use tokio::time::Instant;

use mariadb::MariaDb;

const SEEDED: &str = r#"{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#;
const CANNOT_CONNECT: &str = r#"{"error":"could not connect to ratings database"}"#;
const CANNOT_SELECT: &str = r#"{"error":"could not perform select"}"#;

fn v2(mysql: MysqlConfig) -> Router {
    ratings::app(State::new(Config::v2(mysql)))
}

/// A database address where nothing listens.
fn nowhere() -> MysqlConfig {
    MysqlConfig {
        host: "127.0.0.1".to_owned(),
        port: free_port(),
        user: "root".to_owned(),
        password: mariadb::ROOT_PASSWORD.to_owned(),
    }
}

/// The status and body, checking that any answer but 404 is `application/json`, as upstream's.
async fn call(app: &Router, method: Method, uri: &str, body: &str) -> (StatusCode, String) {
    let (status, content_type, body) = common::request(app, method, uri, body).await;
    if status != StatusCode::NOT_FOUND {
        assert_eq!(content_type.as_deref(), Some("application/json"), "{uri}");
    }
    (status, body)
}

async fn get(app: &Router, uri: &str) -> (StatusCode, String) {
    call(app, Method::GET, uri, "").await
}

fn ok(body: &str) -> (StatusCode, String) {
    (StatusCode::OK, body.to_owned())
}

fn failed(body: &str) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, body.to_owned())
}

/// A seeded MariaDB and a v2 ratings reading it, which has answered once (so its pool holds a
/// connection); `None` when MariaDB is not installed (a skip outside CI).
async fn seeded_app() -> Option<(MariaDb, Router)> {
    let db = MariaDb::seeded().await?;
    let app = v2(db.config());
    assert_eq!(get(&app, "/ratings/0").await, ok(SEEDED));
    Some((db, app))
}

/// Polls `GET /ratings/0` until it is the seeded answer, with a deadline.
async fn until_seeded(app: &Router, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = get(app, "/ratings/0").await;
        if got == ok(SEEDED) {
            return;
        }
        assert!(Instant::now() < deadline, "not recovered: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seeded_rows_come_back_as_upstreams_json_for_any_id() {
    let Some((_db, app)) = seeded_app().await else {
        return;
    };
    // The id is only echoed, as a JavaScript number.
    assert_eq!(
        get(&app, "/ratings/99999999999999999999").await,
        ok(r#"{"id":100000000000000000000,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#)
    );
    assert_eq!(
        get(&app, "/ratings/0x1F").await,
        ok(r#"{"id":31,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#)
    );
    assert_eq!(
        get(&app, "/ratings/abc").await,
        (
            StatusCode::BAD_REQUEST,
            r#"{"error":"please provide numeric product ID"}"#.to_owned()
        )
    );
    assert_eq!(
        get(&app, "/health").await,
        ok(r#"{"status":"Ratings is healthy"}"#)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_changed_in_the_database_are_seen_with_upstreams_defaults() {
    let Some((db, app)) = seeded_app().await else {
        return;
    };
    let ratings = |r1: &str, r2: &str| {
        ok(&format!(
            r#"{{"id":3,"ratings":{{"Reviewer1":{r1},"Reviewer2":{r2}}}}}"#
        ))
    };
    assert_eq!(get(&app, "/ratings/3").await, ratings("5", "4"));
    db.execute("UPDATE test.ratings SET Rating = 1 WHERE ReviewID = 1")
        .await;
    assert_eq!(get(&app, "/ratings/3").await, ratings("1", "4"));
    // A NULL rating is JSON null; a missing row is upstream's 0.
    db.execute("UPDATE test.ratings SET Rating = NULL WHERE ReviewID = 2")
        .await;
    assert_eq!(get(&app, "/ratings/3").await, ratings("1", "null"));
    db.execute("DELETE FROM test.ratings WHERE ReviewID = 2")
        .await;
    assert_eq!(get(&app, "/ratings/3").await, ratings("1", "0"));
    db.execute("DELETE FROM test.ratings").await;
    assert_eq!(get(&app, "/ratings/3").await, ratings("0", "0"));
    // Only the first two rows count, and numbers are JavaScript's.
    db.execute(
        "ALTER TABLE test.ratings MODIFY Rating DECIMAL(4,2);\
         INSERT INTO test.ratings VALUES (1, 4.50), (2, 3.00), (3, 1)",
    )
    .await;
    assert_eq!(get(&app, "/ratings/3").await, ratings("4.5", "3"));
    // Text stays text; so does a zero-filled number, as upstream's client leaves it.
    db.execute("ALTER TABLE test.ratings MODIFY Rating VARCHAR(8)")
        .await;
    assert_eq!(
        get(&app, "/ratings/3").await,
        ratings(r#""4.50""#, r#""3.00""#)
    );
    db.execute(
        "UPDATE test.ratings SET Rating = ReviewID * 2;\
         ALTER TABLE test.ratings MODIFY Rating INT(3) ZEROFILL",
    )
    .await;
    assert_eq!(
        get(&app, "/ratings/3").await,
        ratings(r#""002""#, r#""004""#)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_restart_is_survived_without_a_failed_request() {
    let Some((mut db, app)) = seeded_app().await else {
        return;
    };
    // The pool holds a connection, which the restart breaks.
    db.stop();
    db.start().await;
    assert_eq!(get(&app, "/ratings/0").await, ok(SEEDED));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_database_is_upstreams_500_until_it_comes_back() {
    let Some((mut db, app)) = seeded_app().await else {
        return;
    };
    db.stop();
    for _ in 0..3 {
        assert_eq!(get(&app, "/ratings/0").await, failed(CANNOT_CONNECT));
    }
    assert_eq!(get(&app, "/health").await.0, StatusCode::OK);
    db.start().await;
    until_seeded(&app, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_select_is_upstreams_select_error_and_a_wrong_password_cannot_connect() {
    let Some((db, app)) = seeded_app().await else {
        return;
    };
    db.execute("RENAME TABLE test.ratings TO test.ratings_away")
        .await;
    assert_eq!(get(&app, "/ratings/0").await, failed(CANNOT_SELECT));
    db.execute("RENAME TABLE test.ratings_away TO test.ratings")
        .await;
    assert_eq!(get(&app, "/ratings/0").await, ok(SEEDED));
    let wrong = v2(MysqlConfig {
        password: "not-the-password".to_owned(),
        ..db.config()
    });
    assert_eq!(get(&wrong, "/ratings/0").await, failed(CANNOT_CONNECT));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_select_held_up_by_a_lock_is_a_500_after_the_timeout() {
    let Some((db, app)) = seeded_app().await else {
        return;
    };
    let mut locker = db.connect().await;
    locker
        .query_drop("LOCK TABLES test.ratings WRITE")
        .await
        .unwrap();
    let start = Instant::now();
    assert_eq!(get(&app, "/ratings/0").await, failed(CANNOT_SELECT));
    let took = start.elapsed();
    assert!(
        took >= DB_TIMEOUT && took < DB_TIMEOUT + Duration::from_secs(2),
        "{took:?}"
    );
    locker.query_drop("UNLOCK TABLES").await.unwrap();
    until_seeded(&app, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_serves_v2_from_mariadb_over_a_socket() {
    let Some(db) = MariaDb::seeded().await else {
        return;
    };
    let port = free_port();
    let _server = spawn_v2(port, &db.config());
    let url = format!("http://127.0.0.1:{port}/ratings/1");
    let deadline = Instant::now() + Duration::from_secs(20);
    let response = loop {
        match mesh::Client::new()
            .get(&url, Default::default(), Duration::from_secs(5))
            .await
        {
            Ok(r) => break r,
            Err(e) => assert!(Instant::now() < deadline, "ratings never answered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.body().as_ref(),
        br#"{"id":1,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#
    );
}

/// The ratings binary as v2 on `port`, reading `mysql`.
fn spawn_v2(port: u16, mysql: &MysqlConfig) -> Killed {
    Killed(
        Command::new(env!("CARGO_BIN_EXE_ratings"))
            .args([&port.to_string(), "--bind", "127.0.0.1"])
            .env("SERVICE_VERSION", "v2")
            .env("DB_TYPE", "mysql")
            .env("MYSQL_DB_HOST", &mysql.host)
            .env("MYSQL_DB_PORT", mysql.port.to_string())
            .env("MYSQL_DB_USER", &mysql.user)
            .env("MYSQL_DB_PASSWORD", &mysql.password)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_starts_healthy_without_its_database_and_answers_500() {
    let port = free_port();
    let _server = spawn_v2(port, &nowhere());
    let health_check = || {
        Command::new(env!("CARGO_BIN_EXE_ratings"))
            .args([&port.to_string(), "--health-check"])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !health_check() {
        assert!(Instant::now() < deadline, "ratings v2 never became healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = mesh::Client::new()
        .get(
            &format!("http://127.0.0.1:{port}/ratings/0"),
            Default::default(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.body().as_ref(), CANNOT_CONNECT.as_bytes());
}

#[tokio::test]
async fn no_database_is_upstreams_connect_error_at_once() {
    let app = v2(nowhere());
    let start = Instant::now();
    assert_eq!(get(&app, "/ratings/0").await, failed(CANNOT_CONNECT));
    assert!(start.elapsed() < DB_TIMEOUT, "{:?}", start.elapsed());
    assert_eq!(
        get(&app, "/health").await,
        ok(r#"{"status":"Ratings is healthy"}"#)
    );
}

#[tokio::test]
async fn a_hung_database_is_a_500_after_the_timeout() {
    // Accepts connections and never says a word, where a server would greet.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            open.push(stream);
        }
    });
    let app = v2(MysqlConfig { port, ..nowhere() });
    let start = Instant::now();
    assert_eq!(get(&app, "/ratings/0").await, failed(CANNOT_CONNECT));
    let took = start.elapsed();
    assert!(
        took >= DB_TIMEOUT && took < DB_TIMEOUT + Duration::from_secs(2),
        "{took:?}"
    );
    held.abort();
}

#[tokio::test]
async fn a_post_is_upstreams_501_after_the_id_and_body_are_checked() {
    let app = v2(nowhere());
    assert_eq!(
        call(&app, Method::POST, "/ratings/1", r#"{"Reviewer1":1}"#).await,
        (
            StatusCode::NOT_IMPLEMENTED,
            r#"{"error":"Post not implemented for database backed ratings"}"#.to_owned()
        )
    );
    assert_eq!(
        call(&app, Method::POST, "/ratings/1", "{nope").await,
        (
            StatusCode::BAD_REQUEST,
            r#"{"error":"please provide valid ratings JSON"}"#.to_owned()
        )
    );
    assert_eq!(
        call(&app, Method::POST, "/ratings/x", "{}").await,
        (
            StatusCode::BAD_REQUEST,
            r#"{"error":"please provide numeric product ID"}"#.to_owned()
        )
    );
}

#[test]
fn v2_configuration_errors_stop_the_binary_with_exit_64_and_say_why() {
    let run = common::refused;
    let v2 = ("SERVICE_VERSION", "v2");
    let mysql = ("DB_TYPE", "mysql");
    let user = ("MYSQL_DB_USER", "root");
    let mongo = run(&[v2]);
    assert!(mongo.contains("invalid DB_TYPE"), "{mongo}");
    assert!(
        mongo.contains("MongoDB, which is not supported; set DB_TYPE=mysql"),
        "{mongo}"
    );
    let no_host = run(&[v2, mysql, user]);
    assert!(
        no_host.contains("invalid MYSQL_DB_HOST=\"\": required with SERVICE_VERSION=v2"),
        "{no_host}"
    );
    let port = run(&[
        v2,
        mysql,
        user,
        ("MYSQL_DB_HOST", "db"),
        ("MYSQL_DB_PORT", "x"),
    ]);
    assert!(port.contains("invalid MYSQL_DB_PORT=\"x\""), "{port}");
}
