//! Media across servers: our media served to other servers through the
//! federation media API (signed requests, `multipart/mixed` answers), and
//! other servers' media fetched for our users through it (or through the
//! deprecated download, for servers without it), kept and thumbnailed
//! here. A controllable fake server covers every way a remote can answer;
//! a real Synapse covers both directions end to end.

use std::collections::BTreeMap;
use std::time::Duration;

use ganglion_integration_tests::client::Client;
use ganglion_integration_tests::fake_server::{FakeMedia, FakeServer};
use ganglion_integration_tests::process::{Monolith, federating_env};
use ruma::api::federation::authentication::XMatrix;
use serde_json::{Value, json};

use crate::media::{Answer, download, media_id, thumbnail, upload};

/// A picture `width`×`height` as PNG.
fn png(width: u32, height: u32) -> Vec<u8> {
    let image =
        image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(width, height, |x, y| {
            image::Rgba([(x % 256) as u8, (y % 256) as u8, 90, 255])
        }));
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    out.into_inner()
}

fn federation_url(server_name: &str) -> String {
    format!(
        "https://127.0.0.1:{}",
        server_name
            .rsplit_once(':')
            .map(|(_, p)| p)
            .unwrap_or_default()
    )
}

fn insecure() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// A GET to our federation listener, signed by `fake` (or with `forged`
/// as its `Authorization`).
async fn federation_get(
    fake: &FakeServer,
    our_name: &str,
    path: &str,
    forged: Option<&str>,
) -> Answer {
    let authorization = match forged {
        Some(forged) => forged.to_owned(),
        None => fake.authorization(our_name, "GET", path, None),
    };
    let mut request = insecure().get(format!("{}{path}", federation_url(our_name)));
    if !authorization.is_empty() {
        request = request.header("authorization", authorization);
    }
    let response = request.send().await.expect("federation request");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        bytes: response.bytes().await.expect("body").to_vec(),
    }
}

/// The two parts of a federation media answer: (metadata, file part's
/// headers lowercased, file bytes), read by a parser of the test's own.
fn parts(answer: &Answer) -> (Value, BTreeMap<String, String>, Vec<u8>) {
    let content_type = answer
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("multipart/mixed; boundary="),
        "{answer:?}"
    );
    let boundary = content_type.split("boundary=").nth(1).unwrap_or_default();
    let delimiter = format!("--{boundary}");
    let body = &answer.bytes;
    let find = |from: usize, needle: &[u8]| {
        body[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let first = find(0, delimiter.as_bytes()).expect("first delimiter");
    let headers_end = find(first, b"\r\n\r\n").expect("metadata headers");
    let metadata_headers = String::from_utf8_lossy(&body[first..headers_end]).to_string();
    assert!(
        metadata_headers.contains("Content-Type: application/json"),
        "{metadata_headers}"
    );
    let second = find(headers_end, format!("\r\n{delimiter}").as_bytes()).expect("second");
    let metadata: Value = serde_json::from_slice(&body[headers_end + 4..second]).expect("metadata");
    let part_start = second + 2 + delimiter.len() + 2;
    let part_headers_end = find(part_start, b"\r\n\r\n").expect("file headers");
    let headers = String::from_utf8_lossy(&body[part_start..part_headers_end])
        .split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let close = find(
        part_headers_end + 4,
        format!("\r\n{delimiter}--").as_bytes(),
    )
    .expect("closing delimiter");
    (
        metadata,
        headers,
        body[part_headers_end + 4..close].to_vec(),
    )
}

/// Our media for other servers: only to signed requests, as two parts,
/// local media only, quarantined and unknown media not found, thumbnails
/// too.
#[tokio::test]
async fn our_media_is_served_to_other_servers_over_federation() {
    let dirs = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let fake = FakeServer::start(dirs[0].path()).await;
    let (ours, our_name) = Monolith::federating(dirs[1].path()).await;
    let logs = || ours.process.log_tail();
    let alice = Client::register(&ours.base_url, "alice", "pw-alice-fedmedia").await;
    let picture = png(640, 480);
    let uploaded = upload(&alice, picture.clone(), Some("image/png"), Some("café.png")).await;
    assert_eq!(uploaded.status, 200, "{uploaded:?}");
    let mxc = uploaded.json()["content_uri"]
        .as_str()
        .expect("content_uri")
        .to_owned();
    let id = media_id(&mxc);
    let path = format!("/_matrix/federation/v1/media/download/{id}");

    let answer = federation_get(&fake, &our_name, &path, None).await;
    assert_eq!(answer.status, 200, "{answer:?}\n{}", logs());
    let (metadata, headers, file) = parts(&answer);
    assert_eq!(metadata, json!({}));
    assert_eq!(headers["content-type"], "image/png");
    assert!(
        headers["content-disposition"].starts_with("inline")
            && headers["content-disposition"].contains("filename*=utf-8''caf%C3%A9.png"),
        "{headers:?}"
    );
    assert_eq!(file, picture);
    assert_eq!(
        answer.headers["content-length"].to_str().ok(),
        Some(answer.bytes.len().to_string().as_str())
    );

    // Unsigned, forged, or signed for another server: 401 M_UNAUTHORIZED.
    for forged in [
        String::new(),
        "X-Matrix origin=\"nobody.test\",key=\"ed25519:x\",sig=\"AAAA\"".to_owned(),
        fake.authorization(
            &our_name,
            "GET",
            "/_matrix/federation/v1/media/download/other",
            None,
        ),
        fake.authorization("elsewhere.test", "GET", &path, None),
    ] {
        let refused = federation_get(&fake, &our_name, &path, Some(&forged)).await;
        assert_eq!(refused.status, 401, "{forged}: {refused:?}");
        assert_eq!(refused.errcode(), "M_UNAUTHORIZED");
    }
    // Unknown and malformed IDs: 404.
    for unknown in ["nosuchmedia", "bad.id"] {
        let path = format!("/_matrix/federation/v1/media/download/{unknown}");
        let missing = federation_get(&fake, &our_name, &path, None).await;
        assert_eq!(missing.status, 404, "{unknown}: {missing:?}");
        assert_eq!(missing.errcode(), "M_NOT_FOUND");
    }
    // A created ID with nothing uploaded: 504 once the wait is over.
    let created = alice
        .call(
            reqwest::Method::POST,
            "/_matrix/media/v1/create",
            Some(json!({})),
        )
        .await;
    let pending = media_id(created.body["content_uri"].as_str().expect("created"));
    let path_pending = format!("/_matrix/federation/v1/media/download/{pending}?timeout_ms=200");
    let waiting = federation_get(&fake, &our_name, &path_pending, None).await;
    assert_eq!(waiting.status, 504, "{waiting:?}");
    assert_eq!(waiting.errcode(), "M_NOT_YET_UPLOADED");

    // Thumbnails, as the client API makes them.
    let thumb_path =
        format!("/_matrix/federation/v1/media/thumbnail/{id}?width=64&height=64&method=crop");
    let thumb = federation_get(&fake, &our_name, &thumb_path, None).await;
    assert_eq!(thumb.status, 200, "{thumb:?}\n{}", logs());
    let (_, headers, file) = parts(&thumb);
    assert!(headers["content-type"].starts_with("image/"), "{headers:?}");
    assert!(headers["content-disposition"].starts_with("inline"));
    let image = image::load_from_memory(&file).expect("a thumbnail");
    assert!(
        image.width() >= 64 && image.width() < 640,
        "{}",
        image.width()
    );
    let no_size = federation_get(
        &fake,
        &our_name,
        &format!("/_matrix/federation/v1/media/thumbnail/{id}"),
        None,
    )
    .await;
    assert_eq!(no_size.status, 400, "{no_size:?}");

    // Quarantined: not found over federation either.
    let env = ours.env.clone();
    crate::media::operator(&env, &["quarantine", &mxc]);
    let quarantined = federation_get(&fake, &our_name, &path, None).await;
    assert_eq!(quarantined.status, 404, "{quarantined:?}");
    assert_eq!(quarantined.errcode(), "M_NOT_FOUND");
}

/// Our public signing key, as other servers fetch it.
async fn our_key(our_name: &str) -> (String, String) {
    let keys: Value = insecure()
        .get(format!(
            "{}/_matrix/key/v2/server",
            federation_url(our_name)
        ))
        .send()
        .await
        .expect("keys")
        .json()
        .await
        .expect("keys json");
    let (id, key) = keys["verify_keys"]
        .as_object()
        .and_then(|keys| keys.iter().next())
        .expect("a key");
    (id.clone(), key["key"].as_str().expect("key").to_owned())
}

/// Other servers' media for our users: every way a remote may answer.
#[tokio::test]
async fn other_servers_media_is_fetched_kept_and_thumbnailed() {
    let dirs = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let fake = FakeServer::start(dirs[0].path()).await;
    let (our_name, federating) = federating_env();
    let mut env = Monolith::default_env(dirs[1].path());
    env.retain(|(k, _)| k != "GANGLION_FEDERATION__LISTEN");
    env.extend(federating);
    env.push((
        "GANGLION_MEDIA__MAX_UPLOAD_BYTES".to_owned(),
        (1024 * 1024).to_string(),
    ));
    let ours = Monolith::start_with(dirs[1].path(), env).await;
    let logs = || ours.process.log_tail();
    let alice = Client::register(&ours.base_url, "alice", "pw-alice-remote").await;
    let remote = &fake.server_name;
    let mxc = |id: &str| format!("mxc://{remote}/{id}");
    let picture = png(800, 600);
    let file = |bytes: &[u8], content_type: &str, disposition: &str| FakeMedia::File {
        content_type: content_type.to_owned(),
        disposition: disposition.to_owned(),
        bytes: bytes.to_vec(),
    };

    // A picture over the federation media API, its file name kept.
    fake.hold_media(
        "picture",
        file(
            &picture,
            "image/png",
            "inline; filename*=utf-8''gr%C3%BC%C3%9Fe.png",
        ),
    );
    let got = download(&alice, &mxc("picture"), "").await;
    assert_eq!(got.status, 200, "{got:?}\n{}", logs());
    assert_eq!(got.bytes, picture);
    assert_eq!(got.headers["content-type"], "image/png");
    let disposition = got.headers["content-disposition"]
        .to_str()
        .unwrap_or_default();
    assert!(
        disposition.starts_with("inline") && disposition.contains("gr%C3%BC%C3%9Fe.png"),
        "{disposition}"
    );
    // The request was signed by us, for the remote, over this path.
    let requests = fake.media_requests();
    let (path, authorization) = requests.last().expect("a request").clone();
    assert!(
        path.starts_with("/_matrix/federation/v1/media/download/picture?timeout_ms="),
        "{path}"
    );
    let header = XMatrix::parse(authorization.expect("signed")).expect("X-Matrix");
    assert_eq!(header.origin.as_str(), our_name);
    assert_eq!(
        header.destination.as_ref().map(|d| d.as_str()),
        Some(remote.as_str())
    );
    let (key_id, key) = our_key(&our_name).await;
    assert_eq!(header.key.to_string(), key_id);
    let keys = BTreeMap::from([(
        our_name.clone(),
        BTreeMap::from([(key_id, ruma::serde::Base64::parse(&key).expect("base64"))]),
    )]);
    let signed = http::Request::builder()
        .method("GET")
        .uri(path.as_str())
        .body(&[] as &[u8])
        .expect("request");
    header
        .verify_http_request(
            &signed,
            &ruma::ServerName::parse(remote).expect("name"),
            &keys,
        )
        .expect("our signature verifies");

    // Kept: asked again, the remote is not asked; thumbnails made here.
    let before = fake.media_requests().len();
    let again = download(&alice, &mxc("picture"), "/other-name.png").await;
    assert_eq!(again.bytes, picture);
    assert!(
        again.headers["content-disposition"]
            .to_str()
            .unwrap_or_default()
            .contains("other-name.png")
    );
    let thumb = thumbnail(&alice, &mxc("picture"), "width=96&height=96&method=crop").await;
    assert_eq!(thumb.status, 200, "{thumb:?}\n{}", logs());
    let image = image::load_from_memory(&thumb.bytes).expect("thumbnail");
    assert_eq!((image.width(), image.height()), (96, 96));
    assert_eq!(
        fake.media_requests().len(),
        before,
        "asked the remote again"
    );

    // A thumbnail first: the original is fetched for it.
    fake.hold_media("thumbfirst", file(&png(300, 200), "image/png", "inline"));
    let thumb = thumbnail(
        &alice,
        &mxc("thumbfirst"),
        "width=32&height=32&method=scale",
    )
    .await;
    assert_eq!(thumb.status, 200, "{thumb:?}\n{}", logs());

    // The file part points elsewhere: fetched from there, unsigned.
    let cdn = format!("{}/cdn/behind", federation_url(remote));
    fake.hold_media("located", FakeMedia::Location(cdn));
    fake.hold_media(
        "behind",
        file(
            b"from the cdn",
            "text/plain",
            "attachment; filename=cdn.txt",
        ),
    );
    let got = download(&alice, &mxc("located"), "").await;
    assert_eq!(got.status, 200, "{got:?}\n{}", logs());
    assert_eq!(got.bytes, b"from the cdn");
    let requests = fake.media_requests();
    let (cdn_path, cdn_auth) = requests.last().expect("cdn request");
    assert_eq!(cdn_path, "/cdn/behind");
    assert_eq!(
        cdn_auth, &None,
        "a Location is fetched without our signature"
    );
    // A Location to an address outbound requests may not reach: not fetched.
    fake.hold_media(
        "private",
        FakeMedia::Location("http://10.255.255.1/x".into()),
    );
    let refused = download(&alice, &mxc("private"), "").await;
    assert_eq!(refused.status, 502, "{refused:?}");

    // A server without the federation media API: its deprecated download,
    // told not to fetch from elsewhere.
    fake.hold_media(
        "legacy",
        FakeMedia::LegacyOnly {
            content_type: "application/pdf".into(),
            bytes: b"%PDF-1.4 legacy".to_vec(),
        },
    );
    let got = download(&alice, &mxc("legacy"), "").await;
    assert_eq!(got.status, 200, "{got:?}\n{}", logs());
    assert_eq!(got.bytes, b"%PDF-1.4 legacy");
    // Not a type shown inline: an attachment here whatever the remote said.
    assert!(
        got.headers["content-disposition"]
            .to_str()
            .unwrap_or_default()
            .starts_with("attachment")
    );
    let requests = fake.media_requests();
    let (legacy_path, legacy_auth) = requests.last().expect("legacy request");
    assert!(
        legacy_path.starts_with(&format!(
            "/_matrix/media/v3/download/{}/legacy?allow_remote=false",
            ganglion_integration_tests::client::encode(remote)
        )),
        "{legacy_path}"
    );
    assert_eq!(legacy_auth, &None);

    // The remote does not have it: 404, and no fallback.
    let before = fake.media_requests().len();
    let missing = download(&alice, &mxc("nothing"), "").await;
    assert_eq!(missing.status, 404, "{missing:?}");
    assert_eq!(missing.errcode(), "M_NOT_FOUND");
    assert_eq!(fake.media_requests().len(), before + 1);
    // Not uploaded yet over there: 504 as the spec says.
    fake.hold_media(
        "later",
        FakeMedia::Error(
            504,
            json!({"errcode": "M_NOT_YET_UPLOADED", "error": "wait"}),
        ),
    );
    let later = download(&alice, &mxc("later"), "?timeout_ms=100").await;
    assert_eq!(later.status, 504, "{later:?}");
    assert_eq!(later.errcode(), "M_NOT_YET_UPLOADED");
    // Larger than we take (declared or not): 502 M_TOO_LARGE, nothing kept.
    fake.hold_media(
        "huge",
        file(
            &vec![7u8; 1024 * 1024 + 1],
            "application/octet-stream",
            "attachment",
        ),
    );
    let huge = download(&alice, &mxc("huge"), "").await;
    assert_eq!(huge.status, 502, "{huge:?}");
    assert_eq!(huge.errcode(), "M_TOO_LARGE");
    // Not a federation media answer, or a remote failing: 502.
    for (id, media) in [
        (
            "garbage",
            FakeMedia::Garbage("text/html".into(), b"<html>".to_vec()),
        ),
        (
            "broken",
            FakeMedia::Garbage(
                "multipart/mixed; boundary=zz".into(),
                b"--zz\r\nContent-Type: application/json\r\n\r\n{}\r\n--zz\r\n\r\nno end".to_vec(),
            ),
        ),
        (
            "failing",
            FakeMedia::Error(500, json!({"errcode": "M_UNKNOWN"})),
        ),
    ] {
        fake.hold_media(id, media);
        let bad = download(&alice, &mxc(id), "").await;
        assert_eq!(bad.status, 502, "{id}: {bad:?}");
        // Nothing half-kept: asked again, the remote is asked again.
        let before = fake.media_requests().len();
        let _ = download(&alice, &mxc(id), "").await;
        assert_eq!(fake.media_requests().len(), before + 1, "{id}");
    }
    // An unreachable server: 502.
    let nowhere = download(&alice, "mxc://localhost:1/abc", "").await;
    assert_eq!(nowhere.status, 502, "{nowhere:?}");

    // Another server's media is never served on to a third over federation.
    let path = "/_matrix/federation/v1/media/download/picture";
    let relayed = federation_get(&fake, &our_name, path, None).await;
    assert_eq!(relayed.status, 404, "{relayed:?}");
    // The deprecated endpoints never fetch (allow_remote honoured), and
    // serve nothing without a freeze moment.
    let legacy = insecure()
        .get(format!(
            "{}/_matrix/media/v3/download/{remote}/fresh",
            ours.base_url
        ))
        .send()
        .await
        .expect("legacy");
    assert_eq!(legacy.status(), 404);

    // Quarantined remote media: not served, not fetched again.
    crate::media::operator(&ours.env, &["quarantine", &mxc("picture")]);
    let quarantined = download(&alice, &mxc("picture"), "").await;
    assert_eq!(quarantined.status, 404, "{quarantined:?}");
}

/// A real Synapse, both ways: our user's picture downloaded and
/// thumbnailed by Synapse's user, Synapse's picture by ours (and kept
/// here: served again while Synapse is down).
#[tokio::test]
async fn media_crosses_to_and_from_synapse() {
    let (mut synapse, ours, _our_name, _dirs) = crate::federation_queries::with_synapse().await;
    let alice = Client::register(&ours.base_url, "alice", "pw-alice-synmedia").await;
    let bob = synapse.register("bob", "pw-bob-synmedia").await;

    // Ours, through Synapse.
    let ours_picture = png(400, 300);
    let uploaded = upload(
        &alice,
        ours_picture.clone(),
        Some("image/png"),
        Some("ours.png"),
    )
    .await;
    assert_eq!(uploaded.status, 200, "{uploaded:?}");
    let ours_mxc = uploaded.json()["content_uri"]
        .as_str()
        .expect("content_uri")
        .to_owned();
    let got = download(&bob, &ours_mxc, "").await;
    assert_eq!(
        got.status,
        200,
        "{got:?}\n{}",
        crate::federation_queries::logs_with_synapse(&synapse, &ours)
    );
    assert_eq!(got.bytes, ours_picture);
    let thumb = thumbnail(&bob, &ours_mxc, "width=96&height=96&method=crop").await;
    assert_eq!(
        thumb.status,
        200,
        "{thumb:?}\n{}",
        crate::federation_queries::logs_with_synapse(&synapse, &ours)
    );
    let image = image::load_from_memory(&thumb.bytes).expect("Synapse's thumbnail");
    assert_eq!((image.width(), image.height()), (96, 96));

    // Synapse's, through ours.
    let theirs_picture = png(500, 400);
    let uploaded = upload(
        &bob,
        theirs_picture.clone(),
        Some("image/png"),
        Some("theirs.png"),
    )
    .await;
    assert_eq!(uploaded.status, 200, "{uploaded:?}");
    let theirs_mxc = uploaded.json()["content_uri"]
        .as_str()
        .expect("content_uri")
        .to_owned();
    let got = download(&alice, &theirs_mxc, "").await;
    assert_eq!(
        got.status,
        200,
        "{got:?}\n{}",
        crate::federation_queries::logs_with_synapse(&synapse, &ours)
    );
    assert_eq!(got.bytes, theirs_picture);
    assert!(
        got.headers["content-disposition"]
            .to_str()
            .unwrap_or_default()
            .contains("theirs.png"),
        "{got:?}"
    );
    let thumb = thumbnail(&alice, &theirs_mxc, "width=320&height=240&method=scale").await;
    assert_eq!(thumb.status, 200, "{thumb:?}");
    let image = image::load_from_memory(&thumb.bytes).expect("our thumbnail");
    assert_eq!((image.width(), image.height()), (300, 240));

    // Kept here: served with Synapse gone.
    synapse.stop();
    let again = download(&alice, &theirs_mxc, "").await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.bytes, theirs_picture);
}

/// Through a polylith's gateway (at `base_url`, named `server_name`):
/// another server's media fetched (the mediaapi signing through the
/// federationapi), and ours served to it (its signature checked there).
pub(crate) async fn media_crosses_the_gateway(
    base_url: &str,
    server_name: &str,
    logs: impl Fn() -> String,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = FakeServer::start(dir.path()).await;
    let alice = Client::register(base_url, "fedmedia", "pw-fedmedia-gateway").await;
    let picture = png(200, 100);
    fake.hold_media(
        "gatewayed",
        FakeMedia::File {
            content_type: "image/png".into(),
            disposition: "inline".into(),
            bytes: picture.clone(),
        },
    );
    let mxc = format!("mxc://{}/gatewayed", fake.server_name);
    let got = download(&alice, &mxc, "").await;
    assert_eq!(got.status, 200, "{got:?}\n{}", logs());
    assert_eq!(got.bytes, picture);
    let (_, authorization) = fake.media_requests().last().cloned().expect("asked");
    let header = XMatrix::parse(authorization.expect("signed")).expect("X-Matrix");
    assert_eq!(header.origin.as_str(), server_name);

    let ours = upload(&alice, picture.clone(), Some("image/png"), None).await;
    let id = media_id(ours.json()["content_uri"].as_str().expect("content_uri"));
    let path = format!("/_matrix/federation/v1/media/download/{id}");
    let signed = fake.authorization(server_name, "GET", &path, None);
    let response = insecure()
        .get(format!("{base_url}{path}"))
        .header("authorization", signed)
        .send()
        .await
        .expect("federation request");
    let answer = Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        bytes: response.bytes().await.expect("body").to_vec(),
    };
    assert_eq!(answer.status, 200, "{answer:?}\n{}", logs());
    assert_eq!(parts(&answer).2, picture);
    let unsigned = insecure()
        .get(format!("{base_url}{path}"))
        .send()
        .await
        .expect("unsigned");
    assert_eq!(unsigned.status(), 401);
}
