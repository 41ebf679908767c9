//! The HTML pages: the bookstore page (`/productpage`), the index and health.

use askama::Template;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::Value;

use crate::backends::{self, Backend, Fetched, outbound_headers};
use crate::{Session, State};

/// The one product of the store (upstream shows only product 0).
pub(crate) struct Product {
    pub(crate) id: u32,
    pub(crate) title: &'static str,
    pub(crate) description_html: &'static str,
}

pub(crate) const PRODUCT: Product = Product {
    id: 0,
    title: "The Comedy of Errors",
    description_html: "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his shortest and one of his most farcical comedies, with a major part of the humour coming from slapstick and mistaken identity, in addition to puns and word play.",
};

#[derive(Template)]
#[template(path = "productpage.html")]
struct ProductPage {
    user: Option<String>,
    product: ProductView,
    details: Option<BookDetails>,
    details_error: Option<String>,
    reviews: Option<ReviewsView>,
    reviews_error: Option<String>,
}

struct ProductView {
    title: String,
    description_html: String,
}

struct BookDetails {
    isbn_10: String,
    publisher: String,
    pages: String,
    kind: String,
    language: String,
}

struct ReviewsView {
    podname: String,
    clustername: Option<String>,
    reviews: Vec<Review>,
}

struct Review {
    reviewer: String,
    text: String,
    rating: Option<RatingView>,
}

struct RatingView {
    filled: u32,
    empty: u32,
    color: String,
    error: Option<String>,
}

/// `GET /productpage`: details, then reviews, one after the other, always for product 0.
/// The status is 200 whenever the page renders, even when backends failed: the errors are
/// on the page, where the tutorials look for them.
pub(crate) async fn product_page(
    AxumState(state): AxumState<State>,
    session: Session,
    headers: HeaderMap,
) -> Response {
    let headers = outbound_headers(&headers, &session);
    let id = PRODUCT.id.to_string();
    let details = backends::fetch(&state, Backend::Details, &id, &headers).await;
    backends::flood(&state, &id, &headers).await;
    let reviews = backends::fetch(&state, Backend::Reviews, &id, &headers).await;
    let (details, details_error) = split(details, book_details);
    let (reviews, reviews_error) = split(reviews, reviews_view);
    let page = ProductPage {
        user: session.display_name(),
        product: ProductView {
            title: PRODUCT.title.to_owned(),
            description_html: PRODUCT.description_html.to_owned(),
        },
        details,
        details_error,
        reviews,
        reviews_error,
    };
    render(&page)
}

fn split<T>(fetched: Fetched, view: fn(&Value) -> T) -> (Option<T>, Option<String>) {
    if fetched.ok {
        (Some(view(&fetched.body)), None)
    } else {
        (None, fetched.body["error"].as_str().map(str::to_owned))
    }
}

/// A JSON scalar as page text: strings unquoted, anything else as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn book_details(body: &Value) -> BookDetails {
    BookDetails {
        isbn_10: text(&body["ISBN-10"]),
        publisher: text(&body["publisher"]),
        pages: text(&body["pages"]),
        kind: text(&body["type"]),
        language: text(&body["language"]),
    }
}

fn reviews_view(body: &Value) -> ReviewsView {
    let clustername = text(&body["clustername"]);
    ReviewsView {
        podname: text(&body["podname"]),
        clustername: (clustername != "null" && !clustername.is_empty()).then_some(clustername),
        reviews: body["reviews"]
            .as_array()
            .map(|reviews| reviews.iter().map(review).collect())
            .unwrap_or_default(),
    }
}

fn review(body: &Value) -> Review {
    let rating = body.get("rating").map(|r| {
        let filled = r["stars"].as_u64().unwrap_or(0).min(5) as u32;
        RatingView {
            filled,
            empty: 5 - filled,
            color: text(&r["color"]),
            error: r.get("error").map(text),
        }
    });
    Review {
        reviewer: text(&body["reviewer"]),
        text: text(&body["text"]),
        rating,
    }
}

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage {
    services: Vec<ServiceRow>,
}

struct ServiceRow {
    name: String,
    endpoint: String,
    depth: usize,
}

/// `GET /` and `/index.html`: the services behind the page.
pub(crate) async fn index(AxumState(state): AxumState<State>) -> Response {
    let c = &state.config;
    let row = |name: String, endpoint: &str, depth| ServiceRow {
        name,
        endpoint: endpoint.to_owned(),
        depth,
    };
    render(&IndexPage {
        services: vec![
            row("http://productpage:9080".to_owned(), "productpage", 0),
            // Upstream's rows name each service's base URL; the endpoint column says the path.
            row(c.details_url.clone(), "details", 1),
            row(c.reviews_url.clone(), "reviews", 1),
            row(c.ratings_url.clone(), "ratings", 2),
        ],
    })
}

/// `GET /health`.
pub(crate) async fn health() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "Product page is healthy",
    )
        .into_response()
}

fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!("cannot render page: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot render page").into_response()
        }
    }
}
