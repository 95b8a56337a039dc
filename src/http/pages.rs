//! The pages the binary serves itself: the table at `/` (and `/join`,
//! where share links land) and the operators' console at `/console`, with
//! their scripts and styles under `/assets/`.
//!
//! The script and stylesheet are built from `clients/web` (Preact, bundled
//! by esbuild) and committed in `clients/web/dist`; they, the HTML page and
//! the icon are embedded here at compile time, so
//! a plain `cargo build` makes a binary with the page: no second server,
//! no CDN. Every page answer carries a strict Content-Security-Policy (no
//! inline script or style, nothing from another origin but the media
//! store's signed links when storage presigns them), `no-referrer`, and
//! refuses framing (the table may be framed by the apps named in
//! `QB_TABLE_FRAME_ANCESTORS`; the console never is). An invite token in a share link travels in the URL
//! fragment (`/join#<token>`), which browsers never send to a server, so it
//! cannot reach a log or a Referer.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest as _, Sha256};

use super::AppState;
use super::error::Error;
use super::extract::Path;

// The page and its icon need no build; the scripts and the stylesheets are
// esbuild's output.
// One HTML page for both (`{{page}}`: `table` or `console`).
const PAGE_HTML: &str = include_str!("../../clients/web/src/shared/page.html");
const ICON: &[u8] = include_bytes!("../../clients/web/src/shared/icon.svg");
const TABLE_JS: &[u8] = include_bytes!("../../clients/web/dist/table.js");
const TABLE_CSS: &[u8] = include_bytes!("../../clients/web/dist/table.css");
const CONSOLE_JS: &[u8] = include_bytes!("../../clients/web/dist/console.js");
const CONSOLE_CSS: &[u8] = include_bytes!("../../clients/web/dist/console.css");

/// What the pages need to know about this process, built once at start.
#[derive(Debug, Clone)]
pub struct Pages {
    html: axum::body::Bytes,
    console_html: axum::body::Bytes,
    /// The files under `/assets/`, with their ETags (hashed once, here).
    assets: std::sync::Arc<[Asset]>,
    csp: HeaderValue,
    /// The console's: the table's without any other origin, never framed.
    console_csp: HeaderValue,
    /// Whether some origins may frame the table (`QB_TABLE_FRAME_ANCESTORS`).
    framed: bool,
}

impl Pages {
    /// The pages for a process whose signed media links point to
    /// `media_origin` when storage presigns them (another origin the page
    /// may load images and audio from), which the apps at `frame_ancestors`
    /// (checked origins, see `Config::table_frame_ancestors`) may show in
    /// a frame.
    pub fn new(media_origin: Option<&str>, frame_ancestors: &[String]) -> Self {
        Self {
            html: page_html("table", false),
            console_html: page_html("console", false),
            assets: [
                Asset::new("table.js", TABLE_JS, "text/javascript; charset=utf-8"),
                Asset::new("table.css", TABLE_CSS, "text/css; charset=utf-8"),
                Asset::new("console.js", CONSOLE_JS, "text/javascript; charset=utf-8"),
                Asset::new("console.css", CONSOLE_CSS, "text/css; charset=utf-8"),
                Asset::new("icon.svg", ICON, "image/svg+xml"),
            ]
            .into(),
            csp: content_security_policy(media_origin, frame_ancestors),
            console_csp: content_security_policy(None, &[]),
            framed: !frame_ancestors.is_empty(),
        }
    }

    /// The pages for a process storing files in `storage`: when it presigns
    /// its links, their origin joins the policy's `img-src` and `media-src`.
    pub async fn for_storage(
        storage: &questboard_core::storage::Storage,
        frame_ancestors: &[String],
    ) -> Self {
        let link = storage
            .presigned_get(
                "questboard/origin-probe",
                std::time::Duration::from_secs(60),
            )
            .await
            .ok()
            .flatten();
        Self::new(
            link.as_deref().and_then(origin_of).as_deref(),
            frame_ancestors,
        )
    }

    /// The same pages offering sign-in by name (`questboard dev`, where
    /// `POST /dev/token` exists).
    pub fn with_dev_sign_in(self) -> Self {
        Self {
            html: page_html("table", true),
            console_html: page_html("console", true),
            ..self
        }
    }
}

/// The HTML of `page` (`table`, `console`), saying whether this server
/// offers sign-in by name.
fn page_html(page: &str, dev_sign_in: bool) -> axum::body::Bytes {
    axum::body::Bytes::from(
        PAGE_HTML
            .replace("{{page}}", page)
            .replace("{{dev_sign_in}}", if dev_sign_in { "on" } else { "off" }),
    )
}

/// The policy of every page and asset answer.
pub fn content_security_policy(
    media_origin: Option<&str>,
    frame_ancestors: &[String],
) -> HeaderValue {
    let media = media_origin.map(|o| format!(" {o}")).unwrap_or_default();
    let frames = if frame_ancestors.is_empty() {
        "'none'".to_owned()
    } else {
        frame_ancestors.join(" ")
    };
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'{media}; \
         media-src 'self'{media}; connect-src 'self'; base-uri 'none'; form-action 'none'; \
         frame-ancestors {frames}"
    );
    HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'none'"))
}

/// The origin (`scheme://host[:port]`) of a URL, for the policy; `None`
/// for anything but http(s) or a value a header cannot carry.
pub fn origin_of(link: &str) -> Option<String> {
    let url = url::Url::parse(link).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    let origin = url.origin().ascii_serialization();
    HeaderValue::from_str(&origin).ok()?;
    Some(origin)
}

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(table))
        .route("/join", get(table))
        .route("/console", get(console))
        .route("/assets/{file}", get(asset))
}

fn secured(pages: &Pages, response: Response) -> Response {
    with_policy(response, pages.csp.clone(), pages.framed)
}

fn with_policy(mut response: Response, csp: HeaderValue, framed: bool) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Browsers that know `frame-ancestors` ignore this; older ones obey it.
    if !framed {
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    response
}

fn html(body: axum::body::Bytes) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn table(State(state): State<AppState>) -> Response {
    secured(&state.pages, html(state.pages.html.clone()))
}

/// The operators' console: the same policy as the table, but never framed
/// and loading nothing from another origin.
async fn console(State(state): State<AppState>) -> Response {
    let pages = &state.pages;
    with_policy(
        html(pages.console_html.clone()),
        pages.console_csp.clone(),
        false,
    )
}

/// An embedded file under `/assets/`.
#[derive(Debug)]
struct Asset {
    name: &'static str,
    bytes: &'static [u8],
    content_type: &'static str,
    etag: HeaderValue,
}

impl Asset {
    fn new(name: &'static str, bytes: &'static [u8], content_type: &'static str) -> Self {
        let etag = format!("\"{}\"", hex::encode(&Sha256::digest(bytes)[..12]));
        Self {
            name,
            bytes,
            content_type,
            etag: HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\"")),
        }
    }
}

/// An embedded file, revalidated by its hash (`no-cache` + `ETag`): a new
/// binary's assets are fetched at once, an unchanged one answers 304.
async fn asset(
    State(state): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let pages = &state.pages;
    let asset = pages
        .assets
        .iter()
        .find(|a| a.name == file)
        .ok_or(Error::NotFound("asset"))?;
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().as_bytes() == asset.etag.as_bytes())
        });
    let response = if matches {
        (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, asset.etag.clone())],
        )
            .into_response()
    } else {
        (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(asset.content_type),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                (header::ETAG, asset.etag.clone()),
            ],
            asset.bytes,
        )
            .into_response()
    };
    Ok(secured(pages, response))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_no_other_origin_but_the_media_store() {
        let plain = content_security_policy(None, &[]);
        let plain = plain.to_str().unwrap_or_default();
        assert!(plain.contains("script-src 'self';"));
        assert!(!plain.contains("unsafe"));
        assert!(!plain.contains("http"));
        let with = content_security_policy(
            origin_of("https://bucket.s3.example.com/a/b?X-Amz=1").as_deref(),
            &[],
        );
        let with = with.to_str().unwrap_or_default();
        assert!(with.contains("img-src 'self' https://bucket.s3.example.com;"));
        assert!(with.contains("script-src 'self';"));
    }

    #[test]
    fn framing_is_refused_unless_origins_are_named() {
        let none = content_security_policy(None, &[]);
        assert!(
            none.to_str()
                .unwrap_or_default()
                .ends_with("frame-ancestors 'none'")
        );
        let named = content_security_policy(
            None,
            &[
                "https://app.example".into(),
                "https://b.example:8443".into(),
            ],
        );
        assert!(
            named
                .to_str()
                .unwrap_or_default()
                .ends_with("frame-ancestors https://app.example https://b.example:8443")
        );
    }

    #[test]
    fn only_http_origins_enter_the_policy() {
        assert_eq!(origin_of("file:///etc/passwd"), None);
        assert_eq!(origin_of("not a url"), None);
        assert_eq!(
            origin_of("http://127.0.0.1:9000/bucket/key?sig=1").as_deref(),
            Some("http://127.0.0.1:9000")
        );
    }

    #[test]
    fn the_page_says_whether_dev_sign_in_exists() {
        let off = Pages::new(None, &[]);
        let on = off.clone().with_dev_sign_in();
        assert!(std::str::from_utf8(&on.html).is_ok_and(|h| h.contains(r#"content="on""#)));
        assert!(std::str::from_utf8(&off.html).is_ok_and(|h| h.contains(r#"content="off""#)));
    }
}
