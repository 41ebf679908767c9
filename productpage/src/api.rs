//! The JSON API: `/api/v1/products[/<id>[/reviews|/ratings]]`. Backend answers are passed
//! through re-serialised in Python's style, with the backend's status.

use axum::extract::{OriginalUri, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::backends::{self, Backend, outbound_headers};
use crate::pages::PRODUCT;
use crate::{Session, State, pyjson};

pub(crate) async fn products() -> Response {
    let list = serde_json::json!([{
        "id": PRODUCT.id,
        "title": PRODUCT.title,
        "descriptionHtml": PRODUCT.description_html,
    }]);
    json(StatusCode::OK, &list)
}

pub(crate) async fn product_details(
    state: AxumState<State>,
    session: Session,
    uri: OriginalUri,
    headers: HeaderMap,
) -> Response {
    proxy(Backend::Details, state, session, uri, headers).await
}

pub(crate) async fn product_reviews(
    state: AxumState<State>,
    session: Session,
    uri: OriginalUri,
    headers: HeaderMap,
) -> Response {
    proxy(Backend::Reviews, state, session, uri, headers).await
}

pub(crate) async fn product_ratings(
    state: AxumState<State>,
    session: Session,
    uri: OriginalUri,
    headers: HeaderMap,
) -> Response {
    proxy(Backend::Ratings, state, session, uri, headers).await
}

/// Calls `backend` for the product in the path and answers with its JSON and status.
async fn proxy(
    backend: Backend,
    AxumState(state): AxumState<State>,
    session: Session,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Response {
    let headers = outbound_headers(&headers, &session);
    let fetched = backends::fetch(&state, backend, raw_id(uri.path()), &headers).await;
    json(fetched.status, &fetched.body)
}

/// The `<id>` segment exactly as received (still percent-encoded), passed through to the
/// backend as upstream does.
fn raw_id(path: &str) -> &str {
    path.split('/').nth(4).unwrap_or("")
}

fn json(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        pyjson::to_string(value),
    )
        .into_response()
}
