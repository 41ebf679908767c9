//! `/static/...`: the page's stylesheet and image, compiled into the binary so the page works
//! offline and from a `FROM scratch` image.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

const STYLESHEET: &[u8] = include_bytes!("../static/css/bookinfo.css");

const ASSETS: &[(&str, &str, &[u8])] = &[
    ("css/bookinfo.css", "text/css; charset=utf-8", STYLESHEET),
    // Upstream's path for its stylesheet (there, Tailwind's Play CDN script); here the same
    // stylesheet as above, so links and scripts written against upstream get one.
    (
        "tailwind/tailwind.css",
        "text/css; charset=utf-8",
        STYLESHEET,
    ),
    (
        "img/izzy.png",
        "image/png",
        include_bytes!("../static/img/izzy.png"),
    ),
];

pub(crate) async fn serve(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == path) {
        Some((_, content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            *bytes,
        )
            .into_response(),
        None => crate::werkzeug::not_found(),
    }
}
