//! URL previews as clients ask for them: a page's OpenGraph properties and
//! its image (kept as media here), a link to an image, what the outbound
//! guard refuses (addresses on the deny list, by name or after a
//! redirect), the size cap, and the spec's errors.

use std::time::Duration;

use axum::response::IntoResponse;
use ganglion_integration_tests::client::{Client, encode};
use ganglion_integration_tests::process::Monolith;
use serde_json::Value;

use crate::media::{Answer, download};

/// A website on loopback; its address.
async fn website(hits: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> String {
    let png = {
        let image = image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(120, 80, |x, _| {
            image::Rgba([x as u8, 10, 200, 255])
        }));
        let mut out = std::io::Cursor::new(Vec::new());
        image
            .write_to(&mut out, image::ImageFormat::Png)
            .expect("png");
        out.into_inner()
    };
    let png_page = png.clone();
    let router = axum::Router::new()
        .route(
            "/article",
            axum::routing::get(move || {
                hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async {
                    (
                        [("content-type", "text/html; charset=utf-8")],
                        r#"<html><head><title>Fallback title</title>
                        <meta property="og:title" content="An &quot;article&quot;">
                        <meta property="og:description" content="What it says.">
                        <meta property="og:image" content="/pictures/cover.png">
                        </head><body>text</body></html>"#,
                    )
                }
            }),
        )
        .route(
            "/plain",
            axum::routing::get(|| async {
                (
                    [("content-type", "text/html")],
                    "<title>Only a title</title><meta name=description content='Short.'>",
                )
            }),
        )
        .route(
            "/pictures/cover.png",
            axum::routing::get(move || {
                let png = png_page.clone();
                async move { ([("content-type", "image/png")], png) }
            }),
        )
        .route(
            "/photo",
            axum::routing::get(move || {
                let png = png.clone();
                async move { ([("content-type", "image/png")], png) }
            }),
        )
        .route(
            "/elsewhere",
            axum::routing::get(|| async {
                axum::response::Redirect::temporary("http://10.255.255.1/secret").into_response()
            }),
        )
        .route(
            "/huge",
            axum::routing::get(|| async {
                let mut page = "<title>Big</title>".to_owned();
                page.push_str(&"<p>filler</p>".repeat(200_000));
                page.push_str("<meta property=\"og:description\" content=\"too far\">");
                ([("content-type", "text/html")], page)
            }),
        )
        .route(
            "/missing",
            axum::routing::get(|| async { axum::http::StatusCode::NOT_FOUND }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{address}")
}

async fn preview(client: &Client, url: &str, legacy: bool) -> Answer {
    let prefix = if legacy {
        "/_matrix/media/v3"
    } else {
        "/_matrix/client/v1/media"
    };
    let response = client
        .http
        .get(format!(
            "{}{prefix}/preview_url?url={}",
            client.base_url,
            encode(url)
        ))
        .bearer_auth(&client.access_token)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("preview");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        bytes: response.bytes().await.expect("body").to_vec(),
    }
}

fn monolith_env(
    dir: &std::path::Path,
    allow_loopback: bool,
    previews: bool,
) -> Vec<(String, String)> {
    let mut env = Monolith::default_env(dir);
    env.push((
        "GANGLION_MEDIA__URL_PREVIEWS".to_owned(),
        previews.to_string(),
    ));
    env.push((
        "GANGLION_MEDIA__URL_PREVIEW_MAX_BYTES".to_owned(),
        (64 * 1024).to_string(),
    ));
    if allow_loopback {
        env.push((
            "GANGLION_FEDERATION__IP_RANGE_ALLOWLIST".to_owned(),
            r#"["127.0.0.1/32"]"#.to_owned(),
        ));
    }
    env
}

#[tokio::test]
async fn pages_are_previewed_through_the_outbound_guard() {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let site = website(hits.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ours = Monolith::start_with(dir.path(), monolith_env(dir.path(), true, true)).await;
    let logs = || ours.process.log_tail();
    let alice = Client::register(&ours.base_url, "alice", "pw-alice-preview").await;

    // A page with OpenGraph tags; its image kept as our media.
    let article = format!("{site}/article#section");
    let answer = preview(&alice, &article, false).await;
    assert_eq!(answer.status, 200, "{answer:?}\n{}", logs());
    let og = answer.json();
    assert_eq!(og["og:title"], "An \"article\"", "{og}");
    assert_eq!(og["og:description"], "What it says.");
    assert_eq!(og["og:image:type"], "image/png");
    assert_eq!(og["og:image:width"], 120);
    assert_eq!(og["og:image:height"], 80);
    assert!(
        og["matrix:image:size"].as_u64().is_some_and(|n| n > 0),
        "{og}"
    );
    let image = og["og:image"].as_str().expect("an mxc URI").to_owned();
    assert!(image.starts_with("mxc://"), "{image}");
    let got = download(&alice, &image, "").await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(
        image::load_from_memory(&got.bytes).map(|i| i.width()).ok(),
        Some(120)
    );
    // Kept: asked again (and on the deprecated path), the site is not.
    let again = preview(&alice, &format!("{site}/article"), true).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.json()["og:title"], "An \"article\"");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);

    // A page without OpenGraph: its title and description.
    let plain = preview(&alice, &format!("{site}/plain"), false)
        .await
        .json();
    assert_eq!(plain["og:title"], "Only a title", "{plain}");
    assert_eq!(plain["og:description"], "Short.");
    assert!(plain.get("og:image").is_none());
    // A link to an image: the image.
    let photo = preview(&alice, &format!("{site}/photo"), false)
        .await
        .json();
    assert!(
        photo["og:image"]
            .as_str()
            .is_some_and(|i| i.starts_with("mxc://")),
        "{photo}"
    );
    assert_eq!(photo["og:image:width"], 120);
    // Only the first url_preview_max_bytes of a page are read.
    let huge = preview(&alice, &format!("{site}/huge"), false).await;
    assert_eq!(huge.status, 200, "{huge:?}");
    assert_eq!(huge.json()["og:title"], "Big");
    assert!(huge.json().get("og:description").is_none());

    // Redirected to a denied address: refused.
    let redirected = preview(&alice, &format!("{site}/elsewhere"), false).await;
    assert_eq!(redirected.status, 403, "{redirected:?}");
    assert_eq!(redirected.errcode(), "M_FORBIDDEN");
    // A page that is not there: 502.
    let missing = preview(&alice, &format!("{site}/missing"), false).await;
    assert_eq!(missing.status, 502, "{missing:?}");
    // Not a URL to preview: 400; none at all: 400 M_MISSING_PARAM.
    for bad in ["file:///etc/passwd", "not a url", "ftp://example.org/"] {
        let refused = preview(&alice, bad, false).await;
        assert_eq!(refused.status, 400, "{bad}: {refused:?}");
        assert_eq!(refused.errcode(), "M_INVALID_PARAM");
    }
    let none = alice
        .call(
            reqwest::Method::GET,
            "/_matrix/client/v1/media/preview_url",
            None,
        )
        .await;
    assert_eq!(none.status, 400, "{none:?}");
    assert_eq!(none.body["errcode"], "M_MISSING_PARAM");
    // Without an access token: 401.
    let anonymous = reqwest::Client::new()
        .get(format!(
            "{}/_matrix/client/v1/media/preview_url?url={}",
            ours.base_url,
            encode(&article)
        ))
        .send()
        .await
        .expect("anonymous");
    assert_eq!(anonymous.status(), 401);
}

/// With the default deny list, loopback is refused whether named by
/// address or by a name that resolves to it; with previews off, the
/// endpoint is not there.
#[tokio::test]
async fn the_deny_list_and_the_switch_hold() {
    let site = website(Default::default()).await;
    let port = site.rsplit(':').next().unwrap_or_default().to_owned();
    let dirs = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let guarded =
        Monolith::start_with(dirs[0].path(), monolith_env(dirs[0].path(), false, true)).await;
    let alice = Client::register(&guarded.base_url, "alice", "pw-alice-deny").await;
    for url in [
        format!("{site}/article"),
        format!("http://localhost:{port}/article"),
        format!("http://[::ffff:127.0.0.1]:{port}/article"),
    ] {
        let refused = preview(&alice, &url, false).await;
        assert_eq!(refused.status, 403, "{url}: {refused:?}");
        assert_eq!(refused.errcode(), "M_FORBIDDEN");
    }
    let off = Monolith::start_with(dirs[1].path(), monolith_env(dirs[1].path(), true, false)).await;
    let bob = Client::register(&off.base_url, "bob", "pw-bob-off").await;
    let answer = preview(&bob, &format!("{site}/article"), false).await;
    assert_eq!(answer.status, 404, "{answer:?}");
    let body: Value = answer.json();
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");
}

/// Uploads (and `/create`s) and new previews count against a per-user
/// rate limit: past it, 429 `M_LIMIT_EXCEEDED` with `retry_after_ms`;
/// another user is not held up, and a kept preview costs nothing.
#[tokio::test]
async fn uploads_and_previews_are_rate_limited_per_user() {
    let site = website(Default::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = monolith_env(dir.path(), true, true);
    env.retain(|(k, _)| k != "GANGLION_RATE_LIMITS__ENABLED");
    env.extend(
        [
            ("GANGLION_RATE_LIMITS__ENABLED", "true"),
            (
                "GANGLION_RATE_LIMITS__MEDIA_UPLOADS_PER_USER__PER_SECOND",
                "0.01",
            ),
            ("GANGLION_RATE_LIMITS__MEDIA_UPLOADS_PER_USER__BURST", "2"),
            (
                "GANGLION_RATE_LIMITS__URL_PREVIEWS_PER_USER__PER_SECOND",
                "0.01",
            ),
            ("GANGLION_RATE_LIMITS__URL_PREVIEWS_PER_USER__BURST", "1"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let ours = Monolith::start_with(dir.path(), env).await;
    let alice = Client::register(&ours.base_url, "alice", "pw-alice-limited").await;
    let bob = Client::register(&ours.base_url, "bob", "pw-bob-limited").await;
    for _ in 0..2 {
        let taken = crate::media::upload(&alice, b"x".to_vec(), Some("text/plain"), None).await;
        assert_eq!(taken.status, 200, "{taken:?}");
    }
    let limited = crate::media::upload(&alice, b"x".to_vec(), Some("text/plain"), None).await;
    assert_eq!(limited.status, 429, "{limited:?}");
    assert_eq!(limited.errcode(), "M_LIMIT_EXCEEDED");
    assert!(
        limited.json()["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 0)
    );
    let create = alice
        .call(
            reqwest::Method::POST,
            "/_matrix/media/v1/create",
            Some(serde_json::json!({})),
        )
        .await;
    assert_eq!(create.status, 429, "{create:?}");
    let others = crate::media::upload(&bob, b"x".to_vec(), Some("text/plain"), None).await;
    assert_eq!(others.status, 200, "{others:?}");

    let first = preview(&alice, &format!("{site}/plain"), false).await;
    assert_eq!(first.status, 200, "{first:?}");
    let kept = preview(&alice, &format!("{site}/plain"), false).await;
    assert_eq!(kept.status, 200, "a kept preview is free: {kept:?}");
    let new = preview(&alice, &format!("{site}/article"), false).await;
    assert_eq!(new.status, 429, "{new:?}");
    assert_eq!(new.errcode(), "M_LIMIT_EXCEEDED");
}
