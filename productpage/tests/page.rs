//! productpage against the real details, reviews and ratings, all in process. Timing tests
//! run under tokio's paused clock, so "7 s" takes no wall time and is exact.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use ratings::Variant;
use tower::ServiceExt;

/// Which backends exist, and how they behave.
struct Mesh {
    details: bool,
    reviews: Option<&'static str>,
    ratings: Option<Variant>,
}

impl Mesh {
    fn healthy(reviews: &'static str) -> Self {
        Self {
            details: true,
            reviews: Some(reviews),
            ratings: Some(Variant::V1),
        }
    }

    fn productpage(self) -> Router {
        let mut backends: Vec<(String, Router)> = Vec::new();
        if let Some(variant) = self.ratings {
            // The variants' coin always lands on "fault": delayed always delays.
            let state = ratings::State::with_coin(
                ratings::Config {
                    variant,
                    ..Default::default()
                },
                || true,
            );
            backends.push(("ratings:9080".into(), ratings::app(state)));
        }
        let client = mesh::Client::in_process(backends.clone());
        if let Some(version) = self.reviews {
            let mut config = reviews::Config::version(version, "http://ratings:9080");
            config.podname = format!("reviews-{version}-7f9c8d-x2b4q");
            backends.push((
                "reviews:9080".into(),
                reviews::app(reviews::State { config, client }),
            ));
        }
        if self.details {
            backends.push((
                "details:9080".into(),
                details::app(details::Config::default()),
            ));
        }
        let config = productpage::Config::default();
        productpage::app(productpage::State::new(
            config,
            mesh::Client::in_process(backends),
        ))
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn get(app: &Router, uri: &str) -> Reply {
    send(app, Request::get(uri).body(Body::empty()).unwrap()).await
}

const STAR: &str = "glyphicon glyphicon-star";
const RATINGS_ERROR: &str = "Ratings service is currently unavailable";

#[tokio::test]
async fn v1_page_has_the_markers_and_no_stars() {
    let page = get(&Mesh::healthy("v1").productpage(), "/productpage?u=normal").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.body;
    assert!(html.contains("<title>Simple Bookstore App</title>"));
    assert!(html.contains("Book Details") && html.contains("Book Reviews"));
    assert!(html.contains("William Shakespeare"));
    assert!(html.contains("PublisherA") && html.contains("1234567890"));
    assert!(html.contains("id=\"sign-in-button\"") && html.contains("Sign in"));
    assert!(!html.contains("Sign out"));
    assert_eq!(html.matches(STAR).count(), 0);
    assert_eq!(
        html.matches("Reviews served by: reviews-v1-7f9c8d-x2b4q")
            .count(),
        2
    );
    assert!(html.contains("An extremely entertaining play by Shakespeare."));
    assert!(!html.contains("on cluster"));
}

#[tokio::test]
async fn v2_page_has_nine_black_stars() {
    let html = get(&Mesh::healthy("v2").productpage(), "/productpage")
        .await
        .body;
    assert_eq!(html.matches(STAR).count(), 9);
    assert_eq!(html.matches("text-black-500").count(), 2);
    assert_eq!(html.matches("text-red-500").count(), 0);
    assert_eq!(html.matches("Reviews served by: reviews-v2-").count(), 2);
}

#[tokio::test]
async fn v3_page_has_nine_red_stars() {
    let html = get(&Mesh::healthy("v3").productpage(), "/productpage")
        .await
        .body;
    assert_eq!(html.matches(STAR).count(), 9);
    assert_eq!(html.matches("flex gap-x-1 text-red-500").count(), 2);
    assert_eq!(html.matches("Reviews served by: reviews-v3-").count(), 2);
}

#[tokio::test]
async fn ratings_down_shows_the_ratings_error_on_each_review() {
    let mesh = Mesh {
        ratings: None,
        ..Mesh::healthy("v2")
    };
    let html = get(&mesh.productpage(), "/productpage").await.body;
    assert_eq!(html.matches(RATINGS_ERROR).count(), 2);
    assert_eq!(html.matches(STAR).count(), 0);
    assert!(html.contains("Book Reviews"));
}

#[tokio::test]
async fn reviews_down_shows_the_reviews_error() {
    let mesh = Mesh {
        reviews: None,
        ..Mesh::healthy("v1")
    };
    let page = get(&mesh.productpage(), "/productpage").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Error fetching product reviews"));
    assert!(
        page.body
            .contains("Sorry, product reviews are currently unavailable for this book.")
    );
    assert!(!page.body.contains("Book Reviews"));
    assert!(page.body.contains("Book Details"));
}

#[tokio::test]
async fn details_down_shows_the_details_error() {
    let mesh = Mesh {
        details: false,
        ..Mesh::healthy("v1")
    };
    let page = get(&mesh.productpage(), "/productpage").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Error fetching product details"));
    assert!(
        page.body
            .contains("Sorry, product details are currently unavailable for this book.")
    );
    assert!(!page.body.contains("Book Details"));
    assert!(
        page.body.contains("William Shakespeare"),
        "the description still names the author"
    );
    assert!(page.body.contains("Book Reviews"));
}

#[tokio::test(start_paused = true)]
async fn reviews_slower_than_six_seconds_fail_after_two_three_second_attempts() {
    // The fault-injection task: ratings delayed 7 s, reviews v2 waits up to 10 s, productpage
    // gives up on each reviews attempt after 3 s and tries twice.
    let mesh = Mesh {
        ratings: Some(Variant::Delayed),
        ..Mesh::healthy("v2")
    };
    let app = mesh.productpage();
    let start = tokio::time::Instant::now();
    let page = get(&app, "/productpage").await;
    assert_eq!(start.elapsed(), Duration::from_secs(6));
    assert!(
        page.body
            .contains("Sorry, product reviews are currently unavailable for this book.")
    );
    let metrics = get(&app, "/metrics").await.body;
    assert!(
        metrics
            .contains(r#"request_result_total{destination_app="reviews",response_code="500"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(start_paused = true)]
async fn reviews_v3_gives_up_on_slow_ratings_before_productpage_gives_up_on_it() {
    let mesh = Mesh {
        ratings: Some(Variant::Delayed),
        ..Mesh::healthy("v3")
    };
    let start = tokio::time::Instant::now();
    let page = get(&mesh.productpage(), "/productpage").await;
    assert_eq!(start.elapsed(), Duration::from_millis(2500));
    assert_eq!(page.body.matches(RATINGS_ERROR).count(), 2);
    assert!(page.body.contains("Book Reviews"));
}

async fn login(app: &Router, body: &str, referer: Option<&str>) -> Reply {
    let mut req =
        Request::post("/login").header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(r) = referer {
        req = req.header(header::REFERER, r);
    }
    send(app, req.body(Body::from(body.to_owned())).unwrap()).await
}

fn session_cookie(reply: &Reply) -> String {
    let set = reply.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(set.contains("HttpOnly") && set.contains("Path=/"), "{set}");
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn login_sets_a_session_and_the_page_greets_the_user() {
    let app = Mesh::healthy("v1").productpage();
    let reply = login(&app, "username=jason&passwd=password", None).await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert_eq!(reply.headers[header::LOCATION], "/productpage");
    let cookie = session_cookie(&reply);
    assert!(cookie.starts_with("session="));

    let page = send(
        &app,
        Request::get("/productpage")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(page.body.contains("jason"));
    assert!(page.body.contains("Sign out"));
    assert!(!page.body.contains("id=\"sign-in-button\""));
}

#[tokio::test]
async fn login_redirects_to_the_referer_and_reads_the_query_too() {
    let app = Mesh::healthy("v1").productpage();
    let reply = send(
        &app,
        Request::post("/login?username=bob")
            .header(header::REFERER, "http://shop/productpage?u=test")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert_eq!(
        reply.headers[header::LOCATION],
        "http://shop/productpage?u=test"
    );
    let cookie = session_cookie(&reply);
    let page = send(
        &app,
        Request::get("/productpage")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(page.body.contains("bob"));
}

#[tokio::test]
async fn empty_or_missing_user_name_stays_logged_out() {
    let app = Mesh::healthy("v1").productpage();
    for form in ["username=&passwd=x", "passwd=x"] {
        let cookie = session_cookie(&login(&app, form, None).await);
        let page = send(
            &app,
            Request::get("/productpage")
                .header(header::COOKIE, &cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert!(page.body.contains("id=\"sign-in-button\""), "{form}");
        assert!(!page.body.contains("Sign out"), "{form}");
    }
}

#[tokio::test]
async fn a_forged_cookie_is_ignored() {
    let app = Mesh::healthy("v1").productpage();
    let page = send(
        &app,
        Request::get("/productpage")
            .header(header::COOKIE, "session=eyJ1c2VyIjoiYWRtaW4ifQ.AAAA")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(!page.body.contains("admin"));
    assert!(page.body.contains("Sign in"));
}

#[tokio::test]
async fn logout_clears_the_session() {
    let app = Mesh::healthy("v1").productpage();
    let cookie = session_cookie(&login(&app, "username=jason", None).await);
    let reply = send(
        &app,
        Request::get("/logout")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert_eq!(reply.headers[header::LOCATION], "/productpage");
    let set = reply.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(
        set.starts_with("session=;") && set.contains("Max-Age=0"),
        "{set}"
    );
}

/// Flask's `session.pop` changes nothing when there is no session, so no `Set-Cookie`.
#[tokio::test]
async fn logout_without_a_session_sets_no_cookie() {
    let app = Mesh::healthy("v1").productpage();
    for cookie in [
        None,
        Some("session=eyJ1c2VyIjoiYWRtaW4ifQ.AAAA"),
        Some("other=1"),
    ] {
        let mut req = Request::get("/logout");
        if let Some(cookie) = cookie {
            req = req.header(header::COOKIE, cookie);
        }
        let reply = send(&app, req.body(Body::empty()).unwrap()).await;
        assert_eq!(reply.status, StatusCode::FOUND, "{cookie:?}");
        assert_eq!(reply.headers.get(header::SET_COOKIE), None, "{cookie:?}");
    }
}

/// Werkzeug's redirect page, as Flask 3.1 writes it for `redirect(request.referrer)`.
fn werkzeug_redirect_page(escaped_location: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=en>\n<title>Redirecting...</title>\n<h1>Redirecting...</h1>\n\
         <p>You should be redirected automatically to the target URL: \
         <a href=\"{escaped_location}\">{escaped_location}</a>. If not, click the link.\n"
    )
}

#[tokio::test]
async fn login_and_logout_redirect_with_werkzeugs_page() {
    let app = Mesh::healthy("v1").productpage();
    let referer = r#"http://shop/productpage?u=test&x="a""#;
    let reply = login(&app, "username=jason", Some(referer)).await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert_eq!(reply.headers[header::LOCATION], referer);
    assert_eq!(
        reply.headers[header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    assert_eq!(
        reply.body,
        werkzeug_redirect_page("http://shop/productpage?u=test&amp;x=&#34;a&#34;")
    );
    let reply = get(&app, "/logout").await;
    assert_eq!(reply.body, werkzeug_redirect_page("/productpage"));
}

#[tokio::test]
async fn unknown_paths_get_flasks_404_page() {
    let app = Mesh::healthy("v1").productpage();
    let page = "<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n\
                <p>The requested URL was not found on the server. If you entered the URL \
                manually please check your spelling and try again.</p>\n";
    for path in [
        "/nope",
        "/static/nope.js",
        "/productpage/x",
        "/api/v1/products/0/x",
    ] {
        let reply = get(&app, path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            reply.headers[header::CONTENT_TYPE],
            "text/html; charset=utf-8",
            "{path}"
        );
        assert_eq!(reply.body, page, "{path}");
    }
    assert_eq!(
        request(&app, http::Method::OPTIONS, "/nope").await.body,
        page
    );
}

#[tokio::test]
async fn get_login_is_405() {
    assert_eq!(
        get(&Mesh::healthy("v1").productpage(), "/login")
            .await
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn api_products_list() {
    let reply = get(&Mesh::healthy("v1").productpage(), "/api/v1/products").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[header::CONTENT_TYPE], "application/json");
    assert!(reply.body.starts_with(r#"[{"id": 0, "title": "The Comedy of Errors", "descriptionHtml": "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: The Comedy of Errors is one of <b>William Shakespeare's</b> early plays."#), "{}", reply.body);
}

#[tokio::test]
async fn api_proxies_backends_in_python_json_with_their_status() {
    let app = Mesh::healthy("v2").productpage();
    let details = get(&app, "/api/v1/products/0").await;
    assert_eq!(details.status, StatusCode::OK);
    assert_eq!(
        details.body,
        r#"{"id": 0, "author": "William Shakespeare", "year": 1595, "type": "paperback", "pages": 200, "publisher": "PublisherA", "language": "English", "ISBN-10": "1234567890", "ISBN-13": "123-1234567890"}"#
    );
    let ratings = get(&app, "/api/v1/products/0/ratings").await;
    assert_eq!(
        ratings.body,
        r#"{"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}"#
    );
    let reviews = get(&app, "/api/v1/products/0/reviews").await;
    assert_eq!(reviews.status, StatusCode::OK);
    assert!(reviews.body.starts_with(r#"{"id": "0", "podname": "reviews-v2-7f9c8d-x2b4q", "clustername": "null", "reviews": [{"reviewer": "Reviewer1", "#), "{}", reviews.body);
    assert!(
        reviews
            .body
            .contains(r#""rating": {"stars": 5, "color": "black"}"#)
    );
}

#[tokio::test]
async fn api_bad_ids_keep_each_backends_status() {
    let app = Mesh::healthy("v1").productpage();
    let d = get(&app, "/api/v1/products/abc").await;
    assert_eq!(
        (d.status, d.body.as_str()),
        (
            StatusCode::BAD_REQUEST,
            r#"{"error": "Sorry, product details are currently unavailable for this book."}"#
        )
    );
    let r = get(&app, "/api/v1/products/abc/reviews").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            StatusCode::NOT_FOUND,
            r#"{"error": "Sorry, product reviews are currently unavailable for this book."}"#
        )
    );
    let r = get(&app, "/api/v1/products/abc/ratings").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            StatusCode::BAD_REQUEST,
            r#"{"error": "Sorry, product ratings are currently unavailable for this book."}"#
        )
    );
}

#[tokio::test]
async fn api_backend_down_is_500() {
    let mesh = Mesh {
        details: false,
        ratings: None,
        ..Mesh::healthy("v1")
    };
    let app = mesh.productpage();
    assert_eq!(
        get(&app, "/api/v1/products/0").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        get(&app, "/api/v1/products/0/ratings").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

#[tokio::test]
async fn request_result_counts_results_not_attempts() {
    let mesh = Mesh {
        reviews: None,
        ..Mesh::healthy("v1")
    };
    let app = mesh.productpage();
    get(&app, "/productpage").await;
    get(&app, "/productpage").await;
    let metrics = get(&app, "/metrics").await.body;
    assert!(
        metrics
            .contains(r#"request_result_total{destination_app="details",response_code="200"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"request_result_total{destination_app="reviews",response_code="500"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn health_index_and_static_assets() {
    let app = Mesh::healthy("v1").productpage();
    let health = get(&app, "/health").await;
    assert_eq!(
        (health.status, health.body.as_str()),
        (StatusCode::OK, "Product page is healthy")
    );
    let index = get(&app, "/").await;
    assert!(index.body.contains(
        "Hello! This is a simple bookstore application consisting of three services as shown below"
    ));
    assert!(
        index.body.contains("/productpage?u=normal") && index.body.contains("/productpage?u=test")
    );
    assert!(!index.body.contains("<title>"));
    // Each service's base URL, as upstream's table shows it, with no path appended.
    for url in [
        "http://details:9080",
        "http://reviews:9080",
        "http://ratings:9080",
    ] {
        assert!(index.body.contains(&format!(">{url}</a>")), "{url}");
    }
    assert!(!index.body.contains("9080/"), "{}", index.body);
    assert_eq!(get(&app, "/index.html").await.status, StatusCode::OK);
    let css = get(&app, "/static/css/bookinfo.css").await;
    assert_eq!(css.headers[header::CONTENT_TYPE], "text/css; charset=utf-8");
    assert!(css.body.contains(".text-red-500"));
    let png = get(&app, "/static/img/izzy.png").await;
    assert_eq!(png.headers[header::CONTENT_TYPE], "image/png");
    assert_eq!(
        get(&app, "/static/nope.js").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_page_loads_nothing_from_the_internet() {
    let html = get(&Mesh::healthy("v3").productpage(), "/productpage")
        .await
        .body;
    for tag in html
        .split('<')
        .filter(|t| t.starts_with("script") || t.starts_with("link") || t.starts_with("img"))
    {
        assert!(
            !tag.contains("src=\"http")
                && !tag.contains("href=\"http")
                && !tag.contains("src=\"//")
                && !tag.contains("href=\"//"),
            "{tag}"
        );
    }
}

/// productpage with `FLOOD_FACTOR=3` in front of a reviews that answers `status`, and the
/// number of calls reviews got for one page.
async fn flooded_page(status: StatusCode) -> (usize, String) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let reviews = reviews::app(reviews::State {
        config: reviews::Config::version("v1", "http://ratings:9080"),
        client: mesh::Client::in_process([]),
    })
    .layer(axum::middleware::map_response(
        move |mut response: axum::response::Response| {
            counter.fetch_add(1, Ordering::SeqCst);
            *response.status_mut() = status;
            async move { response }
        },
    ));
    let client = mesh::Client::in_process([
        ("reviews:9080".to_owned(), reviews),
        (
            "details:9080".to_owned(),
            details::app(details::Config::default()),
        ),
    ]);
    let config = productpage::Config::from_env(&[("FLOOD_FACTOR", "3")]).unwrap();
    let app = productpage::app(productpage::State::new(config, client));
    assert_eq!(get(&app, "/productpage").await.status, StatusCode::OK);
    let metrics = get(&app, "/metrics").await.body;
    (calls.load(Ordering::SeqCst), metrics)
}

/// Upstream's flood calls are whole `getProductReviews` calls: two attempts each when reviews
/// fails, and each result counted in `request_result`.
#[tokio::test]
async fn flood_factor_makes_that_many_extra_reviews_fetches_per_page() {
    let (calls, metrics) = flooded_page(StatusCode::OK).await;
    assert_eq!(calls, 4, "3 flood calls and the page's own");
    assert!(
        metrics
            .contains(r#"request_result_total{destination_app="reviews",response_code="200"} 4"#),
        "{metrics}"
    );
    let (calls, metrics) = flooded_page(StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(calls, 8, "(3 flood calls + the page's own) x 2 attempts");
    assert!(
        metrics
            .contains(r#"request_result_total{destination_app="reviews",response_code="503"} 4"#),
        "{metrics}"
    );
}

/// The key productpage signed with whenever `SESSION_SECRET` was unset. It is public in the
/// repository's history, so a cookie signed with it is exactly what an attacker would send.
const OLD_PUBLIC_SECRET: &str = "bookinfo-productpage-session-v1";

/// A `session` cookie for `user` built independently of productpage, in its wire format:
/// base64url JSON, `.`, base64url HMAC-SHA256 of the first part.
fn signed_cookie(user: &str, key: &[u8]) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use hmac::{Hmac, Mac};
    let payload = URL_SAFE_NO_PAD.encode(serde_json::json!({ "user": user }).to_string());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(payload.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("session={payload}.{signature}")
}

/// productpage with `secret`, over details and reviews v1, and the `end-user` header of every
/// call reviews received (`None` where it was absent).
fn recording_productpage(
    secret: productpage::SessionSecret,
) -> (
    Router,
    std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
) {
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = seen.clone();
    let reviews = reviews::app(reviews::State {
        config: reviews::Config::version("v1", "http://ratings:9080"),
        client: mesh::Client::in_process([]),
    })
    .layer(axum::middleware::map_request(
        move |req: axum::extract::Request| {
            let recorder = recorder.clone();
            async move {
                let end_user = req
                    .headers()
                    .get("end-user")
                    .map(|v| v.to_str().unwrap().to_owned());
                recorder.lock().unwrap().push(end_user);
                req
            }
        },
    ));
    let client = mesh::Client::in_process([
        ("reviews:9080".to_owned(), reviews),
        (
            "details:9080".to_owned(),
            details::app(details::Config::default()),
        ),
    ]);
    let config = productpage::Config {
        session_secret: secret,
        ..productpage::Config::default()
    };
    (
        productpage::app(productpage::State::new(config, client)),
        seen,
    )
}

async fn page_with_cookie(app: &Router, cookie: &str) -> Reply {
    send(
        app,
        Request::get("/productpage")
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn a_cookie_signed_with_the_old_public_secret_is_refused() {
    let (app, seen) = recording_productpage(productpage::SessionSecret::generate().unwrap());
    let cookie = signed_cookie("jason", OLD_PUBLIC_SECRET.as_bytes());
    let page = page_with_cookie(&app, &cookie).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("id=\"sign-in-button\""));
    assert!(!page.body.contains("jason") && !page.body.contains("Sign out"));
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty(), "reviews was called");
    assert!(seen.iter().all(Option::is_none), "end-user sent: {seen:?}");
}

/// The control for the test above: the hand-made cookie is in productpage's format, so it is
/// refused for its key and nothing else.
#[tokio::test]
async fn a_cookie_signed_with_the_configured_secret_is_accepted() {
    let secret = productpage::SessionSecret::new(OLD_PUBLIC_SECRET).unwrap();
    let (app, seen) = recording_productpage(secret);
    let page = page_with_cookie(&app, &signed_cookie("jason", OLD_PUBLIC_SECRET.as_bytes())).await;
    assert!(page.body.contains("jason") && page.body.contains("Sign out"));
    assert!(!page.body.contains("id=\"sign-in-button\""));
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty(), "reviews was called");
    assert!(
        seen.iter().all(|u| u.as_deref() == Some("jason")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_session_from_one_generated_secret_is_not_valid_under_another() {
    let (first, _) = recording_productpage(productpage::SessionSecret::generate().unwrap());
    let (restarted, _) = recording_productpage(productpage::SessionSecret::generate().unwrap());
    let cookie = session_cookie(&login(&first, "username=jason", None).await);
    assert!(
        page_with_cookie(&first, &cookie)
            .await
            .body
            .contains("Sign out")
    );
    let page = page_with_cookie(&restarted, &cookie).await;
    assert!(page.body.contains("id=\"sign-in-button\""));
    assert!(!page.body.contains("jason"));
}

async fn request(app: &Router, method: http::Method, uri: &str) -> Reply {
    send(
        app,
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "shop:9080")
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

/// Flask answers OPTIONS on every route itself, and names OPTIONS in a 405's `Allow`.
#[tokio::test]
async fn options_is_answered_as_flask_answers_it() {
    let app = Mesh::healthy("v1").productpage();
    for (path, allow) in [
        ("/productpage", "OPTIONS, GET, HEAD"),
        ("/api/v1/products/0/ratings", "OPTIONS, GET, HEAD"),
        ("/static/img/izzy.png", "OPTIONS, GET, HEAD"),
        ("/login", "OPTIONS, POST"),
    ] {
        let reply = request(&app, http::Method::OPTIONS, path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(reply.headers[header::ALLOW], allow, "{path}");
        assert_eq!(reply.body, "", "{path}");
    }
    let reply = request(&app, http::Method::PUT, "/productpage").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    let allow = reply.headers[header::ALLOW].to_str().unwrap();
    assert!(
        allow.contains("OPTIONS") && allow.contains("GET"),
        "{allow}"
    );
    assert_eq!(
        request(&app, http::Method::OPTIONS, "/nope").await.status,
        StatusCode::NOT_FOUND
    );
}

/// An id beyond 64 bits comes back digit for digit (Python's and Ruby's integers are
/// unbounded), not as a float.
#[tokio::test]
async fn ids_beyond_64_bits_stay_integers() {
    let app = Mesh::healthy("v1").productpage();
    let reply = get(&app, "/api/v1/products/99999999999999999999").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply
            .body
            .starts_with(r#"{"id": 99999999999999999999, "author": "William Shakespeare""#),
        "{}",
        reply.body
    );
}

/// gunicorn decodes the path before Flask routes it, and Werkzeug merges slashes.
#[tokio::test]
async fn paths_are_decoded_and_merged_as_gunicorn_and_werkzeug_do() {
    let app = Mesh::healthy("v1").productpage();
    // `%2F` is a slash: this is the reviews route for product 0.
    let reviews = get(&app, "/api/v1/products/0%2Freviews").await;
    assert_eq!(reviews.status, StatusCode::OK);
    assert!(reviews.body.contains(r#""reviews": ["#), "{}", reviews.body);
    // `%3F` is part of the path, not a query: no route has it.
    assert_eq!(
        get(&app, "/productpage%3Fu=normal").await.status,
        StatusCode::NOT_FOUND
    );
    // Escaped letters are letters; leading slashes merge silently.
    for path in ["/%70roductpage", "//productpage", "///productpage"] {
        let page = get(&app, path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert!(page.body.contains("The Comedy of Errors"), "{path}");
    }
    // An id is decoded, then quoted again as `requests` does: " 7" reaches details as `%207`,
    // which WEBrick decodes and Ruby's Integer() reads as 7.
    let details = get(&app, "/api/v1/products/%207").await;
    assert!(
        details.body.starts_with(r#"{"id": 7, "#),
        "{}",
        details.body
    );
    // Slashes inside the path: 308 to the merged path, query kept.
    let reply = request(&app, http::Method::GET, "/api//v1/products?x=1&y=%20").await;
    assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        reply.headers[header::LOCATION],
        "http://shop:9080/api/v1/products?x=1&y=%20"
    );
    assert_eq!(
        reply.body,
        werkzeug_redirect_page("http://shop:9080/api/v1/products?x=1&amp;y=%20")
    );
    // ... but only when the merged path is a route.
    assert_eq!(get(&app, "/nope//x").await.status, StatusCode::NOT_FOUND);
}

/// Flask's `request.values` looks in the query string before the form.
#[tokio::test]
async fn login_reads_the_query_before_the_form() {
    let app = Mesh::healthy("v1").productpage();
    let reply = send(
        &app,
        Request::post("/login?username=fromquery&username=second")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("username=fromform&passwd=x"))
            .unwrap(),
    )
    .await;
    let page = page_with_cookie(&app, &session_cookie(&reply)).await;
    assert!(page.body.contains("fromquery"), "{}", page.body);
    assert!(!page.body.contains("fromform") && !page.body.contains("second"));
}

/// Upstream's stylesheet path answers, with a stylesheet.
#[tokio::test]
async fn the_tailwind_path_serves_the_stylesheet() {
    let css = get(
        &Mesh::healthy("v1").productpage(),
        "/static/tailwind/tailwind.css",
    )
    .await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(
        css.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    assert!(css.body.contains('{') && !css.body.contains("function"));
}
