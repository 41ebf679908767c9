//! The ratings contract, in process; the variants' timing under tokio's paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod common;

use axum::Router;
use common::call;
use http::{Method, StatusCode};
use ratings::{Config, State, Variant};

fn app(variant: Variant) -> Router {
    ratings::app(State::new(Config {
        variant,
        ..Config::default()
    }))
}

/// A v1 ratings whose store holds posted ratings for at most `max_products` ids.
fn limited_app(max_products: usize) -> Router {
    ratings::app(State::new(Config {
        max_products,
        ..Config::default()
    }))
}

/// A v1 ratings whose posted ratings may take at most `max_bytes`, and its state.
fn budgeted_app(max_bytes: usize) -> (Router, State) {
    let state = State::new(Config {
        max_bytes,
        ..Config::default()
    });
    (ratings::app(state.clone()), state)
}

async fn post(app: &Router, uri: &str, body: &str) -> (StatusCode, String) {
    call(app, Method::POST, uri, body).await
}

async fn get(app: &Router, uri: &str) -> (StatusCode, String) {
    call(app, Method::GET, uri, "").await
}

#[tokio::test]
async fn ratings_of_product_zero_are_5_and_4() {
    let (status, body) = get(&app(Variant::V1), "/ratings/0").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, r#"{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#);
}

#[tokio::test]
async fn ids_are_parsed_like_javascript_parseint() {
    let app = app(Variant::V1);
    assert_eq!(
        get(&app, "/ratings/1abc").await.1,
        r#"{"id":1,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#
    );
    assert_eq!(
        get(&app, "/ratings/-3").await.1,
        r#"{"id":-3,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#
    );
    assert_eq!(
        get(&app, "/ratings/0?x=1").await.1,
        r#"{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#
    );
}

#[tokio::test]
async fn non_numeric_ids_are_400_with_capital_id() {
    let app = app(Variant::V1);
    for uri in ["/ratings/abc", "/ratings/"] {
        let (status, body) = get(&app, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(body, r#"{"error":"please provide numeric product ID"}"#);
    }
}

#[tokio::test]
async fn posted_ratings_are_kept_per_id() {
    let app = app(Variant::V1);
    let (status, body) = call(
        &app,
        Method::POST,
        "/ratings/7",
        r#"{"Reviewer1":1,"Reviewer2":2}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, r#"{"id":7,"ratings":{"Reviewer1":1,"Reviewer2":2}}"#);
    assert_eq!(
        get(&app, "/ratings/7").await.1,
        r#"{"id":7,"ratings":{"Reviewer1":1,"Reviewer2":2}}"#
    );
    assert_eq!(
        get(&app, "/ratings/8").await.1,
        r#"{"id":8,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#
    );
}

#[tokio::test]
async fn invalid_post_json_is_400_and_changes_nothing() {
    let app = app(Variant::V1);
    let (status, body) = call(&app, Method::POST, "/ratings/0", "{nope").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, r#"{"error":"please provide valid ratings JSON"}"#);
    assert_eq!(
        get(&app, "/ratings/0").await.1,
        r#"{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#
    );
    let (status, _) = call(&app, Method::POST, "/ratings/x", "{}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn health_and_unmatched_paths() {
    let app = app(Variant::V1);
    assert_eq!(
        get(&app, "/health").await,
        (
            StatusCode::OK,
            r#"{"status":"Ratings is healthy"}"#.to_owned()
        )
    );
    assert_eq!(
        get(&app, "/nope").await,
        (StatusCode::NOT_FOUND, String::new())
    );
    assert_eq!(
        get(&app, "/ratings").await,
        (StatusCode::NOT_FOUND, String::new())
    );
}

#[tokio::test]
async fn other_methods_get_405_instead_of_hanging() {
    let app = app(Variant::V1);
    for method in [Method::PUT, Method::DELETE, Method::PATCH] {
        assert_eq!(
            call(&app, method.clone(), "/ratings/0", "").await.0,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method}"
        );
    }
    assert_eq!(
        call(&app, Method::DELETE, "/nope", "").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&app, Method::HEAD, "/ratings/0", "").await.0,
        StatusCode::OK
    );
}

fn coin_app(variant: Variant, heads: Arc<AtomicBool>) -> Router {
    ratings::app(State::with_coin(
        Config {
            variant,
            ..Config::default()
        },
        move || heads.load(Ordering::SeqCst),
    ))
}

#[tokio::test]
async fn faulty_answers_503_when_the_coin_says_so() {
    let heads = Arc::new(AtomicBool::new(true));
    let app = coin_app(Variant::Faulty, heads.clone());
    assert_eq!(
        get(&app, "/ratings/0").await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error":"Service unavailable"}"#.to_owned()
        )
    );
    heads.store(false, Ordering::SeqCst);
    assert_eq!(get(&app, "/ratings/0").await.0, StatusCode::OK);
}

#[tokio::test]
async fn faulty_fails_about_half_of_the_time_with_the_real_coin() {
    let app = app(Variant::Faulty);
    let mut failures = 0;
    for _ in 0..400 {
        if get(&app, "/ratings/0").await.0 == StatusCode::SERVICE_UNAVAILABLE {
            failures += 1;
        }
    }
    // Binomial(400, 0.5): mean 200, sd 10; ±60 is six standard deviations.
    assert!((140..=260).contains(&failures), "{failures} of 400 failed");
}

#[tokio::test(start_paused = true)]
async fn delayed_holds_the_answer_seven_seconds() {
    let heads = Arc::new(AtomicBool::new(true));
    let app = coin_app(Variant::Delayed, heads.clone());
    let start = tokio::time::Instant::now();
    assert_eq!(get(&app, "/ratings/0").await.0, StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_secs(7));
    heads.store(false, Ordering::SeqCst);
    let start = tokio::time::Instant::now();
    assert_eq!(get(&app, "/ratings/0").await.0, StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn unavailable_toggles_every_minute_starting_available() {
    let app = app(Variant::Unavailable);
    assert_eq!(get(&app, "/ratings/0").await.0, StatusCode::OK);
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(
        get(&app, "/ratings/0").await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error":"Service unavailable"}"#.to_owned()
        )
    );
    assert_eq!(get(&app, "/health").await.0, StatusCode::OK);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(get(&app, "/ratings/0").await.0, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn unhealthy_toggles_health_and_availability_every_fifteen_minutes() {
    let app = app(Variant::Unhealthy);
    assert_eq!(get(&app, "/health").await.0, StatusCode::OK);
    assert_eq!(get(&app, "/ratings/0").await.0, StatusCode::OK);
    tokio::time::advance(Duration::from_secs(15 * 60 + 1)).await;
    assert_eq!(
        get(&app, "/health").await,
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"status":"Ratings is not healthy"}"#.to_owned()
        )
    );
    assert_eq!(
        get(&app, "/ratings/0").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    tokio::time::advance(Duration::from_secs(15 * 60)).await;
    assert_eq!(get(&app, "/health").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_new_id_beyond_the_limit_is_507_and_stored_ids_still_work() {
    let app = limited_app(2);
    for id in [1, 2] {
        let (status, body) = post(&app, &format!("/ratings/{id}"), r#"{"Reviewer1":1}"#).await;
        assert_eq!(status, StatusCode::OK, "{id}");
        assert_eq!(
            body,
            format!(r#"{{"id":{id},"ratings":{{"Reviewer1":1}}}}"#)
        );
    }
    let (status, body) = post(&app, "/ratings/3", r#"{"Reviewer1":3}"#).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(
        body,
        r#"{"error":"ratings store is full: at most 2 products can hold posted ratings"}"#
    );
    // The refused id was not stored: it still has the built-in ratings.
    assert_eq!(
        get(&app, "/ratings/3").await,
        (
            StatusCode::OK,
            r#"{"id":3,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#.to_owned()
        )
    );
    // At the limit, a stored id can still be updated, and read back.
    let (status, body) = post(&app, "/ratings/2", r#"{"Reviewer1":2,"Reviewer2":3}"#).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, r#"{"id":2,"ratings":{"Reviewer1":2,"Reviewer2":3}}"#);
    assert_eq!(
        get(&app, "/ratings/2").await.1,
        r#"{"id":2,"ratings":{"Reviewer1":2,"Reviewer2":3}}"#
    );
    assert_eq!(
        get(&app, "/ratings/1").await.1,
        r#"{"id":1,"ratings":{"Reviewer1":1}}"#
    );
    // Ids are counted as parsed, so another spelling of a stored id is an update, not new.
    assert_eq!(post(&app, "/ratings/0x1", "[5]").await.0, StatusCode::OK);
    assert_eq!(get(&app, "/ratings/1").await.1, r#"{"id":1,"ratings":[5]}"#);
}

#[tokio::test]
async fn a_limit_of_zero_refuses_every_post_but_not_gets() {
    let app = limited_app(0);
    assert_eq!(
        post(&app, "/ratings/0", "{}").await.0,
        StatusCode::INSUFFICIENT_STORAGE
    );
    assert_eq!(get(&app, "/ratings/0").await.0, StatusCode::OK);
}

#[tokio::test]
async fn refused_posts_do_not_count_towards_the_limit() {
    let app = limited_app(1);
    assert_eq!(
        post(&app, "/ratings/1", "{nope").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        post(&app, "/ratings/x", "{}").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(post(&app, "/ratings/1", "{}").await.0, StatusCode::OK);
    assert_eq!(
        post(&app, "/ratings/2", "{}").await.0,
        StatusCode::INSUFFICIENT_STORAGE
    );
}

#[tokio::test]
async fn the_default_limit_leaves_ordinary_use_as_upstream() {
    let app = app(Variant::V1);
    for id in 0..100 {
        let body = format!(r#"{{"Reviewer1":{},"Reviewer2":4}}"#, id % 6);
        let (status, _) = post(&app, &format!("/ratings/{id}"), &body).await;
        assert_eq!(status, StatusCode::OK, "{id}");
    }
    assert_eq!(
        get(&app, "/ratings/99").await.1,
        r#"{"id":99,"ratings":{"Reviewer1":3,"Reviewer2":4}}"#
    );
    assert_eq!(
        ratings::Config::default().max_products,
        ratings::MAX_STORED_PRODUCTS
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_and_changes_nothing() {
    let app = app(Variant::V1);
    let at_limit = format!(r#""{}""#, "a".repeat(ratings::MAX_BODY_BYTES - 2));
    assert_eq!(post(&app, "/ratings/5", &at_limit).await.0, StatusCode::OK);
    let over = format!(r#""{}""#, "a".repeat(ratings::MAX_BODY_BYTES - 1));
    let (status, body) = post(&app, "/ratings/6", &over).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body, r#"{"error":"ratings body too large"}"#);
    assert_eq!(
        get(&app, "/ratings/6").await.1,
        r#"{"id":6,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#
    );
}

#[tokio::test]
async fn a_body_that_grows_past_the_limit_when_stored_is_413() {
    let app = app(Variant::V1);
    // `1e15` is stored as JavaScript writes it, `1000000000000000`: under the limit as posted,
    // over it as stored.
    let mut body = String::from("[1e15");
    while body.len() < ratings::MAX_BODY_BYTES - 6 {
        body.push_str(",1e15");
    }
    body.push(']');
    assert!(body.len() <= ratings::MAX_BODY_BYTES);
    let (status, reply) = post(&app, "/ratings/1", &body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply, r#"{"error":"ratings body too large"}"#);
    let (status, _) = post(&app, "/ratings/1", "[1e15]").await;
    assert_eq!(status, StatusCode::OK);
}

/// A JSON string of exactly `len` bytes, of `fill` characters.
fn json_string_of(len: usize, fill: char) -> String {
    format!(r#""{}""#, fill.to_string().repeat(len - 2))
}

#[tokio::test]
async fn posting_beyond_the_default_byte_budget_is_507_and_the_store_stays_within_it() {
    let (app, state) = budgeted_app(ratings::Config::default().max_bytes);
    assert_eq!(ratings::MAX_STORED_BYTES, 32 * 1024 * 1024);
    let body = json_string_of(ratings::MAX_BODY_BYTES, 'a');
    let mut accepted = 0;
    // Twice the budget's worth of the largest bodies, each to a new id.
    let posts = 2 * ratings::MAX_STORED_BYTES / ratings::MAX_BODY_BYTES;
    for id in 0..posts {
        let (status, reply) = post(&app, &format!("/ratings/{id}"), &body).await;
        match status {
            StatusCode::OK => {
                assert_eq!(accepted, id, "an id after a refusal was accepted");
                accepted += 1;
            }
            StatusCode::INSUFFICIENT_STORAGE => assert_eq!(
                reply,
                format!(
                    r#"{{"error":"ratings store is full: posted ratings can take at most {} bytes"}}"#,
                    ratings::MAX_STORED_BYTES
                )
            ),
            other => panic!("POST {id}: {other} {reply}"),
        }
        assert!(state.posted_bytes() <= ratings::MAX_STORED_BYTES, "{id}");
    }
    // Every accepted entry is counted at least at its body's size: the store was filled, not
    // refused early.
    let per_entry = ratings::MAX_BODY_BYTES + ratings::ENTRY_OVERHEAD_BYTES + 3;
    assert_eq!(accepted, ratings::MAX_STORED_BYTES / per_entry);
    assert!(state.posted_bytes() > ratings::MAX_STORED_BYTES - per_entry);
    // The service still answers: stored ids, refused ids and health.
    assert_eq!(
        get(&app, "/ratings/0").await,
        (StatusCode::OK, format!(r#"{{"id":0,"ratings":{body}}}"#))
    );
    assert_eq!(
        get(&app, &format!("/ratings/{}", posts - 1)).await.1,
        format!(
            r#"{{"id":{},"ratings":{{"Reviewer1":5,"Reviewer2":4}}}}"#,
            posts - 1
        )
    );
    assert_eq!(get(&app, "/health").await.0, StatusCode::OK);
    // Shrinking a stored entry frees its bytes for a new id.
    assert_eq!(post(&app, "/ratings/0", "{}").await.0, StatusCode::OK);
    assert_eq!(
        post(&app, &format!("/ratings/{accepted}"), "[1]").await.0,
        StatusCode::OK
    );
    assert!(state.posted_bytes() <= ratings::MAX_STORED_BYTES);
}

#[tokio::test]
async fn an_update_that_would_exceed_the_byte_budget_is_507_and_keeps_the_old_ratings() {
    let entry = |id: &str, ratings: usize| id.len() + ratings + ratings::ENTRY_OVERHEAD_BYTES;
    let (app, state) = budgeted_app(entry("1", 100) + entry("2", 100));
    for id in [1, 2] {
        let (status, _) = post(&app, &format!("/ratings/{id}"), &json_string_of(100, 'x')).await;
        assert_eq!(status, StatusCode::OK, "{id}");
    }
    assert_eq!(state.posted_bytes(), entry("1", 100) + entry("2", 100));
    // Growing id 1 by one byte takes the store over.
    let (status, _) = post(&app, "/ratings/1", &json_string_of(101, 'y')).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(
        get(&app, "/ratings/1").await.1,
        format!(r#"{{"id":1,"ratings":{}}}"#, json_string_of(100, 'x'))
    );
    // Replacing it with one as large as before fits: the old entry's bytes are given back.
    let (status, _) = post(&app, "/ratings/1", &json_string_of(100, 'z')).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(state.posted_bytes(), entry("1", 100) + entry("2", 100));
    // A new id, however small, does not fit.
    assert_eq!(
        post(&app, "/ratings/3", "0").await.0,
        StatusCode::INSUFFICIENT_STORAGE
    );
}
