//! The media repository as clients use it: uploads (whole, and to an ID
//! made first), authenticated downloads with the headers that keep media
//! from running as a page, the limits and their errors, and the frozen
//! unauthenticated endpoints. Run against any deployment started with
//! [`limits_env`].

use std::time::Duration;

use ganglion_integration_tests::client::Client;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

/// The largest upload the scenario's server takes.
pub(crate) const MAX_UPLOAD: usize = 1024 * 1024;
/// Its per-user quota.
pub(crate) const QUOTA: usize = 2 * MAX_UPLOAD + MAX_UPLOAD / 2;
/// IDs from `/create` one user may hold.
pub(crate) const MAX_PENDING: usize = 3;

/// The media limits [`uploads_downloads_and_their_limits`] expects.
pub(crate) fn limits_env() -> Vec<(String, String)> {
    vec![
        (
            "GANGLION_MEDIA__MAX_UPLOAD_BYTES".to_owned(),
            MAX_UPLOAD.to_string(),
        ),
        (
            "GANGLION_MEDIA__USER_QUOTA_BYTES".to_owned(),
            QUOTA.to_string(),
        ),
        (
            "GANGLION_MEDIA__MAX_PENDING_UPLOADS".to_owned(),
            MAX_PENDING.to_string(),
        ),
    ]
}

/// A 1×1 PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xf0,
    0x1f, 0x00, 0x05, 0x00, 0x01, 0xff, 0x89, 0x99, 0x3d, 0x1d, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// An answer: status, headers, bytes (and the body as JSON when it is).
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) bytes: Vec<u8>,
}

impl Answer {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }

    pub(crate) fn errcode(&self) -> String {
        self.json()["errcode"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

async fn answer(request: reqwest::RequestBuilder) -> Answer {
    let response = request
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("request sent");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        bytes: response.bytes().await.expect("body").to_vec(),
    }
}

/// `POST /_matrix/media/v3/upload` with `bytes` as `content_type`.
pub(crate) async fn upload(
    client: &Client,
    bytes: Vec<u8>,
    content_type: Option<&str>,
    filename: Option<&str>,
) -> Answer {
    let mut url = format!("{}/_matrix/media/v3/upload", client.base_url);
    if let Some(name) = filename {
        url.push_str(&format!("?filename={}", urlencode(name)));
    }
    let mut request = client
        .http
        .post(url)
        .bearer_auth(&client.access_token)
        .body(bytes);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    answer(request).await
}

fn urlencode(text: &str) -> String {
    ganglion_integration_tests::client::encode(text)
}

/// The media ID of an `mxc://` URI.
pub(crate) fn media_id(mxc: &str) -> String {
    mxc.rsplit('/').next().unwrap_or_default().to_owned()
}

/// `GET` of `path` under the base URL, with the client's token (or none).
async fn get(client: &Client, path: &str, authenticated: bool) -> Answer {
    let mut request = client.http.get(format!("{}{path}", client.base_url));
    if authenticated {
        request = request.bearer_auth(&client.access_token);
    }
    answer(request).await
}

/// The authenticated download of `mxc`, with `rest` appended (a file
/// name, a query).
pub(crate) async fn download(client: &Client, mxc: &str, rest: &str) -> Answer {
    let server_and_id = mxc.trim_start_matches("mxc://");
    get(
        client,
        &format!("/_matrix/client/v1/media/download/{server_and_id}{rest}"),
        true,
    )
    .await
}

/// Every media answer says: not a page, not sniffed, embeddable elsewhere.
fn assert_secured(answer: &Answer) {
    assert!(
        answer
            .header("content-security-policy")
            .starts_with("sandbox;"),
        "{answer:?}"
    );
    assert_eq!(answer.header("x-content-type-options"), "nosniff");
    assert_eq!(
        answer.header("cross-origin-resource-policy"),
        "cross-origin"
    );
}

pub(crate) async fn uploads_downloads_and_their_limits(base_url: &str, tag: &str) {
    let alice = Client::register(base_url, &format!("media_alice{tag}"), "pw-alice-1").await;
    let bob = Client::register(base_url, &format!("media_bob{tag}"), "pw-bob-1").await;
    let server_name = alice
        .user_id
        .split(':')
        .nth(1)
        .unwrap_or_default()
        .to_owned();

    // What may be uploaded; only with a token.
    let config = get(&alice, "/_matrix/client/v1/media/config", true).await;
    assert_eq!(config.status, 200, "{config:?}");
    assert_eq!(config.json()["m.upload.size"], MAX_UPLOAD);
    let anonymous = get(&alice, "/_matrix/client/v1/media/config", false).await;
    assert_eq!(
        (anonymous.status, anonymous.errcode().as_str()),
        (401, "M_MISSING_TOKEN")
    );
    let legacy_config = get(&alice, "/_matrix/media/v3/config", true).await;
    assert_eq!(legacy_config.json()["m.upload.size"], MAX_UPLOAD);

    // An image: its bytes back, inline, under its name, secured.
    let uploaded = upload(&alice, PNG.to_vec(), Some("image/png"), Some("cat.png")).await;
    assert_eq!(uploaded.status, 200, "{uploaded:?}");
    assert_secured(&uploaded);
    let mxc = uploaded.json()["content_uri"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(mxc.starts_with(&format!("mxc://{server_name}/")), "{mxc}");
    let id = media_id(&mxc);
    assert!(
        id.len() >= 16
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "{id}"
    );
    let read = download(&bob, &mxc, "").await;
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(read.bytes, PNG);
    assert_eq!(read.header("content-type"), "image/png");
    assert_eq!(read.header("content-length"), PNG.len().to_string());
    assert_eq!(
        read.header("content-disposition"),
        "inline; filename=\"cat.png\"; filename*=utf-8''cat.png"
    );
    assert_secured(&read);
    // The file name in the path is the one given.
    let renamed = download(&bob, &mxc, "/kitten%20%C3%A9.png").await;
    assert_eq!(renamed.status, 200);
    assert_eq!(
        renamed.header("content-disposition"),
        "inline; filename*=utf-8''kitten%20%C3%A9.png"
    );
    // HEAD answers as GET does, without the bytes.
    let head = answer(
        bob.http
            .head(format!(
                "{}/_matrix/client/v1/media/download/{}",
                base_url,
                mxc.trim_start_matches("mxc://")
            ))
            .bearer_auth(&bob.access_token),
    )
    .await;
    assert_eq!((head.status, head.bytes.len()), (200, 0));
    // Without a token, nothing.
    let anonymous = get(
        &bob,
        &format!(
            "/_matrix/client/v1/media/download/{}",
            mxc.trim_start_matches("mxc://")
        ),
        false,
    )
    .await;
    assert_eq!(
        (anonymous.status, anonymous.errcode().as_str()),
        (401, "M_MISSING_TOKEN")
    );

    // What could run as a page is an attachment, whatever it claims.
    let html = b"<html><script>alert(document.cookie)</script></html>".to_vec();
    for (declared, name) in [
        (Some("text/html"), "page.html"),
        (Some("image/svg+xml"), "x.svg"),
        (Some("image/png"), "fake.png"),
        (None, "anything"),
    ] {
        let up = upload(&alice, html.clone(), declared, Some(name)).await;
        assert_eq!(up.status, 200, "{up:?}");
        let mxc = up.json()["content_uri"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let read = download(&bob, &mxc, "").await;
        assert_eq!(read.status, 200);
        assert_eq!(read.bytes, html);
        assert_eq!(
            read.header("content-type"),
            declared.unwrap_or("application/octet-stream"),
            "{declared:?}"
        );
        assert!(
            read.header("content-disposition").starts_with("attachment"),
            "{declared:?}: {:?}",
            read.header("content-disposition")
        );
        assert_secured(&read);
    }
    // A file name cannot break out of its header.
    let sneaky = upload(
        &alice,
        b"x".to_vec(),
        Some("text/plain"),
        Some("a\r\nSet-Cookie: x=1"),
    )
    .await;
    let mxc_sneaky = sneaky.json()["content_uri"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let read = download(&bob, &mxc_sneaky, "").await;
    assert_eq!(read.status, 200);
    assert!(read.headers.get("set-cookie").is_none());
    assert_eq!(
        read.header("content-disposition"),
        "inline; filename=\"aSet-Cookie: x=1\"; filename*=utf-8''aSet-Cookie%3A%20x%3D1"
    );

    // The same bytes twice are two media, each served.
    let again = upload(&bob, PNG.to_vec(), Some("image/png"), None).await;
    let mxc_again = again.json()["content_uri"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_ne!(mxc_again, mxc);
    let read = download(&alice, &mxc_again, "").await;
    assert_eq!((read.status, read.bytes.as_slice()), (200, PNG));
    assert_eq!(read.header("content-disposition"), "inline");

    // Unknown and malformed IDs, and names that are not server names,
    // name nothing (other servers' media is fetched: federation_media.rs).
    for path in [
        format!("{server_name}/NoSuchMediaIdHere"),
        format!("{server_name}/bad.id"),
        format!("{server_name}/a%20b"),
        format!("bad!server/{id}"),
        format!("example.org:0/{id}"),
    ] {
        let read = get(
            &bob,
            &format!("/_matrix/client/v1/media/download/{path}"),
            true,
        )
        .await;
        assert_eq!(
            (read.status, read.errcode().as_str()),
            (404, "M_NOT_FOUND"),
            "{path}"
        );
        assert_secured(&read);
    }

    // The deprecated unauthenticated download is frozen: nothing uploaded
    // since is served there.
    for path in [
        format!(
            "/_matrix/media/v3/download/{}",
            mxc.trim_start_matches("mxc://")
        ),
        format!(
            "/_matrix/media/r0/download/{}/cat.png",
            mxc.trim_start_matches("mxc://")
        ),
    ] {
        let frozen = get(&bob, &path, false).await;
        assert_eq!(
            (frozen.status, frozen.errcode().as_str()),
            (404, "M_NOT_FOUND"),
            "{path}"
        );
    }

    // Too large: refused by its declared length, or as it streams.
    let too_large = upload(
        &alice,
        vec![7; MAX_UPLOAD + 1],
        Some("application/octet-stream"),
        None,
    )
    .await;
    assert_eq!(
        (too_large.status, too_large.errcode().as_str()),
        (413, "M_TOO_LARGE")
    );
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..17).map(|_| Ok(vec![1_u8; MAX_UPLOAD / 16])).collect();
    let streamed = answer(
        alice
            .http
            .post(format!("{base_url}/_matrix/media/v3/upload"))
            .bearer_auth(&alice.access_token)
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks))),
    )
    .await;
    assert_eq!(
        (streamed.status, streamed.errcode().as_str()),
        (413, "M_TOO_LARGE"),
        "{streamed:?}"
    );
    // Exactly the limit is taken.
    let at_limit = upload(&alice, vec![3; MAX_UPLOAD], None, None).await;
    assert_eq!(at_limit.status, 200, "{at_limit:?}");

    // The quota: a user's uploads add up; past it, 403 M_RESOURCE_LIMIT_EXCEEDED.
    let carol = Client::register(base_url, &format!("media_carol{tag}"), "pw-carol-1").await;
    for i in 0..2 {
        let up = upload(&carol, vec![i; MAX_UPLOAD], None, None).await;
        assert_eq!(up.status, 200, "upload {i}: {up:?}");
    }
    let over = upload(&carol, vec![9; MAX_UPLOAD], None, None).await;
    assert_eq!(
        (over.status, over.errcode().as_str()),
        (403, "M_RESOURCE_LIMIT_EXCEEDED"),
        "{over:?}"
    );
    let fits = upload(&carol, vec![9; MAX_UPLOAD / 4], None, None).await;
    assert_eq!(
        fits.status, 200,
        "what is left of the quota is taken: {fits:?}"
    );

    asynchronous_uploads(&alice, &bob, &server_name).await;
}

/// `POST /create`, then the bytes with `PUT`: who may, how often, and a
/// download that waits for them.
async fn asynchronous_uploads(alice: &Client, bob: &Client, server_name: &str) {
    let base_url = &alice.base_url;
    let create = || async {
        answer(
            alice
                .http
                .post(format!("{base_url}/_matrix/media/v1/create"))
                .bearer_auth(&alice.access_token)
                .header("content-type", "application/json")
                .body("{}"),
        )
        .await
    };
    let put = |client: &Client, target: String, bytes: Vec<u8>| {
        let request = client
            .http
            .put(format!(
                "{base_url}/_matrix/media/v3/upload/{target}?filename=later.png"
            ))
            .bearer_auth(&client.access_token)
            .header("content-type", "image/png")
            .body(bytes);
        answer(request)
    };
    let created = create().await;
    assert_eq!(created.status, 200, "{created:?}");
    let mxc = created.json()["content_uri"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let expires = created.json()["unused_expires_at"]
        .as_i64()
        .unwrap_or_default();
    let now = ganglion_integration_tests::fake_server::now_ms();
    assert!(expires > now + 3_600_000, "expires {expires}, now {now}");
    let target = mxc.trim_start_matches("mxc://").to_owned();

    // Not there yet: a short wait ends 504 M_NOT_YET_UPLOADED.
    let early = download(bob, &mxc, "?timeout_ms=200").await;
    assert_eq!(
        (early.status, early.errcode().as_str()),
        (504, "M_NOT_YET_UPLOADED")
    );

    // Only its creator may fill it.
    let stranger = put(bob, target.clone(), PNG.to_vec()).await;
    assert_eq!(
        (stranger.status, stranger.errcode().as_str()),
        (403, "M_FORBIDDEN")
    );

    // A download waiting for it gets it as soon as it is uploaded.
    let waiting = {
        let (bob, mxc) = (bob.clone(), mxc.clone());
        tokio::spawn(async move { download(&bob, &mxc, "?timeout_ms=15000").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let filled = put(alice, target.clone(), PNG.to_vec()).await;
    assert_eq!(filled.status, 200, "{filled:?}");
    assert_eq!(filled.json(), serde_json::json!({}));
    let waited = waiting.await.expect("the waiting download");
    assert_eq!(
        (waited.status, waited.bytes.as_slice()),
        (200, PNG),
        "{waited:?}"
    );
    assert_eq!(
        waited.header("content-disposition"),
        "inline; filename=\"later.png\"; filename*=utf-8''later.png"
    );

    // Once only.
    let twice = put(alice, target.clone(), PNG.to_vec()).await;
    assert_eq!(
        (twice.status, twice.errcode().as_str()),
        (409, "M_CANNOT_OVERWRITE_MEDIA")
    );
    // IDs never created, and other servers' IDs: not found.
    for other in [
        format!("{server_name}/NeverCreatedHere"),
        "elsewhere.example/abcdef".to_owned(),
    ] {
        let unknown = put(alice, other.clone(), PNG.to_vec()).await;
        assert_eq!(
            (unknown.status, unknown.errcode().as_str()),
            (404, "M_NOT_FOUND"),
            "{other}"
        );
    }

    // A bounded number of IDs waiting at once; the next is 429 with when
    // to try again.
    for i in 0..MAX_PENDING {
        let made = create().await;
        assert_eq!(made.status, 200, "pending {i}: {made:?}");
    }
    let refused = create().await;
    assert_eq!(
        (refused.status, refused.errcode().as_str()),
        (429, "M_LIMIT_EXCEEDED"),
        "{refused:?}"
    );
    assert!(
        refused.json()["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 0)
    );
}

/// Runs `ganglion media <args>` with `env`; its output.
pub(crate) fn operator(env: &[(String, String)], args: &[&str]) -> String {
    let done = std::process::Command::new(ganglion_integration_tests::process::ganglion_binary())
        .arg("media")
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("operator command");
    assert!(
        done.status.success(),
        "ganglion media {args:?}: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    String::from_utf8_lossy(&done.stdout).trim().to_owned()
}

/// Blob files in a filesystem store.
pub(crate) fn blob_files(store: &std::path::Path) -> usize {
    fn count(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() { count(&path) } else { 1 }
                })
                .sum()
        })
    }
    count(&store.join("blobs"))
}

/// Operators quarantine, release and delete media by MXC URI and by
/// uploader; a deleted medium's file goes once no other media holds the
/// same bytes.
pub(crate) async fn operators_quarantine_and_delete(
    base_url: &str,
    env: &[(String, String)],
    store: &std::path::Path,
) {
    let dave = Client::register(base_url, "media_dave", "pw-dave-1").await;
    let erin = Client::register(base_url, "media_erin", "pw-erin-1").await;
    let mxc_of = |answer: Answer| {
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.json()["content_uri"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let files_before = blob_files(store);
    let shared = b"the same bytes, twice".to_vec();
    let dave_shared = mxc_of(upload(&dave, shared.clone(), Some("text/plain"), None).await);
    let erin_shared = mxc_of(upload(&erin, shared, Some("text/plain"), None).await);
    let dave_own = mxc_of(upload(&dave, b"dave's own".to_vec(), Some("text/plain"), None).await);
    assert_eq!(
        blob_files(store),
        files_before + 2,
        "identical bytes are stored once"
    );

    // Quarantined: served to nobody; released: served again.
    assert_eq!(operator(env, &["quarantine", &dave_own]), "quarantined 1");
    let hidden = download(&erin, &dave_own, "").await;
    assert_eq!(
        (hidden.status, hidden.errcode().as_str()),
        (404, "M_NOT_FOUND")
    );
    assert_eq!(operator(env, &["unquarantine", &dave_own]), "released 1");
    assert_eq!(download(&erin, &dave_own, "").await.status, 200);

    // Everything dave uploaded, quarantined then deleted: erin's copy of
    // the shared bytes stays, with its file.
    assert_eq!(
        operator(env, &["quarantine", "--user", &dave.user_id]),
        "quarantined 2"
    );
    assert_eq!(download(&erin, &dave_shared, "").await.status, 404);
    assert_eq!(download(&dave, &erin_shared, "").await.status, 200);
    assert_eq!(
        operator(env, &["delete", "--user", &dave.user_id]),
        "deleted 2 media and 1 files"
    );
    assert_eq!(blob_files(store), files_before + 1);
    assert_eq!(download(&dave, &erin_shared, "").await.status, 200);
    assert_eq!(
        operator(env, &["delete", &erin_shared]),
        "deleted 1 media and 1 files"
    );
    assert_eq!(blob_files(store), files_before);
    let gone = download(&dave, &erin_shared, "").await;
    assert_eq!((gone.status, gone.errcode().as_str()), (404, "M_NOT_FOUND"));
    // Nothing left to act on is no error; a malformed target is.
    assert_eq!(
        operator(env, &["delete", &erin_shared]),
        "deleted 0 media and 0 files"
    );
    for bad in [
        &["delete", "https://example.org/x"][..],
        &["delete", "--room", "not-a-room"],
        &[
            "delete",
            "--room",
            "!r:example.org",
            "--user",
            "@a:example.org",
        ],
    ] {
        let refused =
            std::process::Command::new(ganglion_integration_tests::process::ganglion_binary())
                .arg("media")
                .args(bad)
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .output()
                .expect("operator command");
        assert!(!refused.status.success(), "{bad:?}");
    }

    // By room: what its events name (a message's picture and thumbnail,
    // the room's avatar), and nothing else.
    let room_id = dave.create_room(json!({"preset": "public_chat"})).await;
    let bytes = |what: &str| format!("{what} of {room_id}").into_bytes();
    let picture = mxc_of(upload(&dave, bytes("picture"), Some("image/png"), None).await);
    let small = mxc_of(upload(&dave, bytes("thumbnail"), Some("image/png"), None).await);
    let avatar = mxc_of(upload(&dave, bytes("avatar"), Some("image/png"), None).await);
    let elsewhere =
        mxc_of(upload(&erin, b"not in the room".to_vec(), Some("text/plain"), None).await);
    let sent = dave
        .call(
            reqwest::Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/img1",
                urlencode(&room_id)
            ),
            Some(json!({
                "msgtype": "m.image", "body": "a picture", "url": picture,
                "info": {"mimetype": "image/png", "thumbnail_url": small}
            })),
        )
        .await;
    assert_eq!(sent.status, 200, "{sent:?}");
    let set = dave
        .call(
            reqwest::Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.avatar/",
                urlencode(&room_id)
            ),
            Some(json!({"url": avatar})),
        )
        .await;
    assert_eq!(set.status, 200, "{set:?}");
    assert_eq!(
        operator(env, &["quarantine", "--room", &room_id]),
        "quarantined 3"
    );
    for mxc in [&picture, &small, &avatar] {
        assert_eq!(download(&erin, mxc, "").await.status, 404, "{mxc}");
    }
    assert_eq!(download(&erin, &elsewhere, "").await.status, 200);
    assert_eq!(
        operator(env, &["unquarantine", "--room", &room_id]),
        "released 3"
    );
    assert_eq!(download(&erin, &picture, "").await.status, 200);
    assert_eq!(
        operator(env, &["delete", "--room", &room_id]),
        "deleted 3 media and 3 files"
    );
    assert_eq!(download(&erin, &avatar, "").await.status, 404);
    assert_eq!(download(&erin, &elsewhere, "").await.status, 200);
}

/// `image` encoded as `format`.
fn encoded(image: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    if format == image::ImageFormat::Gif {
        // The fastest colour quantising: a debug build takes seconds at
        // the default.
        let mut encoder = image::codecs::gif::GifEncoder::new_with_speed(&mut out, 30);
        encoder
            .encode_frame(image::Frame::new(image.to_rgba8()))
            .expect("gif");
    } else {
        image.write_to(&mut out, format).expect("encode");
    }
    out.into_inner()
}

fn picture(width: u32, height: u32) -> image::DynamicImage {
    image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(width, height, |x, y| {
        image::Rgba([(x % 256) as u8, (y % 256) as u8, 200, 255])
    }))
}

/// An animated GIF of `frames` frames.
fn animated_gif(width: u32, height: u32, frames: u32) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    {
        let mut encoder = image::codecs::gif::GifEncoder::new_with_speed(&mut out, 30);
        encoder
            .encode_frames((0..frames).map(|i| {
                let buffer = image::RgbaImage::from_fn(width, height, |x, _| {
                    image::Rgba([((x + i * 40) % 256) as u8, 0, 0, 255])
                });
                image::Frame::from_parts(buffer, 0, 0, image::Delay::from_numer_denom_ms(100, 1))
            }))
            .expect("gif");
    }
    out.into_inner()
}

fn decoded_size(bytes: &[u8]) -> (u32, u32) {
    let image = image::load_from_memory(bytes).expect("an image");
    (image.width(), image.height())
}

/// The thumbnail of `mxc` with `query`.
pub(crate) async fn thumbnail(client: &Client, mxc: &str, query: &str) -> Answer {
    get(
        client,
        &format!(
            "/_matrix/client/v1/media/thumbnail/{}?{query}",
            mxc.trim_start_matches("mxc://")
        ),
        true,
    )
    .await
}

/// Thumbnails of every format, by both methods, animated when asked, the
/// original when it is small already, and the refusals.
pub(crate) async fn thumbnails_of_every_format(base_url: &str, tag: &str) {
    let frank = Client::register(base_url, &format!("media_frank{tag}"), "pw-frank-1").await;
    let mxc_of = |answer: Answer| {
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.json()["content_uri"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let photo = picture(1000, 500);
    for (format, content_type, thumbnail_type) in [
        (image::ImageFormat::Png, "image/png", "image/png"),
        (image::ImageFormat::Jpeg, "image/jpeg", "image/jpeg"),
        (image::ImageFormat::Gif, "image/gif", "image/png"),
        (image::ImageFormat::WebP, "image/webp", "image/png"),
    ] {
        let image = if format == image::ImageFormat::Jpeg {
            image::DynamicImage::ImageRgb8(photo.to_rgb8())
        } else {
            photo.clone()
        };
        let mxc = mxc_of(upload(&frank, encoded(&image, format), Some(content_type), None).await);
        let scaled = thumbnail(&frank, &mxc, "width=320&height=240&method=scale").await;
        assert_eq!(scaled.status, 200, "{content_type}: {scaled:?}");
        assert_eq!(
            scaled.header("content-type"),
            thumbnail_type,
            "{content_type}"
        );
        assert_eq!(
            scaled.header("content-disposition"),
            format!(
                "inline; filename=\"thumbnail.{0}\"; filename*=utf-8''thumbnail.{0}",
                thumbnail_type.trim_start_matches("image/")
            )
        );
        assert_secured(&scaled);
        assert_eq!(decoded_size(&scaled.bytes), (320, 160), "{content_type}");
        // A size between the kept ones: the next larger, never smaller.
        let between = thumbnail(&frank, &mxc, "width=300&height=100&method=scale").await;
        assert_eq!(decoded_size(&between.bytes), (320, 160), "{content_type}");
        let cropped = thumbnail(&frank, &mxc, "width=90&height=90&method=crop").await;
        assert_eq!(cropped.status, 200, "{content_type}: {cropped:?}");
        assert_eq!(decoded_size(&cropped.bytes), (96, 96), "{content_type}");
        // Scale is the default method.
        let default = thumbnail(&frank, &mxc, "width=640&height=480").await;
        assert_eq!(decoded_size(&default.bytes), (640, 320), "{content_type}");
    }

    // Larger than any kept size: made to measure, never enlarged.
    let large = mxc_of(
        upload(
            &frank,
            encoded(&picture(1600, 1200), image::ImageFormat::Png),
            Some("image/png"),
            None,
        )
        .await,
    );
    let big = thumbnail(&frank, &large, "width=1200&height=1000&method=scale").await;
    assert_eq!(decoded_size(&big.bytes), (1200, 900));
    // Smaller than asked: the original itself.
    let icon_bytes = encoded(&picture(20, 20), image::ImageFormat::Png);
    let icon = mxc_of(upload(&frank, icon_bytes.clone(), Some("image/png"), None).await);
    let same = thumbnail(&frank, &icon, "width=96&height=96&method=crop").await;
    assert_eq!(
        (same.status, same.bytes.as_slice()),
        (200, icon_bytes.as_slice())
    );
    assert_eq!(same.header("content-type"), "image/png");

    // An animated GIF stays animated when asked, and is still otherwise.
    let gif = mxc_of(upload(&frank, animated_gif(400, 300, 3), Some("image/gif"), None).await);
    let animated = thumbnail(&frank, &gif, "width=320&height=240&animated=true").await;
    assert_eq!(animated.header("content-type"), "image/gif");
    let frames = image::AnimationDecoder::into_frames(
        image::codecs::gif::GifDecoder::new(std::io::Cursor::new(&animated.bytes)).expect("gif"),
    )
    .collect_frames()
    .expect("frames");
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[0].buffer().dimensions(), (320, 240));
    let still = thumbnail(&frank, &gif, "width=320&height=240&animated=false").await;
    assert_eq!(still.header("content-type"), "image/png");
    // So does an animated WebP (as a GIF, the animation this server writes).
    let webp = mxc_of(
        upload(
            &frank,
            include_bytes!("../../../services/mediaapi/src/fixtures/animated.webp").to_vec(),
            Some("image/webp"),
            None,
        )
        .await,
    );
    let animated = thumbnail(
        &frank,
        &webp,
        "width=32&height=32&method=crop&animated=true",
    )
    .await;
    assert_eq!(animated.header("content-type"), "image/gif", "{animated:?}");
    let frames = image::AnimationDecoder::into_frames(
        image::codecs::gif::GifDecoder::new(std::io::Cursor::new(&animated.bytes)).expect("gif"),
    )
    .collect_frames()
    .expect("frames");
    assert_eq!(frames.len(), 3);
    let still = thumbnail(&frank, &webp, "width=32&height=32&method=crop").await;
    assert_eq!(still.header("content-type"), "image/png");

    // What cannot be thumbnailed, and requests that make no sense.
    let text = mxc_of(upload(&frank, b"just text".to_vec(), Some("text/plain"), None).await);
    let refused = thumbnail(&frank, &text, "width=96&height=96").await;
    assert_eq!(
        (refused.status, refused.errcode().as_str()),
        (400, "M_UNKNOWN")
    );
    let photo_mxc = mxc_of(
        upload(
            &frank,
            encoded(&picture(500, 500), image::ImageFormat::Png),
            Some("image/png"),
            None,
        )
        .await,
    );
    for (query, errcode) in [
        ("height=96", "M_MISSING_PARAM"),
        ("width=96", "M_MISSING_PARAM"),
        ("width=0&height=96", "M_INVALID_PARAM"),
        ("width=-5&height=96", "M_INVALID_PARAM"),
        ("width=96&height=96&method=zoom", "M_INVALID_PARAM"),
    ] {
        let bad = thumbnail(&frank, &photo_mxc, query).await;
        assert_eq!(
            (bad.status, bad.errcode().as_str()),
            (400, errcode),
            "{query}"
        );
    }
    // A decompression bomb: a small PNG that claims 40 000 × 40 000
    // pixels is refused before it is decoded.
    let mut bomb = encoded(&picture(40_000, 1), image::ImageFormat::Png);
    bomb[20..24].copy_from_slice(&40_000_u32.to_be_bytes());
    let crc = crc32fast::hash(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    let bomb_mxc = mxc_of(upload(&frank, bomb, Some("image/png"), None).await);
    let refused = thumbnail(&frank, &bomb_mxc, "width=96&height=96").await;
    assert_eq!(
        (refused.status, refused.errcode().as_str()),
        (413, "M_TOO_LARGE")
    );
    // Frozen like downloads.
    let frozen = get(
        &frank,
        &format!(
            "/_matrix/media/v3/thumbnail/{}?width=96&height=96",
            photo_mxc.trim_start_matches("mxc://")
        ),
        false,
    )
    .await;
    assert_eq!(
        (frozen.status, frozen.errcode().as_str()),
        (404, "M_NOT_FOUND")
    );
    let anonymous = get(
        &frank,
        &format!(
            "/_matrix/client/v1/media/thumbnail/{}?width=96&height=96",
            photo_mxc.trim_start_matches("mxc://")
        ),
        false,
    )
    .await;
    assert_eq!(anonymous.status, 401);
}

/// An image's configured thumbnails are made once, when it is uploaded,
/// and kept (a filesystem store, to count its files).
pub(crate) async fn thumbnails_are_made_at_upload_and_kept(
    base_url: &str,
    store: &std::path::Path,
) {
    let grace = Client::register(base_url, "media_grace", "pw-grace-1").await;
    let before = blob_files(store);
    let up = upload(
        &grace,
        encoded(&picture(1002, 498), image::ImageFormat::Png),
        Some("image/png"),
        None,
    )
    .await;
    assert_eq!(up.status, 200, "{up:?}");
    let mxc = up.json()["content_uri"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // The original and the five default sizes (bytes no other test
    // uploads: the store keeps identical bytes once).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while blob_files(store) < before + 6 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} files",
            blob_files(store) - before
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for query in [
        "width=32&height=32&method=crop",
        "width=800&height=600",
        "width=100&height=50",
    ] {
        assert_eq!(thumbnail(&grace, &mxc, query).await.status, 200, "{query}");
    }
    assert_eq!(blob_files(store), before + 6, "served from what was kept");
}

/// With a freeze moment configured, media from before it is still served
/// by the deprecated unauthenticated endpoints (download, with a file
/// name, thumbnail); without a token the authenticated ones still refuse.
pub(crate) async fn media_from_before_the_freeze_stays_public(base_url: &str) {
    let hank = Client::register(base_url, "media_hank", "pw-hank-1").await;
    let up = upload(
        &hank,
        encoded(&picture(300, 200), image::ImageFormat::Png),
        Some("image/png"),
        Some("old.png"),
    )
    .await;
    assert_eq!(up.status, 200, "{up:?}");
    let mxc = up.json()["content_uri"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let id = mxc.trim_start_matches("mxc://");
    let read = get(&hank, &format!("/_matrix/media/v3/download/{id}"), false).await;
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(read.header("content-type"), "image/png");
    assert_secured(&read);
    let named = get(
        &hank,
        &format!("/_matrix/media/r0/download/{id}/renamed.png"),
        false,
    )
    .await;
    assert_eq!(named.status, 200);
    assert!(named.header("content-disposition").contains("renamed.png"));
    let small = get(
        &hank,
        &format!("/_matrix/media/v3/thumbnail/{id}?width=96&height=96&method=crop"),
        false,
    )
    .await;
    assert_eq!(small.status, 200, "{small:?}");
    assert_eq!(decoded_size(&small.bytes), (96, 96));
    let anonymous = get(
        &hank,
        &format!("/_matrix/client/v1/media/download/{id}"),
        false,
    )
    .await;
    assert_eq!(anonymous.status, 401);
}
