//! The reviews contract, in process, against the real ratings service in process.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::HeaderMap;
use axum::routing::get;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use ratings::Variant;
use reviews::{Config, State};
use tower::ServiceExt;

const RATINGS: &str = "ratings:9080";

fn reviews_app(version: &str, ratings: Option<Router>) -> Router {
    let mut config = Config::version(version, format!("http://{RATINGS}"));
    config.podname = format!("reviews-{version}-5b5d6494f4-abcde");
    let client = mesh::Client::in_process(ratings.map(|r| (RATINGS.to_owned(), r)));
    reviews::app(State { config, client })
}

fn ratings_app(variant: Variant, coin: bool) -> Router {
    ratings::app(ratings::State::with_coin(
        ratings::Config {
            variant,
            ..Default::default()
        },
        move || coin,
    ))
}

async fn get_reviews(app: &Router, uri: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let mut req = Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

const R1: &str = r#"{  "reviewer": "Reviewer1",  "text": "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!""#;
const R2: &str = r#"{  "reviewer": "Reviewer2",  "text": "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.""#;
const UNAVAILABLE: &str = r#", "rating": {"error": "Ratings service is currently unavailable"}"#;

fn expected(version: &str, r1: &str, r2: &str) -> String {
    format!(
        r#"{{"id": "0","podname": "reviews-{version}-5b5d6494f4-abcde","clustername": "null","reviews": [{R1}{r1}}},{R2}{r2}}}]}}"#
    )
}

#[tokio::test]
async fn v1_has_no_ratings() {
    let (status, body) = get_reviews(&reviews_app("v1", None), "/reviews/0", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, expected("v1", "", ""));
}

#[tokio::test]
async fn v2_has_black_five_and_four() {
    let app = reviews_app("v2", Some(ratings_app(Variant::V1, false)));
    let (status, body) = get_reviews(&app, "/reviews/0", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        expected(
            "v2",
            r#", "rating": {"stars": 5, "color": "black"}"#,
            r#", "rating": {"stars": 4, "color": "black"}"#
        )
    );
}

#[tokio::test]
async fn v3_has_red_five_and_four() {
    let app = reviews_app("v3", Some(ratings_app(Variant::V1, false)));
    let (_, body) = get_reviews(&app, "/reviews/0", &[]).await;
    assert_eq!(
        body,
        expected(
            "v3",
            r#", "rating": {"stars": 5, "color": "red"}"#,
            r#", "rating": {"stars": 4, "color": "red"}"#
        )
    );
}

#[tokio::test]
async fn ratings_down_gives_the_error_object_per_review() {
    let (status, body) = get_reviews(&reviews_app("v2", None), "/reviews/0", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, expected("v2", UNAVAILABLE, UNAVAILABLE));
}

#[tokio::test]
async fn ratings_503_gives_the_error_object_per_review() {
    let app = reviews_app("v3", Some(ratings_app(Variant::Faulty, true)));
    assert_eq!(
        get_reviews(&app, "/reviews/0", &[]).await.1,
        expected("v3", UNAVAILABLE, UNAVAILABLE)
    );
}

#[tokio::test(start_paused = true)]
async fn v3_gives_up_on_ratings_after_two_and_a_half_seconds() {
    let app = reviews_app("v3", Some(ratings_app(Variant::Delayed, true)));
    let start = tokio::time::Instant::now();
    let (status, body) = get_reviews(&app, "/reviews/0", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, expected("v3", UNAVAILABLE, UNAVAILABLE));
    assert_eq!(start.elapsed(), Duration::from_millis(2500));
}

#[tokio::test(start_paused = true)]
async fn v2_waits_up_to_ten_seconds_for_ratings() {
    let app = reviews_app("v2", Some(ratings_app(Variant::Delayed, true)));
    let start = tokio::time::Instant::now();
    let (_, body) = get_reviews(&app, "/reviews/0", &[]).await;
    assert!(
        body.contains(r#""rating": {"stars": 5, "color": "black"}"#),
        "{body}"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(7));
}

#[tokio::test]
async fn bad_ids_are_404_and_ids_are_normalised_strings() {
    let app = reviews_app("v1", None);
    for uri in ["/reviews/abc", "/reviews/2147483648", "/reviews/1.5"] {
        assert_eq!(
            get_reviews(&app, uri, &[]).await.0,
            StatusCode::NOT_FOUND,
            "{uri}"
        );
    }
    let (_, body) = get_reviews(&app, "/reviews/+007", &[]).await;
    assert!(body.starts_with(r#"{"id": "7","#), "{body}");
}

#[tokio::test]
async fn health_body_is_upstreams() {
    let (status, body) = get_reviews(&reviews_app("v1", None), "/health", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, r#"{"status": "Reviews is healthy"}"#);
}

#[tokio::test]
async fn allow_listed_headers_reach_ratings() {
    let echo = Router::new().route(
        "/ratings/{id}",
        get(|headers: HeaderMap| async move {
            let seen: Vec<String> = ["end-user", "x-request-id", "x-b3-traceid", "x-b3-parentspanid", "traceparent", "cookie", "accept", "x-private"]
                .iter()
                .map(|h| format!("{h}={}", headers.get(*h).map(|v| v.to_str().unwrap()).unwrap_or("-")))
                .collect();
            // Smuggle what arrived into the stars so the test can see it.
            assert_eq!(seen.join(" "), "end-user=jason x-request-id=r1 x-b3-traceid=0000000000000000a3ce929d0e0e4736 x-b3-parentspanid=00f067aa0ba902b6 traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 cookie=session=abc accept=application/json x-private=-");
            r#"{"id":0,"ratings":{"Reviewer1":3,"Reviewer2":2}}"#
        }),
    );
    let app = reviews_app("v2", Some(echo));
    let (_, body) = get_reviews(
        &app,
        "/reviews/0",
        &[
            ("end-user", "jason"),
            ("x-request-id", "r1"),
            ("x-b3-traceid", "0000000000000000a3ce929d0e0e4736"),
            ("x-b3-parentspanid", "00f067aa0ba902b6"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("cookie", "session=abc"),
            ("x-private", "secret"),
        ],
    )
    .await;
    assert!(
        body.contains(r#""rating": {"stars": 3, "color": "black"}"#),
        "{body}"
    );
}
