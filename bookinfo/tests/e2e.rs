//! End-to-end: every workload on its own real loopback socket, calling the others through
//! mesh-lib clients, as in production.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use mesh::{Client, Endpoints, Server};

const PATIENCE: Duration = Duration::from_secs(15);
const STAR: &str = "glyphicon glyphicon-star";

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn fetch(request: Request<Body>) -> Reply {
    let response = Client::new().send(request, PATIENCE).await.unwrap();
    Reply {
        status: response.status(),
        headers: response.headers().clone(),
        body: String::from_utf8_lossy(response.body()).into_owned(),
    }
}

async fn get(url: &str) -> Reply {
    fetch(Request::get(url).body(Body::empty()).unwrap()).await
}

/// Serves `app` on a fresh loopback port for the rest of the test.
async fn serve(name: &str, app: Router) -> SocketAddr {
    let server = Server::bind(name, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.serve(app, std::future::pending()));
    addr
}

/// A loopback address nothing listens on.
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn client(table: &[(&str, SocketAddr)]) -> Client {
    let mut endpoints = Endpoints::new();
    for (name, addr) in table {
        endpoints.insert(*name, vec![*addr]);
    }
    Client::builder().endpoints(Arc::new(endpoints)).build()
}

/// Records the headers of every request `app` receives.
fn spied(app: Router) -> (Router, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = app.layer(axum::middleware::map_request(move |req: Request| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(req.headers().clone());
            req
        }
    }));
    (app, seen)
}

fn ratings_app(variant: ratings::Variant) -> Router {
    ratings::app(ratings::State::with_coin(
        ratings::Config {
            variant,
            ..Default::default()
        },
        || true,
    ))
}

fn reviews_app(version: &str, ratings: SocketAddr) -> Router {
    let config = reviews::Config::version(version, "http://ratings:9080");
    reviews::app(reviews::State {
        config,
        client: client(&[("ratings:9080", ratings)]),
    })
}

async fn productpage(details: SocketAddr, reviews: SocketAddr) -> SocketAddr {
    let client = client(&[("details:9080", details), ("reviews:9080", reviews)]);
    let state = productpage::State::new(productpage::Config::default(), client);
    serve("productpage", productpage::app(state)).await
}

async fn details() -> SocketAddr {
    serve("details", details::app(details::Config::default())).await
}

#[tokio::test]
async fn refreshing_the_page_cycles_no_black_and_red_stars() {
    let app = bookinfo::start(bookinfo::Config::ephemeral())
        .await
        .unwrap();
    let url = app.addrs.page_url();
    let mut seen = Vec::new();
    for _ in 0..6 {
        let page = get(&url).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.body.contains("<title>Simple Bookstore App</title>"));
        let stars = page.body.matches(STAR).count();
        let kind = if page.body.contains("text-red-500\"") && stars == 9 {
            "red"
        } else if page.body.contains("text-black-500") && stars == 9 {
            "black"
        } else if stars == 0 && page.body.contains("Reviews served by: reviews-v1-") {
            "none"
        } else {
            panic!("unexpected page: {stars} stars\n{}", page.body)
        };
        seen.push(kind);
    }
    assert_eq!(seen[..3], seen[3..], "the cycle repeats: {seen:?}");
    let mut first = seen[..3].to_vec();
    first.sort();
    assert_eq!(first, ["black", "none", "red"]);
    app.shutdown().await;
}

#[tokio::test]
async fn every_service_answers_the_contract_on_its_own_port() {
    let app = bookinfo::start(bookinfo::Config::ephemeral())
        .await
        .unwrap();
    let a = app.addrs;
    let d = get(&format!("http://{}/details/0", a.details)).await;
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(
        d.body,
        r#"{"id":0,"author":"William Shakespeare","year":1595,"type":"paperback","pages":200,"publisher":"PublisherA","language":"English","ISBN-10":"1234567890","ISBN-13":"123-1234567890"}"#
    );
    assert_eq!(
        get(&format!("http://{}/details/abc", a.details))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    let r = get(&format!("http://{}/ratings/0", a.ratings)).await;
    assert_eq!(
        r.body,
        r#"{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#
    );
    assert_eq!(
        get(&format!("http://{}/ratings/abc", a.ratings))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    let v1 = get(&format!("http://{}/reviews/0", a.reviews[0]))
        .await
        .body;
    assert!(!v1.contains("rating"), "{v1}");
    let v2 = get(&format!("http://{}/reviews/0", a.reviews[1]))
        .await
        .body;
    assert!(
        v2.contains(r#""rating": {"stars": 5, "color": "black"}"#)
            && v2.contains(r#""rating": {"stars": 4, "color": "black"}"#),
        "{v2}"
    );
    let v3 = get(&format!("http://{}/reviews/0", a.reviews[2]))
        .await
        .body;
    assert!(
        v3.contains(r#""rating": {"stars": 5, "color": "red"}"#),
        "{v3}"
    );
    assert_eq!(
        get(&format!("http://{}/reviews/abc", a.reviews[0]))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    for (addr, body) in [
        (a.details, r#"{"status":"Details is healthy"}"#),
        (a.ratings, r#"{"status":"Ratings is healthy"}"#),
        (a.reviews[1], r#"{"status": "Reviews is healthy"}"#),
        (a.productpage, "Product page is healthy"),
    ] {
        assert_eq!(get(&format!("http://{addr}/health")).await.body, body);
    }
    app.shutdown().await;
}

#[tokio::test]
async fn jason_logs_in_and_end_user_and_trace_headers_reach_reviews_and_ratings() {
    let (ratings, ratings_seen) = spied(ratings_app(ratings::Variant::V1));
    let ratings = serve("ratings", ratings).await;
    let (reviews, reviews_seen) = spied(reviews_app("v2", ratings));
    let reviews = serve("reviews", reviews).await;
    let page = productpage(details().await, reviews).await;

    let login = fetch(
        Request::post(format!("http://{page}/login"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("username=jason&passwd=password"))
            .unwrap(),
    )
    .await;
    assert_eq!(login.status, StatusCode::FOUND);
    assert_eq!(login.headers[header::LOCATION], "/productpage");
    let cookie = login.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();

    let trace = [
        ("x-request-id", "9f2a7c3e-1b1d-4c8e-9b55-0d8f6f3a2b11"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-sampled", "1"),
        (
            "sw8",
            "1-MWYyZDRiZjQ3YmY3MTFlYWI3OTRhY2RlNDgwMDExMjI=-MQ==-0-c2VydmljZQ==-aW5zdGFuY2U=-L2FwaS92MS91c2VyL2lk-ZXhhbXBsZS5jb206ODA4MA==",
        ),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
    ];
    let mut req = Request::get(format!("http://{page}/productpage"))
        .header(header::COOKIE, &cookie)
        .header("end-user", "mallory");
    for (k, v) in trace {
        req = req.header(k, v);
    }
    let reply = fetch(req.body(Body::empty()).unwrap()).await;
    assert!(reply.body.contains("jason") && reply.body.contains("Sign out"));
    assert_eq!(reply.body.matches(STAR).count(), 9);

    for (who, seen) in [("reviews", &reviews_seen), ("ratings", &ratings_seen)] {
        let seen = seen.lock().unwrap();
        let last = seen
            .last()
            .unwrap_or_else(|| panic!("{who} saw no request"));
        assert_eq!(last["end-user"], "jason", "{who}");
        assert_eq!(
            last.get_all("end-user").iter().count(),
            1,
            "{who}: the client's end-user is not forwarded"
        );
        for (k, v) in trace {
            assert_eq!(last[k], HeaderValue::from_static(v), "{who}: {k}");
        }
        assert!(
            last[header::COOKIE].to_str().unwrap().contains("session="),
            "{who}"
        );
    }

    let logout = fetch(
        Request::get(format!("http://{page}/logout"))
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(logout.status, StatusCode::FOUND);
    let anonymous = get(&format!("http://{page}/productpage")).await;
    assert!(anonymous.body.contains("Sign in"));
    assert!(
        reviews_seen
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .get("end-user")
            .is_none()
    );
}

#[tokio::test]
async fn ratings_down_shows_the_ratings_error_on_each_review() {
    let reviews = serve("reviews", reviews_app("v2", closed_port())).await;
    let page = productpage(details().await, reviews).await;
    let html = get(&format!("http://{page}/productpage")).await.body;
    assert_eq!(
        html.matches("Ratings service is currently unavailable")
            .count(),
        2
    );
    assert_eq!(html.matches(STAR).count(), 0);
}

#[tokio::test]
async fn reviews_down_shows_the_reviews_error() {
    let page = productpage(details().await, closed_port()).await;
    let reply = get(&format!("http://{page}/productpage")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.contains("Error fetching product reviews"));
    assert!(
        reply
            .body
            .contains("Sorry, product reviews are currently unavailable for this book.")
    );
    assert!(reply.body.contains("Book Details"));
}

#[tokio::test]
async fn details_down_shows_the_details_error() {
    let ratings = serve("ratings", ratings_app(ratings::Variant::V1)).await;
    let reviews = serve("reviews", reviews_app("v3", ratings)).await;
    let page = productpage(closed_port(), reviews).await;
    let reply = get(&format!("http://{page}/productpage")).await;
    assert!(reply.body.contains("Error fetching product details"));
    assert!(
        reply
            .body
            .contains("Sorry, product details are currently unavailable for this book.")
    );
    assert_eq!(reply.body.matches(STAR).count(), 9);
}

#[tokio::test]
async fn reviews_slower_than_six_seconds_give_the_reviews_error_after_six_seconds() {
    // ratings v-delayed (always delaying here) holds 7 s; reviews v2 waits up to 10 s;
    // productpage tries reviews twice for 3 s each: the fault-injection task's outcome.
    let ratings = serve("ratings", ratings_app(ratings::Variant::Delayed)).await;
    let reviews = serve("reviews", reviews_app("v2", ratings)).await;
    let page = productpage(details().await, reviews).await;
    let start = Instant::now();
    let reply = get(&format!("http://{page}/productpage")).await;
    let took = start.elapsed();
    assert!(
        reply
            .body
            .contains("Sorry, product reviews are currently unavailable for this book.")
    );
    assert!(
        took >= Duration::from_secs(6),
        "gave up after {took:?}, before two 3 s attempts"
    );
    assert!(
        took < Duration::from_secs(7),
        "took {took:?}: waited for the 7 s ratings delay"
    );
}

#[tokio::test]
async fn a_taken_port_is_a_clear_error_and_nothing_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = bookinfo::Config {
        productpage_port: taken.local_addr().unwrap().port(),
        ..bookinfo::Config::ephemeral()
    };
    let err = bookinfo::start(config).await.unwrap_err().to_string();
    assert!(
        err.starts_with("productpage cannot listen on 127.0.0.1:"),
        "{err}"
    );
    assert!(err.contains("another process uses this port"), "{err}");
}

#[tokio::test]
async fn shutdown_stops_every_listener() {
    let app = bookinfo::start(bookinfo::Config::ephemeral())
        .await
        .unwrap();
    let addrs = app.addrs;
    assert_eq!(get(&addrs.page_url()).await.status, StatusCode::OK);
    tokio::time::timeout(PATIENCE, app.shutdown())
        .await
        .expect("shutdown finishes");
    for addr in [
        addrs.productpage,
        addrs.details,
        addrs.ratings,
        addrs.reviews[0],
    ] {
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "{addr} still accepts"
        );
    }
}
